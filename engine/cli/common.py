"""What every `plugmem` command module shares: the output (human text or one JSON document),
the progress bar, Ctrl+C as a stop flag, running a job in-process, opening packs and
memories, the one-line failure (:class:`CliError`) and small formatting helpers."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from engine.terminal import json_safe, terminal_safe

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# transformers' and the hub's own bars ("Loading weights: 0%...") would interleave with ours
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status 2."""


# ---------------------------------------------------------------------------- output
class Output:
    def __init__(self, as_json: bool, quiet: bool = False) -> None:
        self.as_json = as_json
        self.quiet = quiet

    def emit(self, data: Any, human: Callable[[], str] | str) -> None:
        # Everything printed passes here: pack text cannot drive the terminal (issue 24).
        if self.as_json:
            for chunk in json.JSONEncoder(ensure_ascii=False).iterencode(data):  # streamed, as json.dump does
                sys.stdout.write(json_safe(chunk))
            sys.stdout.write("\n")
        else:
            text = human() if callable(human) else human
            if text:
                print(terminal_safe(text))

    def info(self, msg: str) -> None:
        if not self.quiet:
            print(terminal_safe(msg), file=sys.stderr)


class ProgressBar:
    """A one-line progress bar on stderr when stderr is a terminal; else sparse lines: one
    per 10 % of progress, and one at least every ``quiet_s`` seconds while the message
    changes (a long phase whose fraction does not move, such as a training job's
    preparation, still shows in a log file)."""

    def __init__(self, label: str, enabled: bool = True, quiet_s: float = 30.0) -> None:
        self.label = label
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.t0 = time.monotonic()
        self.last = 0.0
        self.last_line = -1.0
        self.quiet_s = quiet_s
        self.last_line_at = self.t0
        self.last_message = ""

    def __call__(self, fraction: float, message: str = "", **_: Any) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        fraction = max(0.0, min(1.0, float(fraction)))
        if self.tty:
            if now - self.last < 0.1 and fraction < 1.0:
                return
            self.last = now
            elapsed = now - self.t0
            eta = (elapsed / fraction - elapsed) if fraction > 0.01 else None
            width = 28
            filled = int(round(width * fraction))
            bar = "#" * filled + "-" * (width - filled)
            eta_s = f" ETA {_fmt_secs(eta)}" if eta is not None and fraction < 1 else ""
            sys.stderr.write(f"\r{self.label} [{bar}] {fraction * 100:5.1f}%{eta_s} {terminal_safe(message[:60]):<60}")
            sys.stderr.flush()
        else:
            step = fraction - self.last_line >= 0.1 or fraction >= 1.0
            if not step and (now - self.last_line_at < self.quiet_s or message == self.last_message):
                return
            if step:
                self.last_line = fraction
            self.last_line_at = now
            self.last_message = message
            print(terminal_safe(f"{self.label}: {fraction * 100:.0f}% {message}"), file=sys.stderr)

    def close(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _fmt_secs(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class StopFlag:
    """should_stop() for in-process jobs: Ctrl+C sets it instead of killing mid-transaction."""

    def __init__(self) -> None:
        self.stop = False
        self._old = None

    def __call__(self) -> bool:
        return self.stop

    def __enter__(self) -> "StopFlag":
        import signal

        def handler(signum, frame):  # noqa: ARG001
            if self.stop:  # second Ctrl+C: give up at once
                raise KeyboardInterrupt
            self.stop = True
            print("\nstopping at the next checkpoint (Ctrl+C again to abort)...", file=sys.stderr)

        try:
            self._old = signal.signal(signal.SIGINT, handler)
        except ValueError:  # not the main thread
            self._old = None
        return self

    def __exit__(self, *exc: object) -> None:
        import signal

        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


# ---------------------------------------------------------------------------- commands and jobs
def add_command(sub, parents: Sequence[argparse.ArgumentParser], name: str, fn: Callable[..., int], help: str,
                aliases: Sequence[str] = ()) -> argparse.ArgumentParser:
    """One command under ``sub`` with the common options (``parents``); ``fn(args, out)`` runs it."""
    sp = sub.add_parser(name, parents=list(parents), help=help, description=help, aliases=list(aliases))
    sp.set_defaults(fn=fn)
    return sp


def add_untrusted_arg(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--reencode-untrusted", action="store_true",
                    help="do not trust the pack's stored keys (a pack from elsewhere): encode every entry "
                         "from its text first and keep those keys")


def job_cancelled() -> type[BaseException]:
    from engine.progress import JobCancelled

    return JobCancelled


def model_errors() -> tuple[type[BaseException], ...]:
    """The reader's, the branch's and the evaluation's bad-input errors: one line, exit 2."""
    from engine.evaluate import EvalDataError
    from engine.explain import PredictError
    from engine.mechanisms.dpm.train_branch import TrainDataError
    from engine.mechanisms.dpm import DPMError

    return (PredictError, DPMError, EvalDataError, TrainDataError)


def run_job(label: str, job, config, a, out: Output):
    """Run an engine job here with a progress bar; Ctrl+C stops it at its last checkpoint.
    Returns its result, or None when it was interrupted (the message is printed)."""
    stop = StopFlag()
    bar = ProgressBar(label, enabled=not a.json and not a.quiet)
    try:
        with stop:
            res = job(config, progress=bar, should_stop=stop)
    except job_cancelled() as exc:
        bar.close()
        print(terminal_safe(f"plugmem: interrupted: {exc}"), file=sys.stderr)  # the outcome: shown even with -q
        return None
    except model_errors() as exc:
        bar.close()
        raise CliError(str(exc)) from None
    except BaseException:
        bar.close()
        raise
    bar.close()
    return res


# ---------------------------------------------------------------------------- packs and memories
def open_pack(path: str, *, must_exist: bool = True):
    from engine.store import Pack

    p = Path(path)
    if must_exist and not p.exists():
        raise CliError(f"{path}: no such pack (create it with `plugmem init {path}`)")
    return Pack.open(p)


def open_memory(path: str, out: Output, *, create: bool = False, trust_keys: bool = True):
    from engine.memory import Memory

    p = Path(path)
    if not create and not p.exists():
        raise CliError(f"{path}: no such pack (create it with `plugmem init {path}`)")
    return Memory.open(p, create=create, on_message=out.info, trust_keys=trust_keys)


# ---------------------------------------------------------------------------- reader, memories, plugins
# What the commands that answer with the reader (predict, eval, eval-edits, compare) share.
def branch_dir(a, needs: str, hint: str = ""):
    """The DPM branch folder for ``--reader``/``--branch``: the given one, else the shipped one
    for the default reader; its config is read here, so a bad folder fails before the reader loads."""
    from engine.mechanisms import dpm
    from engine.reader.reader import is_default_name

    if a.branch:
        folder = a.branch
    elif is_default_name(a.reader):
        folder = dpm.default_branch_path()
    else:
        raise CliError(f"{needs} a memory branch trained for the reader {a.reader}: pass --branch DIR{hint}")
    dpm.read_config(folder)
    return folder


def load_predictor(a, out: Output, modes: Sequence[str]):
    """The reader (--reader) and, when a mode needs it, the DPM branch (--branch, else the shipped one)."""
    from engine.explain import Predictor
    from engine.session import open_session

    from engine.cli.patch import apply_patch_args, check_patch_args  # the --patch options' own module

    folder = None
    if "dpm" in modes:
        folder = branch_dir(a, "mode dpm needs", " (train one with `plugmem train-branch`), or use --mode context")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # one-line errors, clean --json output
    except ImportError:  # pragma: no cover
        pass
    check_patch_args(a)
    # entry_states: entries read in an earlier run are not read again (not with --pkm or weight
    # patches: they change the entries' states, and the states on disk are the bare reader's)
    session = open_session(a.reader, branch=folder,
                           entry_states=not (getattr(a, "pkm", None) or getattr(a, "patch", None)))
    a.patch_names = apply_patch_args(a, session.reader)  # on for the rest of this command
    return Predictor.from_session(session)


def open_memories(paths: Sequence[str] | None, out: Output, *, trust_keys: bool = True) -> list:
    mems = []
    try:
        for p in paths or []:
            mems.append(open_memory(p, out, trust_keys=trust_keys))
    except BaseException:
        for m in mems:
            m.close()
        raise
    return mems


def pct(x: float | None) -> str:
    return "   -  " if x is None else f"{100 * x:5.1f}%"


def load_plugins(a, reader, mems: Sequence, out: Output) -> list:
    """The knowledge plugins of ``--plugin DIR`` (repeatable) and ``--plugin auto`` for ``reader``.

    ``auto``: the plugin beside each --memory PACK (``<pack>.task-plugin`` if one was
    task-tuned, else ``<pack>.plugin``: one per domain), where one exists,
    checked against that pack's entities. An explicit folder must match the entity set
    of one of the plugged packs (any, with no pack plugged); another reader's plugin,
    or one made for another entity set, is refused (PluginError: exit 2).
    """
    from engine.mechanisms.plugins.errors import EmbeddingError, PluginError
    from engine.mechanisms.plugins.io import load_plugin, plugged_plugin_dir

    plugins, seen = [], set()
    for d in a.plugin or []:
        if d == "auto":
            found = 0
            for m in mems:
                folder = plugged_plugin_dir(m.pack.path)
                if folder.is_dir() and folder.resolve() not in seen:
                    seen.add(folder.resolve())
                    plugins.append(load_plugin(folder, reader, m.pack))
                    found += 1
            if not found:
                out.info("plugmem: --plugin auto: no knowledge plugin beside the plugged pack(s); none is used")
            continue
        folder = Path(d)
        if folder.resolve() in seen:
            continue
        seen.add(folder.resolve())
        plugin = load_plugin(folder, reader)
        if mems:
            errors = []
            for m in mems:
                try:
                    plugin.use_pack_aliases(m.pack)
                    break
                except EmbeddingError as exc:
                    errors.append(str(exc))
            else:
                if len(mems) == 1:
                    raise PluginError(errors[0])
                raise PluginError(f"the knowledge plugin in {folder} was made for none of the plugged packs' entity "
                                  f"sets ({errors[0]})")
        plugins.append(plugin)
    return plugins


# ---------------------------------------------------------------------------- formatting
def one_line(text: str, width: int = 100) -> str:
    """``text`` on one line of at most ``width`` characters (a listing keeps one row per item)."""
    text = text.replace("\r", " ").replace("\n", " ")
    return text if len(text) <= width else text[: width - 3] + "..."


def read_stdin() -> str:
    """Standard input as UTF-8 text; other bytes are a one-line error, not a traceback."""
    buf = getattr(sys.stdin, "buffer", None)
    data = buf.read() if buf is not None else sys.stdin.read().encode("utf-8", "surrogateescape")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CliError(f"standard input is not valid UTF-8 (byte 0x{data[exc.start]:02x} "
                       f"at offset {exc.start:,})") from None
