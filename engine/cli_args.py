"""Argument types shared by every `plugmem` command, and a parser that fails in one line.

A value out of range is refused while the command line is parsed, before a pack is
opened or a model loads: an id or a limit SQLite cannot hold (it raised OverflowError),
``--limit 0`` (it raised IndexError), a negative count, a ``-k`` that would allocate
terabytes. The reason is one line on stderr with exit status 2, like every bad input.
"""
from __future__ import annotations

import argparse
from typing import Callable, NoReturn

from engine.terminal import terminal_safe

#: The largest integer SQLite stores (a signed 64-bit INTEGER).
SQLITE_MAX_INT = 2**63 - 1


def whole_number(low: int, high: int = SQLITE_MAX_INT, what: str = "a whole number") -> Callable[[str], int]:
    """An argparse ``type``: an integer in ``[low, high]``, else a one-line reason."""

    def parse(text: str) -> int:
        shown = text if len(text) <= 30 else text[:27] + "..."
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{shown!r} is not {what}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low:,} (got {shown})")
        if value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high:,} (got {shown})")
        return value

    parse.__name__ = what.replace(" ", "_")  # argparse names the type in some messages
    return parse


#: An entry id (``show``, ``edit``, ``delete``, ``history``): ids start at 1.
entry_id = whole_number(1, what="an entry id")
#: ``list --after``: 0 starts at the beginning.
after_id = whole_number(0, what="an entry id (or 0)")
#: Counts and limits: at least 1.
positive = whole_number(1, what="a positive whole number")
#: Counts where 0 means "none" or "no limit" (``--max-steps``, ``--hidden``).
non_negative = whole_number(0, what="a whole number (0 or more)")
#: ``-k`` of the commands whose reader reads the retrieved entries (predict, eval): each
#: entry costs reader states or context, and the branch was trained with k = 5.
retrieved = whole_number(1, 100, what="a number of entries")
#: ``--max-new-tokens``: answers are a few words; past this a run is only waiting.
answer_tokens = whole_number(1, 1024, what="a number of tokens")


class OneLineParser(argparse.ArgumentParser):
    """Usage mistakes exit 2 with one line naming the command, not a usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, terminal_safe(f"{self.prog}: error: {message} (see {self.prog} --help)") + "\n")
