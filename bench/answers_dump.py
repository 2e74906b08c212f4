"""Every answer path's output on a fixed sample, as JSON: to check a refactoring changes no answer.

    .venv/bin/python bench/answers_dump.py OUT.json [--n 12] [--k 5] [--variants dpm,context+plugins]
    diff <(python -m json.tool before.json) <(python -m json.tool after.json)

On the demo geography pack, the real reader and the shipped branch: ``Predictor.predict``
(with explanation: answers, leave-one-out deltas and weights) and ``answer_batch`` (the
evaluation's batched answers) in every mode, each also with a knowledge plugin (random
embeddings and mapping, seeded) on the pack's entities. Figures are written with repr
precision, so "identical" means bit for bit. Not a timing: see bench_predict.py for that.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from engine.demo import ensure_demo_workspace  # noqa: E402
from engine.evaluate import read_probes  # noqa: E402
from engine.evaluate.probes import answer_batch  # noqa: E402
from engine.explain import Predictor  # noqa: E402
from engine.memory import Memory  # noqa: E402
from engine.mechanisms.registry import MODES  # noqa: E402
from engine.resources import demo_dir  # noqa: E402
from engine.session import open_session  # noqa: E402


def plugin_for(reader, pack):
    """A seeded random plugin over ``pack``'s entities (None when the pack has none)."""
    from engine.mechanisms.plugins.embeddings import EntityEmbeddings
    from engine.mechanisms.plugins.module import KnowledgePlugin

    ents = pack.entities()
    if not ents:
        return None
    vecs = np.random.default_rng(0).normal(size=(len(ents), 16)).astype(np.float32)
    emb = EntityEmbeddings([e["id"] for e in ents], [e["name"] for e in ents], vecs, "imported")
    plugin = KnowledgePlugin.create(reader, emb, name="bench", seed=0)
    plugin.use_pack_aliases(pack)
    return plugin


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--n", type=int, default=12, help="probes")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", default="", help="only these, e.g. 'dpm,context+plugins' (default: every mode, "
                                                   "each without and with a plugin)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    ws = ensure_demo_workspace()
    pack_path = next(p for p in ws["packs"] if Path(p).stem == "geography")
    probes = read_probes(demo_dir() / "geography" / "probes_heldout.jsonl")[: a.n]
    session = open_session(device="cpu")
    predictor = Predictor.from_session(session)
    report: dict = {}
    with Memory.open(pack_path) as mem:
        plugin = plugin_for(session.reader, mem.pack)
        variants = [("", ())] + ([("+plugins", (plugin,))] if plugin is not None else [])
        wanted = set(a.variants.split(",")) if a.variants else None
        for mode in MODES:
            for suffix, plugins in variants:
                if wanted is not None and mode + suffix not in wanted:
                    continue
                recs = []
                for p in probes:
                    d = predictor.predict(p.prompt, [mem], mode=mode, k=a.k, max_new_tokens=8, plugins=plugins).to_dict()
                    d.pop("seconds", None)
                    recs.append(d)
                answers, _ = answer_batch(predictor, [p.prompt for p in probes], [mem], mode, k=a.k,
                                          max_new_tokens=8, batch_size=8, plugins=plugins)
                report[mode + suffix] = {"predict": recs, "answer_batch": answers}
                print(mode + suffix, [r["answer"] for r in recs][:4], flush=True)
                # written after each variant, so a long run that is stopped keeps what it did
                Path(a.out).write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")
    session.close()


if __name__ == "__main__":
    main()
