"""`plugmem patch create|list|show|apply|remove` (weight patches, issue 18) and
`plugmem compare EDITS.jsonl --memory PACK` (memory edits and weight patches side by side).

The workspace's active patches are a list in ``<user data>/patches/active.json`` (folders,
in the order they are applied): ``patch apply`` checks that a patch fits on top of the
active ones on the reader before adding it; ``patch remove`` takes it out and re-checks the
rest (those made on top of it no longer fit and are taken out too, named).
``--patch DIR`` (repeatable; ``active``: the workspace's list) on predict, eval and
eval-edits applies patches for that one command.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

from engine.cli.common import (EXIT_INTERRUPTED, CliError, ProgressBar, StopFlag, add_command, job_cancelled,
                               load_plugins, load_predictor, model_errors, open_memories, open_pack, pct)
from engine.cli_args import positive

ACTIVE_FILE = "active.json"


def patches_dir() -> Path:
    from engine.resources import user_data_dir

    return user_data_dir() / "patches"


def active_folders() -> list[Path]:
    """The workspace's active patches, in order (a missing list is an empty one)."""
    p = patches_dir() / ACTIVE_FILE
    if not p.is_file():
        return []
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise _cli_error(f"{p} is unreadable ({exc}); delete it to start with no active patch")
    if not isinstance(data, dict) or not isinstance(data.get("active"), list) or \
            not all(isinstance(x, str) for x in data["active"]):
        raise _cli_error(f"{p}: field 'active' must be a list of patch folders; delete the file to start afresh")
    return [Path(x) for x in data["active"]]


def _write_active(folders: Sequence[Path]) -> None:
    d = patches_dir()
    d.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=ACTIVE_FILE + ".", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"active": [str(Path(x).resolve()) for x in folders]}, f, indent=2)
    os.replace(tmp, d / ACTIVE_FILE)


def _cli_error(msg: str) -> CliError:
    return CliError(msg)


def patch_folders(arg: Sequence[str] | None) -> list[Path]:
    """``--patch`` values as folders, ``active`` expanded to the workspace's list."""
    out: list[Path] = []
    for d in arg or []:
        out += active_folders() if d == "active" else [Path(d)]
    return out


def check_patch_args(a) -> None:
    """Fail fast (before the reader loads) on a --patch folder whose config is bad."""
    from engine.mechanisms.weight_patches.io import read_config

    for folder in patch_folders(getattr(a, "patch", None)):
        read_config(folder)


def apply_patch_args(a, reader) -> list[str]:
    """Load the --patch folders for ``reader`` and apply them for the rest of this command
    (the process ends with it); returns their names. A refused one applies none."""
    from engine.mechanisms.weight_patches import PatchStack, load

    folders = patch_folders(getattr(a, "patch", None))
    if not folders:
        return []
    patches = [load(f, reader) for f in folders]
    stack = PatchStack.of(reader)
    reader.fingerprint  # noqa: B018 - computed on the unpatched weights
    try:
        for p in patches:
            stack.apply(p)
    except BaseException:
        stack.clear()
        raise
    return [p.name for p in patches]


def add_patch_arg(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--patch", action="append", metavar="DIR",
                    help="apply a weight patch folder for this command (repeat for several, applied in that "
                         "order); 'active': the patches made active with `plugmem patch apply`")


