"""Answers that end at the end of the copied object (issue 20): the span stop against the
repeat stop, in the same run.

    python bench/bench_answer_ends.py --set validation [--n 40] [--edits 12] [--locality 12]
    python bench/bench_answer_ends.py --set heldout [--n 15] [--domains geography,airports]

* ``--set validation`` (the demo's held-out probes in their own wordings and paraphrases,
  the samples of ``bench_dpm_eval.py``; where the rule was checked): per rule, the
  ``bench_dpm_eval.py`` dpm columns on a seeded subset (held-out-relation and
  held-out-entity accuracy, edit efficacy, edit paraphrases, locality) and the answer
  lengths of the probes' prompts and paraphrases decoded with up to 24 tokens.
* ``--set heldout`` (reported once): ``bench_wording.py``'s held-out relations × held-out
  wordings (and the third domain, airports), answer lengths and verdicts with up to 24
  tokens, per rule.
Rules (``bench_wording.RULES``): "sentence_or_repeat" (before) and "span" (shipped).
Figures: n answers; "right" = prefix verdict; "= object" = share of right answers that are
the object and at most punctuation; "longer" = share of all answers longer than their object
plus punctuation; examples of right answers that still run on.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench._results import pct, sample  # noqa: E402
from bench.bench_wording import ends_clean, files_of, longer, pack_of, stop_rule, worded  # noqa: E402
from bench._wordings import KINDS  # noqa: E402
from engine.demo import ensure_demo_workspace  # noqa: E402
from engine.evaluate import evaluate_edits, evaluate_probes, read_edits, read_probes  # noqa: E402
from engine.evaluate.probes import answer_batch  # noqa: E402
from engine.explain import Predictor  # noqa: E402
from engine.memory import Memory  # noqa: E402
from engine.mechanisms import dpm  # noqa: E402
from engine.probe_files import Probe, is_correct  # noqa: E402
from engine.resources import demo_dir  # noqa: E402
from engine.session import open_session  # noqa: E402

RULES = ("sentence_or_repeat", "span")


def ends(predictor, mem, prompts: list[tuple[str, str]], k: int, hits=None) -> tuple[dict, list]:
    """Answer lengths of ``(prompt, expected)`` pairs decoded with up to 24 tokens."""
    got, hits = answer_batch(predictor, [p for p, _ in prompts], [mem], "dpm", k=k, max_new_tokens=24, hits=hits)
    right = [(g, e) for g, (_, e) in zip(got, prompts) if is_correct(g, e)]
    return {"n": len(got), "right": len(right),
            "clean_of_right": round(sum(ends_clean(g, e) for g, e in right) / max(1, len(right)), 4),
            "longer": round(sum(longer(g, e) for g, (_, e) in zip(got, prompts)) / max(1, len(got)), 4),
            "run_on": [g for g, e in right if not ends_clean(g, e)][:6],
            "answers": got}, hits


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", choices=("validation", "heldout"), required=True)
    ap.add_argument("--n", type=int, default=40, help="probes per domain (validation: held-out relations; "
                                                      "held-out: each asked in 4 wordings)")
    ap.add_argument("--entity", type=int, default=20, help="validation: held-out-entity probes per domain")
    ap.add_argument("--edits", type=int, default=12)
    ap.add_argument("--locality", type=int, default=12)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--domains", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json-out")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    domains = (a.domains or ("geography,chemistry" if a.set == "validation" else "geography,chemistry,airports")).split(",")
    t0, load0 = time.perf_counter(), os.getloadavg()
    ws = ensure_demo_workspace()
    predictor = Predictor.from_session(open_session(branch=dpm.default_branch_path()))
    report: dict = {"set": a.set, "k": a.k, "domains": {}}
    for domain in domains:
        out = report["domains"][domain] = {}
        if a.set == "validation":
            held = read_probes(demo_dir() / domain / "probes_heldout.jsonl")
            rel = sample([p for p in held if p.split in ("heldout_relation", "heldout_both")], a.n, 1)
            ent = sample([p for p in held if p.split == "heldout_entity"], a.entity, 2)
            loc = sample([p for p in held if p.split == "heldout_entity"], a.locality + 50, 3)
            edits = read_edits(demo_dir() / domain / "edits.jsonl")[: a.edits]
            prompts = [(q, p.answer) for p in rel + ent for q in [p.prompt, *p.paraphrases]]
            pack = next(p for p in ws["packs"] if Path(p).stem == domain)
        else:
            src = files_of(domain)
            raw = [json.loads(line) for line in open(src / "probes.jsonl", encoding="utf-8")]
            probes = read_probes(src / "probes.jsonl")
            for p, r in zip(probes, raw):
                p.kinds = r["kinds"]
            picked = sample(probes, a.n, 1)
            sets = [[Probe(p.prompt, p.answer, [], p.relation, p.subject, p.split, p.where) for p in picked]]
            sets += [worded(picked, kind) for kind in KINDS]
            prompts = [(p.prompt, p.answer) for ps in sets for p in ps]
            pack = pack_of(domain, ws)
        with Memory.open(pack) as mem:
            hits = None
            for rule in RULES:
                r = out[rule] = {}
                t = time.perf_counter()
                with stop_rule(rule):
                    r["ends"], hits = ends(predictor, mem, prompts, a.k, hits)
                    if a.set == "validation":
                        for name, ps in (("heldout_relation", rel), ("heldout_entity", ent)):
                            res = evaluate_probes(predictor, [mem], ps, "dpm", k=a.k, paraphrases=False)
                            r[name] = {key: res[key] for key in ("n", "accuracy", "correct_by_probe")}
                        e = evaluate_edits(predictor, [mem], edits, loc, "dpm", k=a.k, locality_limit=a.locality)
                        r["edits"] = {key: e[key] for key in ("n", "efficacy", "generalization", "locality",
                                                              "n_locality", "restored")}
                shown = {key: v for key, v in r["ends"].items() if key != "answers"}
                print(f"{domain} {rule}: ends {shown}", {key: v for key, v in r.items() if key != "ends"},
                      f"[{time.perf_counter() - t:.0f} s]", flush=True)
            changed = [(q, x, y) for (q, _), x, y in zip(prompts, out[RULES[0]]["ends"]["answers"],
                                                         out[RULES[1]]["ends"]["answers"]) if x != y]
            out["changed"] = {"n": len(changed), "examples": changed[:8]}
            print(f"{domain}: {len(changed)} of {len(prompts)} answers changed; e.g. {changed[:6]}", flush=True)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    report["load"] = [round(load0[0], 1), round(os.getloadavg()[0], 1)]
    report["machine"] = f"torch {torch.__version__}, {a.threads} thread(s), {platform.machine()}"
    report["finished"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    for d, out in report["domains"].items():
        for rule in RULES:
            r = out[rule]
            row = [d, rule, r["ends"]["n"], f"{r['ends']['right']}", pct(r["ends"]["clean_of_right"]),
                   pct(r["ends"]["longer"])]
            if a.set == "validation":
                row += [pct(r["heldout_relation"]["accuracy"]), pct(r["heldout_entity"]["accuracy"]),
                        pct(r["edits"]["efficacy"]), pct(r["edits"]["generalization"]), pct(r["edits"]["locality"])]
            print("| " + " | ".join(str(x) for x in row) + " |")
    print(f"{report['seconds']:.0f} s; load {report['load']}; {report['machine']}; {report['finished']}")
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(report, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
