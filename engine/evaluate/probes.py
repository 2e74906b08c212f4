"""Fact probes: accuracy with and without memory, per relation, and retrieval hit@k.

A probe is correct when the greedy continuation, leading white space stripped,
starts with the answer (case-insensitive). Retrieval hit@k: one of the k retrieved
entries is the probe's fact -- an entry whose title is the probe's ``subject`` and
whose tags hold its ``relation`` (the convention of the demo packs), or, for probes
without those fields, an entry whose text contains the answer.

Everything is batched: prompts are encoded for retrieval in one call per key
encoder, and answered in left-padded batches (each row with its own entries in the
DPM mode, its own context in the context mode).

With knowledge plugins on (``plugins=``), every answer "with memory" also has the
plugins' vectors before the prompt's linked mentions; ``accuracy_without_memory``
stays the bare reader (nothing plugged) and ``accuracy_without_plugins`` is the
memory alone, so the plugins' own contribution reads off the report.
"""
from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import Any, Callable, Sequence

from engine.explain.predict import MODES, PredictError, Predictor, retrieve_many
from engine.probe_files import Probe, is_correct

log = logging.getLogger(__name__)

ProgressFn = Callable[..., None]


def _rate(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None


def max_tokens_for(reader, answers: Sequence[str], cap: int = 24) -> list[int]:
    """Per answer, enough new tokens to spell it (plus one), at most ``cap``.

    The probe rule only looks at the start of the continuation, so generating more
    would not change any verdict.
    """
    if not answers:
        return []
    ids = reader.tokenizer([" " + a.strip() for a in answers], add_special_tokens=False)["input_ids"]
    return [max(1, min(cap, len(r) + 1)) for r in ids]


def answer_batch(
    predictor: Predictor,
    prompts: Sequence[str],
    memories: Sequence,
    mode: str,
    *,
    k: int = 5,
    max_new_tokens: int | Sequence[int] = 8,
    batch_size: int = 16,
    hits: list[list[tuple[str, Any]]] | None = None,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    plugins: Sequence = (),
    unit: str = "prompts",
) -> tuple[list[str], list[list[tuple[str, Any]]]]:
    """Greedy answers of many prompts with the memories in ``mode``, and what was retrieved.

    Returns ``(answers, hits)``; ``hits[i]`` is the top-k ``(pack name, Hit)`` of
    prompt i (empty in mode 'none' or with no memory). Pass ``hits`` to reuse a
    retrieval. ``max_new_tokens`` may be one number per prompt (each batch generates
    its rows' maximum). Same answers as :meth:`Predictor.predict` would give one at a time.
    ``plugins``: knowledge plugins whose vectors go before the prompts' mentions too.
    """
    from engine.progress import check

    if mode not in MODES:
        raise PredictError(f"Unknown mode {mode!r}; choose one of {', '.join(MODES)}.")
    prompts = list(prompts)
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p.strip():
            raise PredictError(f"prompt #{i + 1} is empty")
    fusion = predictor.fusion(mode)
    reader = predictor.reader
    plugged = None
    if plugins:
        from engine.explain.plugged import PluginFusion

        plugged = PluginFusion(reader, predictor.plugin_injector(list(plugins)))
    if hits is None:
        hits = retrieve_many(prompts, memories, k) if (memories and fusion is not None) else [[] for _ in prompts]
    budget = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if len(budget) != len(prompts):
        raise ValueError(f"{len(budget)} max_new_tokens for {len(prompts)} prompts")
    answers: list[str] = [""] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: (budget[i], len(prompts[i])))
    for start in range(0, len(order), batch_size):
        check(should_stop, "evaluation cancelled")
        idx = order[start:start + batch_size]
        texts = [[h.entry.text for _, h in hits[i]] for i in idx]
        mnt = max(budget[i] for i in idx)
        scores = [[float(h.score) for _, h in hits[i]] for i in idx]
        if plugged is not None:
            got = plugged.generate([prompts[i] for i in idx], mnt, fusion=fusion, texts=texts, scores=scores)
        elif fusion is None or not any(texts):
            got = reader.generate([prompts[i] for i in idx], max_new_tokens=mnt, batch_size=batch_size)
        else:  # the mode's fusion, whichever it is
            got = fusion.generate_many([prompts[i] for i in idx], texts, scores, mnt)
        for i, a in zip(idx, got):
            answers[i] = a
        if progress:
            done = start + len(idx)
            progress(min(1.0, done / max(1, len(order))), f"answered {done:,} of {len(order):,} {unit}")
    return answers, hits


def is_gold(entry, probe: Probe) -> bool:
    """Whether ``entry`` states the probe's fact (see the module docstring)."""
    if probe.subject and probe.relation:
        tags = [t.lower() for t in (entry.tags or [])]
        return (entry.title or "").strip().lower() == probe.subject.strip().lower() and probe.relation.lower() in tags
    return probe.answer.strip().lower() in entry.text.lower()