# ---------------------------------------------------------------------------- facts
def _facts(a) -> list:
    from engine.jsonl import JsonlError, read_jsonl
    from engine.mechanisms.weight_patches import Fact, PatchError

    facts = []
    if a.facts:
        try:
            for n, rec in read_jsonl(a.facts):
                where = f"{a.facts}:{n}"
                answer = rec.get("new", rec.get("answer"))
                for key, v in (("prompt", rec.get("prompt")), ("new", answer)):
                    if not isinstance(v, str) or not v.strip():
                        raise PatchError(f"{where}: field {key!r} must be a non-empty string")
                for key in ("paraphrase", "old"):
                    if rec.get(key) is not None and not isinstance(rec[key], str):
                        raise PatchError(f"{where}: field {key!r} must be a string")
                facts.append(Fact(rec["prompt"], answer, paraphrase=rec.get("paraphrase") or "",
                                  old=rec.get("old") or "", source=where))
        except JsonlError as exc:
            raise PatchError(str(exc)) from None
        if not facts:
            raise PatchError(f"{a.facts}: no facts in the file")
    source = ""
    prompt, answer = a.prompt, a.answer
    if a.from_entry:
        source, text = _entry_text(a.from_entry)
        if prompt is None or answer is None:
            p, ans = split_statement(text)
            prompt = p if prompt is None else prompt
            answer = ans if answer is None else answer
    if prompt is not None or answer is not None:
        facts.append(Fact(prompt or "", answer or "", paraphrase=a.paraphrase or "", source=source or "command line"))
    if not facts:
        raise _cli_error("patch create needs a fact: --prompt and --answer, --from-entry PACK:ID, or --facts FILE.jsonl")
    return facts


def _entry_text(spec: str) -> tuple[str, str]:
    pack, sep, ident = spec.rpartition(":")
    if not sep or not pack or not ident.isdigit():
        raise _cli_error(f"--from-entry {spec!r}: write PACK:ID (for example demo.plugmem:12)")
    with open_pack(pack) as p:
        e = p.get(int(ident))
    return f"{Path(pack).name}:{ident}", e.text


_VERBS = (" is ", " are ", " was ", " were ", " has ", " have ", " in ")


def split_statement(text: str) -> tuple[str, str]:
    """A prompt and answer from an entry's sentence: cut after its last copula ("The capital
    of Japan is" / "Tokyo"), else before its last word; the final full stop dropped."""
    t = text.strip().rstrip(".!").strip()
    cut = max((t.rfind(v) + len(v) - 1 for v in _VERBS if t.rfind(v) > 0), default=-1)
    if cut <= 0:
        cut = t.rfind(" ")
    if cut <= 0:
        raise _cli_error(f"cannot split {text[:80]!r} into a prompt and an answer: give --prompt and --answer")
    return t[:cut].strip(), t[cut:].strip()


# ---------------------------------------------------------------------------- commands
def cmd_patch_create(a, out) -> int:
    from engine.mechanisms.weight_patches import PatchConfig, io, make_patch, make_sequential
    from engine.probe_files import read_probes
    from engine.reader import load_reader

    facts = _facts(a)
    base = PatchConfig()
    given = {"layers": a.layers, "targets": a.targets, "delta": a.delta, "lr": a.lr, "steps": a.steps,
             "locality_weight": a.locality_weight, "context_prefixes": a.context_prefixes, "optimizer": a.optimizer,
             "neurons": a.neurons, "preserve": a.preserve}
    cfg = PatchConfig(**{**base.__dict__, **{k: v for k, v in given.items() if v is not None}})
    cfg.validate("patch create")
    locality = [p.prompt for p in read_probes(a.locality)][:200] if a.locality else []
    outdir = Path(a.out)
    if outdir.exists() and any(outdir.iterdir()) and not a.force:
        raise _cli_error(f"{outdir} exists and is not empty: choose another --out, or --force to overwrite")
    reader = load_reader(a.reader)
    stop = StopFlag()
    bar = ProgressBar("patch", enabled=not a.json and not a.quiet)
    known = "skip" if a.skip_known else "refuse"
    try:
        with stop:
            if a.sequential:
                made = make_sequential(reader, facts, cfg, prefix=outdir.name, known=known, progress=bar,
                                       should_stop=stop, locality=locality)
            else:
                made = [make_patch(reader, facts, cfg, name=outdir.name, locality=locality, known=known,
                                   progress=bar, should_stop=stop)]
    except job_cancelled() as exc:
        bar.close()
        out.info(f"plugmem: interrupted: {exc}")
        return EXIT_INTERRUPTED
    bar.close()
    folders = []
    for i, p in enumerate(made):
        folders.append(io.save(p, outdir if len(made) == 1 and not a.sequential else outdir / f"{i + 1:02d}"))
    data = {"out": [str(f) for f in folders], "patches": [dict(p.summary(), folder=str(f)) for p, f in zip(made, folders)]}

    def human() -> str:
        lines = []
        for p, f in zip(made, folders):
            m = p.metrics
            para = "-" if m.get("paraphrase") is None else f"{100 * m['paraphrase']:.0f}%"
            lines.append(f"patch {p.name} written to {f}: {len(p.facts)} fact(s), {len(p.deltas)} tensor(s), "
                         f"{p.size_bytes / 1e6:.1f} MB; efficacy {100 * m['efficacy']:.0f}%, paraphrases {para}; "
                         f"{m['steps']} steps, loss {m['loss_first']:.2f} -> {m['loss_last']:.2f}, {m['train_seconds']:.1f} s")
        lines.append(f"apply it with `plugmem patch apply {folders[0]}` or `--patch {folders[0]}`")
        return "\n".join(lines)

    out.emit(data, human)
    return 0


