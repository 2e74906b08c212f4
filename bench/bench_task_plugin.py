"""Task-specific vs general knowledge plugin on held-out entities: accuracy, log p, rank, sign tests (issue 21).

Probes: the held-out-entity probes (splits heldout_entity + heldout_both) of a probe file;
their subjects were held out of both map-tunings (never a prompt, never a target), and
the heldout_both ones also ask relations the task-tuning never trained on. With
``--paraphrases`` their paraphrases are scored too (a wording the task-tuning saw only
when it was trained with ``wordings="all"``).

    python bench/bench_task_plugin.py PACK --probes resources/demo/geography/probes_heldout.jsonl \
        --general PACK.plugin --task PACK.task-plugin [--paraphrases] [--threads 2] [--write]

Conditions, scored teacher-forced on the same probes (``engine/evaluate/plugin_scores.py``):
the bare reader, the general (mention-objective) plugin, the task-specific plugin.

With ``--gate`` (and ``--slot``, no ``--general``/``--task``): the answer-slot plugin with
its relation gate (``engine/mechanisms/plugins/gate.py``, calibrated on the training
probes by ``plugmem plugin-gate`` or at the end of task-tune) against the bare reader and
against the same plugin without the gate, per relation, and what the gate decided::

    python bench/bench_task_plugin.py PACK --probes .../probes_heldout.jsonl --slot PACK.slot-plugin --gate
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench._plugin_probes import comparison_table, heldout_probes  # noqa: E402
from bench._results import publish  # noqa: E402
from engine.evaluate.plugin_scores import AnswerScore, score_answers  # noqa: E402
from engine.mechanisms.plugins.answer_slot import AnswerSlotInjector, load_slot_plugin  # noqa: E402
from engine.mechanisms.plugins.attach import PluginInjector  # noqa: E402
from engine.mechanisms.plugins.io import load_plugin  # noqa: E402
from engine.store import Pack  # noqa: E402


def _training_line(name: str, plugin) -> str:
    t = plugin.training or {}
    cfg = t.get("config", {})
    keys = ("lr", "batch", "max_steps", "epochs", "wordings", "hidden", "start")
    return (f"{name}: objective {t.get('objective', 'mention')}, {t.get('steps_done', '?')} steps (best at "
            f"{t.get('best_step', '?')}), {t.get('seconds', '?')} s; "
            + ", ".join(f"{k} {cfg[k]}" for k in keys if k in cfg))


def _generate_check(reader, probes, task, slot, a) -> int:
    """Generation-based accuracy on a sample: does the teacher-forced figure hold when the reader writes?"""
    import numpy as np

    from engine.evaluate.plugin_scores import answer_text
    from engine.probe_files import is_correct

    pick = sorted(np.random.default_rng(0).choice(len(probes), size=min(a.generate, len(probes)), replace=False).tolist())
    pr = [probes[i] for i in pick]
    inj = AnswerSlotInjector(reader, slot) if slot else PluginInjector(reader, task)
    n_tok = max(len(reader.tokenizer(answer_text(p["answer"]), add_special_tokens=False)["input_ids"]) for p in pr) + 1
    t0 = time.perf_counter()
    bare = inj.generate([p["prompt"] for p in pr], max_new_tokens=n_tok, enabled=False, batch_size=a.batch)
    withp = inj.generate([p["prompt"] for p in pr], max_new_tokens=n_tok, batch_size=a.batch)
    ok_b = [is_correct(g, p["answer"]) for g, p in zip(bare, pr)]
    ok_p = [is_correct(g, p["answer"]) for g, p in zip(withp, pr)]
    won = sum(1 for b, q in zip(ok_b, ok_p) if q and not b)
    lost = sum(1 for b, q in zip(ok_b, ok_p) if b and not q)
    from engine.evaluate.plugin_scores import sign_test

    name = "slot" if slot else "task"
    print(f"greedy generation, probe rule, seeded sample of {len(pr)} held-out-entity probes: bare reader "
          f"{sum(ok_b) / len(pr):.3f}, {name} plugin {sum(ok_p) / len(pr):.3f} ({won} won / {lost} lost, sign test "
          f"p = {sign_test(won, lost):.2g}); {time.perf_counter() - t0:.0f} s")
    for p, b, q in list(zip(pr, bare, withp))[:8]:
        print(f"  {p['prompt']!r} -> reader {b!r} | {name} {q!r} (gold {p['answer']!r})")
    return 0


def _gate_table(probes, decisions) -> str:
    from bench._plugin_probes import groups

    lines = ["| group | n | plugin applied | mean similarity | nearest trained relation (most often) |",
             "|---|---|---|---|---|"]
    g = groups(probes)
    for key in ["all"] + sorted(k for k in g if k not in ("all", "entity answers", "literal answers")):
        idx = g[key]
        ds = [decisions[i] for i in idx]
        near = [d.relation for d in ds]
        top = max(set(near), key=near.count)
        lines.append(f"| {key} | {len(idx)} | {sum(d.applied for d in ds)}/{len(idx)} | "
                     f"{sum(d.score for d in ds) / len(ds):.3f} | {top} ({near.count(top)}) |")
    return "\n".join(lines)


def _gate_bench(reader, probes, slot, a, t0) -> int:
    """The slot plugin with its relation gate vs the bare reader and vs the ungated plugin."""
    from engine.mechanisms.plugins.answer_slot import SlotPlugin

    if not isinstance(slot, SlotPlugin) or slot.gate is None:
        raise SystemExit(f"{a.slot}: not an answer-slot plugin with a relation gate (`plugmem plugin-gate "
                         f"{a.slot} --probes probes_train.jsonl` calibrates one)")
    prompts, answers = [p["prompt"] for p in probes], [p["answer"] for p in probes]
    gated = PluginInjector(reader, slot)
    decisions = []
    for p in prompts:
        d = gated.gate_decisions(p)
        if len(d) != 1:
            raise SystemExit(f"{p!r}: the plugin links no subject, so the gate has nothing to decide")
        decisions.append(d[0])
    t_gate = time.perf_counter()
    ungated = PluginInjector(reader, slot, gates=False)
    off = score_answers(ungated, prompts, answers, enabled=False, batch_size=a.batch)
    on = score_answers(ungated, prompts, answers, batch_size=a.batch)
    # Where the gate refuses, the plugin injects nothing: the bare reader's score (checked below on a few).
    gsc = [o if d.applied else b for d, o, b in zip(decisions, on, off)]
    check = [i for i, d in enumerate(decisions) if not d.applied][:8] + [i for i, d in enumerate(decisions)
                                                                         if d.applied][:8]
    direct = score_answers(gated, [prompts[i] for i in check], [answers[i] for i in check], batch_size=a.batch)
    worst = max((abs(x.logp - gsc[i].logp) for x, i in zip(direct, check)), default=0.0)
    if worst > 1e-3:
        raise SystemExit(f"the gated injector disagrees with the selection by {worst:.2g} nats")
    secs = time.perf_counter() - t0
    g = slot.training.get("gate") or {}
    text = f"""### bench_task_plugin.py --gate — the answer-slot plugin offered only for its trained relations (issue 21)