def evaluate_probes(
    predictor: Predictor,
    memories: Sequence,
    probes: Sequence[Probe],
    mode: str = "dpm",
    *,
    k: int = 5,
    limit: int | None = None,
    paraphrases: bool = True,
    batch_size: int = 16,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    plugins: Sequence = (),
) -> dict[str, Any]:
    """Accuracy of ``probes`` with the plugged ``memories`` in ``mode`` and without memory.

    Returns ``{mode, k, packs, plugins, n, accuracy, accuracy_without_memory,
    accuracy_without_plugins, hit_at_k, paraphrase_accuracy,
    paraphrase_accuracy_without_memory, paraphrase_accuracy_without_plugins,
    n_paraphrases, by_relation: {relation: {n, accuracy, accuracy_without_memory,
    hit_at_k[, accuracy_without_plugins]}}, by_split, failures (the first 10), correct_by_probe
    ("1"/"0" per probe in order: right with memory, to compare runs probe by probe), seconds}``.
    ``plugins`` (``KnowledgePlugin`` objects) are on for ``accuracy``; the
    ``*_without_plugins`` figures (the memory alone) are None, and absent per
    relation, when no plugin is on.
    """
    from engine.progress import wrap_progress

    t0 = time.perf_counter()
    if limit is not None:
        if limit < 1:
            raise PredictError(f"limit must be at least 1, got {limit}")
        probes = list(probes)[:limit]
    probes = list(probes)
    if not probes:
        raise PredictError("no probes to evaluate")
    prompts = [p.prompt for p in probes]
    para_of: list[int] = []
    if paraphrases:
        for n, p in enumerate(probes):
            for q in p.paraphrases:
                prompts.append(q)
                para_of.append(n)
    # "answered 32 of 281" read as a broken limit of 100: say what the 281 are
    unit = f"prompts ({len(probes):,} probes + {len(para_of):,} paraphrases)" if para_of else "probes"
    per_probe = max_tokens_for(predictor.reader, [p.answer for p in probes])
    mnt = per_probe + [per_probe[i] for i in para_of]
    memories = list(memories)
    plugins = list(plugins or ())
    use_memory = bool(memories) and predictor.fusion(mode) is not None
    # passes: everything on; the memory alone (with plugins); the bare reader (with memory or plugins)
    passes = 1 + bool(plugins and use_memory) + bool(plugins or use_memory)
    cut = [i / passes for i in range(passes + 1)]
    with_mem, hits = answer_batch(
        predictor, prompts, memories, mode, k=k, max_new_tokens=mnt, batch_size=batch_size,
        progress=wrap_progress(progress, cut[0], cut[1]), should_stop=should_stop, unit=unit, plugins=plugins,
    )
    done = 1
    if plugins and use_memory:
        no_plugins, _ = answer_batch(
            predictor, prompts, memories, mode, k=k, max_new_tokens=mnt, batch_size=batch_size, hits=hits,
            progress=wrap_progress(progress, cut[1], cut[2]), should_stop=should_stop, unit=unit,
        )
        done = 2
    if plugins or use_memory:
        without, _ = answer_batch(
            predictor, prompts, [], "none", k=k, max_new_tokens=mnt, batch_size=batch_size,
            progress=wrap_progress(progress, cut[done], cut[done + 1]), should_stop=should_stop, unit=unit,
        )
    else:
        without = list(with_mem)
    if plugins and not use_memory:
        no_plugins = without  # the memory alone is the bare reader here

    n = len(probes)
    rel = defaultdict(lambda: [0, 0, 0, 0, 0])  # n, correct, correct without, hit, correct without plugins
    split = defaultdict(lambda: [0, 0, 0, 0, 0])
    correct = correct_wo = hit_n = correct_np = 0
    failures = []
    marks = []  # per probe, in order: answered right with memory
    for i, p in enumerate(probes):
        c = is_correct(with_mem[i], p.answer)
        marks.append("1" if c else "0")
        c0 = is_correct(without[i], p.answer)
        cp = is_correct(no_plugins[i], p.answer) if plugins else False
        h = any(is_gold(hh.entry, p) for _, hh in hits[i]) if use_memory else False
        correct += c
        correct_wo += c0
        correct_np += cp
        hit_n += h
        for table, key in ((rel, p.relation or "(none)"), (split, p.split)):
            if table is split and not key:
                continue
            row = table[key]
            row[0] += 1
            row[1] += c
            row[2] += c0
            row[3] += h
            row[4] += cp
        if not c and len(failures) < 10:
            failures.append({
                "prompt": p.prompt, "answer": p.answer, "got": with_mem[i],
                "retrieved": [hh.entry.text for _, hh in hits[i][:3]],
            })
    pc = pc0 = pcp = 0
    for j, n_probe in enumerate(para_of):
        pc += is_correct(with_mem[n + j], probes[n_probe].answer)
        pc0 += is_correct(without[n + j], probes[n_probe].answer)
        pcp += is_correct(no_plugins[n + j], probes[n_probe].answer) if plugins else False

    def table(t) -> dict[str, dict[str, Any]]:
        out = {}
        for key, v in sorted(t.items()):
            out[key] = {"n": v[0], "accuracy": _rate(v[1], v[0]), "accuracy_without_memory": _rate(v[2], v[0]),
                        "hit_at_k": _rate(v[3], v[0]) if use_memory else None}
            if plugins:
                out[key]["accuracy_without_plugins"] = _rate(v[4], v[0])
        return out

    return {
        "mode": mode,
        "k": k,
        "packs": [getattr(m.pack, "name", "") for m in memories],
        "plugins": [p.name for p in plugins],
        "n": n,
        "accuracy": _rate(correct, n),
        "accuracy_without_memory": _rate(correct_wo, n),
        "accuracy_without_plugins": _rate(correct_np, n) if plugins else None,
        "hit_at_k": _rate(hit_n, n) if use_memory else None,
        "n_paraphrases": len(para_of),
        "paraphrase_accuracy": _rate(pc, len(para_of)),
        "paraphrase_accuracy_without_memory": _rate(pc0, len(para_of)),
        "paraphrase_accuracy_without_plugins": _rate(pcp, len(para_of)) if plugins else None,
        "by_relation": table(rel),
        "by_split": table(split),
        "failures": failures,
        "correct_by_probe": "".join(marks),
        "seconds": round(time.perf_counter() - t0, 2),
    }
