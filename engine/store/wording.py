"""History records and changes in plain words, for the CLI and the app alike."""
from __future__ import annotations

from typing import Any, Callable

from engine.store.pack import FIELDS

_STATUS_WORDS = {("active", "deleted"): "deleted", ("disabled", "deleted"): "deleted", ("deleted", "active"): "restored",
                 ("deleted", "disabled"): "restored (disabled)", ("active", "disabled"): "disabled",
                 ("disabled", "active"): "enabled"}


def changed_fields(before: dict | None, after: dict | None) -> list[str]:
    b, a = before or {}, after or {}
    return [k for k in FIELDS if b.get(k) != a.get(k)]


def describe_history(r: Any, *, arrow: str = "->", quote: Callable[[str], str] = repr, width: int = 40) -> str:
    """One history record: "added: 'Paris is…'", "text 'a' -> 'b'", "disabled",
    "undo of edit: title 'FR' -> 'France'"."""
    before, after, op = getattr(r, "before", None), getattr(r, "after", None), getattr(r, "op", "")
    b, a = before or {}, after or {}
    parts = []
    if before is None or op == "add":
        parts.append(f"added: {quote(str(a.get('text', ''))[: width + 20])}")
    else:
        for f in changed_fields(b, a):
            if f == "status":
                parts.append(_STATUS_WORDS.get((b.get(f), a.get(f)), f"status {b.get(f)} {arrow} {a.get(f)}"))
            elif f == "tags":
                parts.append(f"tags {', '.join(b.get(f) or []) or '(none)'} {arrow} {', '.join(a.get(f) or []) or '(none)'}")
            else:
                parts.append(f"{f} {quote(str(b.get(f, ''))[:width])} {arrow} {quote(str(a.get(f, ''))[:width])}")
    said = "; ".join(parts) or "no visible change"
    for word in ("undo", "redo"):
        if op.startswith(word + " "):
            return f"{word} of {op.split(' ', 1)[1]}: {said}"
    return said