def cmd_patch_list(a, out) -> int:
    from engine.mechanisms.weight_patches.io import is_patch_folder, read_config

    roots = [Path(d) for d in a.dirs] if a.dirs else [patches_dir()]
    active = [f.resolve() for f in active_folders()]
    found = []
    for root in roots:
        if not root.is_dir():
            if a.dirs:
                raise _cli_error(f"{root}: no such folder")
            continue
        cands = [root] if is_patch_folder(root) else sorted(p for p in root.rglob("config.json"))
        for c in cands:
            folder = c if c.is_dir() else c.parent
            if not is_patch_folder(folder):
                continue
            meta = read_config(folder)
            found.append({"folder": str(folder), "name": meta["name"], "facts": len(meta["facts"]),
                          "delta": meta["config"]["delta"], "tensors": len(meta["tensors"]),
                          "when": meta.get("when", ""), "who": meta.get("who", ""),
                          "active": folder.resolve() in active,
                          "order": active.index(folder.resolve()) + 1 if folder.resolve() in active else None,
                          "efficacy": meta.get("metrics", {}).get("efficacy")})
    missing = [str(f) for f in active if not any(Path(x["folder"]).resolve() == f for x in found)]

    def human() -> str:
        if not found:
            return f"no weight patches in {', '.join(map(str, roots))}"
        lines = [f"{'':3}{'name':<24} {'facts':>5} {'delta':>8} {'tensors':>7}  {'made':<25} folder"]
        for x in found:
            mark = f"{x['order']}." if x["active"] else " "
            lines.append(f"{mark:<3}{x['name'][:24]:<24} {x['facts']:>5} {x['delta']:>8.0e} {x['tensors']:>7}  "
                         f"{x['when'][:25]:<25} {x['folder']}")
        lines.append(f"{sum(x['active'] for x in found)} active (numbered in the order they apply)")
        return "\n".join(lines)

    out.emit({"patches": found, "active": [str(f) for f in active], "active_elsewhere": missing}, human)
    return 0


