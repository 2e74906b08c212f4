"""Knowledge-plugin input building: vectorised vs a per-token Python loop, in the same run.

Rows are real: the geography demo facts, tokenised by the reader's tokenizer, with the
plugin vector inserted before every linked entity mention (entities and aliases from
``resources/demo/geography/triples.jsonl``). Measured:

* input building alone (token ids + insertions -> left-padded ``inputs_embeds``), per batch;
* a whole map-tuning step (build + reader forward + backward to the mapping) with each builder.

    .venv/bin/python bench/bench_plugin_inputs.py [--tiny] [--steps 4] [--sizes 16,64] [--write]

``--tiny`` uses the tiny random reader (same tokenizer) instead of SmolLM2;
``--write`` appends the result table to bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from engine.mechanisms.plugins.embeddings import EntityEmbeddings  # noqa: E402
from engine.mechanisms.plugins.entities import EntityLinker, import_triples  # noqa: E402
from engine.mechanisms.plugins.map_tune import make_examples  # noqa: E402
from engine.mechanisms.plugins.attach import build_inputs_embeds, build_inputs_embeds_loop  # noqa: E402
from engine.mechanisms.plugins.module import KnowledgePlugin  # noqa: E402
from engine.store import Pack  # noqa: E402

DEMO = ROOT / "resources" / "demo" / "geography"


def _examples(reader, tmp: Path):
    with Pack.create(tmp / "g.plugmem") as pack:
        import_triples(pack, [DEMO / "triples.jsonl"])
        linker = EntityLinker.from_pack(pack)
        ents = pack.entities()
    texts = [json.loads(line)["text"] for line in (DEMO / "facts.jsonl").read_text(encoding="utf-8").splitlines()]
    exs = [e for e, _ in make_examples(reader.tokenizer, texts, linker, lambda e: True, max_tokens=48, with_facts=True)]
    rng = np.random.default_rng(0)
    emb = EntityEmbeddings([e["id"] for e in ents], [e["name"] for e in ents],
                           rng.normal(size=(len(ents), 64)).astype(np.float32), "imported")
    return exs, KnowledgePlugin.create(reader, emb)


def _batch_args(batch, plugin, reader):
    ins_row = torch.tensor([i for i, ex in enumerate(batch) for _ in ex.ins_tok], dtype=torch.long)
    ins_tok = torch.tensor([t for ex in batch for t in ex.ins_tok], dtype=torch.long)
    ents = [e for ex in batch for e in ex.ins_ent]
    return [ex.ids for ex in batch], ins_row, ins_tok, ents


def _time(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def bench_build(reader, plugin, exs, batch_size: int, batches: int) -> dict:
    emb = reader.model.get_input_embeddings()
    rng = np.random.default_rng(batch_size)
    picks = [[exs[i] for i in rng.choice(len(exs), batch_size, replace=False)] for _ in range(batches)]
    res = {}
    for name, builder in (("vectorised", build_inputs_embeds), ("per-token loop", build_inputs_embeds_loop)):
        times = []
        for b in picks:
            rows, ir, it, ents = _batch_args(b, plugin, reader)
            with torch.no_grad():
                vec = plugin.vectors(ents, reader.device)
                times += _time(lambda: builder(emb, rows, ir, it, vec, 2), 1)
        res[name] = statistics.median(times)
    with torch.no_grad():  # the same result
        rows, ir, it, ents = _batch_args(picks[0], plugin, reader)
        vec = plugin.vectors(ents, reader.device)
        a = build_inputs_embeds(emb, rows, ir, it, vec, 2)
        b = build_inputs_embeds_loop(emb, rows, ir, it, vec, 2)
        assert torch.equal(a.inputs_embeds, b.inputs_embeds) and torch.equal(a.token_col, b.token_col)
    return res


def bench_step(reader, plugin, exs, batch_size: int, steps: int) -> dict:
    """Seconds per map-tuning step (build + forward + backward on whole sentences) with each builder."""
    emb = reader.model.get_input_embeddings()
    opt = torch.optim.Adam(plugin.mapping.parameters(), lr=1e-3)
    rng = np.random.default_rng(7)
    picks = [[exs[i] for i in rng.choice(len(exs), batch_size, replace=False)] for _ in range(steps)]
    builders = (("vectorised", build_inputs_embeds), ("per-token loop", build_inputs_embeds_loop))
    times: dict[str, list[float]] = {n: [] for n, _ in builders}
    build_times: dict[str, list[float]] = {n: [] for n, _ in builders}
    for b in picks:  # the two builders alternate on the same batches, so load drift hits both alike
        for name, builder in builders:
            t0 = time.perf_counter()
            rows, ir, it, ents = _batch_args(b, plugin, reader)
            vec = plugin.vectors(ents, reader.device)
            built = builder(emb, rows, ir, it, vec, 2)
            t1 = time.perf_counter()
            h = reader.model.model(**built.model_kwargs(), use_cache=False).last_hidden_state
            r = [i for i, ex in enumerate(b) for _ in ex.mention_tgt]
            t = [x for ex in b for x in ex.mention_tgt]
            cols = built.token_col[torch.tensor(r), torch.tensor(t)] - 1
            logits = reader.model.lm_head(h[torch.tensor(r), cols])
            loss = torch.nn.functional.cross_entropy(logits, torch.tensor([b[i].ids[j] for i, j in zip(r, t)]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            times[name].append(time.perf_counter() - t0)
            build_times[name].append(t1 - t0)
    return {n: {"step_s": statistics.median(times[n]), "build_s": statistics.median(build_times[n])} for n, _ in builders}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true", help="tiny random reader instead of SmolLM2")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sizes", default="16,64", help="comma-separated batch sizes")
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.tiny:
        from engine.reader.tiny import make_tiny_reader

        reader = make_tiny_reader(0)
    else:
        from engine.reader import load_reader

        reader = load_reader()
    with tempfile.TemporaryDirectory() as tmp:
        exs, plugin = _examples(reader, Path(tmp))
    lens = [len(e.ids) for e in exs]
    ins = [len(e.ins_tok) for e in exs]
    lines = [f"### bench_plugin_inputs.py — {time.strftime('%Y-%m-%d %H:%M')} (torch {torch.__version__}, "
             f"{a.threads} threads, reader {reader.name}, {platform.machine()})", "",
             f"Rows: {len(exs):,} geography facts with linked mentions ({statistics.mean(lens):.1f} tokens and "
             f"{statistics.mean(ins):.2f} inserted vectors per row on average). Median over {a.batches} batches "
             f"(building) and {a.steps} steps (training: build + forward + backward, whole sentences).", "",
             "| batch | build vectorised ms | build per-token loop ms | × | step vectorised s | step loop s | steps/s vectorised | steps/s loop | build share of a loop step |",
             "|---|---|---|---|---|---|---|---|---|"]
    for bs in [int(x) for x in a.sizes.split(",")]:
        b = bench_build(reader, plugin, exs, bs, a.batches)
        s = bench_step(reader, plugin, exs, bs, a.steps)
        v, lp = s["vectorised"]["step_s"], s["per-token loop"]["step_s"]
        lines.append(f"| {bs} | {b['vectorised'] * 1e3:.2f} | {b['per-token loop'] * 1e3:.1f} | "
                     f"{b['per-token loop'] / b['vectorised']:.0f} | {v:.3f} | {lp:.3f} | {1 / v:.2f} | {1 / lp:.2f} | "
                     f"{s['per-token loop']['build_s'] / lp:.0%} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if a.write:
        with (ROOT / "bench" / "RESULTS.md").open("a", encoding="utf-8") as fh:
            fh.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