Machine: the shared 2-core dev box ({platform.processor() or platform.machine()}, other engineers' jobs running: times are upper bounds). {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC. Reader: {reader.fingerprint.get('name')}, frozen, CPU, {torch.get_num_threads()} thread(s). Pack: {Path(a.pack).name}; {len(probes)} scored prompts from {a.probes} (held-out entities{f', seeded sample of {a.sample}' if a.sample else ''}). Teacher-forced scores as above.

- {_training_line('slot', slot)}
- gate: threshold {g.get('threshold')} (cosine of the masked question to the nearest trained template, key encoder), calibrated on {', '.join(g.get('probes', []))}: passes {g.get('passed')} of {g.get('n_same')} other wordings of the trained relations, refuses {g.get('refused')} of {g.get('n_other')} training questions scored against the other relations' templates (target {g.get('refuse_target')})
- gated scores: the plugin's where the gate applies it, the bare reader's elsewhere (checked against the gated injector on {len(check)} probes: at most {worst:.1g} nats apart)

**What the gate decided**

{_gate_table(probes, decisions)}

**answer-slot plugin with the gate vs the bare reader**

{comparison_table(probes, off, gsc, 'reader', 'gated')}

**answer-slot plugin without the gate vs the bare reader**

{comparison_table(probes, off, on, 'reader', 'slot')}

{2 * len(probes) + len(check)} rows scored, {secs:.0f} s (gate decisions {t_gate - t0:.0f} s from the start, reader load included).
"""
    publish(text, a.write)
    if a.json:
        rows = [{**{k: p[k] for k in ("prompt", "answer", "relation", "subject", "split", "paraphrase", "entity_answer")},
                 "reader": o.to_dict(), "slot": s_.to_dict(), "gate": d.to_dict()}
                for p, o, s_, d in zip(probes, off, on, decisions)]
        Path(a.json).write_text(json.dumps(rows, indent=1, ensure_ascii=False), encoding="utf-8")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pack")
    ap.add_argument("--probes", required=True)
    ap.add_argument("--general", help="general plugin folder")
    ap.add_argument("--task", help="task-specific plugin folder")
    ap.add_argument("--gate", action="store_true", help="the slot plugin with and without its relation gate")
    ap.add_argument("--sample", type=int, default=0, metavar="N", help="a seeded sample of N probes (0: all)")
    ap.add_argument("--slot", help="task-specific answer-slot plugin folder (format version 2), scored too")
    ap.add_argument("--paraphrases", action="store_true")
    ap.add_argument("--reader")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--baseline", help="scores of the bare reader and the general plugin from "
                    "bench_plugin_diagnosis.py --json (same plugin): reused instead of recomputed")
    ap.add_argument("--generate", type=int, default=0, metavar="N",
                    help="only check a seeded sample of N probes by greedy generation (the probe rule of "
                         "`plugmem eval`), bare reader vs the slot (else task) plugin, and stop")
    ap.add_argument("--json", help="write every probe's scores here")
    ap.add_argument("--write", action="store_true", help="append the section to bench/RESULTS.md")
    a = ap.parse_args(argv)
    if a.gate:
        if not a.slot:
            ap.error("--gate needs --slot")
    elif not (a.general and a.task):
        ap.error("--general and --task are needed (or --slot with --gate)")
    if a.threads:
        torch.set_num_threads(a.threads)
    from engine.reader.reader import load_reader

    t0 = time.perf_counter()
    reader = load_reader(a.reader)
    with Pack.open(a.pack, readonly=True) as pack:
        probes = heldout_probes(a.probes, pack, paraphrases=a.paraphrases)
        if a.sample and len(probes) > a.sample:
            import numpy as np

            keep = np.random.default_rng(0).choice(len(probes), size=a.sample, replace=False)
            probes = [probes[i] for i in sorted(keep.tolist())]
        if a.gate:
            return _gate_bench(reader, probes, load_plugin(a.slot, reader, pack), a, t0)
        general = load_plugin(a.general, reader, pack)
        task = load_plugin(a.task, reader, pack)
        slot = load_slot_plugin(a.slot, reader, pack) if a.slot else None
    if a.generate:
        return _generate_check(reader, probes, task, slot, a)
    prompts, answers = [p["prompt"] for p in probes], [p["answer"] for p in probes]
    gi, ti = PluginInjector(reader, general), PluginInjector(reader, task)
    known: dict = {}
    if a.baseline:
        base = json.loads(Path(a.baseline).read_text(encoding="utf-8"))
        if Path(base["plugin"]).resolve() != Path(a.general).resolve():
            raise SystemExit(f"{a.baseline} scored the plugin {base['plugin']}, not {a.general}")
        known = {(r["prompt"], r["answer"]): r for r in base["probes"]}
    todo = [i for i, key in enumerate(zip(prompts, answers)) if key not in known]
    off: list = [None] * len(probes)
    gen: list = [None] * len(probes)
    for i, key in enumerate(zip(prompts, answers)):
        if key in known:
            off[i], gen[i] = AnswerScore(**known[key]["reader"]), AnswerScore(**known[key]["general"])
    if todo:
        sub_p, sub_a = [prompts[i] for i in todo], [answers[i] for i in todo]
        for i, o, g in zip(todo, score_answers(gi, sub_p, sub_a, enabled=False, batch_size=a.batch),
                           score_answers(gi, sub_p, sub_a, batch_size=a.batch)):
            off[i], gen[i] = o, g
    tsk = score_answers(ti, prompts, answers, batch_size=a.batch)
    slt = score_answers(AnswerSlotInjector(reader, slot), prompts, answers, batch_size=a.batch) if slot else None
    secs = time.perf_counter() - t0
    sections = []
    for label, sel in (("probes (the prompt wording)", [i for i, p in enumerate(probes) if not p["paraphrase"]]),
                       ("paraphrases", [i for i, p in enumerate(probes) if p["paraphrase"]])):
        if not sel:
            continue
        pr = [probes[i] for i in sel]
        o, g, t = [off[i] for i in sel], [gen[i] for i in sel], [tsk[i] for i in sel]
        if slt is not None:
            sl = [slt[i] for i in sel]
            sections.append(f"**{label}: answer-slot plugin vs the bare reader**\n\n"
                            f"{comparison_table(pr, o, sl, 'reader', 'slot')}\n\n"
                            f"**{label}: answer-slot vs task-specific plugin**\n\n"
                            f"{comparison_table(pr, t, sl, 'task', 'slot')}")
        sections.append(f"**{label}: task-specific plugin vs the bare reader**\n\n{comparison_table(pr, o, t, 'reader', 'task')}"
                        f"\n\n**{label}: task-specific vs general plugin**\n\n{comparison_table(pr, g, t, 'general', 'task')}"
                        f"\n\n**{label}: general plugin vs the bare reader**\n\n{comparison_table(pr, o, g, 'reader', 'general')}")
    body = "\n\n".join(sections)
    text = f"""### bench_task_plugin.py — task-specific map-tuning on held-out entities (issue 21)

Machine: the shared 2-core dev box ({platform.processor() or platform.machine()}, other engineers' jobs running: times are upper bounds). {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC. Reader: {reader.fingerprint.get('name')}, frozen, CPU. Pack: {Path(a.pack).name}; {len(probes)} scored prompts from {a.probes} (held-out entities{', with paraphrases' if a.paraphrases else ''}). Teacher-forced scores: acc = greedy gives exactly the gold tokens; won/lost = probes turned right/wrong, p = two-sided sign test; up/down = probes whose log p(gold) rose/fell; MRR of the gold first token.

- {_training_line('general', general)}
- {_training_line('task', task)}
{f"- {_training_line('slot', slot)}" if slot else ""}

{body}

{len(probes) * (2 if slot else 1) + 2 * len(todo)} rows scored in this run ({len(probes) - len(todo)} probes' reader and general scores reused from {a.baseline}), {secs:.0f} s.
"""
    publish(text, a.write)
    if a.json:
        rows = [{**{k: p[k] for k in ("prompt", "answer", "relation", "subject", "split", "paraphrase", "entity_answer")},
                 "reader": o.to_dict(), "general": g.to_dict(), "task": t.to_dict(),
                 **({"slot": slt[i].to_dict()} if slt else {})}
                for i, (p, o, g, t) in enumerate(zip(probes, off, gen, tsk))]
        Path(a.json).write_text(json.dumps(rows, indent=1, ensure_ascii=False), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
