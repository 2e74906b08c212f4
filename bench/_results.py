"""Print a benchmark's figures and, when asked, append them to bench/RESULTS.md."""
from __future__ import annotations

import random
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def publish(text: str, append: bool) -> None:
    """Print ``text`` (a Markdown section); with ``append`` also add it to RESULTS.md."""
    print(text)
    if append:
        with open(RESULTS, "a", encoding="utf-8") as f:
            f.write("\n" + text.rstrip("\n") + "\n")


def sample(items: list, n: int, seed: int) -> list:
    """A seeded sample of ``n`` of ``items``, in their order (all of them when n >= len)."""
    if n >= len(items):
        return list(items)
    idx = sorted(random.Random(seed).sample(range(len(items)), n))
    return [items[i] for i in idx]


def pct(x: float | None) -> str:
    """A share as a percentage with one decimal ("–" for none)."""
    return "–" if x is None else f"{100 * x:.1f} %"
