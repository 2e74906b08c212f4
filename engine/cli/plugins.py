"""The knowledge-plugin commands (the mechanism is engine.mechanisms.plugins)::

    plugmem triples import PACK FILE... [--no-new-entities]
    plugmem triples list PACK [--entity NAME] [--limit N]
    plugmem entities PACK [NAME] [--query Q] [--limit N]
    plugmem embeddings import PACK FILE [--ids IDS] [--by-id] [--dim N] [--out DIR] [--force]
    plugmem train-transe PACK [--dim 64] [--epochs 300] ... [--out DIR] [--force]
    plugmem map-tune PACK [--holdout-probes FILE] [--fact-weight W] [--max-steps N] ... [--out DIR]
    plugmem task-tune PACK --probes FILE [--holdout-probes FILE] [--start DIR|none] [--answer-slot] ... [--out DIR]
    plugmem eval-plugin PACK --probes FILE [--plugin DIR] [--memory] [--sample N] [--report OUT]
    plugmem plugin-gate PLUGIN --probes FILE [--off]    (re)calibrate or remove a task plugin's relation gate

The mechanism's errors (PluginError) become the one-line bad input (exit 2); Ctrl+C
stops a training job at its next step with a checkpoint (exit 130), and the same
command resumes it.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from engine.cli.common import EXIT_INTERRUPTED, CliError, Output, ProgressBar, add_command, run_job
from engine.cli_args import non_negative, positive, retrieved
from engine.mechanisms.plugins.errors import PluginError
from engine.probe_files import EvalDataError


def _open_pack(path: str, readonly: bool = False):
    """The pack as the mechanism opens it: a missing file is the store's own error, read-only where only read."""
    from engine.store import Pack

    return Pack.open(path, readonly=readonly)


def cmd_triples_import(a, out: Output) -> int:
    from engine.mechanisms.plugins.entities import import_triples

    with _open_pack(a.pack) as pack:
        res = import_triples(pack, a.files, create_entities=not a.no_new_entities)
    d = res.to_dict()
    out.emit(d, lambda: (f"added {d['triples_added']:,} triples ({d['entity_tails']:,} with an entity tail, "
                         f"{d['literal_tails']:,} literal), {d['entities_added']:,} new entities, "
                         f"{d['entities_updated']:,} updated; {d['duplicates_skipped']:,} duplicates skipped"))
    return 0


def cmd_triples_list(a, out) -> int:
    from engine.mechanisms.plugins.entities import find_entity

    with _open_pack(a.pack, readonly=True) as pack:
        head = find_entity(pack, a.entity)["id"] if a.entity else None
        rows = pack.triples(head=head)[: a.limit]
        names = {e["id"]: e["name"] for e in pack.entities()}
    for r in rows:
        r["head_name"] = names.get(r["head"], "?")
    out.emit({"triples": rows}, lambda: "\n".join(
        f"{r['id']:>7}  {r['head_name']}  --{r['relation']}-->  {r['tail']}{' (entity)' if r['tail_id'] else ''}"
        for r in rows) or "(no triples)")
    return 0


def cmd_entities(a, out) -> int:
    from engine.mechanisms.plugins.entities import entity_facts, entity_rows

    with _open_pack(a.pack, readonly=True) as pack:
        if a.name:
            e = entity_facts(pack, a.name)

            def human() -> str:
                lines = [f"{e['name']} (#{e['id']})" + (f": {e['description']}" if e["description"] else "")]
                if e["aliases"]:
                    lines.append("aliases: " + ", ".join(e["aliases"]))
                lines += [f"  {t['relation']}: {t['tail']}" for t in e["triples"]]
                lines += [f"  <- {t['head_name']} {t['relation']}" for t in e["mentioned_by"]]
                return "\n".join(lines)

            out.emit(e, human)
        else:
            rows = entity_rows(pack, a.query, a.limit)
            out.emit({"entities": rows}, lambda: "\n".join(
                f"{r['id']:>6}  {r['name']}  ({r['triples']} triples, {len(r['aliases'])} aliases)" for r in rows)
                or "(no entities)")
    return 0