def cmd_patch_show(a, out) -> int:
    from engine.mechanisms.weight_patches.io import read_config

    meta = read_config(a.folder)
    data = {k: v for k, v in meta.items() if not k.startswith("_")}
    data["folder"] = str(a.folder)
    data["bytes"] = sum(f.stat().st_size for f in Path(a.folder).iterdir() if f.is_file())

    def human() -> str:
        c = meta["config"]
        m = meta.get("metrics", {})
        lines = [f"weight patch {meta['name']} ({a.folder}, {data['bytes'] / 1e6:.1f} MB)",
                 f"reader: {meta['reader'].get('name', '?')} ({str(meta['reader'].get('weights_sha256', ''))[:12]}…)",
                 f"made by {meta.get('who') or '?'} at {meta.get('when') or '?'}"
                 + (f", on top of {', '.join(meta['on_top_of'])}" if meta.get("on_top_of") else ""),
                 f"layers {c['layers']} {', '.join(c['targets'])}; delta {c['delta']:g}, lr {c['lr']:g}, "
                 f"steps {c['steps']}, locality weight {c['locality_weight']:g}, "
                 f"context prefixes {c.get('context_prefixes', 0)}, optimizer {c.get('optimizer', 'adam')}, "
                 f"neurons per fact {c.get('neurons', 0) or 'all'}, preserve {c.get('preserve', 0.0):g}",
                 "metrics: " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in m.items()),
                 f"facts ({len(meta['facts'])}):"]
        for f in meta["facts"]:
            src = f"  [{f['source']}]" if f.get("source") else ""
            lines.append(f"  {f['prompt']} -> {f['answer']}{src}")
        return "\n".join(lines)

    out.emit(data, human)
    return 0


