"""Calibrate the DPM branch's ``output_scale`` and ``score_scale`` on a validation split (not the bench's test samples).

    .venv/bin/python bench/calibrate_dpm.py [--scales 1,1.5,2,3] [--score-scales 1] [--branch DIR] [--threads 2]

For each pair of scales and each demo domain (geography, chemistry), dpm mode, k = 5:
* held-out-relation probes OUTSIDE the seeded sample bench_dpm_eval.py tests on (60 of them);
* edits 51-100 of ``edits.jsonl`` (bench_dpm_eval.py tests on edits 1-50): efficacy,
  paraphrase generalisation, locality on 50 held-out-entity probes outside its locality sample.
Also the share of correct held-out-relation answers that run on into another word
("Tokyoarxiv": the answer is scored correct, the user sees junk). Prints one line per
pair and a table; the shipped branch's config.json carries the chosen pair: the best
mean of efficacy and paraphrase among pairs with locality >= 99 %, relation accuracy not
below the branch as trained and no more run-on answers. The baseline is (1.0, 1.0), the
branch as trained. ``output_scale`` multiplies what the branch adds; ``score_scale``
multiplies the retrieval score's weight in its attention. ``--lexical`` also sweeps the
weight of the lexical term of hybrid retrieval (``engine.explain.predict.LEXICAL_WEIGHT``).
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from engine.demo import ensure_demo_workspace  # noqa: E402
from engine.evaluate import evaluate_edits, evaluate_probes, read_edits, read_probes  # noqa: E402
from engine.explain import Predictor  # noqa: E402
import importlib  # noqa: E402

predict_mod = importlib.import_module("engine.explain.predict")  # the module (engine.explain.predict is also a function)
from engine.memory import Memory  # noqa: E402
from engine.mechanisms import dpm  # noqa: E402
from bench._results import publish  # noqa: E402
from engine.resources import demo_dir  # noqa: E402
from engine.session import open_session  # noqa: E402


def excluded(n_items: int, n: int, seed: int) -> set[int]:
    """The indices bench_dpm_eval.sample() picks (its test sample), to leave them out here."""
    if n >= n_items:
        return set(range(n_items))
    return set(random.Random(seed).sample(range(n_items), n))


def run_on(continuation: str, answer: str) -> bool:
    """The answer runs on into another word ("Tokyoarxiv", "+855arxiv"): what a user sees as junk."""
    text = continuation.lstrip()
    if not text.lower().startswith(answer.lower()):
        return False
    rest = text[len(answer):]
    return bool(rest) and rest[0].isalnum()


def split(domain: str) -> tuple[list, list, list]:
    held = read_probes(demo_dir() / domain / "probes_heldout.jsonl")
    rel_all = [p for p in held if p.split in ("heldout_relation", "heldout_both")]
    test = excluded(len(rel_all), 100, 1)
    rel = [p for i, p in enumerate(rel_all) if i not in test]
    rel = [rel[i] for i in sorted(random.Random(7).sample(range(len(rel)), min(60, len(rel))))]
    ent_all = [p for p in held if p.split == "heldout_entity"]
    test_loc = excluded(len(ent_all), 100, 3)
    loc = [p for i, p in enumerate(ent_all) if i not in test_loc][:80]
    edits = read_edits(demo_dir() / domain / "edits.jsonl")[50:100]
    return rel, loc, edits


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scales", default="1,1.5,2,3", help="output_scale values")
    ap.add_argument("--score-scales", default="1", help="score_scale values (each tried with every output_scale)")
    ap.add_argument("--lexical", default=None,
                    help="lexical weights of hybrid retrieval (engine.explain.predict.LEXICAL_WEIGHT; default: as shipped)")
    ap.add_argument("--candidates", default=None,
                    help="hybrid retrieval depth(s), x k (engine.explain.predict.CANDIDATES; default: as shipped)")
    ap.add_argument("--branch", help="branch folder (default: the shipped one)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--append", action="store_true", help="append the table to bench/RESULTS.md")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    ws = ensure_demo_workspace()
    folder = Path(a.branch) if a.branch else dpm.default_branch_path()
    session = open_session(branch=folder)
    reader, branch = session.reader, session.branch
    data = {d: split(d) for d in ("geography", "chemistry")}
    packs = {d: next(p for p in ws["packs"] if Path(p).stem == d) for d in data}
    rows = []
    lexical = [float(v) for v in a.lexical.split(",")] if a.lexical else [predict_mod.LEXICAL_WEIGHT]
    depths = [int(v) for v in a.candidates.split(",")] if a.candidates else [predict_mod.CANDIDATES]
    pairs = [(float(x), float(y), lx, c) for c in depths for lx in lexical
             for y in a.score_scales.split(",") for x in a.scales.split(",")]
    for s, ss, lx, cand in pairs:
        predict_mod.LEXICAL_WEIGHT, predict_mod.CANDIDATES = lx, cand
        for blk in branch.blocks.values():
            blk.output_scale, blk.score_scale = s, ss
        if branch.match is not None:
            branch.match.score_scale = ss
        pred = Predictor(reader, branch)
        res = {}
        for domain, (rel, loc, edits) in data.items():
            with Memory.open(packs[domain]) as mem:
                pr = evaluate_probes(pred, [mem], rel, "dpm", k=5, paraphrases=False)
                ed = evaluate_edits(pred, [mem], edits, loc, "dpm", k=5, locality_limit=50)
                runon = sum(run_on(pred.predict(p.prompt, [mem], k=5, explain=False).answer, p.answer) for p in rel)
            res[domain] = (pr["accuracy"], ed["efficacy"], ed["generalization"], ed["locality"], runon / len(rel))
        rows.append(((s, ss, lx, cand), res))
        print(s, ss, lx, cand, {d: [round(100 * x, 1) for x in v] for d, v in res.items()}, flush=True)

    def pct(x):
        return "–" if x is None else f"{100 * x:.1f} %"

    lines = [
        f"### calibrate_dpm.py — {time.strftime('%Y-%m-%d %H:%M')} ({platform.machine()}, torch {torch.__version__}; "
        f"branch {folder.name}; validation split; {time.perf_counter() - t0:.0f} s)",
        "",
        "| output_scale | score_scale | lexical × candidates | domain | held-out relations acc | edit efficacy | "
        "paraphrase | locality | answers running on |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (s, ss, lx, cand), res in rows:
        for d, (acc, eff, para, loc, ro) in res.items():
            lines.append(f"| {s:g} | {ss:g}{' (as trained)' if (s, ss) == (1.0, 1.0) else ''} | {lx:g} × {cand} | {d} | {pct(acc)} | "
                         f"{pct(eff)} | {pct(para)} | {pct(loc)} | {pct(ro)} |")
    table = "\n".join(lines) + "\n"
    print()
    publish(table, a.append)


if __name__ == "__main__":
    main()
