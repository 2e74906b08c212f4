"""`plugmem`: the headless command line over the engine.

Human-readable output by default, exactly one JSON document on stdout with ``--json``.
Bad input exits with status 2 and a one-line reason on stderr; an interrupted
(Ctrl+C) long command exits 130 after leaving the pack at its last checkpoint.

Layout: one module per group of commands, each holding its parsers and their handlers::

    common.py   Output, ProgressBar, StopFlag, run_job, open_pack/open_memory, CliError,
                add_command, formatting helpers: what every group uses
    pack.py     init, import, list, show, add, edit, delete, undo, redo, history, search,
                export, stats, check, reencode
    index.py    index status|rebuild|compact
    demo.py     demo
    model.py    predict, prepare, eval, eval-edits, train-branch
    plugins.py  triples, entities, embeddings, train-transe, map-tune
    probes.py   probes make
    pkm.py      pkm grow, pkm usage, pkm eval (and --pkm DIR for predict and eval)
    patch.py    patch create|list|show|apply|remove, compare (weight patches, issue 18)

To add a group: write ``engine/cli/<group>.py`` with ``add_parsers(sub, common)``, which
registers its commands on ``sub`` with ``add_command(sub, [common], name, fn, help)``
(``common``: the shared --json / -q / --author options; ``fn(args, out) -> exit status``,
printing through ``out.emit(data, human)`` and raising ``CliError`` on bad input), then
add the module to ``GROUPS`` below: one line. Its commands appear in ``plugmem --help``
in that order. Test its human output (tests/engine/test_cli_human.py).
"""
from __future__ import annotations

import argparse
import logging
import os
import sqlite3
import sys
from typing import Sequence

from engine.cli import demo, index, model, pack, patch, pkm, plugins, probes
from engine.cli.common import EXIT_BAD_INPUT, EXIT_INTERRUPTED, CliError, Output
from engine.cli_args import OneLineParser
from engine.terminal import terminal_safe

log = logging.getLogger("plugmem")

#: The command groups, in the order ``plugmem --help`` lists them.
GROUPS = (
    pack,
    index,
    demo,
    model,
    plugins,
    probes,
    pkm,
    patch,
)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print one JSON document")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress or notices on stderr")
    common.add_argument("--author", default=os.environ.get("PLUGMEM_AUTHOR") or _user(), help="name recorded in history")

    p = OneLineParser(prog="plugmem", description="PlugMem Studio: curate a language model's plug-in memory, headless.")
    p.add_argument("--version", action="version", version="plugmem 0.1.0")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.add_parsers(sub, common)
    return p


def _user() -> str | None:
    try:
        import getpass

        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name is fine
        return None


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("PLUGMEM_LOG", "WARNING"), format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    try:
        a = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already explained in one line
        return int(exc.code or 0)
    out = Output(a.json, a.quiet)
    from engine.errors import user_errors
    from engine.store.errors import is_disk_full

    try:
        return a.fn(a, out)
    except sqlite3.DatabaseError as exc:  # damage found past the checks on open (a bad page, a bad row)
        if is_disk_full(exc):  # an OperationalError, so caught here first
            print(_DISK_FULL, file=sys.stderr)
            return EXIT_BAD_INPUT
        where = getattr(a, "pack", None) or "a pack"
        what = ("a statement ran too long and was stopped" if str(exc) == "interrupted"
                else f"the pack's database is damaged ({exc})")
        print(f"plugmem: error: {where}: {what}; run `plugmem check {where}`", file=sys.stderr)
        return EXIT_BAD_INPUT
    except CliError as exc:
        print(terminal_safe(f"plugmem: error: {exc}"), file=sys.stderr)
        return EXIT_BAD_INPUT
    except user_errors() as exc:
        print(terminal_safe(f"plugmem: error: {exc}"), file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("plugmem: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return 0
    except (sqlite3.OperationalError, OSError) as exc:
        if not is_disk_full(exc):
            raise
        print(_DISK_FULL, file=sys.stderr)
        return EXIT_BAD_INPUT


# a write refused mid-change is rolled back whole: the same command can simply run again
_DISK_FULL = "plugmem: error: disk full while writing: free space and run the same command again"
