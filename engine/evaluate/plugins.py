"""What a knowledge plugin does to the reader, measured on held-out entities.

* **Entity probes** (:func:`evaluate_probes`): greedy answers to probe prompts about
  entities the mapping never saw, with and without the plugin, and (optionally) with
  the pack as a training-free memory (top-k entries in the context) with and without
  the plugin on top; accuracy per relation (an answer is right when the continuation,
  stripped, starts with the expected answer, case-insensitively) and the mean change
  of log p(answer) the plugin brings (teacher-forced).
* **Mention-prediction loss** (:func:`heldout_mention_loss`): cross-entropy of the
  held-out entities' mentions in the pack's sentences, predicted from the inserted
  vector, against the bare reader on the same sentences.

``plugmem eval-plugin PACK --probes FILE [--plugin DIR]`` runs both and prints
:func:`format_table` (engine/cli/plugins.py).
"""
from __future__ import annotations

import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from engine.mechanisms.plugins.errors import PluginError
from engine.probe_files import EvalDataError, is_correct, read_probes

log = logging.getLogger(__name__)

CONDITIONS = ("reader", "plugin", "memory", "memory+plugin")


def load_probes(path: str | Path, splits: Sequence[str] | None = None, *, paraphrases: bool = False) -> list[dict[str, Any]]:
    """Probe records (``prompt``, ``answer``, ``relation``, ``subject``), filtered by ``split``.

    Read by the one probe reader (:func:`engine.probe_files.read_probes`); these probes
    are about entities, so ``relation`` and ``subject`` are required too. With
    ``paraphrases`` every paraphrase becomes a probe of its own (``paraphrase: True``).
    """
    out = []
    for pr in read_probes(path, require=("relation", "subject")):
        if splits and pr.split not in splits:
            continue
        rec = {"prompt": pr.prompt, "answer": pr.answer, "relation": pr.relation, "subject": pr.subject,
               "split": pr.split or None, "paraphrases": pr.paraphrases, "where": pr.where}
        out.append({**rec, "paraphrase": False})
        if paraphrases:
            out += [{**rec, "prompt": q, "paraphrase": True} for q in pr.paraphrases]
    return out


def _answer_text(answer: str) -> str:
    return " " + answer.strip()


def evaluate_probes(
    injector,
    probes: Sequence[dict[str, Any]],
    *,
    memory=None,
    k: int = 3,
    batch_size: int = 16,
    progress: Callable[..., None] | None = None,
) -> dict[str, Any]:
    """Accuracy per relation with and without the plugin (and with the memory); see the module doc."""
    from engine.mechanisms.context import context_prompt

    reader = injector.reader
    say = progress or (lambda *a, **kw: None)
    prompts = [p["prompt"] for p in probes]
    answers = [p["answer"] for p in probes]
    a_len = [len(reader.tokenizer(_answer_text(a), add_special_tokens=False)["input_ids"]) for a in answers]
    conditions: list[tuple[str, list[str], bool]] = [("reader", prompts, False), ("plugin", prompts, True)]
    if memory is not None:
        from engine.explain.predict import retrieve

        say(0.0, f"retrieving {k} entries for {len(prompts)} probes")
        ctx = [context_prompt(q, [h.entry.text for _, h in retrieve(q, [memory], k)]) for q in prompts]
        conditions += [("memory", ctx, False), ("memory+plugin", ctx, True)]
    gens: dict[str, list[str]] = {}
    order = sorted(range(len(prompts)), key=lambda i: (a_len[i], len(prompts[i])))
    steps = len(conditions) * len(order)
    done = 0
    t0 = time.perf_counter()
    for name, plist, enabled in conditions:
        res = [""] * len(plist)
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            outs = injector.generate([plist[i] for i in idx], max_new_tokens=max(a_len[i] for i in idx) + 1,
                                     enabled=enabled, batch_size=batch_size)
            for i, o in zip(idx, outs):
                res[i] = o
            done += len(idx)
            say(done / steps, f"{name}: {min(s + batch_size, len(order))}/{len(order)} probes")
        gens[name] = res
    lp_without = injector.answer_logprob(prompts, [_answer_text(a) for a in answers], enabled=False, batch_size=batch_size)
    lp_with = injector.answer_logprob(prompts, [_answer_text(a) for a in answers], enabled=True, batch_size=batch_size)
    links = [injector.link(q) for q in prompts]
    rows = []
    for i, p in enumerate(probes):
        subj_linked = any(x.entity == p["subject"] for x in links[i])
        rows.append({"relation": p["relation"], "subject": p["subject"], "prompt": p["prompt"], "answer": p["answer"],
                     "split": p.get("split"), "paraphrase": p.get("paraphrase", False), "linked": subj_linked,
                     "injected": [x.entity for x in links[i]],
                     **{f"answer_{c}": gens[c][i] for c in gens},
                     **{f"correct_{c}": is_correct(gens[c][i], p["answer"]) for c in gens},
                     "logp_reader": float(lp_without[i]), "logp_plugin": float(lp_with[i])})
    return {"conditions": list(gens), "probes": rows, "per_relation": summarise(rows, list(gens)),
            "overall": summarise(rows, list(gens), by=None)["all"], "seconds": round(time.perf_counter() - t0, 1)}


