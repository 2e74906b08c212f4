"""The pack commands: `plugmem init`, `import`, `list`, `show`, `add`, `edit`, `delete`,
`undo`, `redo`, `history`, `search`, `export`, `stats`, `check`, `reencode`."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from engine.cli.common import (EXIT_BAD_INPUT, EXIT_INTERRUPTED, CliError, Output, ProgressBar, StopFlag,
                               add_command, add_untrusted_arg, one_line, open_memory, open_pack, read_stdin)
from engine.cli_args import after_id, entry_id, positive
from engine.terminal import terminal_safe


def _entry_line(e) -> str:
    from engine.store.examples import EXAMPLE_TAG

    title = f"[{e.title}] " if e.title else ""
    status = "" if e.status == "active" else f" ({e.status})"
    kind = "example  " if EXAMPLE_TAG in e.tags else ""
    return f"{e.id:>8}  {kind}{title}{one_line(e.text)}{status}"


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


def _parse_tags(s: str | None) -> list[str] | None:
    if s is None:
        return None
    return [t.strip() for t in s.split(",") if t.strip()]


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
    if a.as_examples:
        if a.ray is not None:
            raise CliError("--as-examples does not go with --ray (a probe file is small: import it without Ray)")
        cfg["as_examples"] = True
    if a.ray is not None:
        job, cfg = _ray_import_job(a, cfg)
    elif a.workers or a.shard_size:
        raise CliError("--workers and --shard-size go with --ray")
    stop = StopFlag()
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
            lines = [f"added {res['entries_added']:,} entries in {res['seconds']:.1f} s ({_rate(res['entries_per_second'])}/s)"]
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
    with open_pack(a.pack) as pack:
        status = None if a.status == "all" else a.status
        entries = pack.page(a.after, a.limit, status=status, tag=a.tag)
        data = {"entries": [e.to_dict() for e in entries], "next_after": entries[-1].id if len(entries) == a.limit else None}
        out.emit(data, lambda: "\n".join(_entry_line(e) for e in entries) or "(no entries)")
    return 0


def cmd_show(a, out: Output) -> int:
    from engine.store import EntryNotFound

    with open_pack(a.pack) as pack:
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
    text = read_stdin() if a.text == "-" else a.text
    with open_memory(a.pack, out) as mem:
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

    with open_memory(a.pack, out) as mem:
        try:
            ch = mem.edit(a.id, author=a.author, **fields)
        except EntryNotFound:
            raise CliError(f"{a.pack}: no entry with id {a.id}") from None
        out.emit(_change_dict(ch), _describe_change(ch, sorted(fields)))
    return 0


def cmd_delete(a, out: Output) -> int:
    from engine.store import EntryNotFound

    with open_memory(a.pack, out) as mem:
        try:
            ch = mem.delete(a.ids, author=a.author)
        except EntryNotFound as exc:
            raise CliError(f"{a.pack}: {exc}") from None
        out.emit(_change_dict(ch), _describe_change(ch))
    return 0


def _undo_redo(a, out: Output, *, undo: bool) -> int:
    with open_memory(a.pack, out) as mem:
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

    with open_pack(a.pack) as pack:
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
        with open_pack(a.pack) as pack:
            ranked = pack.fts(a.query, limit=a.k)
            entries = {e.id: e for e in pack.get_many([i for i, _ in ranked])}
            results = [
                {"id": i, "title": entries[i].title, "text": entries[i].text, "source": entries[i].source, "score": round(float(s), 6)}
                for i, s in ranked
                if i in entries
            ]
    else:
        with open_memory(a.pack, out, trust_keys=not a.reencode_untrusted) as mem:
            results = [h.to_dict() for h in mem.search(a.query, k=a.k)]

    def human() -> str:
        return "\n".join(f"{r['score']:8.4f} {r['id']:>8}  {one_line(r['text'])}" for r in results) or "(no results)"

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
    with open_pack(a.pack) as pack:
        try:
            n = pack.export(dest)
        except OSError as exc:  # unwritable folder, full disk: the pack is only read, nothing to undo
            raise CliError(f"{a.out}: cannot write the export ({exc.strerror or exc})") from None
        out.emit({"out": str(dest), "entries": n}, f"exported {n:,} entries to {dest}")
    return 0


def _rate(per_s: float) -> str:
    """'170' or '0.16': a small import (mostly the encoder's start) does not read '0/s'."""
    return f"{per_s:,.0f}" if per_s >= 10 else f"{per_s:.2g}"


def cmd_stats(a, out: Output) -> int:
    from engine.memory import index_dir_for

    with open_pack(a.pack) as pack:
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


# ---------------------------------------------------------------------------- parsers
def add_parsers(sub, common: argparse.ArgumentParser) -> None:
    from engine.check import KEY_SAMPLE

    def add(name: str, fn, help: str) -> argparse.ArgumentParser:
        return add_command(sub, [common], name, fn, help)

    sp = add("init", cmd_init, "create an empty memory pack")
    sp.add_argument("pack")
    sp.add_argument("--name")

    sp = add("import", cmd_import, "import a corpus (JSONL, CSV, .txt/.md file or folder) into a pack; resumes an interrupted import")
    sp.add_argument("pack")
    sp.add_argument("paths", nargs="+", metavar="PATH")
    sp.add_argument("--name", help="pack name when it is created")
    sp.add_argument("--as-examples", action="store_true",
                    help="the files are probe files (JSONL: prompt, answer[, paraphrases]): add each wording "
                         "as a worked example (entry tagged 'example': the question followed by its answer)")
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

    sp = add("search", cmd_search, "search a pack (semantic by default, --text for full-text)")
    sp.add_argument("pack")
    sp.add_argument("query")
    sp.add_argument("-k", type=positive, default=10)
    sp.add_argument("--text", action="store_true", help="full-text search (FTS5, bm25)")
    add_untrusted_arg(sp)

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