def _fit(reader, folders: Sequence[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Apply ``folders`` in order to ``reader``: (those that fit, [(refused, why)]); the reader
    is given back unpatched."""
    from engine.mechanisms.weight_patches import PatchError, PatchStack, load

    stack = PatchStack.of(reader)
    kept, refused = [], []
    try:
        for f in folders:
            try:
                stack.apply(load(f, reader))
                kept.append(f)
            except PatchError as exc:
                refused.append((f, str(exc)))
    finally:
        stack.clear()
    return kept, refused


def cmd_patch_apply(a, out) -> int:
    from engine.mechanisms.weight_patches import PatchError
    from engine.mechanisms.weight_patches.io import read_config
    from engine.reader import load_reader

    folder = Path(a.folder).resolve()
    read_config(folder)
    active = [f.resolve() for f in active_folders()]
    if folder in active:
        raise _cli_error(f"{a.folder} is already active (number {active.index(folder) + 1})")
    reader = load_reader(a.reader)
    kept, refused = _fit(reader, active + [folder])
    if refused:
        f, why = refused[0]
        if f == folder:
            raise PatchError(why)
        raise _cli_error(f"an active patch no longer fits the reader: {why}; remove it with `plugmem patch remove {f}`")
    _write_active(kept)
    data = {"applied": str(folder), "active": [str(f) for f in kept]}
    out.emit(data, lambda: f"applied {folder.name} (number {len(kept)} of {len(kept)} active); "
                           f"`--patch active` uses them, `plugmem patch remove {folder.name}` takes it off")
    return 0


def cmd_patch_remove(a, out) -> int:
    from engine.reader import load_reader

    active = [f.resolve() for f in active_folders()]
    target = Path(a.patch).resolve()
    match = [f for f in active if f == target or f.name == a.patch]
    if not match:
        raise _cli_error(f"{a.patch} is not an active patch (active: {', '.join(f.name for f in active) or 'none'})")
    rest = [f for f in active if f != match[0]]
    reader = load_reader(a.reader) if rest else None
    kept, refused = _fit(reader, rest) if rest else ([], [])
    _write_active(kept)
    data = {"removed": str(match[0]), "active": [str(f) for f in kept],
            "also_removed": [{"folder": str(f), "why": why} for f, why in refused]}

    def human() -> str:
        lines = [f"removed {match[0].name}; {len(kept)} patch(es) still active"]
        lines += [f"also removed {f.name}: it no longer fits ({why})" for f, why in refused]
        return "\n".join(lines)

    out.emit(data, human)
    return 0


def cmd_compare(a, out) -> int:
    try:
        return _compare(a, out)
    except model_errors() as exc:  # bad edits or probes, an unknown mechanism, no branch
        raise CliError(str(exc)) from None


def _compare(a, out) -> int:
    from engine.evaluate import read_edits, read_probes
    from engine.evaluate.compare import LABELS, check_mechanisms, compare
    from engine.mechanisms.weight_patches import PatchConfig

    mechanisms = check_mechanisms(a.mechanisms.split(","))
    edits = read_edits(a.edits)
    locality = read_probes(a.locality) if a.locality else []
    base = PatchConfig()
    cfg = PatchConfig(**{**base.__dict__, "layers": a.layers or base.layers,
                         "delta": base.delta if a.delta is None else a.delta, "steps": a.steps or base.steps})
    cfg.validate("compare")
    mems = open_memories([a.memory], out)
    try:
        a.patch = None
        predictor = load_predictor(a, out, ["dpm"] if "dpm" in mechanisms and a.branch != "none" else [])
        plugins = load_plugins(a, predictor.reader, mems, out)
        stop = StopFlag()
        bar = ProgressBar("compare", enabled=not a.json and not a.quiet)
        try:
            with stop:
                res = compare(predictor, mems[0], edits, locality, mechanisms=mechanisms, patch_config=cfg, k=a.k,
                              limit=a.limit, locality_limit=a.locality_limit, plugins=plugins, progress=bar,
                              should_stop=stop)
        finally:
            bar.close()
    finally:
        for m in mems:
            m.close()

    def human() -> str:
        rows = res["rows"]
        names = [n for n in mechanisms if "skipped" not in rows[n]]
        lines = [f"edits: {res['n']} from {a.edits}; locality probes: {res['n_locality']}; pack {Path(a.memory).name}",
                 f"{'':<24}" + "".join(f"{LABELS[n][:22]:>24}" for n in names)]
        for key, label in [("efficacy", "efficacy"), ("paraphrase", "paraphrases"), ("locality", "locality (unchanged)"),
                           ("accuracy_before", "unmodified acc. before"), ("accuracy_after", "unmodified acc. after")]:
            lines.append(f"{label:<24}" + "".join(f"{pct(rows[n][key]):>24}" for n in names))
        lines.append(f"{'action -> answer':<24}" + "".join(f"{rows[n]['seconds_to_change']:>22.2f} s" for n in names))
        lines.append(f"{'artefact':<24}" + "".join(f"{_size(rows[n]['artefact_bytes']):>24}" for n in names))
        lines.append(f"{'reversible exactly':<24}" + "".join(f"{'yes' if rows[n]['reversible_exactly'] else 'NO':>24}"
                                                           for n in names))
        lines += [f"{LABELS[n]}: skipped ({rows[n]['skipped']})" for n in mechanisms if "skipped" in rows[n]]
        if res["differ"]:
            lines.append(f"answered differently ({len(res['differ'])}):")
            for d in res["differ"][:10]:
                who = ", ".join(n for n, ok in d["followed"].items() if ok) or "none"
                lines.append(f"  {d['prompt']} -> {d['new']}: right with {who}")
        return "\n".join(lines)

    out.emit(res, human)
    return 0


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def add_parsers(subparsers, common: argparse.ArgumentParser) -> None:
    """`patch create|list|show|apply|remove` and `compare`."""
    def add(sub, name, fn, help):
        return add_command(sub, [common], name, fn, help)

    def config_args(sp):
        sp.add_argument("--layers", type=int, nargs="+", metavar="N",
                        help="decoder blocks to fine-tune, -1 the last (default: calibrated, -1)")
        sp.add_argument("--delta", type=float, help="L-infinity bound on each weight's change")
        sp.add_argument("--steps", type=positive, help="optimiser steps at most")

    pp = subparsers.add_parser("patch", help="weight patches: facts written into the reader's weights",
                               description="weight patches: facts written into the reader's weights by "
                                           "constrained fine-tuning, reversible exactly")
    psub = pp.add_subparsers(dest="patch_cmd", required=True, metavar="ACTION")
    sp = add(psub, "create", cmd_patch_create, "fine-tune facts into the reader under an L-infinity bound; write a patch folder")
    sp.add_argument("--prompt")
    sp.add_argument("--answer")
    sp.add_argument("--paraphrase", help="another wording of the prompt (measured, not trained on)")
    sp.add_argument("--from-entry", metavar="PACK:ID", help="the fact of a pack's entry (its sentence split into "
                                                            "prompt and answer unless --prompt/--answer are given)")
    sp.add_argument("--facts", metavar="FILE.jsonl", help="facts in the eval-edits format: prompt, new, paraphrase, old")
    config_args(sp)
    sp.add_argument("--targets", nargs="+", metavar="TENSOR", help="tensors of each block (default mlp.down_proj)")
    sp.add_argument("--lr", type=float)
    sp.add_argument("--locality", metavar="PROBES.jsonl", help="prompts whose answers must not move (a KL term)")
    sp.add_argument("--locality-weight", type=float, help="the KL term's weight (default 0: off)")
    sp.add_argument("--optimizer", choices=["adam", "gd"], help="adam, or gd: steps along the gradient whose "
                                                                "largest change is --lr (a sparser edit)")
    sp.add_argument("--context-prefixes", type=int, metavar="N",
                    help="also train each answer after N short contexts the reader writes itself (0 to 10)")
    sp.add_argument("--neurons", type=int, metavar="K",
                    help="train only the K MLP neurons per fact its prompt drives most (0: every weight)")
    sp.add_argument("--preserve", type=float, metavar="SHARE",
                    help="keep the down_proj change off the activation directions holding this share of "
                         "generic text's energy (0: off; below 1)")
    sp.add_argument("--sequential", action="store_true", help="one patch per fact, each on top of the earlier ones "
                                                              "(OUT/01, OUT/02, ...)")
    sp.add_argument("--skip-known", action="store_true", help="leave out facts the reader already gives (default: refuse)")
    sp.add_argument("--out", required=True, metavar="DIR")
    sp.add_argument("--force", action="store_true", help="overwrite a non-empty --out")
    sp.add_argument("--reader", help="reader model folder (default: the bundled SmolLM2-135M-Instruct)")

    sp = add(psub, "list", cmd_patch_list, "the weight patches in folders (default: the workspace's), active ones numbered")
    sp.add_argument("dirs", nargs="*", metavar="DIR")
    sp = add(psub, "show", cmd_patch_show, "a patch's reader, config, facts and metrics")
    sp.add_argument("folder", metavar="DIR")
    sp = add(psub, "apply", cmd_patch_apply, "make a patch active (after the active ones), checked on the reader")
    sp.add_argument("folder", metavar="DIR")
    sp.add_argument("--reader", help="reader model folder (default: the bundled SmolLM2-135M-Instruct)")
    sp = add(psub, "remove", cmd_patch_remove, "take an active patch off; the rest are re-checked")
    sp.add_argument("patch", metavar="DIR|NAME")
    sp.add_argument("--reader", help="reader model folder (default: the bundled SmolLM2-135M-Instruct)")

    sp = add(subparsers, "compare", cmd_compare,
             "memory edits and weight patches side by side on the same edits: efficacy, paraphrases, locality, "
             "time, size, reversibility")
    sp.add_argument("edits", metavar="EDITS.jsonl")
    sp.add_argument("--memory", required=True, metavar="PACK")
    sp.add_argument("--locality", metavar="PROBES.jsonl")
    sp.add_argument("--locality-limit", type=positive, default=100)
    sp.add_argument("--mechanisms", default="dpm,context,patch_batch,patch_sequential,plugins",
                    help="comma-separated: dpm, context, plugins, patch_batch, patch_sequential")
    sp.add_argument("-k", type=positive, default=5)
    sp.add_argument("--limit", type=positive, help="only the first N edits")
    config_args(sp)
    sp.add_argument("--reader", help="reader model folder (default: the bundled SmolLM2-135M-Instruct)")
    sp.add_argument("--branch", help="trained DPM branch folder (default: the shipped one, for the default reader)")
    sp.add_argument("--plugin", action="append", metavar="DIR", help="plug a knowledge plugin ('auto': beside the pack)")
    sp.add_argument("--reencode-untrusted", action="store_true", help=argparse.SUPPRESS)
