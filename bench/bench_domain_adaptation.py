"""The domain-adaptation table (PlugLM's first claim): a domain's held-out probes answered by
the reader alone, with the other domain's pack, with its own pack, and with both packs.

    .venv/bin/python bench/bench_domain_adaptation.py [--n 150] [--modes dpm,context]
                                                      [--domains geography,chemistry] [--append]

For each demo domain, a seeded sample of ``--n`` probes of ``probes_heldout.jsonl`` (all held-out
splits: relations, entities, both; the probes' own wording, no paraphrases), k = 5, greedy,
verdict = the probe rule (prefix match). The branch is the shipped one, trained on neither
domain's held-out relations; no condition trains anything: packs are only plugged.
Everything goes through ``engine.evaluate.answer_batch``, the code behind ``plugmem eval``.
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

from bench._results import pct, publish, sample  # noqa: E402
from engine.demo import ensure_demo_workspace  # noqa: E402
from engine.evaluate import read_probes  # noqa: E402
from engine.evaluate.probes import answer_batch, is_gold, max_tokens_for  # noqa: E402
from engine.explain import Predictor  # noqa: E402
from engine.memory import Memory  # noqa: E402
from engine.mechanisms import dpm  # noqa: E402
from engine.probe_files import is_correct  # noqa: E402
from engine.resources import demo_dir  # noqa: E402
from engine.session import open_session  # noqa: E402


def score(predictor, probes, memories, mode: str, k: int) -> dict:
    """Accuracy (and hit@k of a gold entry) of ``probes`` with ``memories`` plugged in ``mode``."""
    prompts = [p.prompt for p in probes]
    mnt = max_tokens_for(predictor.reader, [p.answer for p in probes])
    got, hits = answer_batch(predictor, prompts, memories, mode, k=k, max_new_tokens=mnt)
    right = [is_correct(g, p.answer) for g, p in zip(got, probes)]
    out = {"n": len(probes), "accuracy": sum(right) / len(probes), "correct_by_probe": "".join("01"[r] for r in right)}
    if memories:
        out["hit_at_k"] = sum(any(is_gold(h.entry, p) for _, h in hs) for hs, p in zip(hits, probes)) / len(probes)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=150, help="held-out probes per domain (seeded sample)")
    ap.add_argument("--modes", default="dpm,context")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--domains", default="geography,chemistry", help="whose held-out probes to ask")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=20)
    ap.add_argument("--json-out", help="also write all figures to this JSON file")
    ap.add_argument("--append", action="store_true", help="append the table to bench/RESULTS.md")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    modes = a.modes.split(",")
    t0 = time.perf_counter()
    ws = ensure_demo_workspace()
    packs = {Path(p).stem: p for p in ws["packs"]}
    predictor = Predictor.from_session(open_session(branch=dpm.default_branch_path() if "dpm" in modes else None))
    mems = {d: Memory.open(p) for d, p in packs.items()}
    report: dict = {"k": a.k, "n": a.n, "seed": a.seed, "domains": {}}
    try:
        for domain in a.domains.split(","):
            other = next(d for d in packs if d != domain)
            probes = sample(read_probes(demo_dir() / domain / "probes_heldout.jsonl"), a.n, a.seed)
            r = report["domains"][domain] = {"other": other}
            t = time.perf_counter()
            r["reader"] = score(predictor, probes, [], "none", a.k)
            print(f"{domain} reader alone: {pct(r['reader']['accuracy'])} [{time.perf_counter() - t:.0f} s]", flush=True)
            for mode in modes:
                for name, ms in (("other", [mems[other]]), ("own", [mems[domain]]),
                                 ("both", [mems[domain], mems[other]])):
                    t = time.perf_counter()
                    r[f"{mode}:{name}"] = s = score(predictor, probes, ms, mode, a.k)
                    print(f"{domain} {mode} {name}: {pct(s['accuracy'])} hit@{a.k} {pct(s.get('hit_at_k'))} "
                          f"[{time.perf_counter() - t:.0f} s]", flush=True)
    finally:
        for m in mems.values():
            m.close()
    report["seconds"] = round(time.perf_counter() - t0, 1)
    lines = [
        f"##### bench_domain_adaptation.py — {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC (torch "
        f"{torch.__version__}, {a.threads} thread(s), {platform.machine()}; branch {dpm.default_branch_path().name}; "
        f"k = {a.k}; n = {a.n} held-out probes per domain, seed {a.seed}; {report['seconds']:.0f} s)",
        "",
        "| held-out probes of | mode | reader alone | + other domain's pack | + own pack | + both packs | hit@k own / both |",
        "|---|---|---|---|---|---|---|",
    ]
    for domain, r in report["domains"].items():
        for mode in modes:
            lines.append(
                f"| {domain} (n = {r['reader']['n']}) | {mode} | {pct(r['reader']['accuracy'])} | "
                f"{pct(r[f'{mode}:other']['accuracy'])} ({r['other']}) | {pct(r[f'{mode}:own']['accuracy'])} | "
                f"{pct(r[f'{mode}:both']['accuracy'])} | {pct(r[f'{mode}:own'].get('hit_at_k'))} / "
                f"{pct(r[f'{mode}:both'].get('hit_at_k'))} |")
    publish("\n".join(lines) + "\n", a.append)
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(report, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
