"""Why a knowledge plugin does (not) help the reader answer: checks before blaming the mapping (issue 21).

1. **The knowledge**: TransE tail prediction on the held-out-entity probe facts, filtered
   (the other true tails of the same head and relation are not counted as errors), over
   all nodes and over the tails seen with that relation (type-constrained); Hits@1 / @10
   per relation. These facts ARE in TransE's training graph (the pack's graph), so this
   measures whether the embedding stores them, not generalisation.
2. **The wiring**: teacher-forced scores of the gold answer (log p, rank of its first
   token, greedy match) with the plugin off, on, and with random vectors of the same norm
   in the same places; Δ log p and the number of changed top-1 tokens, sign tests.
3. **The loudness**: the mapped vectors' norm against the reader's token embeddings, and
   the nearest token embeddings of a few mapped vectors.

    python bench/bench_plugin_diagnosis.py PACK --probes resources/demo/geography/probes_heldout.jsonl \
        [--plugin DIR] [--embeddings DIR] [--threads 2] [--write]

PACK needs its triples, TransE embeddings (``<pack>.embeddings`` with its checkpoint.pt,
which holds the literal nodes too) and a plugin (``<pack>.plugin``).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench._plugin_probes import comparison_table, heldout_probes  # noqa: E402
from bench._results import publish  # noqa: E402
from engine.evaluate.plugin_scores import compare, score_answers  # noqa: E402
from engine.mechanisms.plugins.embeddings import default_embeddings_dir  # noqa: E402
from engine.mechanisms.plugins.attach import PluginInjector  # noqa: E402
from engine.mechanisms.plugins.io import default_plugin_dir, load_plugin  # noqa: E402
from engine.mechanisms.plugins.module import KnowledgePlugin  # noqa: E402
from engine.mechanisms.plugins.transe import load_graph  # noqa: E402
from engine.store import Pack  # noqa: E402


class RandomVectorPlugin(KnowledgePlugin):
    """The same plugin, but each entity's vector is a fixed random direction of the same norm:
    what the reader does with an inserted vector that carries no knowledge."""

    def __init__(self, base: KnowledgePlugin, seed: int = 0) -> None:
        super().__init__(base.mapping, base.embeddings, reader_fingerprint=base.reader_fingerprint,
                         aliases=base.aliases, name=base.name)
        g = torch.Generator().manual_seed(seed)
        v = torch.randn(len(base.embeddings), base.config.hidden_size, generator=g)
        self._random = v / v.norm(dim=-1, keepdim=True) * base.config.target_norm  # [n, d]

    def vectors(self, entity_ids, device):
        rows = torch.tensor([self._row[int(e)] for e in entity_ids], dtype=torch.long)
        return self._random[rows].to(device)


def link_prediction(pack, emb_dir: Path, probes) -> str:
    ck_path = emb_dir / "checkpoint.pt"
    if not ck_path.is_file():
        return f"(no {ck_path}: TransE's literal nodes are only in its checkpoint; link prediction skipped)"
    ck = torch.load(str(ck_path), map_location="cpu", weights_only=True)
    graph = load_graph(pack)
    ent, rel = ck["ent"].float(), ck["rel"].float()  # [nodes, dim], [relations, dim]
    p = int(ck["model"]["p_norm"])
    if len(ent) != graph.nodes:
        return f"({ck_path} has {len(ent)} nodes, the pack's graph {graph.nodes}: retrain TransE; skipped)"
    node = {n.lower(): i for i, n in enumerate(graph.names)}
    node.update({t.lower(): len(graph.entity_ids) + i for i, t in enumerate(graph.literals)})
    head = {n: i for i, n in enumerate(graph.names)}
    ridx = {r: i for i, r in enumerate(graph.relations)}
    true = defaultdict(set)  # (h, r) -> true tails
    by_rel = defaultdict(set)  # r -> tails seen with r
    for h, r, t in graph.triples.tolist():
        true[(h, r)].add(t)
        by_rel[r].add(t)
    rows = defaultdict(list)  # group -> (rank_all, rank_typed)
    missing = 0
    for pr in probes:
        h, r = head.get(pr["subject"]), ridx.get(pr["relation"])
        t = node.get(pr["answer"].strip().lower())
        if h is None or r is None or t is None or t not in true[(h, r)]:
            missing += 1
            continue
        d = (ent[h] + rel[r] - ent).norm(p=p, dim=-1)  # [nodes]
        others = torch.tensor(sorted(true[(h, r)] - {t}), dtype=torch.long)
        if len(others):
            d[others] = float("inf")  # filtered setting
        rank_all = int((d < d[t]).sum())
        typed = torch.tensor(sorted(by_rel[r]), dtype=torch.long)
        rank_typed = int((d[typed] < d[t]).sum())
        for key in ("all", "entity answers" if pr["entity_answer"] else "literal answers", pr["relation"]):
            rows[key].append((rank_all, rank_typed, len(by_rel[r])))
    lines = ["| group | n | Hits@1 | Hits@10 | MRR | Hits@1 typed | Hits@10 typed | candidates typed (mean) |",
             "|---|---|---|---|---|---|---|---|"]
    order = ["all", "entity answers", "literal answers"] + sorted(k for k in rows if k not in
                                                                   ("all", "entity answers", "literal answers"))
    for key in order:
        if key not in rows:
            continue
        a = np.array(rows[key], dtype=np.float64)
        bold = "**" if key == "all" else ""
        lines.append(f"| {bold}{key}{bold} | {len(a)} | {np.mean(a[:, 0] < 1):.3f} | {np.mean(a[:, 0] < 10):.3f} | "
                     f"{np.mean(1 / (1 + a[:, 0])):.3f} | {np.mean(a[:, 1] < 1):.3f} | {np.mean(a[:, 1] < 10):.3f} | "
                     f"{np.mean(a[:, 2]):.0f} |")
    lines.append(f"\n{len(probes) - missing} of {len(probes)} probes are a triple of the graph ({missing} are not: "
                 f"another spelling of the answer, or a fact the triples lack); {graph.nodes:,} nodes "
                 f"({len(graph.entity_ids)} entities, {len(graph.literals):,} literals), p = {p}.")
    return "\n".join(lines)


def loudness(reader, plugin: KnowledgePlugin, names=("France", "Japan", "Brazil", "Kenya")) -> str:
    w = reader.model.get_input_embeddings().weight.detach().float()  # [V, d]
    tn = w.norm(dim=-1)
    with torch.no_grad():
        v = plugin.mapping(plugin.entity_table(reader.device)).float().cpu()  # [n, d]
    vn = v.norm(dim=-1)
    wn = torch.nn.functional.normalize(w, dim=-1)
    cos = torch.nn.functional.normalize(v, dim=-1) @ wn.T  # [n, V]
    best = cos.max(-1).values
    lines = [f"token embeddings: mean norm {float(tn.mean()):.3f} (p5 {float(tn.quantile(0.05)):.3f}, "
             f"median {float(tn.median()):.3f}, p95 {float(tn.quantile(0.95)):.3f}); mapped vectors: mean norm "
             f"{float(vn.mean()):.3f} (min {float(vn.min()):.3f}, max {float(vn.max()):.3f}), fix_norm "
             f"{plugin.config.fix_norm}, target {plugin.config.target_norm:.3f}",
             f"cosine of a mapped vector to its nearest token embedding: mean {float(best.mean()):.3f} "
             f"(max {float(best.max()):.3f}); mean pairwise cosine between mapped vectors "
             f"{float((torch.nn.functional.normalize(v, dim=-1) @ torch.nn.functional.normalize(v, dim=-1).T).mean()):.3f}"]
    tok = reader.tokenizer
    for n in names:
        if n in plugin.embeddings.names:
            i = plugin.embeddings.names.index(n)
            top = cos[i].topk(5)
            lines.append(f"nearest tokens to M({n}): " + ", ".join(
                f"{tok.convert_ids_to_tokens(int(j))!r} {float(c):.2f}" for c, j in zip(top.values, top.indices)))
    return "\n".join(f"- {x}" for x in lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pack")
    ap.add_argument("--probes", required=True)
    ap.add_argument("--plugin")
    ap.add_argument("--embeddings")
    ap.add_argument("--reader")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--json", help="write every probe's scores here (bench_task_plugin.py --baseline reuses them)")
    ap.add_argument("--write", action="store_true", help="append the section to bench/RESULTS.md")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    from engine.reader.reader import load_reader

    t0 = time.perf_counter()
    reader = load_reader(a.reader)
    folder = Path(a.plugin) if a.plugin else default_plugin_dir(a.pack)
    emb_dir = Path(a.embeddings) if a.embeddings else default_embeddings_dir(a.pack)
    with Pack.open(a.pack, readonly=True) as pack:
        probes = heldout_probes(a.probes, pack)
        plugin = load_plugin(folder, reader, pack)
        lp = link_prediction(pack, emb_dir, probes)
    prompts, answers = [p["prompt"] for p in probes], [p["answer"] for p in probes]
    inj = PluginInjector(reader, plugin)
    rnd = PluginInjector(reader, RandomVectorPlugin(plugin))
    t1 = time.perf_counter()
    off = score_answers(inj, prompts, answers, enabled=False, batch_size=a.batch)
    on = score_answers(inj, prompts, answers, batch_size=a.batch)
    rn = score_answers(rnd, prompts, answers, batch_size=a.batch)
    t_score = time.perf_counter() - t1
    c_on, c_rn = compare(off, on), compare(off, rn)
    c_vs = compare(rn, on)
    cfg = plugin.training.get("config", {})
    text = f"""### bench_plugin_diagnosis.py — is it the knowledge, the wiring or the loudness? (issue 21)

