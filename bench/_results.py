"""Print a benchmark's figures and, when asked, append them to bench/RESULTS.md."""
from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def publish(text: str, append: bool) -> None:
    """Print ``text`` (a Markdown section); with ``append`` also add it to RESULTS.md."""
    print(text)
    if append:
        with open(RESULTS, "a", encoding="utf-8") as f:
            f.write("\n" + text.rstrip("\n") + "\n")
