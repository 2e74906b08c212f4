"""Word-level differences between two texts, as HTML (removed struck through in red, added
underlined in green), for the revert preview."""
from __future__ import annotations

import difflib
import html
import re

# words, runs of white space and single punctuation marks: a changed number or name shows
# as that word alone, not as the whole sentence
_TOKENS = re.compile(r"\s+|\w+|[^\w\s]")
DEL_STYLE = "color:#b3261e;background:rgba(179,38,30,0.12);text-decoration:line-through"
INS_STYLE = "color:#1b6e20;background:rgba(27,110,32,0.14);text-decoration:underline"


def word_diff(old: str, new: str) -> list[tuple[str, str]]:
    """(kind, text) runs turning ``old`` into ``new``; kind is "same", "del" or "ins"."""
    a, b = _TOKENS.findall(old), _TOKENS.findall(new)
    runs: list[tuple[str, str]] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op == "equal":
            runs.append(("same", "".join(a[i1:i2])))
            continue
        if i2 > i1:
            runs.append(("del", "".join(a[i1:i2])))
        if j2 > j1:
            runs.append(("ins", "".join(b[j1:j2])))
    return runs


def diff_html(old: str, new: str) -> str:
    """``old`` → ``new`` as one HTML fragment, line breaks kept."""
    out = []
    for kind, text in word_diff(old, new):
        t = html.escape(text).replace("\n", "<br>")
        if kind == "same":
            out.append(t)
        else:
            out.append(f'<span style="{DEL_STYLE if kind == "del" else INS_STYLE}">{t}</span>')
    return "".join(out)
