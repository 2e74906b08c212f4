"""Knowledge prompting (PlugLM's third claim): does a pack answer held-out entities better once the
domain's *training* probes sit in it as worked examples?

    .venv/bin/python bench/bench_examples.py [--n 150] [--modes dpm,context] [--domains geography,chemistry]
                                             [--work DIR] [--append]

For each demo domain: the demo pack (facts only) against a copy of it into which
``probes_train.jsonl`` was imported as worked examples (``plugmem import PACK FILE
--as-examples``: one example per prompt and per paraphrase). Asked: a seeded sample of
``--n`` probes of split ``heldout_entity`` (training relations, entities in no training
file; their own wording), k = 5, greedy, prefix verdict. No held-out probe is ever an
example (the script checks that no example's subject is a held-out entity).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sqlite3
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
from engine.jobs.build_memory import build_memory  # noqa: E402
from engine.memory import Memory, index_dir_for  # noqa: E402
from engine.mechanisms import dpm  # noqa: E402
from engine.probe_files import is_correct  # noqa: E402
from engine.resources import demo_dir  # noqa: E402
from engine.session import open_session  # noqa: E402
from engine.store.examples import is_example  # noqa: E402


def with_examples(pack: Path, domain: str, work: Path) -> Path:
    """A copy of the demo pack with the domain's training probes imported as worked examples (made once)."""
    dest = work / f"{domain}+examples.plugmem"
    if not dest.exists():
        part = work / f"{domain}+examples.part.plugmem"
        for f in work.glob(part.name + "*"):
            shutil.rmtree(f) if f.is_dir() else f.unlink()
        src = sqlite3.connect(f"file:{pack}?mode=ro", uri=True)
        try:  # the backup API copies what the pack's WAL holds too, which copying the file would not
            dst = sqlite3.connect(part)
            src.backup(dst)
            dst.close()
        finally:
            src.close()
        res = build_memory({"pack": str(part), "inputs": [str(demo_dir() / domain / "probes_train.jsonl")],
                            "as_examples": True}, lambda *a: None, lambda: False)
        if res["errors"]:
            raise SystemExit(f"examples refused: {res['errors'][0]}")
        shutil.rmtree(index_dir_for(part), ignore_errors=True)  # rebuilt beside ``dest`` from the stored keys
        os.replace(part, dest)
        print(f"{domain}: {res['entries_added']:,} examples added in {res['seconds']:.0f} s", flush=True)
    return dest


def score(predictor, probes, mem, mode: str, k: int, wording: str = "own") -> dict:
    prompts = [p.prompt if wording == "own" else p.paraphrases[0] for p in probes]
    mnt = max_tokens_for(predictor.reader, [p.answer for p in probes])
    got, hits = answer_batch(predictor, prompts, [mem], mode, k=k, max_new_tokens=mnt)
    right = [is_correct(g, p.answer) for g, p in zip(got, probes)]
    n_ex = [sum(is_example(h.entry) for _, h in hs) for hs in hits]
    fails = [{"prompt": p.prompt, "answer": p.answer, "got": g, "retrieved": [h.entry.text for _, h in hs[:3]]}
             for p, g, hs, r in zip(probes, got, hits, right) if not r][:8]
    return {"n": len(probes), "accuracy": sum(right) / len(probes),
            "hit_at_k": sum(any(is_gold(h.entry, p) for _, h in hs) for hs, p in zip(hits, probes)) / len(probes),
            "examples_in_top_k": sum(n_ex) / len(probes), "correct_by_probe": "".join("01"[r] for r in right),
            "failures": fails}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=150, help="held-out-entity probes per domain (seeded sample)")
    ap.add_argument("--modes", default="dpm,context")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--domains", default="geography,chemistry")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=20)
    ap.add_argument("--wording", choices=["own", "paraphrase"], default="own",
                    help="ask each probe in its own prompt or in its first paraphrase (probes without one are left out)")
    ap.add_argument("--work", default=str(ROOT / "bench" / ".examples"), help="folder for the packs with examples")
    ap.add_argument("--json-out", help="also write all figures to this JSON file")
    ap.add_argument("--append", action="store_true", help="append the table to bench/RESULTS.md")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    modes = a.modes.split(",")
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    packs = {Path(p).stem: Path(p) for p in ensure_demo_workspace()["packs"]}
    predictor = Predictor.from_session(open_session(branch=dpm.default_branch_path() if "dpm" in modes else None))
    report: dict = {"k": a.k, "n": a.n, "seed": a.seed, "domains": {}}
    for domain in a.domains.split(","):
        held = [p for p in read_probes(demo_dir() / domain / "probes_heldout.jsonl") if p.split == "heldout_entity"
                and (a.wording == "own" or p.paraphrases)]
        train = read_probes(demo_dir() / domain / "probes_train.jsonl")
        leak = {p.subject for p in held} & {p.subject for p in train}
        if leak:
            raise SystemExit(f"{domain}: held-out entities among the training probes: {sorted(leak)[:5]}")
        probes = sample(held, a.n, a.seed)
        r = report["domains"][domain] = {}
        ex_pack = with_examples(packs[domain], domain, work)
        with Memory.open(packs[domain]) as plain, Memory.open(ex_pack) as ex:
            r["entries"], r["examples"] = plain.pack.count("active"), ex.pack.count("active") - plain.pack.count("active")
            for mode in modes:
                for name, mem in (("pack", plain), ("pack+examples", ex)):
                    t = time.perf_counter()
                    r[f"{mode}:{name}"] = s = score(predictor, probes, mem, mode, a.k, a.wording)
                    print(f"{domain} {mode} {name}: {pct(s['accuracy'])} hit@{a.k} {pct(s['hit_at_k'])} "
                          f"examples in top-{a.k} {s['examples_in_top_k']:.2f} [{time.perf_counter() - t:.0f} s]", flush=True)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    lines = [
        f"##### bench_examples.py — {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC (torch {torch.__version__}, "
        f"{a.threads} thread(s), {platform.machine()}; branch {dpm.default_branch_path().name}; k = {a.k}; "
        f"n = {a.n} held-out-entity probes per domain, seed {a.seed}, asked in their "
        f"{'own wording' if a.wording == 'own' else 'first paraphrase'}; {report['seconds']:.0f} s)",
        "",
        "| domain | mode | pack alone | pack + training probes as examples | change | hit@k alone / with | "
        "examples among the top k (mean) |",
        "|---|---|---|---|---|---|---|",
    ]
    for domain, r in report["domains"].items():
        for mode in modes:
            s0, s1 = r[f"{mode}:pack"], r[f"{mode}:pack+examples"]
            lines.append(
                f"| {domain} (n = {s0['n']}; {r['entries']:,} facts + {r['examples']:,} examples) | {mode} | "
                f"{pct(s0['accuracy'])} | {pct(s1['accuracy'])} | {100 * (s1['accuracy'] - s0['accuracy']):+.1f} pts | "
                f"{pct(s0['hit_at_k'])} / {pct(s1['hit_at_k'])} | {s1['examples_in_top_k']:.2f} |")
    publish("\n".join(lines) + "\n", a.append)
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(report, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
