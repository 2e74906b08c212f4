"""Memory edits and weight patches side by side on the same edits (issue 18).

One edits file (what ``eval-edits`` reads: ``old_text``, ``new_text``, ``prompt``, ``new``,
``paraphrase``) and one set of locality probes, measured per mechanism:

* ``dpm`` / ``context``: the entries edited in the pack and answered in that mode (exactly
  what :func:`engine.evaluate.edits.evaluate_edits` does: applied, measured, undone);
* ``plugins``: the same memory edit in context mode with the knowledge plugins on (only
  where plugins are plugged);
* ``patch_batch``: one weight patch holding every edit (answered by the bare reader: a
  patch needs no pack);
* ``patch_sequential``: one patch per edit, each made on top of the earlier ones.

Each row: efficacy, paraphrase, locality (locality probes' answers unchanged), accuracy on
those unmodified facts before/after, the time from the action (one entry edited, or one
patch made and applied) to the changed answer, the artefact's size, and whether undoing
it restored everything exactly (the pack's texts; every tensor's sha256). ``differ`` lists
the edits that the mechanisms do not all get right.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from engine.evaluate.edits import AUTHOR, _evaluating, _mentions, _text_index, evaluate_edits
from engine.evaluate.probes import max_tokens_for
from engine.explain.predict import PredictError
from engine.probe_files import Edit, EvalDataError, Probe, is_correct

MEMORY_MECHANISMS = ("dpm", "context", "plugins")
PATCH_MECHANISMS = ("patch_batch", "patch_sequential")
ALL = MEMORY_MECHANISMS + PATCH_MECHANISMS
DEFAULT = ("dpm", "context", "patch_batch", "patch_sequential", "plugins")
LABELS = {"dpm": "memory edit (dpm)", "context": "memory edit (context)", "plugins": "memory edit + plugins",
          "patch_batch": "weight patch (batch)", "patch_sequential": "weight patches (sequential)"}


def check_mechanisms(names: Sequence[str]) -> list[str]:
    names = [n.strip() for n in names if n.strip()]
    bad = [n for n in names if n not in ALL]
    if not names or bad:
        raise EvalDataError(f"--mechanisms: {', '.join(bad) or 'none given'}: choose from {', '.join(ALL)}")
    return names


def _locality(edits: Sequence[Edit], locality: Sequence[Probe], limit: int | None) -> list[Probe]:
    """The probes about subjects no edit touches (the rule evaluate_edits applies)."""
    subjects = {e.subject.strip().lower() for e in edits if e.subject.strip()}
    loc = [p for p in locality if not (p.subject and p.subject.strip().lower() in subjects)
           and not _mentions(p.prompt, subjects)]
    return loc[:limit] if limit is not None else loc


def _budget(reader, answers: Sequence[str]) -> int:
    ids = reader.tokenizer([" " + a.strip() for a in answers], add_special_tokens=False)["input_ids"]
    return min(24, max(len(r) for r in ids) + 1)


def _memory_row(predictor, memory, edits, locality, mode, *, k, locality_limit, plugins, progress, should_stop):
    res = evaluate_edits(predictor, [memory], edits, locality, mode, k=k, locality_limit=locality_limit,
                         progress=progress, should_stop=should_stop, plugins=plugins)
    # Action -> changed answer: one entry edited through the normal path, then asked again.
    e = edits[0]
    with _evaluating([memory]):
        entry_id = _text_index(memory)[e.old_text]
        t0 = time.perf_counter()
        change = memory.edit(entry_id, text=e.new_text, author=AUTHOR)
        try:
            predictor.predict(e.prompt, [memory], mode=mode, k=k, max_new_tokens=_budget(predictor.reader, [e.new]),
                              explain=False, plugins=plugins)
            action = time.perf_counter() - t0
        finally:
            if change.ids:
                memory.undo()
                memory.end_redo()
    dim = int(getattr(memory.encoder, "dim", 0) or 0)
    size = sum(len(x.new_text.encode("utf-8")) + 4 * dim for x in edits)  # the new texts and their float32 keys
    return {
        "efficacy": res["efficacy"], "paraphrase": res["generalization"], "locality": res["locality"],
        "accuracy_before": res["locality_accuracy_before"], "accuracy_after": res["locality_accuracy_after"],
        "seconds_to_change": round(action, 3), "artefact_bytes": size, "artefact": f"{len(edits)} entries edited",
        "reversible_exactly": bool(res["restored"]), "followed": res["followed_by_edit"],
        "seconds": res["seconds"],
    }


def _patch_row(reader, edits, locality, sequential: bool, config, *, progress, should_stop):
    from engine.mechanisms.weight_patches import Fact, applied, make_patch, make_sequential, save
    from engine.mechanisms.weight_patches.attach import PatchStack
    from engine.mechanisms.weight_patches.module import tensor_sha256
    from engine.progress import wrap_progress

    t_start = time.perf_counter()
    facts = [Fact(e.prompt, e.new, paraphrase=e.paraphrase, old=e.old, source=e.where) for e in edits]
    paras = [(i, e.paraphrase) for i, e in enumerate(edits) if e.paraphrase.strip()]
    prompts = [e.prompt for e in edits] + [q for _, q in paras] + [p.prompt for p in locality]
    # The token budgets evaluate_edits gives the same prompts, so the rows compare alike.
    edit_budget = [max(a, b) for a, b in zip(max_tokens_for(reader, [e.new for e in edits]),
                                               max_tokens_for(reader, [e.old or e.new for e in edits]))]
    budgets = edit_budget + [edit_budget[i] for i, _ in paras] + max_tokens_for(reader, [p.answer for p in locality])

    def answers() -> list[str]:
        out = [""] * len(prompts)
        for b in sorted(set(budgets)):
            idx = [i for i, x in enumerate(budgets) if x == b]
            for i, text in zip(idx, reader.generate([prompts[i] for i in idx], max_new_tokens=b)):
                out[i] = text
        return out

    names = config.tensor_names()
    params = dict(reader.model.named_parameters())
    before_hashes = {n: tensor_sha256(params[n]) for n in names if n in params}
    before = answers()
    build = wrap_progress(progress, 0.1, 0.9)
    t0 = time.perf_counter()
    if sequential:
        made = make_sequential(reader, facts, config, prefix="compare", progress=build, should_stop=should_stop,
                               measure=False)
    else:
        made = [make_patch(reader, facts, config, name="compare-batch", known="skip", progress=build,
                           should_stop=should_stop, measure=False)]
    make_s = time.perf_counter() - t0
    stack = PatchStack.of(reader)
    with applied(reader, made):
        t1 = time.perf_counter()
        after = answers()
        answer_s = (time.perf_counter() - t1) / max(1, len(prompts))
    reversible = all(tensor_sha256(params[n]) == h for n, h in before_hashes.items()) and not stack.patches
    with tempfile.TemporaryDirectory() as tmp:  # the size of the folders a user would share
        size = 0
        for i, p in enumerate(made):
            folder = save(p, Path(tmp) / f"p{i}")
            size += sum(f.stat().st_size for f in folder.iterdir())
    # one action: the one patch of the batch, or one patch of the sequence (each is one fix)
    per_action = make_s if not sequential else make_s / max(1, len(made))
    n, off = len(edits), len(edits) + len(paras)
    followed = [is_correct(after[i], e.new) for i, e in enumerate(edits)]
    return {
        "efficacy": sum(followed) / n,
        "paraphrase": (sum(is_correct(after[n + j], edits[i].new) for j, (i, _) in enumerate(paras)) / len(paras)
                       if paras else None),
        "locality": (sum(before[off + j] == after[off + j] for j in range(len(locality))) / len(locality)
                     if locality else None),
        "accuracy_before": (sum(is_correct(before[off + j], p.answer) for j, p in enumerate(locality)) / len(locality)
                            if locality else None),
        "accuracy_after": (sum(is_correct(after[off + j], p.answer) for j, p in enumerate(locality)) / len(locality)
                           if locality else None),
        "seconds_to_change": round(per_action + answer_s, 3), "artefact_bytes": size,
        "artefact": f"{len(made)} patch{'es' if len(made) != 1 else ''}", "reversible_exactly": reversible,
        "followed": "".join("1" if f else "0" for f in followed),
        "seconds": round(time.perf_counter() - t_start, 2),
    }


def compare(predictor, memory, edits: Sequence[Edit], locality: Sequence[Probe] = (), *,
            mechanisms: Sequence[str] = DEFAULT, patch_config=None, k: int = 5, limit: int | None = None,
            locality_limit: int | None = 100, plugins: Sequence = (),
            progress: Callable[..., None] | None = None, should_stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Every mechanism of ``mechanisms`` on the same ``edits`` (see the module docstring).

    ``memory``: the pack the memory edits apply to (restored after each). ``patch_config``: a
    ``PatchConfig`` (default: the calibrated one). 'dpm' needs the predictor's branch;
    'plugins' is reported as skipped without ``plugins``."""
    from engine.mechanisms.weight_patches import PatchConfig
    from engine.progress import wrap_progress

    t0 = time.perf_counter()
    mechanisms = check_mechanisms(mechanisms)
    edits = list(edits)[:limit] if limit else list(edits)
    if not edits:
        raise PredictError("no edits to compare")
    index = _text_index(memory)
    for e in edits:
        if e.old_text not in index:
            raise EvalDataError(f"{e.where or 'edit'}: old_text {e.old_text[:80]!r} is not the text of any active "
                                "entry of the pack")
    config = patch_config or PatchConfig()
    loc = _locality(edits, locality, locality_limit)
    rows: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(mechanisms):
        sub = wrap_progress(progress, i / len(mechanisms), (i + 1) / len(mechanisms))
        if name == "plugins" and not plugins:
            rows[name] = {"skipped": "no knowledge plugin plugged"}
        elif name == "dpm" and predictor.branch is None:
            rows[name] = {"skipped": "no memory branch for this reader"}
        elif name in MEMORY_MECHANISMS:
            mode = "context" if name == "plugins" else name
            rows[name] = _memory_row(predictor, memory, edits, loc, mode, k=k, locality_limit=None,
                                     plugins=plugins if name == "plugins" else (), progress=sub, should_stop=should_stop)
        else:
            rows[name] = _patch_row(predictor.reader, edits, loc, name == "patch_sequential", config,
                                    progress=sub, should_stop=should_stop)
        rows[name]["label"] = LABELS[name]
    measured = {n: r["followed"] for n, r in rows.items() if "followed" in r}
    differ = [{"prompt": e.prompt, "new": e.new, "followed": {n: f[j] == "1" for n, f in measured.items()}}
              for j, e in enumerate(edits) if len({f[j] for f in measured.values()}) > 1]
    if progress:
        progress(1.0, f"{len(mechanisms)} mechanisms compared on {len(edits)} edits")
    return {"n": len(edits), "n_locality": len(loc), "k": k, "mechanisms": list(mechanisms), "rows": rows,
            "differ": differ, "patch_config": {**config.__dict__}, "seconds": round(time.perf_counter() - t0, 2)}


__all__ = ["ALL", "DEFAULT", "LABELS", "check_mechanisms", "compare"]