def cmd_embeddings_import(a, out) -> int:
    from engine.mechanisms.plugins.embeddings import default_embeddings_dir, import_embeddings, save_embeddings

    with _open_pack(a.pack, readonly=True) as pack:
        emb = import_embeddings(pack, a.file, a.ids, dim=a.dim, by_pack_id=a.by_id)
        n_pack = len(pack.entities())
    folder = save_embeddings(emb, a.out or default_embeddings_dir(a.pack), force=a.force)
    d = {"out": str(folder), "entities": len(emb), "dim": emb.dim, "pack_entities": n_pack}
    out.emit(d, f"imported {len(emb):,} entity embeddings of dimension {emb.dim} into {folder} "
                f"({n_pack - len(emb):,} of the pack's {n_pack:,} entities have none)")
    return 0


def cmd_train_transe(a, out) -> int:
    from engine.mechanisms.plugins.transe import train_transe

    cfg = {"pack": a.pack, "out": a.out, "dim": a.dim, "epochs": a.epochs, "batch": a.batch, "lr": a.lr,
           "margin": a.margin, "p_norm": a.p_norm, "negatives": a.negatives, "seed": a.seed, "device": a.device,
           "force": a.force}
    res = run_job("train-transe", train_transe, cfg, a, out)
    if res is None:
        return EXIT_INTERRUPTED
    out.emit(res, lambda: (f"TransE: {res['entities']:,} entities + {res['literals']:,} literal nodes, "
                           f"{res['relations']} relations, {res['triples']:,} triples; {res['epochs_done']} epochs, "
                           f"final loss {res['losses'][-1]:.4f}, tail hits@10 {res['tail_hits_at_10']:.3f}; "
                           f"{res['seconds']:.1f} s; saved to {res['out']}"))
    return 0


def cmd_map_tune(a, out) -> int:
    from engine.mechanisms.plugins.map_tune import map_tune

    cfg = {"pack": a.pack, "embeddings": a.embeddings, "out": a.out, "reader": a.reader, "hidden": a.hidden,
           "lr": a.lr, "batch": a.batch, "epochs": a.epochs, "max_steps": a.max_steps, "reader_dropout": a.dropout,
           "fact_weight": a.fact_weight, "holdout_probes": a.holdout_probes or [],
           "holdout_entities": [s.strip() for s in (a.holdout_entities or "").split(",") if s.strip()],
           "val_fraction": a.val_fraction, "eval_every": a.eval_every, "patience": a.patience, "seed": a.seed,
           "device": a.device, "threads": a.threads, "max_minutes": a.max_minutes, "force": a.force}
    res = run_job("map-tune", map_tune, cfg, a, out)
    if res is None:
        return EXIT_INTERRUPTED
    out.emit(res, lambda: (f"map-tuned {res['steps_done']} steps on {res['examples']['train']:,} sentences "
                           f"({res['entities']['training']} training, {res['entities']['validation']} validation, "
                           f"{res['entities']['held_out']} held-out entities); validation mention loss "
                           f"{res['best_val_loss']:.4f} at step {res['best_step']} vs {res['val_loss_without_plugin']:.4f} "
                           f"without the plugin{'; stopped early' if res['stopped_early'] else ''}; "
                           f"{res['seconds']:.0f} s; plugin saved to {res['out']}"))
    return 0