Machine: the shared 2-core dev box ({platform.processor() or platform.machine()}, other engineers' jobs running: times are upper bounds). {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC. Reader: {reader.fingerprint.get('name')}, frozen, CPU. Pack: {Path(a.pack).name}; probes: {len(probes)} held-out-entity probes of {a.probes} (splits heldout_entity + heldout_both). Plugin: {folder.name} (objective {plugin.training.get('objective', 'mention')}, {plugin.training.get('steps_done', '?')} steps, lr {cfg.get('lr', '?')}). Scores are teacher-forced (`engine/evaluate/plugin_scores.py`): log p of the gold answer, rank of its first token, greedy = the argmax at every answer position is the gold token. Sign tests are two-sided, ties left out.

**1. TransE tail prediction on the probe facts** (filtered; "typed": ranked among the tails seen with that relation only)

{lp}

**2. Wiring: plugin off / on / random vectors of the same norm in the same places** ({3 * len(probes)} scored rows, {t_score:.0f} s)

| condition | acc | mean log p(gold) | MRR | vs off: Δ log p (up/down, p) | top-1 changes vs off |
|---|---|---|---|---|---|
| off (bare reader) | {c_on['acc_base']:.3f} | {c_on['mean_logp_base']:.3f} | {c_on['mrr_base']:.3f} | | |
| plugin | {c_on['acc_new']:.3f} | {c_on['mean_logp_new']:.3f} | {c_on['mrr_new']:.3f} | {c_on['mean_delta_logp']:+.3f} ({c_on['logp_up']}/{c_on['logp_down']}, {c_on['p_logp']:.2g}) | {c_on['top1_changes']} |
| random vectors, same norm | {c_rn['acc_new']:.3f} | {c_rn['mean_logp_new']:.3f} | {c_rn['mrr_new']:.3f} | {c_rn['mean_delta_logp']:+.3f} ({c_rn['logp_up']}/{c_rn['logp_down']}, {c_rn['p_logp']:.2g}) | {c_rn['top1_changes']} |

Plugin vs random vectors: Δ log p {c_vs['mean_delta_logp']:+.3f} ({c_vs['logp_up']}/{c_vs['logp_down']}, p = {c_vs['p_logp']:.2g}).

Plugin vs off, per group:

{comparison_table(probes, off, on, 'off', 'plugin')}

**3. Loudness**

{loudness(reader, plugin)}

Total {time.perf_counter() - t0:.0f} s.
"""
    publish(text, a.write)
    if a.json:
        import json

        rows = [{"prompt": p["prompt"], "answer": p["answer"], "reader": o.to_dict(), "general": g.to_dict(),
                 "random": r.to_dict()} for p, o, g, r in zip(probes, off, on, rn)]
        Path(a.json).write_text(json.dumps({"plugin": str(folder), "probes": rows}, indent=1, ensure_ascii=False),
                                encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
