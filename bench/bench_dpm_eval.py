"""Plug-in memory quality on the demo data: the trained DPM branch against the context baseline.

    .venv/bin/python bench/bench_dpm_eval.py [--relation 100] [--entity 50] [--edits 50] [--locality 50]
                                             [--modes dpm,context] [--branch DIR] [--paraphrases] [--append]

For each demo domain (geography, chemistry), with the domain's pack plugged (k = 5):
* probes on relations held out from the branch's training (``split`` heldout_relation or
  heldout_both; a seeded sample of ``--relation`` per domain) and on held-out entities
  of training relations (``--entity`` per domain): accuracy with / without memory,
  retrieval hit@k;
* the first ``--edits`` edits of ``edits.jsonl`` (counterfactual objects on held-out
  entities), applied through the normal edit path and undone: efficacy, paraphrase
  generalisation, locality on ``--locality`` held-out-entity probes about other subjects.
Everything uses engine.evaluate, the code behind ``plugmem eval`` / ``eval-edits``.

Targets (issue 3): with the branch on held-out relations, accuracy >= 97 %, edit efficacy
>= 95 %, paraphrases >= 90 %, locality >= 99 %.
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

from engine.demo import ensure_demo_workspace  # noqa: E402
from engine.evaluate import evaluate_edits, evaluate_probes, read_edits, read_probes  # noqa: E402
from engine.explain import Predictor  # noqa: E402
from engine.memory import Memory  # noqa: E402
from engine.mechanisms import dpm  # noqa: E402
from bench._results import pct, publish, sample  # noqa: E402
from engine.resources import demo_dir  # noqa: E402
from engine.session import open_session  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--relation", type=int, default=100, help="held-out-relation probes per domain")
    ap.add_argument("--entity", type=int, default=50, help="held-out-entity probes per domain")
    ap.add_argument("--edits", type=int, default=50, help="edits per domain")
    ap.add_argument("--locality", type=int, default=50, help="locality probes per domain")
    ap.add_argument("--modes", default="dpm,context")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--paraphrases", action="store_true", help="also score the probes' paraphrases")
    ap.add_argument("--branch", help="branch folder (default: the shipped one)")
    ap.add_argument("--workspace", help="demo workspace folder (default: the app's)")
    ap.add_argument("--domains", default="geography,chemistry")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json-out", help="also write all figures to this JSON file")
    ap.add_argument("--append", action="store_true", help="append the table to bench/RESULTS.md")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    modes = a.modes.split(",")

    t0 = time.perf_counter()
    ws = ensure_demo_workspace(folder=Path(a.workspace) if a.workspace else None)
    branch_dir = Path(a.branch) if a.branch else dpm.default_branch_path()
    predictor = Predictor.from_session(open_session(branch=branch_dir if "dpm" in modes else None))
    report: dict = {"branch": str(branch_dir), "k": a.k, "domains": {}}
    for domain in a.domains.split(","):
        pack = next(p for p in ws["packs"] if Path(p).stem == domain)
        held = read_probes(demo_dir() / domain / "probes_heldout.jsonl")
        rel = sample([p for p in held if p.split in ("heldout_relation", "heldout_both")], a.relation, 1)
        ent = sample([p for p in held if p.split == "heldout_entity"], a.entity, 2)
        loc = sample([p for p in held if p.split == "heldout_entity"], a.locality + 50, 3)
        edits = read_edits(demo_dir() / domain / "edits.jsonl")[: a.edits]
        out = report["domains"][domain] = {}
        with Memory.open(pack) as mem:
            for mode in modes:
                r = {}
                for name, probes in (("heldout_relation", rel), ("heldout_entity", ent)):
                    if probes:
                        t = time.perf_counter()
                        r[name] = evaluate_probes(predictor, [mem], probes, mode, k=a.k, paraphrases=a.paraphrases)
                        print(f"{domain} {mode} {name}: n={r[name]['n']} acc {pct(r[name]['accuracy'])} "
                              f"(without {pct(r[name]['accuracy_without_memory'])}), hit@{a.k} {pct(r[name]['hit_at_k'])} "
                              f"[{time.perf_counter() - t:.0f} s]", flush=True)
                if edits:
                    t = time.perf_counter()
                    r["edits"] = evaluate_edits(predictor, [mem], edits, loc, mode, k=a.k, locality_limit=a.locality)
                    e = r["edits"]
                    print(f"{domain} {mode} edits: n={e['n']} efficacy {pct(e['efficacy'])} (before {pct(e['efficacy_before'])}), "
                          f"paraphrase {pct(e['generalization'])}, locality {pct(e['locality'])} (n={e['n_locality']}), "
                          f"restored {e['restored']} [{time.perf_counter() - t:.0f} s]", flush=True)
                out[mode] = r
    report["seconds"] = round(time.perf_counter() - t0, 1)

    def cell(domain: str, mode: str, part: str, key: str) -> str:
        return pct(report["domains"][domain].get(mode, {}).get(part, {}).get(key))

    lines = [
        f"### bench_dpm_eval.py — {time.strftime('%Y-%m-%d %H:%M')} (torch {torch.__version__}, {a.threads} threads, "
        f"{platform.machine()}; branch {branch_dir.name}; k = {a.k}; {report['seconds']:.0f} s)",
        "",
        f"Samples per domain: {a.relation} held-out-relation probes, {a.entity} held-out-entity probes, "
        f"{a.edits} edits, {a.locality} locality probes (seeded).",
        "",
        "| domain | mode | held-out relations: acc (without) | hit@k | held-out entities: acc (without) | "
        "edit efficacy (before) | paraphrase | locality |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for domain in report["domains"]:
        for mode in modes:
            lines.append(
                f"| {domain} | {mode} | {cell(domain, mode, 'heldout_relation', 'accuracy')} "
                f"({cell(domain, mode, 'heldout_relation', 'accuracy_without_memory')}) | "
                f"{cell(domain, mode, 'heldout_relation', 'hit_at_k')} | "
                f"{cell(domain, mode, 'heldout_entity', 'accuracy')} ({cell(domain, mode, 'heldout_entity', 'accuracy_without_memory')}) | "
                f"{cell(domain, mode, 'edits', 'efficacy')} ({cell(domain, mode, 'edits', 'efficacy_before')}) | "
                f"{cell(domain, mode, 'edits', 'generalization')} | {cell(domain, mode, 'edits', 'locality')} |"
            )
    table = "\n".join(lines) + "\n"
    print()
    publish(table, a.append)
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(report, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