def cmd_task_tune(a, out) -> int:
    from engine.mechanisms.plugins.task_tune import task_tune

    cfg = {"pack": a.pack, "probes": a.probes, "holdout_probes": a.holdout_probes or [],
           "holdout_entities": [s.strip() for s in (a.holdout_entities or "").split(",") if s.strip()],
           "start": a.start, "embeddings": a.embeddings, "out": a.out, "reader": a.reader,
           "relations": [s.strip() for s in (a.relations or "").split(",") if s.strip()], "wordings": a.wordings,
           "hidden": a.hidden, "answer_slot": a.answer_slot, "lr": a.lr, "batch": a.batch, "epochs": a.epochs,
           "max_steps": a.max_steps, "val_fraction": a.val_fraction, "fact_fraction": a.fact_fraction,
           "eval_every": a.eval_every, "patience": a.patience, "max_val": a.max_val, "seed": a.seed,
           "device": a.device, "threads": a.threads, "max_minutes": a.max_minutes, "force": a.force}
    res = run_job("task-tune", task_tune, cfg, a, out)
    if res is None:
        return EXIT_INTERRUPTED
    skipped = f"; skipped (no probe asks them): {', '.join(res['skipped_relations'])}" if res["skipped_relations"] else ""
    out.emit(res, lambda: (f"task-tuned {res['steps_done']} steps on {res['examples']['train']:,} questions of "
                           f"{len(res['relations'])} relations ({res['entities']['training']} training, "
                           f"{res['entities']['validation']} validation, {res['entities']['held_out']} held-out "
                           f"entities); validation answer loss {res['best_val_loss']:.4f} at step {res['best_step']} "
                           f"(start {res['val_loss_start']:.4f}, bare reader {res['val_loss_without_plugin']:.4f})"
                           f"{'; stopped early' if res['stopped_early'] else ''}{skipped}; {res['seconds']:.0f} s; "
                           f"plugin saved to {res['out']}"))
    return 0


def cmd_eval_plugin(a, out: Output) -> int:
    """A knowledge plugin on held-out entity probes (and their mention loss), on the bare reader."""
    from engine.evaluate.plugins import evaluate_probes, format_table, heldout_mention_loss, load_probes
    from engine.mechanisms.plugins.attach import PluginInjector
    from engine.mechanisms.plugins.io import default_plugin_dir, read_plugin_config
    from engine.mechanisms.plugins.map_tune import read_holdout
    from engine.session import open_session
    from engine.store import Pack

    # a wrong pack or plugin folder fails here, before the reader loads
    if not Path(a.pack).is_file():
        raise CliError(f"{a.pack}: no such pack")
    folder = Path(a.plugin) if a.plugin else default_plugin_dir(a.pack)
    if not folder.is_dir():
        raise CliError(f"{folder}: no such plugin folder (train one with `plugmem map-tune {a.pack}`)")
    read_plugin_config(folder)
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    probes = load_probes(a.probes, [s for s in a.splits.split(",") if s] or None, paraphrases=a.paraphrases)
    if a.sample and len(probes) > a.sample:
        import numpy as np

        pick = np.random.default_rng(a.seed).choice(len(probes), size=a.sample, replace=False)
        probes = [probes[i] for i in sorted(pick.tolist())]
    session = open_session(a.reader, branch=None)  # the plugin alone, on the bare reader
    with Pack.open(a.pack, readonly=True) as pack:
        plugin = session.add_plugin(folder, pack)
        held = read_holdout(pack, [], [a.probes])
        mention: dict[str, Any] = {}
        if a.mention_sentences > 0:
            t0 = time.perf_counter()
            mention = heldout_mention_loss(session.reader, plugin, pack, held, max_sentences=a.mention_sentences,
                                           seed=a.seed)
            mention["seconds"] = round(time.perf_counter() - t0, 1)
    memory = None
    if a.memory:
        from engine.memory import Memory

        memory = Memory.open(a.pack, on_message=out.info)
    bar = ProgressBar("eval-plugin", enabled=not a.json and not a.quiet)
    try:
        report = evaluate_probes(PluginInjector(session.reader, plugin), probes, memory=memory, k=a.k, progress=bar)
    finally:
        bar.close()
        if memory is not None:
            memory.close()
    report["mention_loss"] = mention
    report["plugin"] = {"folder": str(folder), "training": plugin.training}
    if a.report:
        try:
            Path(a.report).write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")
        except OSError as exc:
            raise CliError(f"{a.report}: cannot write the report ({exc.strerror or exc})") from None

    def human() -> str:
        text = format_table(report)
        if mention:
            text += (f"\n\nheld-out mention loss: plugin {mention['mention_loss_plugin']:.4f}, bare reader "
                     f"{mention['mention_loss_reader']:.4f} over {mention['sentences']} sentences; loss on the rest "
                     f"of those sentences (facts): plugin {mention['fact_loss_plugin']:.4f}, bare reader "
                     f"{mention['fact_loss_reader']:.4f}")
        return text

    out.emit(report, human)
    return 0


