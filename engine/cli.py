"""`plugmem`: the headless command line over the engine.

Human-readable output by default, exactly one JSON document on stdout with ``--json``.
Bad input exits with status 2 and a one-line reason on stderr; an interrupted
(Ctrl+C) long command exits 130 after leaving the pack at its last checkpoint.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from engine.cli_args import OneLineParser, after_id, answer_tokens, entry_id, non_negative, positive, retrieved
from engine.terminal import json_safe, terminal_safe

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# transformers' and the hub's own bars ("Loading weights: 0%...") would interleave with ours
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

log = logging.getLogger("plugmem")

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


# ---------------------------------------------------------------------------- helpers
def _open_pack(path: str, *, must_exist: bool = True):
    from engine.store import Pack

    p = Path(path)
    if must_exist and not p.exists():
        raise CliError(f"{path}: no such pack (create it with `plugmem init {path}`)")
    return Pack.open(p)


def _open_memory(path: str, out: Output, *, create: bool = False, trust_keys: bool = True):
    from engine.memory import Memory

    p = Path(path)
    if not create and not p.exists():
        raise CliError(f"{path}: no such pack (create it with `plugmem init {path}`)")
    return Memory.open(p, create=create, on_message=out.info, trust_keys=trust_keys)


def _one_line(text: str, width: int = 100) -> str:
    """``text`` on one line of at most ``width`` characters (a listing keeps one row per item)."""
    text = text.replace("\r", " ").replace("\n", " ")
    return text if len(text) <= width else text[: width - 3] + "..."


def _entry_line(e) -> str:
    title = f"[{e.title}] " if e.title else ""
    status = "" if e.status == "active" else f" ({e.status})"
    return f"{e.id:>8}  {title}{_one_line(e.text)}{status}"


def _change_dict(ch) -> dict[str, Any]:
    if ch is None:
        return {"change": None}
    return {"change": {"id": ch.change_id, "kind": ch.kind, "ids": list(ch.ids), "content_version": ch.content_version}}


_PAST = {"edit": "Edited", "disable": "Disabled", "enable": "Enabled", "delete": "Deleted", "add": "Added"}


def _describe_change(ch, fields: Sequence[str] = ()) -> str:
    """'Edited entry 1 (text)', 'Deleted 3 entries: 4, 5, 6', or 'No change'."""
    if not ch.ids:
        return "No change (the entry already had these values)"
    verb, _, rest = (ch.label or f"{ch.kind} entries").partition(" ")
    said = f"{_PAST.get(verb, verb)} {rest}"
    if len(ch.ids) > 1:
        said += ": " + ", ".join(map(str, ch.ids[:10])) + (f" and {len(ch.ids) - 10} more" if len(ch.ids) > 10 else "")
    shown = [f for f in fields if f != "status"]
    return f"{said} ({', '.join(shown)})" if ch.kind == "edit" and shown else said


def _read_stdin() -> str:
    """Standard input as UTF-8 text; other bytes are a one-line error, not a traceback."""
    buf = getattr(sys.stdin, "buffer", None)
    data = buf.read() if buf is not None else sys.stdin.read().encode("utf-8", "surrogateescape")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CliError(f"standard input is not valid UTF-8 (byte 0x{data[exc.start]:02x} "
                       f"at offset {exc.start:,})") from None


def _parse_tags(s: str | None) -> list[str] | None:
    if s is None:
        return None
    return [t.strip() for t in s.split(",") if t.strip()]


# ---------------------------------------------------------------------------- commands
def cmd_init(a, out: Output) -> int:
    from engine.encode import get_default_encoder
    from engine.store import Pack

    p = Path(a.pack)
    if p.exists():
        raise CliError(f"{a.pack}: already exists; not overwritten")
    fp = get_default_encoder().fingerprint
    with Pack.create(p, name=a.name or p.stem, encoder=fp) as pack:
        out.emit({"pack": str(p), "name": pack.name, "encoder": fp.to_dict()}, f"created {p} (encoder {fp.describe()})")
    return 0


def cmd_import(a, out: Output) -> int:
    from engine.jobs.build_memory import build_memory
    from engine.progress import JobCancelled

    cfg: dict[str, Any] = {"pack": a.pack, "inputs": a.paths, "name": a.name, "author": a.author}
    job = build_memory
    if a.ray is not None:
        job, cfg = _ray_import_job(a, cfg)
    elif a.workers or a.shard_size:
        raise CliError("--workers and --shard-size go with --ray")
    stop = _StopFlag()
    bar = ProgressBar("import", enabled=not a.json and not a.quiet)
    try:
        with stop:
            res = job(cfg, progress=bar, should_stop=stop)
    except JobCancelled as exc:
        out.info(f"plugmem: interrupted: {exc}")
        return EXIT_INTERRUPTED
    finally:  # the reason for a failure starts on a line of its own
        bar.close()

    def human() -> str:
        if res["errors"]:
            lines = ["nothing imported"]
        else:
            lines = [f"added {res['entries_added']:,} entries in {res['seconds']:.1f} s ({res['entries_per_second']:.0f}/s)"]
        if res.get("workers"):
            lines.append(f"on Ray: {res['workers']} worker(s), {res['shards']:,} shard(s), "
                         f"{res['encode_seconds']:.1f} s encoding, {res['merge_seconds']:.1f} s writing the pack")
        lines += [f"already imported, skipped: {f}" for f in res["files_skipped"]]
        lines += [f"error: {e}" for e in res["errors"]]
        lines += [f"note: {n}" for n in res.get("notes", [])]
        return "\n".join(lines)

    out.emit(res, human)
    if res["errors"]:
        if not a.json:
            print(terminal_safe(f"plugmem: {len(res['errors'])} input(s) rejected; nothing was imported: "
                                f"{res['errors'][0]}"), file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def _ray_import_job(a, cfg: dict[str, Any]) -> tuple[Callable[..., dict], dict[str, Any]]:
    """The Ray Data build and its config for `import --ray [ADDRESS]`; one line when Ray is missing."""
    from engine.jobs.ray_build import ScaleExtraMissing, ray_build, require_ray

    try:
        require_ray()
    except ScaleExtraMissing as exc:
        raise CliError(str(exc)) from None
    if os.environ.get("PLUGMEM_LOG", "WARNING").upper() != "DEBUG":
        logging.getLogger("ray.data").setLevel(logging.ERROR)  # Ray Data logs every dataset it runs
    extra = {"address": None if a.ray == "local" else a.ray, "workers": a.workers}
    if a.shard_size:
        extra["chunk_size"] = a.shard_size
    return ray_build, {**cfg, **extra}


def cmd_list(a, out: Output) -> int:
    with _open_pack(a.pack) as pack:
        status = None if a.status == "all" else a.status
        entries = pack.page(a.after, a.limit, status=status, tag=a.tag)
        data = {"entries": [e.to_dict() for e in entries], "next_after": entries[-1].id if len(entries) == a.limit else None}
        out.emit(data, lambda: "\n".join(_entry_line(e) for e in entries) or "(no entries)")
    return 0


def cmd_show(a, out: Output) -> int:
    from engine.store import EntryNotFound

    with _open_pack(a.pack) as pack:
        try:
            e = pack.get(a.id)
        except EntryNotFound:
            raise CliError(f"{a.pack}: no entry with id {a.id}") from None

        def human() -> str:
            return "\n".join(
                [
                    f"id:      {e.id}",
                    f"title:   {e.title}",
                    f"status:  {e.status}",
                    f"source:  {e.source}",
                    f"tags:    {', '.join(e.tags)}",
                    f"version: {e.version}   updated: {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(e.updated))}",
                    "",
                    e.text,
                ]
            )

        out.emit(e.to_dict(), human)
    return 0


def cmd_add(a, out: Output) -> int:
    text = _read_stdin() if a.text == "-" else a.text
    with _open_memory(a.pack, out) as mem:
        ch = mem.add(text, title=a.title or "", source=a.source or "", tags=_parse_tags(a.tags) or [], author=a.author)
        out.emit({**_change_dict(ch), "id": ch.ids[0]}, f"added entry {ch.ids[0]}")
    return 0


def cmd_edit(a, out: Output) -> int:
    if a.disable and a.enable:
        raise CliError("--disable and --enable exclude each other")
    fields: dict[str, Any] = {}
    if a.text is not None:
        fields["text"] = sys.stdin.read() if a.text == "-" else a.text
    if a.title is not None:
        fields["title"] = a.title
    if a.source is not None:
        fields["source"] = a.source
    if a.tags is not None:
        fields["tags"] = _parse_tags(a.tags)
    if a.disable:
        fields["status"] = "disabled"
    if a.enable:
        fields["status"] = "active"
    if not fields:
        raise CliError("nothing to change: give --text, --title, --source, --tags, --disable or --enable")
    from engine.store import EntryNotFound

    with _open_memory(a.pack, out) as mem:
        try:
            ch = mem.edit(a.id, author=a.author, **fields)
        except EntryNotFound:
            raise CliError(f"{a.pack}: no entry with id {a.id}") from None
        out.emit(_change_dict(ch), _describe_change(ch, sorted(fields)))
    return 0


def cmd_delete(a, out: Output) -> int:
    from engine.store import EntryNotFound

    with _open_memory(a.pack, out) as mem:
        try:
            ch = mem.delete(a.ids, author=a.author)
        except EntryNotFound as exc:
            raise CliError(f"{a.pack}: {exc}") from None
        out.emit(_change_dict(ch), _describe_change(ch))
    return 0


def _undo_redo(a, out: Output, *, undo: bool) -> int:
    with _open_memory(a.pack, out) as mem:
        ch = mem.undo(a.author) if undo else mem.redo(a.author)
        if ch is None:
            out.emit(_change_dict(ch), "nothing to undo" if undo else "nothing to redo")
        else:  # the change's own history rows say which fields it touched; read only for the human text
            out.emit(_change_dict(ch), lambda: f"{'Undid' if undo else 'Redid'}: "
                                               f"{_undone_what(ch.label, mem.pack.history(change_id=ch.change_id))}")
    return 0


def _undone_what(label: str, recs) -> str:
    """'edit entry 1' + the records of the undo -> 'edit of entry 1 (text)'."""
    from engine.store.wording import changed_fields

    what = label.split(" ", 1)[1] if label.startswith(("undo ", "redo ")) else label
    verb, _, rest = what.partition(" ")
    what = f"{verb} of {rest}" if rest else verb
    fields = sorted({f for r in recs for f in changed_fields(r.before, r.after)} - {"status"})
    return f"{what} ({', '.join(fields)})" if verb == "edit" and fields else what


def cmd_undo(a, out: Output) -> int:
    return _undo_redo(a, out, undo=True)


def cmd_redo(a, out: Output) -> int:
    return _undo_redo(a, out, undo=False)


def cmd_history(a, out: Output) -> int:
    from engine.store.wording import describe_history

    with _open_pack(a.pack) as pack:
        recs = pack.history(entry_id=a.id, limit=a.limit)
        data = {"history": [r.to_dict() for r in recs]}

        def human() -> str:
            lines = []
            for r in recs:
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.time))
                who = r.author or "-"
                lines.append(f"{when}  change {r.change_id:>5}  entry {r.entry_id:>7}  {who:<10} {describe_history(r)}")
            return "\n".join(lines) or "(no history)"

        out.emit(data, human)
    return 0


def cmd_search(a, out: Output) -> int:
    if not a.query.strip():
        raise CliError("empty query")
    if a.text:
        with _open_pack(a.pack) as pack:
            ranked = pack.fts(a.query, limit=a.k)
            entries = {e.id: e for e in pack.get_many([i for i, _ in ranked])}
            results = [
                {"id": i, "title": entries[i].title, "text": entries[i].text, "source": entries[i].source, "score": round(float(s), 6)}
                for i, s in ranked
                if i in entries
            ]
    else:
        with _open_memory(a.pack, out, trust_keys=not a.reencode_untrusted) as mem:
            results = [h.to_dict() for h in mem.search(a.query, k=a.k)]

    def human() -> str:
        return "\n".join(f"{r['score']:8.4f} {r['id']:>8}  {_one_line(r['text'])}" for r in results) or "(no results)"

    out.emit({"query": a.query, "mode": "text" if a.text else "vector", "results": results}, human)
    return 0


def cmd_export(a, out: Output) -> int:
    dest = Path(a.out)
    if dest.suffix.lower() not in (".jsonl", ".csv"):
        raise CliError(f"{a.out}: export format must be .jsonl or .csv")
    if dest.exists() and not a.force:
        raise CliError(f"{a.out}: already exists (use --force to overwrite)")
    if dest.is_dir():
        raise CliError(f"{a.out}: is a folder; give a file name ending in .jsonl or .csv")
    if not dest.parent.is_dir():  # a typo in the folder should not create a tree of folders
        raise CliError(f"{a.out}: {dest.parent} is not a folder" if dest.parent.exists()
                       else f"{a.out}: no such folder {dest.parent}")
    with _open_pack(a.pack) as pack:
        try:
            n = pack.export(dest)
        except OSError as exc:  # unwritable folder, full disk: the pack is only read, nothing to undo
            raise CliError(f"{a.out}: cannot write the export ({exc.strerror or exc})") from None
        out.emit({"out": str(dest), "entries": n}, f"exported {n:,} entries to {dest}")
    return 0


def cmd_stats(a, out: Output) -> int:
    from engine.memory import index_dir_for

    with _open_pack(a.pack) as pack:
        active = pack.count("active")
        disabled = pack.count("disabled")
        data = {
            "pack": str(pack.path),
            "name": pack.name,
            "entries": active + disabled,
            "active": active,
            "disabled": disabled,
            "content_version": pack.content_version,
            "schema_version": pack.schema_version,
            "encoder": pack.encoder.to_dict() if pack.encoder else None,
            "stale_vectors": len(pack.stale_vector_ids()),
            "index_cache": str(index_dir_for(pack.path)) if index_dir_for(pack.path).exists() else None,
            "file_bytes": pack.path.stat().st_size,
        }
        enc = pack.encoder.describe() if pack.encoder else "(none yet)"  # read while the pack is open

    def human() -> str:
        return "\n".join(
            [
                f"pack:      {data['name']} ({data['pack']})",
                f"entries:   {data['entries']:,} ({active:,} active, {disabled:,} disabled)",
                f"encoder:   {enc}",
                f"version:   content {data['content_version']}, schema {data['schema_version']}",
                f"vectors:   {data['stale_vectors']:,} missing or stale",
            ]
        )

    out.emit(data, human)
    return 0


def cmd_check(a, out: Output) -> int:
    from engine.check import check_pack

    report = check_pack(Path(a.pack), repair=a.repair, full=a.full, on_message=out.info)

    def human() -> str:
        lines = ["ok" if report["ok"] else f"{len(report['problems'])} problem(s):"]
        lines += [f"  - {p}" for p in report["problems"]]
        lines += [f"  repaired: {r}" for r in report.get("repaired", [])]
        lines += [f"  not repaired: {r}" for r in report.get("not_repaired", [])]
        return "\n".join(lines)

    out.emit(report, human)
    return 0 if report["ok"] or a.repair and report.get("ok_after_repair") else 1


def cmd_reencode(a, out: Output) -> int:
    from engine.check import reencode_pack

    bar = ProgressBar("re-encode", enabled=not a.json and not a.quiet)
    res = reencode_pack(Path(a.pack), progress=bar, on_message=out.info)
    bar.close()
    out.emit(res, f"re-encoded {res['entries']:,} entries with {res['encoder']}")
    return 0


def cmd_demo(a, out: Output) -> int:
    from engine.demo import ensure_demo_workspace

    bar = ProgressBar("building demo memories", enabled=not a.json and not a.quiet)
    ws = ensure_demo_workspace(progress=bar)
    bar.close()
    from engine.memory import Memory

    results = {}
    for pack_path in ws["packs"]:
        with Memory.open(pack_path, on_message=out.info) as mem:
            q = a.query or "What is the capital of Japan?"
            results[Path(pack_path).stem] = [h.to_dict() for h in mem.search(q, k=3)]

    def human() -> str:
        lines = [f"demo workspace: {ws['folder']}"]
        for name, hits in results.items():
            lines.append(f"\n{name}:")
            lines += [f"  {h['score']:.3f}  {h['text']}" for h in hits]
        lines.append("\nTry: plugmem search " + ws["packs"][0] + ' "boiling point of iron" -k 5')
        return "\n".join(lines)

    out.emit({"workspace": ws, "results": results}, human)
    return 0


# ---------------------------------------------------------------------------- plug-in memory (issue 3)
def _model_errors() -> tuple[type[BaseException], ...]:
    from engine.evaluate import EvalDataError
    from engine.explain import PredictError
    from engine.mechanisms.dpm.train_branch import TrainDataError
    from engine.mechanisms.dpm import DPMError

    return (PredictError, DPMError, EvalDataError, TrainDataError)


def _branch_dir(a, needs: str, hint: str = ""):
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


def _load_predictor(a, out: Output, modes: Sequence[str]):
    """The reader (--reader) and, when a mode needs it, the DPM branch (--branch, else the shipped one)."""
    from engine.explain import Predictor
    from engine.session import open_session

    branch_dir = None
    if "dpm" in modes:
        branch_dir = _branch_dir(a, "mode dpm needs", " (train one with `plugmem train-branch`), or use --mode context")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # one-line errors, clean --json output
    except ImportError:  # pragma: no cover
        pass
    # entry_states: entries read in an earlier run are not read again
    session = open_session(a.reader, branch=branch_dir, entry_states=True)
    return Predictor.from_session(session)


def _open_memories(paths: Sequence[str] | None, out: Output, *, trust_keys: bool = True) -> list:
    mems = []
    try:
        for p in paths or []:
            mems.append(_open_memory(p, out, trust_keys=trust_keys))
    except BaseException:
        for m in mems:
            m.close()
        raise
    return mems


def _mode_help(memory_only: bool = False) -> str:
    from engine.mechanisms import modes

    return ", ".join(f"{m.name} ({m.brief})" for m in modes() if not (memory_only and m.name == "none"))


def _modes(arg: str) -> list[str]:
    from engine.explain import MODES

    modes = [m.strip() for m in arg.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if not modes or bad:
        raise CliError(f"--mode {arg!r}: choose from {', '.join(MODES)} (several separated by commas)")
    return modes


def _pct(x: float | None) -> str:
    return "   -  " if x is None else f"{100 * x:5.1f}%"


def _check_plugin_args(a) -> None:
    """Fail fast (before the reader loads) on a --plugin folder that is missing or is no plugin."""
    from engine.mechanisms.plugins.mapping import read_plugin_config

    for d in a.plugin or []:
        if d == "auto":
            if not a.memory:
                raise CliError("--plugin auto uses the plugin beside each --memory PACK: give --memory PACK")
            continue
        if not Path(d).is_dir():
            raise CliError(f"--plugin {d}: no such plugin folder (train one with `plugmem map-tune PACK`)")
        read_plugin_config(d)


def _load_plugins(a, reader, mems: Sequence, out: Output) -> list:
    """The knowledge plugins of ``--plugin DIR`` (repeatable) and ``--plugin auto`` for ``reader``.

    ``auto``: the plugin beside each --memory PACK (``<pack>.plugin``), where one exists,
    checked against that pack's entities. An explicit folder must match the entity set
    of one of the plugged packs (any, with no pack plugged); another reader's plugin,
    or one made for another entity set, is refused (PluginError: exit 2).
    """
    from engine.mechanisms.plugins.errors import EmbeddingError, PluginError
    from engine.mechanisms.plugins.mapping import default_plugin_dir, load_plugin

    plugins, seen = [], set()
    for d in a.plugin or []:
        if d == "auto":
            found = 0
            for m in mems:
                folder = default_plugin_dir(m.pack.path)
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


def _injected_lines(rec) -> list[str]:
    if not rec.plugins:
        return []
    lines = [f"plugins: {', '.join(rec.plugins)}", f"without plugins:{rec.answer_without_plugins}"]
    if rec.injected:
        lines.append(f"injected ({len(rec.injected)}):  loo Δlogp")
        for i in rec.injected:
            d = "    -  " if i.loo_delta is None else f"{i.loo_delta:+7.3f}"
            lines.append(f"  {d}  {i.mention!r} -> {i.entity} (#{i.entity_id}, {i.plugin})")
    else:
        lines.append("injected: no entity of the plugins is mentioned in the prompt")
    return lines


def cmd_predict(a, out: Output) -> int:
    if not a.prompt.strip():
        raise CliError("the prompt is empty: give the start of a sentence for the model to complete")
    modes = _modes(a.mode)
    if len(modes) != 1:
        raise CliError("predict takes one --mode")
    _check_plugin_args(a)
    mems = _open_memories(a.memory, out, trust_keys=not a.reencode_untrusted)
    try:
        if not mems and modes[0] == "dpm":
            modes = ["none"]  # nothing plugged: the bare reader, no branch needed
        try:
            predictor = _load_predictor(a, out, modes)
            plugins = _load_plugins(a, predictor.reader, mems, out)
            rec = predictor.predict(a.prompt, mems, mode=modes[0], k=a.k, max_new_tokens=a.max_new_tokens,
                                    explain=not a.no_explain, plugins=plugins)
        except _model_errors() as exc:
            raise CliError(str(exc)) from None
    finally:
        for m in mems:
            m.close()

    def human() -> str:
        packs = ", ".join(rec.packs) or "none plugged"
        lines = [f"answer ({rec.mode}; {packs}):{rec.answer}", f"without memory:{rec.answer_without_memory}"]
        lines += _injected_lines(rec)
        if rec.retrieved:
            lines.append(f"retrieved ({len(rec.retrieved)}):    score  weight  loo Δlogp")
            for r in rec.retrieved:
                w = "   -  " if r.weight is None else f"{r.weight:6.3f}"
                d = "    -  " if r.loo_delta is None else f"{r.loo_delta:+7.3f}"
                lines.append(f"  {r.pack}#{r.id:<7} {r.score:6.3f}  {w}  {d}  {_one_line(r.text, 90)}")
        lines.append(f"({rec.seconds:.2f} s)")
        return "\n".join(lines)

    out.emit(rec.to_dict(), human)
    return 0


def _run_per_mode(a, out: Output, modes: Sequence[str], label: str, read_inputs: Callable[[], Any],
                  run: Callable[..., dict[str, Any]], interrupted: str = "") -> dict[str, dict[str, Any]] | None:
    """Open the --memory packs, read the inputs, load the reader (+ branch) and the plugins, then
    ``run(predictor, mems, inputs, mode, plugins, progress, should_stop)`` once per mode.

    Returns ``{mode: result}``, or None when Ctrl+C stopped it (the caller exits 130).
    """
    _check_plugin_args(a)
    stop = _StopFlag()
    mems = _open_memories(a.memory, out, trust_keys=not a.reencode_untrusted)
    results: dict[str, Any] = {}
    try:
        try:
            inputs = read_inputs()
            predictor = _load_predictor(a, out, modes if mems else [])
            plugins = _load_plugins(a, predictor.reader, mems, out)
            with stop:
                for mode in modes:
                    bar = ProgressBar(f"{label} {mode}", enabled=not a.json and not a.quiet)
                    try:
                        results[mode] = run(predictor, mems, inputs, mode, plugins, bar, stop)
                    finally:
                        bar.close()
        except _model_errors() as exc:
            raise CliError(str(exc)) from None
    except _job_cancelled() as exc:
        out.info(f"plugmem: interrupted{interrupted}: {exc}")
        return None
    finally:
        for m in mems:
            m.close()
    return results


def _report(results: dict[str, dict[str, Any]], modes: Sequence[str]) -> dict[str, Any]:
    """The first mode's figures, plus every mode's under ``by_mode`` when there are several."""
    data = dict(results[modes[0]])
    if len(modes) > 1:
        data["by_mode"] = results
    return data


def _plugins_line(data: dict[str, Any]) -> list[str]:
    return [f"knowledge plugins: {', '.join(data['plugins'])}"] if data.get("plugins") else []


def cmd_eval(a, out: Output) -> int:
    from engine.evaluate import evaluate_probes, read_probes

    modes = _modes(a.mode)

    def run(predictor, mems, probes, mode, plugins, bar, stop):
        return evaluate_probes(predictor, mems, probes, mode, k=a.k, limit=a.limit, paraphrases=not a.no_paraphrases,
                               progress=bar, should_stop=stop, plugins=plugins)

    results = _run_per_mode(a, out, modes, "eval", lambda: read_probes(a.probes), run)
    if results is None:
        return EXIT_INTERRUPTED
    data = _report(results, modes)

    def human() -> str:
        head = f"{'':<28}" + "".join(f"{m:>12}" for m in modes)
        rows = [f"probes: {data['n']} from {a.probes} (k={a.k})", *_plugins_line(data), head]
        labels = [("accuracy", "accuracy with memory"), ("accuracy_without_memory", "accuracy without memory")]
        if data.get("plugins"):
            labels = [("accuracy", "accuracy with memory+plugins"), ("accuracy_without_plugins", "accuracy without plugins"),
                      ("accuracy_without_memory", "accuracy with nothing")]
        labels += [("hit_at_k", f"retrieval hit@{a.k}"), ("paraphrase_accuracy", "paraphrases with memory")]
        for key, label in labels:
            rows.append(f"{label:<28}" + "".join(f"{_pct(results[m][key]):>12}" for m in modes))
        rows.append("by relation (accuracy with memory / without):")
        for rel in results[modes[0]]["by_relation"]:
            cells = "".join(
                f"{_pct(results[m]['by_relation'][rel]['accuracy']):>8} /{_pct(results[m]['by_relation'][rel]['accuracy_without_memory'])}"
                for m in modes
            )
            rows.append(f"  {rel:<26} n={results[modes[0]]['by_relation'][rel]['n']:<5}{cells}")
        return "\n".join(rows)

    out.emit(data, human)
    return 0


def cmd_eval_edits(a, out: Output) -> int:
    from engine.evaluate import evaluate_edits, read_edits, read_probes

    if not a.memory:
        raise CliError("eval-edits needs --memory PACK (the pack the edits apply to)")
    modes = _modes(a.mode)

    def read_inputs():
        return read_edits(a.edits), (read_probes(a.locality) if a.locality else [])

    def run(predictor, mems, inputs, mode, plugins, bar, stop):
        edits, locality = inputs
        return evaluate_edits(predictor, mems, edits, locality, mode, k=a.k, limit=a.limit,
                              locality_limit=a.locality_limit, progress=bar, should_stop=stop, plugins=plugins)

    results = _run_per_mode(a, out, modes, "edits", read_inputs, run, interrupted=" (edits undone)")
    if results is None:
        return EXIT_INTERRUPTED
    data = _report(results, modes)

    def human() -> str:
        rows = [f"edits: {data['n']} from {a.edits}; locality probes: {data['n_locality']} (k={a.k})",
                *_plugins_line(data), f"{'':<26}" + "".join(f"{m:>12}" for m in modes)]
        for key, label in [("efficacy_before", "efficacy before"), ("efficacy", "efficacy after"),
                           ("generalization_before", "paraphrases before"), ("generalization", "paraphrases after"),
                           ("locality", "locality (unchanged)"), ("edit_retrieved", "edited entry retrieved")]:
            rows.append(f"{label:<26}" + "".join(f"{_pct(results[m][key]):>12}" for m in modes))
        rows.append("pack restored (undo): " + ", ".join(f"{m}: {'yes' if results[m]['restored'] else 'NO'}" for m in modes))
        return "\n".join(rows)

    out.emit(data, human)
    return 0 if all(r["restored"] for r in results.values()) else 1


def cmd_prepare(a, out: Output) -> int:
    from engine.jobs.prepare_states import prepare_states

    _branch_dir(a, "prepare needs")
    missing = [p for p in a.memory if not Path(p).is_file()]
    if missing:
        raise CliError(f"{missing[0]}: no such memory pack")
    config = {"packs": list(a.memory), "reader": a.reader, "branch": a.branch, "batch": a.batch}
    res = _run_job("prepare", prepare_states, config, a, out)
    if res is None:
        return EXIT_INTERRUPTED
    out.emit(res, lambda: (f"{res['entries']:,} entries: {res['read']:,} read in {res['seconds']:.0f} s, "
                           f"{res['already']:,} already stored; store {res['store']} "
                           f"({res['store_entries']:,} entries, {res['store_bytes'] / 1e6:.1f} MB); "
                           f"{res['keys_encoded']:,} of {res['keys']:,} statement keys encoded"
                           + "".join(f"\n{p}: made by another key encoder, no statement keys kept"
                                     for p in res["keys_skipped_packs"])))
    return 0


def _job_cancelled() -> type[BaseException]:
    from engine.progress import JobCancelled

    return JobCancelled


def _run_job(label: str, job, config, a, out: Output):
    """Run an engine job here with a progress bar; Ctrl+C stops it at its last checkpoint.
    Returns its result, or None when it was interrupted (the message is printed)."""
    stop = _StopFlag()
    bar = ProgressBar(label, enabled=not a.json and not a.quiet)
    try:
        with stop:
            res = job(config, progress=bar, should_stop=stop)
    except _job_cancelled() as exc:
        bar.close()
        out.info(f"plugmem: interrupted: {exc}")
        return None
    except _model_errors() as exc:
        bar.close()
        raise CliError(str(exc)) from None
    bar.close()
    return res


def cmd_train_memory_reader(a, out: Output) -> int:
    from engine.mechanisms.dpm.train_branch import TrainMemoryReaderConfig, train_memory_reader

    cfg: dict[str, Any] = {"out": a.out, "data": a.data, "reader": a.reader}
    for name in ("steps", "batch", "lr", "layers", "heads", "head_dim", "k", "seed", "threads", "value_mode",
                 "value_space", "match", "p_absent", "checkpoint_every", "device"):
        v = getattr(a, name)
        if v is not None:
            cfg[name] = v
    try:
        config = TrainMemoryReaderConfig.from_dict(cfg)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    res = _run_job("train", train_memory_reader, config, a, out)
    if res is None:
        return EXIT_INTERRUPTED
    out.emit(res, lambda: (f"trained {res['steps_done']:,} steps in {res['seconds']:.0f} s; loss "
                           f"{res['initial_loss']:.3f} -> {res['final_loss']:.3f}; branch in {res['out']}"))
    return 0


# ---------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    from engine.check import KEY_SAMPLE

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print one JSON document")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress or notices on stderr")
    common.add_argument("--author", default=os.environ.get("PLUGMEM_AUTHOR") or _user(), help="name recorded in history")

    p = OneLineParser(prog="plugmem", description="PlugMem Studio: curate a language model's plug-in memory, headless.")
    p.add_argument("--version", action="version", version="plugmem 0.1.0")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def add(name: str, fn, help: str, aliases: Sequence[str] = ()) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, parents=[common], help=help, description=help, aliases=list(aliases))
        sp.set_defaults(fn=fn)
        return sp

    sp = add("init", cmd_init, "create an empty memory pack")
    sp.add_argument("pack")
    sp.add_argument("--name")

    sp = add("import", cmd_import, "import a corpus (JSONL, CSV, .txt/.md file or folder) into a pack; resumes an interrupted import")
    sp.add_argument("pack")
    sp.add_argument("paths", nargs="+", metavar="PATH")
    sp.add_argument("--name", help="pack name when it is created")
    sp.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                    help="build on Ray Data (pip install plugmem-studio[scale]): parse and encode on a cluster "
                         "('auto', 'ray://host:10001'), or on a local Ray sized to this machine without ADDRESS")
    sp.add_argument("--workers", type=int, help="with --ray: encoder actors (default: one per GPU, else per CPU)")
    sp.add_argument("--shard-size", type=int, help="with --ray: records per shard (default 512)")

    sp = add("list", cmd_list, "list entries (keyset paging with --after)")
    sp.add_argument("pack")
    sp.add_argument("--status", choices=["active", "disabled", "all"], default="all")
    sp.add_argument("--tag")
    sp.add_argument("--after", type=after_id, default=0, help="show entries with id greater than this")
    sp.add_argument("--limit", type=positive, default=50)

    sp = add("show", cmd_show, "show one entry")
    sp.add_argument("pack")
    sp.add_argument("id", type=entry_id)

    sp = add("add", cmd_add, "add an entry")
    sp.add_argument("pack")
    sp.add_argument("--text", required=True, help="the entry's text ('-' reads stdin)")
    sp.add_argument("--title")
    sp.add_argument("--source")
    sp.add_argument("--tags", help="comma-separated")

    sp = add("edit", cmd_edit, "edit an entry (text, title, source, tags, status)")
    sp.add_argument("pack")
    sp.add_argument("id", type=entry_id)
    sp.add_argument("--text", help="new text ('-' reads stdin)")
    sp.add_argument("--title")
    sp.add_argument("--source")
    sp.add_argument("--tags", help="comma-separated; replaces the tags")
    sp.add_argument("--disable", action="store_true")
    sp.add_argument("--enable", action="store_true")

    sp = add("delete", cmd_delete, "delete entries (undoable)")
    sp.add_argument("pack")
    sp.add_argument("ids", type=entry_id, nargs="+")

    sp = add("undo", cmd_undo, "undo the last change to the pack")
    sp.add_argument("pack")
    sp = add("redo", cmd_redo, "redo the last undone change")
    sp.add_argument("pack")

    sp = add("history", cmd_history, "history of the pack or of one entry")
    sp.add_argument("pack")
    sp.add_argument("id", type=entry_id, nargs="?")
    sp.add_argument("--limit", type=positive, default=50)

    def untrusted_arg(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--reencode-untrusted", action="store_true",
                        help="do not trust the pack's stored keys (a pack from elsewhere): encode every entry "
                             "from its text first and keep those keys")

    sp = add("search", cmd_search, "search a pack (semantic by default, --text for full-text)")
    sp.add_argument("pack")
    sp.add_argument("query")
    sp.add_argument("-k", type=positive, default=10)
    sp.add_argument("--text", action="store_true", help="full-text search (FTS5, bm25)")
    untrusted_arg(sp)

    sp = add("export", cmd_export, "export a pack to JSONL or CSV (lossless)")
    sp.add_argument("pack")
    sp.add_argument("out")
    sp.add_argument("--force", action="store_true")

    sp = add("stats", cmd_stats, "counts and metadata of a pack")
    sp.add_argument("pack")

    sp = add("check", cmd_check, "check a pack's database, full-text index, vectors and index cache")
    sp.add_argument("pack")
    sp.add_argument("--repair", action="store_true", help="rebuild what is derived (FTS, vectors, index)")
    sp.add_argument("--full", action="store_true",
                    help=f"re-encode every key to compare it with its text (default: a sample of {KEY_SAMPLE})")

    sp = add("reencode", cmd_reencode, "re-encode a pack's keys with the current encoder (adopt a pack from "
                                       "another encoder, or stop trusting keys made elsewhere)")
    sp.add_argument("pack")

    sp = add("demo", cmd_demo, "build the bundled demo memories (once) and run a sample search")
    sp.add_argument("query", nargs="?")

    # plug-in memory (issue 3)
    def model_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--reader", help="reader model folder (default: the bundled SmolLM2-135M-Instruct)")
        sp.add_argument("--branch", help="trained DPM branch folder (default: the shipped one, for the default reader)")

    def plugin_arg(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--plugin", action="append", metavar="DIR",
                        help="plug a knowledge plugin folder (repeat for several); 'auto': the plugin beside "
                             "each --memory PACK (PACK.plugin), where there is one")

    sp = add("predict", cmd_predict, "answer a prompt with the plugged memories and explain the answer")
    sp.add_argument("prompt")
    sp.add_argument("--memory", action="append", metavar="PACK", help="plug a pack (repeat for several)")
    sp.add_argument("--mode", default="dpm", help=_mode_help())
    sp.add_argument("-k", type=retrieved, default=5, help="entries retrieved (merged over the packs; at most 100)")
    sp.add_argument("--max-new-tokens", type=answer_tokens, default=8)
    sp.add_argument("--no-explain", action="store_true", help="skip the leave-one-out pass")
    model_args(sp)
    plugin_arg(sp)
    untrusted_arg(sp)

    sp = add("prepare", cmd_prepare, "read every entry of packs through the reader once and keep its states on "
                                     "disk: the first dpm answer that retrieves them is faster (resumable)")
    sp.add_argument("memory", nargs="+", metavar="PACK")
    sp.add_argument("--batch", type=positive, default=32, help="entries read together")
    model_args(sp)

    sp = add("eval", cmd_eval, "fact-probe accuracy with and without memory, per relation, retrieval hit@k")
    sp.add_argument("probes", metavar="PROBES.jsonl")
    sp.add_argument("--memory", action="append", metavar="PACK")
    sp.add_argument("--mode", default="dpm", help=_mode_help() + "; or several: dpm,context")
    sp.add_argument("-k", type=retrieved, default=5)
    sp.add_argument("--limit", type=positive, help="only the first N probes")
    sp.add_argument("--no-paraphrases", action="store_true")
    model_args(sp)
    plugin_arg(sp)
    untrusted_arg(sp)

    sp = add("eval-edits", cmd_eval_edits, "edit entries, measure efficacy / paraphrases / locality, then undo the edits")
    sp.add_argument("edits", metavar="EDITS.jsonl")
    sp.add_argument("--memory", action="append", metavar="PACK")
    sp.add_argument("--locality", metavar="PROBES.jsonl", help="probes about other subjects (answers must not change)")
    sp.add_argument("--locality-limit", type=positive, default=200)
    sp.add_argument("--mode", default="dpm", help=_mode_help(memory_only=True) + "; or both: dpm,context")
    sp.add_argument("-k", type=retrieved, default=5)
    sp.add_argument("--limit", type=positive, help="only the first N edits")
    model_args(sp)
    plugin_arg(sp)
    untrusted_arg(sp)

    # train-branch: it trains the memory branch, not the reader; the old name stays an alias.
    sp = add("train-branch", cmd_train_memory_reader,
             "train the DPM memory branch (resumes from OUT/checkpoint.pt; Ctrl+C stops at a checkpoint)",
             aliases=["train-memory-reader"])
    sp.add_argument("--data", action="append", required=True, metavar="JSONL", help="text/prompt/answer facts (repeat)")
    sp.add_argument("--out", required=True, metavar="DIR")
    sp.add_argument("--reader", help="reader model folder (default: the bundled SmolLM2-135M-Instruct)")
    for name, typ in (("steps", positive), ("batch", positive), ("lr", float), ("layers", positive),
                      ("heads", positive), ("head-dim", positive), ("k", positive), ("seed", non_negative),
                      ("threads", positive), ("p-absent", float), ("checkpoint-every", positive)):
        sp.add_argument(f"--{name}", type=typ)
    sp.add_argument("--value-mode", choices=["tokens", "pooled"])
    sp.add_argument("--value-space", choices=["embedding", "unembedding", "both"],
                    help="value tokens as input embeddings, or as the directions that raise exactly their logits")
    sp.add_argument("--match", choices=["cosine", "learned"], help="how prompt states find entry tokens (default cosine)")
    sp.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: CUDA when present)")
    from engine.plugins.cli import register as register_plugins

    register_plugins(sub, parents=[common])  # triples, entities, embeddings, train-transe, map-tune
    from engine.evaluate.cli import register as register_probes

    register_probes(sub, parents=[common])  # probes make
    return p


def _user() -> str | None:
    try:
        import getpass

        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name is fine
        return None


class _StopFlag:
    """should_stop() for in-process jobs: Ctrl+C sets it instead of killing mid-transaction."""

    def __init__(self) -> None:
        self.stop = False
        self._old = None

    def __call__(self) -> bool:
        return self.stop

    def __enter__(self) -> "_StopFlag":
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


if __name__ == "__main__":
    # Under `python -m engine.cli` this file runs twice, as __main__ and as engine.cli; the
    # plugin commands raise engine.cli.CliError, which __main__'s handler would not catch.
    from engine.cli import main as _imported_main

    sys.exit(_imported_main())
