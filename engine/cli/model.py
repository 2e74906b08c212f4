"""The reader commands (plug-in memory, issue 3): `plugmem predict`, `prepare`, `eval`,
`eval-edits` and `train-branch` (alias `train-memory-reader`)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable, Sequence

from engine.cli.common import (EXIT_INTERRUPTED, CliError, Output, ProgressBar, StopFlag, add_command,
                               add_untrusted_arg, branch_dir, job_cancelled, load_plugins, load_predictor,
                               model_errors, one_line, open_memories, pct, run_job)
from engine.cli.pkm import add_pkm_arg, pkm_attached, pkm_line
from engine.cli.patch import add_patch_arg
from engine.cli_args import answer_tokens, non_negative, positive, retrieved


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


def _check_plugin_args(a) -> None:
    """Fail fast (before the reader loads) on a --plugin folder that is missing or is no plugin."""
    from engine.mechanisms.plugins.io import read_plugin_config

    for d in a.plugin or []:
        if d == "auto":
            if not a.memory:
                raise CliError("--plugin auto uses the plugin beside each --memory PACK: give --memory PACK")
            continue
        if not Path(d).is_dir():
            raise CliError(f"--plugin {d}: no such plugin folder (train one with `plugmem map-tune PACK`)")
        read_plugin_config(d)


def _injected_lines(rec) -> list[str]:
    if not rec.plugins:
        return []
    lines = [f"plugins: {', '.join(rec.plugins)}", f"without plugins:{rec.answer_without_plugins}"]
    lines += [str(g.get("message", "")) for g in rec.plugin_gates]
    if rec.injected:
        lines.append(f"injected ({len(rec.injected)}):  loo Δlogp")
        for i in rec.injected:
            d = "    -  " if i.loo_delta is None else f"{i.loo_delta:+7.3f}"
            what = repr(i.mention) if i.kind == "mention" else "(answer slot)"
            lines.append(f"  {d}  {what} -> {i.entity} (#{i.entity_id}, {i.plugin})")
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
    mems = open_memories(a.memory, out, trust_keys=not a.reencode_untrusted)
    try:
        if not mems and modes[0] == "dpm":
            modes = ["none"]  # nothing plugged: the bare reader, no branch needed
        try:
            predictor = load_predictor(a, out, modes)
            plugins = load_plugins(a, predictor.reader, mems, out)
            with pkm_attached(a, predictor.reader) as layer:
                rec = predictor.predict(a.prompt, mems, mode=modes[0], k=a.k, max_new_tokens=a.max_new_tokens,
                                        explain=not a.no_explain, plugins=plugins)
                if layer is not None and not a.no_explain:  # what the layer did: the answers without it
                    rec.answers_without_pkm = predictor.answers_without_pkm(
                        a.prompt, mems, mode=modes[0], k=a.k, max_new_tokens=a.max_new_tokens, plugins=plugins)
        except model_errors() as exc:
            raise CliError(str(exc)) from None
    finally:
        for m in mems:
            m.close()

    data = rec.to_dict()
    if getattr(a, "patch_names", None):
        data["weight_patches"] = a.patch_names

    def human() -> str:
        packs = ", ".join(rec.packs) or "none plugged"
        lines = [f"answer ({rec.mode}; {packs}):{rec.answer}", f"without memory:{rec.answer_without_memory}"]
        if getattr(a, "patch_names", None):
            lines.append(f"weight patches: {', '.join(a.patch_names)} (both answers read the patched weights)")
        lines += _injected_lines(rec)
        if layer is not None:
            lines.append(pkm_line(a.pkm, layer))
            if rec.answers_without_pkm:
                lines.append(f"without the product-key memory:{rec.answers_without_pkm['answer']}")
            if rec.pkm_slots:
                lines.append(f"slots it read most ({len(rec.pkm_slots)}):  weight  top tokens")
                lines += [f"  {s.slot:>8}  {s.weight:6.3f}  {' · '.join(repr(t) for t in s.tokens)}" for s in rec.pkm_slots]
        if rec.retrieved:
            lines.append(f"retrieved ({len(rec.retrieved)}):    score  weight  loo Δlogp")
            for r in rec.retrieved:
                w = "   -  " if r.weight is None else f"{r.weight:6.3f}"
                d = "    -  " if r.loo_delta is None else f"{r.loo_delta:+7.3f}"
                lines.append(f"  {r.pack}#{r.id:<7} {r.score:6.3f}  {w}  {d}  {one_line(r.text, 90)}")
        lines.append(f"({rec.seconds:.2f} s)")
        return "\n".join(lines)

    if layer is not None:
        data["pkm"] = a.pkm
    out.emit(data, human)
    return 0


def _run_per_mode(a, out: Output, modes: Sequence[str], label: str, read_inputs: Callable[[], Any],
                  run: Callable[..., dict[str, Any]], interrupted: str = "") -> dict[str, dict[str, Any]] | None:
    """Open the --memory packs, read the inputs, load the reader (+ branch) and the plugins, then
    ``run(predictor, mems, inputs, mode, plugins, progress, should_stop)`` once per mode.

    Returns ``{mode: result}``, or None when Ctrl+C stopped it (the caller exits 130).
    """
    _check_plugin_args(a)
    stop = StopFlag()
    mems = open_memories(a.memory, out, trust_keys=not a.reencode_untrusted)
    results: dict[str, Any] = {}
    try:
        try:
            inputs = read_inputs()
            predictor = load_predictor(a, out, modes if mems else [])
            plugins = load_plugins(a, predictor.reader, mems, out)
            with stop:
                for mode in modes:
                    bar = ProgressBar(f"{label} {mode}", enabled=not a.json and not a.quiet)
                    try:
                        results[mode] = run(predictor, mems, inputs, mode, plugins, bar, stop)
                    finally:
                        bar.close()
        except model_errors() as exc:
            raise CliError(str(exc)) from None
    except job_cancelled() as exc:
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
    lines = [f"knowledge plugins: {', '.join(data['plugins'])}"] if data.get("plugins") else []
    if data.get("weight_patches"):
        lines.append(f"weight patches: {', '.join(data['weight_patches'])}")
    return lines


def cmd_eval(a, out: Output) -> int:
    from engine.evaluate import evaluate_probes, read_probes

    modes = _modes(a.mode)

    def run(predictor, mems, probes, mode, plugins, bar, stop):
        with pkm_attached(a, predictor.reader):  # --pkm: the layer is part of the reader for every answer
            return evaluate_probes(predictor, mems, probes, mode, k=a.k, limit=a.limit,
                                   paraphrases=not a.no_paraphrases, progress=bar, should_stop=stop, plugins=plugins)

    results = _run_per_mode(a, out, modes, "eval", lambda: read_probes(a.probes), run)
    if results is None:
        return EXIT_INTERRUPTED
    data = _report(results, modes)
    if a.pkm:
        data["pkm"] = a.pkm
    if getattr(a, "patch_names", None):
        data["weight_patches"] = a.patch_names

    def human() -> str:
        head = f"{'':<28}" + "".join(f"{m:>12}" for m in modes)
        layer = [f"product-key memory: {a.pkm} (part of the reader for every answer)"] if a.pkm else []
        rows = [f"probes: {data['n']} from {a.probes} (k={a.k})", *_plugins_line(data), *layer, head]
        labels = [("accuracy", "accuracy with memory"), ("accuracy_without_memory", "accuracy without memory")]
        if data.get("plugins"):
            labels = [("accuracy", "accuracy with memory+plugins"), ("accuracy_without_plugins", "accuracy without plugins"),
                      ("accuracy_without_memory", "accuracy with nothing")]
        labels += [("hit_at_k", f"retrieval hit@{a.k}"), ("paraphrase_accuracy", "paraphrases with memory")]
        for key, label in labels:
            rows.append(f"{label:<28}" + "".join(f"{pct(results[m][key]):>12}" for m in modes))
        rows.append("by relation (accuracy with memory / without):")
        for rel in results[modes[0]]["by_relation"]:
            cells = "".join(
                f"{pct(results[m]['by_relation'][rel]['accuracy']):>8} /{pct(results[m]['by_relation'][rel]['accuracy_without_memory'])}"
                for m in modes
            )
            rows.append(f"  {rel:<26} n={results[modes[0]]['by_relation'][rel]['n']:<5}{cells}")
        return "\n".join(rows)

    out.emit(data, human)
    return 0


def edit_failure_lines(result: dict[str, Any], mode: str = "") -> list[str]:
    """An edit evaluation's failures for a reader: kind, prompt, answer, expected, and the
    retrieved entries by rank (the edited one starred)."""
    fails = result.get("failures") or []
    if not fails:
        return []
    counts = ", ".join(f"{n} {kind}" for kind, n in (result.get("n_failures") or {}).items() if n)
    rows = [f"failures{' (' + mode + ')' if mode else ''}: {counts} (* = an edited entry)"]
    for f in fails:
        rank = f.get("edited_rank")
        where = f"edited entry at rank {rank}" if rank else "edited entry not retrieved"
        said = "before the edits" if f["kind"] == "locality" else "expected"
        rows.append(f"  [{f['kind']}] {f['prompt']!r} -> {f['got'].strip()[:60]!r}, {said} "
                    f"{f['expected'].strip()[:40]!r}; {where}")
        rows += [f"      {r['rank']}.{'*' if r['edited'] else ' '} {r['score']:.3f}  {r['text'][:90]}" for r in f.get("retrieved") or []]
    return rows


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
    if getattr(a, "patch_names", None):
        data["weight_patches"] = a.patch_names

    def human() -> str:
        rows = [f"edits: {data['n']} from {a.edits}; locality probes: {data['n_locality']} (k={a.k})",
                *_plugins_line(data), f"{'':<26}" + "".join(f"{m:>12}" for m in modes)]
        for key, label in [("efficacy_before", "efficacy before"), ("efficacy", "efficacy after"),
                           ("generalization_before", "paraphrases before"), ("generalization", "paraphrases after"),
                           ("locality", "locality (unchanged)"), ("edit_retrieved", "edited entry retrieved")]:
            rows.append(f"{label:<26}" + "".join(f"{pct(results[m][key]):>12}" for m in modes))
        rows.append("pack restored (undo): " + ", ".join(f"{m}: {'yes' if results[m]['restored'] else 'NO'}" for m in modes))
        for m in modes:
            rows += edit_failure_lines(results[m], m if len(modes) > 1 else "")
        return "\n".join(rows)

    out.emit(data, human)
    return 0 if all(r["restored"] for r in results.values()) else 1


def cmd_prepare(a, out: Output) -> int:
    from engine.jobs.prepare_states import prepare_states

    branch_dir(a, "prepare needs")
    missing = [p for p in a.memory if not Path(p).is_file()]
    if missing:
        raise CliError(f"{missing[0]}: no such memory pack")
    config = {"packs": list(a.memory), "reader": a.reader, "branch": a.branch, "batch": a.batch}
    res = run_job("prepare", prepare_states, config, a, out)
    if res is None:
        return EXIT_INTERRUPTED
    out.emit(res, lambda: (f"{res['entries']:,} entries: {res['read']:,} read in {res['seconds']:.0f} s, "
                           f"{res['already']:,} already stored; store {res['store']} "
                           f"({res['store_entries']:,} entries, {res['store_bytes'] / 1e6:.1f} MB); "
                           f"{res['keys_encoded']:,} of {res['keys']:,} statement keys encoded"
                           + "".join(f"\n{p}: made by another key encoder, no statement keys kept"
                                     for p in res["keys_skipped_packs"])))
    return 0


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
    res = run_job("train", train_memory_reader, config, a, out)
    if res is None:
        return EXIT_INTERRUPTED
    out.emit(res, lambda: (f"trained {res['steps_done']:,} steps in {res['seconds']:.0f} s; loss "
                           f"{res['initial_loss']:.3f} -> {res['final_loss']:.3f}; branch in {res['out']}"))
    return 0


# ---------------------------------------------------------------------------- parsers
def add_parsers(sub, common: argparse.ArgumentParser) -> None:
    def add(name: str, fn, help: str, aliases: Sequence[str] = ()) -> argparse.ArgumentParser:
        return add_command(sub, [common], name, fn, help, aliases)

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
    add_pkm_arg(sp)
    add_untrusted_arg(sp)
    add_patch_arg(sp)

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
    add_pkm_arg(sp)
    add_untrusted_arg(sp)
    add_patch_arg(sp)

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
    add_untrusted_arg(sp)
    add_patch_arg(sp)

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