def cmd_plugin_gate(a, out: Output) -> int:
    """Calibrate a task plugin's relation gate on training probe files (or remove it with --off)."""
    from engine.mechanisms.plugins.gate import calibrate, write_gate
    from engine.mechanisms.plugins.io import read_plugin_config
    from engine.mechanisms.plugins.task_tune import relation_templates

    folder = Path(a.plugin)
    if not folder.is_dir():
        raise CliError(f"{folder}: no such plugin folder (train one with `plugmem task-tune PACK`)")
    meta = read_plugin_config(folder)
    training = meta.get("training") or {}
    if a.off:
        write_gate(folder, None)
        out.emit({"plugin": str(folder), "gate": None}, lambda: f"{folder}: relation gate removed; the plugin is "
                 "applied to every question")
        return 0
    if not a.probes:
        raise CliError("plugin-gate: --probes FILE is needed (the training probes, e.g. probes_train.jsonl)")
    if training.get("objective") != "task" or not training.get("relations"):
        raise CliError(f"{folder}: not a task-tuned plugin (no trained relations in its config.json); only a plugin "
                       "trained with `plugmem task-tune` has relations to gate on")
    templates = training.get("templates")
    if templates is None:  # trained before plugins recorded their templates: the same probes give them again
        found = relation_templates(a.probes, wordings=(training.get("config") or {}).get("wordings", "prompt"))
        missing = [r for r in training["relations"] if not found.get(r)]
        if missing:
            raise CliError(f"plugin-gate: the probe files have no question of the trained relation(s) "
                           f"{', '.join(missing)}")
        templates = {r: found[r] for r in training["relations"]}
    if not 0.0 < a.refuse <= 1.0:
        raise CliError(f"plugin-gate: --refuse must be in (0, 1], got {a.refuse}")
    gate = calibrate(templates, a.probes, refuse=a.refuse)
    write_gate(folder, gate, templates)
    out.emit({"plugin": str(folder), "gate": gate}, lambda: (
        f"{folder}: relation gate at similarity {gate['threshold']:.3f}: passes {100 * gate['passed']:.0f} % of "
        f"{gate['n_same']} other wordings of the {len(templates)} trained relations, refuses "
        f"{100 * gate['refused']:.0f} % of {gate['n_other']} questions scored as a relation never trained"))
    return 0


def _guard(fn):
    """Turn this mechanism's errors into the CLI's one-line bad-input failure."""

    def run(a, out) -> int:
        try:
            return fn(a, out)
        except (PluginError, EvalDataError) as exc:
            raise CliError(str(exc)) from None

    run.__name__ = fn.__name__
    return run


# ---------------------------------------------------------------------------- parsers
def _add_holdout_args(sp) -> None:
    """The held-out entities of a plugin training (map-tune, task-tune)."""
    sp.add_argument("--holdout-probes", nargs="*", metavar="FILE", help="probes whose held-out subjects are held out")
    sp.add_argument("--holdout-entities", help="comma-separated entity names to hold out")


def _add_run_args(sp) -> None:
    """How a plugin training runs (map-tune, task-tune): seed, device, threads, time limit, restart."""
    sp.add_argument("--seed", type=non_negative, default=0)
    sp.add_argument("--device", default=None)
    sp.add_argument("--threads", type=positive, default=None, help="torch CPU threads")
    sp.add_argument("--max-minutes", type=float, default=0.0, help="stop after this long, keeping the best state")
    sp.add_argument("--force", action="store_true", help="start over; replace a plugin already in --out")