def summarise(rows: Sequence[dict[str, Any]], conditions: Sequence[str], by: str | None = "relation") -> dict[str, Any]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[r[by] if by else "all"].append(r)
    out = {}
    for key in sorted(groups):
        g = groups[key]
        n = len(g)
        s = {"n": n, "linked": round(sum(r["linked"] for r in g) / n, 4),
             "delta_logp": round(sum(r["logp_plugin"] - r["logp_reader"] for r in g) / n, 4)}
        for c in conditions:
            s[f"acc_{c}"] = round(sum(r[f"correct_{c}"] for r in g) / n, 4)
        out[key] = s
    return out


def heldout_mention_loss(reader, plugin, pack, entity_ids: set[int], *, max_tokens: int = 48,
                         batch_size: int = 32, max_sentences: int = 0, seed: int = 0) -> dict[str, Any]:
    """Mention-prediction loss of ``entity_ids``'s mentions in the pack's sentences, with and without the plugin.

    Also the loss on the rest of each sentence (the facts) after the mention. Only
    these entities' mentions get a vector. ``max_sentences`` > 0 evaluates a seeded
    sample of that many sentences.
    """
    from engine.mechanisms.plugins.entities import EntityLinker
    from engine.mechanisms.plugins.map_tune import make_examples, mean_losses

    linker = EntityLinker.from_pack(pack)
    texts = [e.text for e in pack.get_many(pack.ids(status="active"))]
    keep = lambda e: e in entity_ids and plugin.has(e)  # noqa: E731
    exs = [ex for ex, _ in make_examples(reader.tokenizer, texts, linker, keep, max_tokens=max_tokens, with_facts=True)]
    if not exs:
        return {"sentences": 0}
    total = len(exs)
    if max_sentences and total > max_sentences:
        import numpy as np

        pick = np.random.default_rng(seed).choice(total, size=max_sentences, replace=False)
        exs = [exs[i] for i in sorted(pick.tolist())]
    with torch.no_grad():
        m_with, f_with = mean_losses(reader, plugin, exs, batch_size=batch_size)
        m_without, f_without = mean_losses(reader, plugin, exs, inject=False, batch_size=batch_size)
    return {"sentences": len(exs), "sentences_available": total, "entities": len(entity_ids),
            "mention_loss_plugin": m_with, "mention_loss_reader": m_without,
            "fact_loss_plugin": f_with, "fact_loss_reader": f_without}


def format_table(report: dict[str, Any]) -> str:
    conds = report["conditions"]
    head = "| relation | n | subject linked | " + " | ".join(f"acc {c}" for c in conds) + " | Δ log p(answer) |"
    lines = [head, "|" + "---|" * (4 + len(conds))]
    for rel, s in list(report["per_relation"].items()) + [("**all**", report["overall"])]:
        lines.append(f"| {rel} | {s['n']} | {s['linked']:.2f} | " + " | ".join(f"{s[f'acc_{c}']:.3f}" for c in conds)
                     + f" | {s['delta_logp']:+.3f} |")
    return "\n".join(lines)
