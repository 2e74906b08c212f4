"""Text from a pack, a plugin or a file on its way to a terminal, made harmless.

A pack is a file strangers share: an entry's text, title, source, tags or author can
hold terminal escape sequences (recolouring, retitling the window, rewriting what was
printed above) or characters that reorder the line (bidi overrides). Every human line
the CLI prints goes through :func:`terminal_safe`; JSON goes through :func:`json_safe`.
"""
from __future__ import annotations

import re

# C0 controls but tab and newline, DEL, C1 controls (U+009B is a CSI on its own), the
# bidi marks and overrides that reorder a line, and lone surrogates (unprintable in UTF-8).
_UNSAFE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _escape(m: re.Match) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def terminal_safe(text: str) -> str:
    """``text`` with every control character shown as an escape (ESC -> ``\\x1b``);
    newlines and tabs stay, so multi-line output keeps its shape."""
    return _UNSAFE.sub(_escape, text)


def json_safe(document: str) -> str:
    """A JSON document (``ensure_ascii=False``) with the same characters as JSON escapes
    (``\\u001b``): still valid JSON that decodes to the same strings. ``json`` escapes C0
    controls itself; DEL, C1, bidi marks and lone surrogates are left raw by it."""
    return _UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", document)