def add_parsers(subparsers, common: argparse.ArgumentParser) -> None:
    def add(sub, name: str, fn, help: str) -> argparse.ArgumentParser:
        return add_command(sub, [common], name, _guard(fn), help)

    tp = subparsers.add_parser("triples", help="entities and triples of a pack (import, list)",
                               description="entities and triples of a pack")
    tsub = tp.add_subparsers(dest="triples_cmd", required=True, metavar="ACTION")
    sp = add(tsub, "import", cmd_triples_import,
             "import triples (JSONL/CSV: head, relation, tail, head_aliases, tail_aliases) into a pack")
    sp.add_argument("pack")
    sp.add_argument("files", nargs="+", metavar="FILE")
    sp.add_argument("--no-new-entities", action="store_true", help="refuse triples naming entities the pack lacks")
    sp = add(tsub, "list", cmd_triples_list, "list a pack's triples (of one entity with --entity)")
    sp.add_argument("pack")
    sp.add_argument("--entity", help="name, alias or id of the head entity")
    sp.add_argument("--limit", type=positive, default=100)

    sp = add(subparsers, "entities", cmd_entities, "list a pack's entities, or show one with its triples")
    sp.add_argument("pack")
    sp.add_argument("name", nargs="?", help="entity name, alias or id")
    sp.add_argument("--query", help="only names containing this")
    sp.add_argument("--limit", type=positive, default=None)

    ep = subparsers.add_parser("embeddings", help="entity embeddings beside a pack (import)",
                               description="entity embeddings beside a pack")
    esub = ep.add_subparsers(dest="embeddings_cmd", required=True, metavar="ACTION")
    sp = add(esub, "import", cmd_embeddings_import, "import entity embeddings (.npy or .safetensors + an id list)")
    sp.add_argument("pack")
    sp.add_argument("file", help=".npy [n, dim] or .safetensors ('embeddings' + optional 'entity_ids')")
    sp.add_argument("--ids", help="id list: one entity name per line, or a JSON list")
    sp.add_argument("--by-id", action="store_true", help="the id list holds pack entity ids, not names")
    sp.add_argument("--dim", type=positive, help="require this dimension")
    sp.add_argument("--out", help="folder (default: <pack>.embeddings)")
    sp.add_argument("--force", action="store_true", help="replace embeddings already in the folder")

    sp = add(subparsers, "train-transe", cmd_train_transe,
             "train TransE entity embeddings from a pack's triples (resumable; Ctrl+C keeps a checkpoint)")
    sp.add_argument("pack")
    sp.add_argument("--out", help="folder (default: <pack>.embeddings)")
    sp.add_argument("--dim", type=positive, default=64)
    sp.add_argument("--epochs", type=positive, default=300)
    sp.add_argument("--batch", type=positive, default=256)
    sp.add_argument("--lr", type=float, default=0.01)
    sp.add_argument("--margin", type=float, default=2.0)
    sp.add_argument("--p-norm", type=int, choices=[1, 2], default=1)
    sp.add_argument("--negatives", type=positive, default=4)
    sp.add_argument("--seed", type=non_negative, default=0)
    sp.add_argument("--device", default="cpu")
    sp.add_argument("--force", action="store_true", help="start over (ignore a checkpoint; replace other embeddings)")

    sp = add(subparsers, "map-tune", cmd_map_tune,
             "train a knowledge plugin (mapping network) for a pack's entities, reader frozen (resumable)")
    sp.add_argument("pack")
    sp.add_argument("--embeddings", help="entity embeddings folder (default: <pack>.embeddings)")
    sp.add_argument("--out", help="plugin folder (default: <pack>.plugin)")
    sp.add_argument("--reader", help="reader model folder (default: SmolLM2-135M-Instruct)")
    sp.add_argument("--hidden", type=non_negative, default=0, help="mapping MLP hidden width (0: linear)")
    sp.add_argument("--lr", type=float, default=3e-3)
    sp.add_argument("--batch", type=positive, default=16)
    sp.add_argument("--epochs", type=positive, default=3)
    sp.add_argument("--max-steps", type=non_negative, default=0)
    sp.add_argument("--dropout", type=float, default=0.0, help="dropout inside the reader (attention and MLP outputs) while training")
    sp.add_argument("--fact-weight", type=float, default=0.0, help="also predict the sentence after the mention")
    _add_holdout_args(sp)
    sp.add_argument("--val-fraction", type=float, default=0.1)
    sp.add_argument("--eval-every", type=positive, default=50)
    sp.add_argument("--patience", type=positive, default=4)
    _add_run_args(sp)

    sp = add(subparsers, "task-tune", cmd_task_tune,
             "train a knowledge plugin to answer: questions from the pack's triples and the probes' templates, "
             "loss on the answers, reader frozen, starting from the general plugin (resumable)")
    sp.add_argument("pack")
    sp.add_argument("--probes", nargs="+", required=True, metavar="FILE",
                    help="probe files whose prompts give each relation's question (e.g. probes_train.jsonl)")
    _add_holdout_args(sp)
    sp.add_argument("--start", help="general plugin to start from (default: <pack>.plugin; 'none': a fresh mapping)")
    sp.add_argument("--embeddings", help="entity embeddings for a fresh mapping (default: <pack>.embeddings)")
    sp.add_argument("--out", help="plugin folder (default: <pack>.task-plugin)")
    sp.add_argument("--reader", help="reader model folder (default: SmolLM2-135M-Instruct)")
    sp.add_argument("--relations", help="comma-separated relations to train on (default: every one a probe asks)")
    sp.add_argument("--wordings", choices=["prompt", "all"], default="prompt",
                    help="questions from each probe's prompt, or its paraphrases too")
    sp.add_argument("--hidden", type=non_negative, default=0, help="a fresh mapping's MLP hidden width (0: linear)")
    sp.add_argument("--answer-slot", action="store_true", help="also a vector of the subject where the answer begins")
    sp.add_argument("--lr", type=float, default=2e-3)
    sp.add_argument("--batch", type=positive, default=32)
    sp.add_argument("--epochs", type=positive, default=3)
    sp.add_argument("--max-steps", type=non_negative, default=0)
    sp.add_argument("--val-fraction", type=float, default=0.1)
    sp.add_argument("--fact-fraction", type=float, default=0.1, help="training entities' facts kept out for validation")
    sp.add_argument("--eval-every", type=positive, default=25)
    sp.add_argument("--patience", type=positive, default=4)
    sp.add_argument("--max-val", type=positive, default=256,
                    help="validation questions per split, a seeded sample (each evaluation reads them all: "
                         "about 2 minutes for 256 on two CPU cores)")
    _add_run_args(sp)

    sp = add(subparsers, "plugin-gate", cmd_plugin_gate,
             "calibrate a task plugin's relation gate (it then injects only into questions of the relations it "
             "was trained for), or remove it")
    sp.add_argument("plugin", help="a task-tuned plugin folder")
    sp.add_argument("--probes", nargs="+", metavar="FILE",
                    help="training probe files: their other wordings calibrate it (never the held-out probes)")
    sp.add_argument("--off", action="store_true", help="remove the gate: apply the plugin to every question")
    sp.add_argument("--refuse", type=float, default=0.95,
                    help="share of questions of other relations the gate must refuse on the training probes "
                         "(1.0: the strictest threshold those probes allow)")

    # was `python -m engine.plugins.evaluate`; the full report goes to --report OUT (it was --json OUT)
    sp = add(subparsers, "eval-plugin", cmd_eval_plugin,
             "a knowledge plugin on held-out entity probes: accuracy with and without it, per relation, "
             "and the held-out mention loss (bare reader, no DPM branch)")
    sp.add_argument("pack")
    sp.add_argument("--plugin", help="plugin folder (default: <pack>.plugin)")
    sp.add_argument("--probes", required=True, help="probes JSONL (e.g. resources/demo/geography/probes_heldout.jsonl)")
    sp.add_argument("--splits", default="heldout_entity,heldout_both", help="comma-separated probe splits ('' = all)")
    sp.add_argument("--paraphrases", action="store_true", help="also ask every paraphrase")
    sp.add_argument("--memory", action="store_true", help="also evaluate with the pack as context memory (top-k)")
    sp.add_argument("-k", type=retrieved, default=3)
    sp.add_argument("--reader", default=None, help="reader model folder (default: SmolLM2-135M-Instruct)")
    sp.add_argument("--threads", type=positive, default=None, help="torch CPU threads")
    sp.add_argument("--sample", type=non_negative, default=0, help="evaluate a seeded random sample of N probes")
    sp.add_argument("--seed", type=non_negative, default=0)
    sp.add_argument("--mention-sentences", type=non_negative, default=200,
                    help="held-out sentences for the mention loss (seeded sample; 0 = skip it)")
    sp.add_argument("--report", metavar="OUT", help="also write the full report (every probe) to this JSON file")
