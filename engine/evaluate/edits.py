"""Edit metrics: change entries through the normal edit path, measure, then undo.

For a list of edits (``old_text`` -> ``new_text``, with a ``prompt`` and ``paraphrase``
that should now give ``new``), in one mode:

1. before: answers (with memory) to every edit prompt, paraphrase and locality probe;
2. every edit is applied with ``Memory.edit`` (re-encodes that entry and updates the
   index in place: no retraining, no rebuild);
3. after: the same answers again;
4. every edit is undone (``Memory.undo``), also on error or cancel, and the entries'
   texts are checked to be back.

Efficacy = share of edit prompts whose answer starts with ``new``; generalisation =
the same for paraphrases; locality = share of locality probes (about subjects no
edit touches) whose answer is exactly the same before and after. All edits are
applied together (a batch edit), so locality also sees any interference between them.
With knowledge plugins on (``plugins=``), every answer, before and after, also has
the plugins' vectors before the prompt's linked mentions; the report names them.
"""
from __future__ import annotations

import logging
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from engine.evaluate.probes import _rate, answer_batch, max_tokens_for
from engine.explain.predict import PredictError, Predictor, pack_name
from engine.probe_files import Edit, EvalDataError, Probe, is_correct
from engine.store import locks
from engine.store.pack import iter_entries

log = logging.getLogger(__name__)

AUTHOR = "plugmem eval-edits"


def _text_index(memory) -> dict[str, int]:
    """Active entries' text -> id."""
    out: dict[str, int] = {}
    for e in iter_entries(memory.pack, status="active"):  # memory.pack may be the app's writer view
        out.setdefault(e.text, e.id)
    return out


def _mentions(text: str, subjects: set[str]) -> bool:
    low = text.lower()
    return any(s in low for s in subjects)


@contextmanager
def _evaluating(memories: Sequence) -> Iterator[None]:
    """Hold the evaluation lock of every memory (in path order), or fail at once naming the pack."""
    with ExitStack() as stack:
        for m in sorted({id(m): m for m in memories}.values(), key=lambda m: str(m.pack.path)):
            name = Path(m.pack.path).name
            try:
                stack.enter_context(locks.holding(
                    m.pack.path, f"{name}: another edit evaluation is running on this pack (it undoes its "
                                 "edits when it ends); run this one after it"))
            except locks.PackBusyError as exc:
                raise EvalDataError(str(exc)) from None
        yield


def undo_interrupted_evaluation(memory) -> int:
    """Undo the edits an edit evaluation left behind when it was killed before undoing them.

    They are the changes by :data:`AUTHOR` on top of the undo stack (an evaluation applies
    its edits last and undoes them in a ``finally``, which a SIGKILL or power cut skips).
    Returns how many were undone; a user's own later change stops the search, so nothing
    of the user's is touched. While an evaluation is running (it holds
    :func:`engine.store.locks.holding`) its edits are not left behind: nothing is undone.
    """
    name = Path(memory.pack.path).name
    with ExitStack() as stack:
        try:
            stack.enter_context(locks.holding(memory.pack.path, f"{name}: an edit evaluation is running"))
        except locks.PackBusyError:
            log.info("%s: an edit evaluation is running; its edits are left to it", name)
            return 0
        n = 0
        while memory.pack.top_undo_author() == AUTHOR:
            memory.undo()
            n += 1
        if n:
            memory.end_redo()
            log.warning("%s: undid %d edit(s) left by an interrupted edit evaluation",
                        getattr(memory.pack, "name", "pack"), n)
        return n


#: What an edit evaluation's failure is about: an edit prompt without the new answer, a
#: paraphrase without it, a locality probe whose answer changed.
FAILURE_KINDS = ("efficacy", "paraphrase", "locality")
#: Failures listed per kind (the counts in ``n_failures`` are of those listed).
FAILURES_PER_KIND = 10


def _ranked(hits: Sequence, edited: set[tuple[str, int]]) -> tuple[int | None, list[dict[str, Any]]]:
    """The rank (1-based) of the first edited entry among ``hits`` and the hits as records."""
    rows, first = [], None
    for rank, (pack, h) in enumerate(hits, 1):
        mine = (pack, int(h.entry.id)) in edited
        if mine and first is None:
            first = rank
        rows.append({"rank": rank, "pack": pack, "id": int(h.entry.id), "text": h.entry.text,
                     "score": round(float(h.score), 4), "edited": mine})
    return first, rows


def _failures(edits, paras, loc, before, after, hits, followed, edited, n, off_l) -> list[dict[str, Any]]:
    """Every kind's first failures, each with what was retrieved after the edits and the edited entry's rank."""
    out: list[dict[str, Any]] = []

    def add(kind: str, i: int, prompt: str, expected: str, **extra) -> None:
        if sum(f["kind"] == kind for f in out) >= FAILURES_PER_KIND:
            return
        rank, retrieved = _ranked(hits[i], edited)
        out.append({"kind": kind, "prompt": prompt, "expected": expected, "got": after[i], **extra,
                    "edited_rank": rank, "retrieved": retrieved})

    for i, e in enumerate(edits):
        if not followed[i]:
            add("efficacy", i, e.prompt, e.new, new=e.new)
    for j, (i, q) in enumerate(paras):
        if not is_correct(after[n + j], edits[i].new):
            add("paraphrase", n + j, q, edits[i].new, new=edits[i].new, edit_prompt=edits[i].prompt)
    for j, p in enumerate(loc):
        if before[off_l + j] != after[off_l + j]:
            add("locality", off_l + j, p.prompt, before[off_l + j], before=before[off_l + j])
    return out


def evaluate_edits(
    predictor: Predictor,
    memories: Sequence,
    edits: Sequence[Edit],
    locality: Sequence[Probe] = (),
    mode: str = "dpm",
    *,
    k: int = 5,
    limit: int | None = None,
    locality_limit: int | None = 200,
    batch_size: int = 16,
    progress: Callable[..., None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    plugins: Sequence = (),
) -> dict[str, Any]:
    """Apply ``edits`` to the plugged ``memories``, measure, and restore them (see the module docstring).

    Each edit's ``old_text`` must be the exact text of an active entry of one of the
    memories. ``plugins``: ``KnowledgePlugin`` objects on for every answer. Returns
    ``{mode, k, plugins, n, efficacy, generalization, locality,
    efficacy_before, generalization_before, old_answer_after, edit_retrieved,
    n_locality, locality_accuracy_before, locality_accuracy_after, restored, failures,
    n_failures, followed_by_edit, seconds}``. ``failures``: the first
    :data:`FAILURES_PER_KIND` of each kind (:data:`FAILURE_KINDS`: the edit prompt, the
    paraphrase or the locality probe), each with ``prompt``, ``expected`` (the new answer,
    or for locality the answer before the edits), ``got``, ``edited_rank`` (the rank of an
    edited entry among those retrieved after the edits; None when none was) and
    ``retrieved`` (rank, pack, id, text, score, edited).
    """
    from engine.progress import wrap_progress

    t0 = time.perf_counter()
    memories = list(memories)
    if not memories:
        raise PredictError("eval-edits needs at least one memory pack to edit")
    edits = list(edits)[:limit] if limit else list(edits)
    if not edits:
        raise PredictError("no edits to evaluate")
    plugins = list(plugins or ())
    if plugins:
        predictor.plugin_injector(plugins)  # a plugin unusable with this reader fails before any edit
    # One evaluation per pack at a time: its edits and undos must not interleave with another's.
    with _evaluating(memories):
        # A killed run's edits first: rerunning its edits file must find their old texts again.
        for m in {id(m): m for m in memories}.values():
            undo_interrupted_evaluation(m)
        # Find each edit's entry (exact text) before touching anything.
        indexes = [_text_index(m) for m in memories]
        targets: list[tuple[Any, int]] = []
        seen: set[tuple[int, int]] = set()
        for e in edits:
            for m, idx in zip(memories, indexes):
                if e.old_text in idx:
                    key = (id(m), idx[e.old_text])
                    if key in seen:
                        raise EvalDataError(f"{e.where or 'edit'}: edits the same entry as an earlier edit")
                    seen.add(key)
                    targets.append((m, idx[e.old_text]))
                    break
            else:
                raise EvalDataError(
                    f"{e.where or 'edit'}: old_text {e.old_text[:80]!r} is not the text of any active entry of the plugged pack(s)"
                )

        subjects = {e.subject.strip().lower() for e in edits if e.subject.strip()}
        loc = [p for p in locality if not (p.subject and p.subject.strip().lower() in subjects)
               and not _mentions(p.prompt, subjects)]
        if locality_limit is not None:
            loc = loc[:locality_limit]
        prompts = [e.prompt for e in edits]
        paras = [(n, e.paraphrase) for n, e in enumerate(edits) if e.paraphrase.strip()]
        all_prompts = prompts + [q for _, q in paras] + [p.prompt for p in loc]
        # Enough tokens to spell the new (or old) answer; locality compares the first tokens of each answer.
        edit_budget = [max(a, b) for a, b in zip(max_tokens_for(predictor.reader, [e.new for e in edits]),
                                                   max_tokens_for(predictor.reader, [e.old or e.new for e in edits]))]
        mnt = (edit_budget + [edit_budget[i] for i, _ in paras] + max_tokens_for(predictor.reader, [p.answer for p in loc]))

        def answers(lo: float, hi: float) -> tuple[list[str], list]:
            return answer_batch(predictor, all_prompts, memories, mode, k=k, max_new_tokens=mnt, batch_size=batch_size,
                                progress=wrap_progress(progress, lo, hi), should_stop=should_stop, plugins=plugins)

        before, _ = answers(0.0, 0.45)
        applied: list[Any] = []
        original = {(id(m), i): m.pack.get(i).text for m, i in targets}
        restored = False
        try:
            for e, (m, entry_id) in zip(edits, targets):
                change = m.edit(entry_id, text=e.new_text, author=AUTHOR)
                if change.ids:  # a no-op edit (same text) records nothing to undo
                    applied.append(m)
            after, hits_after = answers(0.5, 0.95)
        finally:
            for m in reversed(applied):
                m.undo()
            for m in {id(m): m for m in applied}.values():
                m.end_redo()  # the measured edits must not come back with Edit > Redo
            restored = all(m.pack.get(i).text == original[(id(m), i)] for m, i in targets)
            if not restored:
                log.error("eval-edits: some entries were not restored by undo")
    if progress:
        progress(1.0, f"{len(edits)} edits measured and undone")

    n = len(edits)
    np_ = len(paras)
    off_l = n + np_
    followed = [is_correct(after[i], e.new) for i, e in enumerate(edits)]
    eff = sum(followed)
    eff0 = sum(is_correct(before[i], e.new) for i, e in enumerate(edits))
    old_after = sum(bool(e.old) and is_correct(after[i], e.old) for i, e in enumerate(edits))
    gen = sum(is_correct(after[n + j], edits[i].new) for j, (i, _) in enumerate(paras))
    gen0 = sum(is_correct(before[n + j], edits[i].new) for j, (i, _) in enumerate(paras))
    retrieved = sum(
        any(int(h.entry.id) == entry_id and h.entry.text == e.new_text for _, h in hits_after[i])
        for i, (e, (_, entry_id)) in enumerate(zip(edits, targets))
    ) if mode != "none" else 0
    same = sum(before[off_l + j] == after[off_l + j] for j in range(len(loc)))
    loc_acc0 = sum(is_correct(before[off_l + j], p.answer) for j, p in enumerate(loc))
    loc_acc1 = sum(is_correct(after[off_l + j], p.answer) for j, p in enumerate(loc))
    edited = {(pack_name(m), entry_id) for m, entry_id in targets}
    failures = _failures(edits, paras, loc, before, after, hits_after, followed, edited, n, off_l)
    return {
        "mode": mode,
        "k": k,
        "plugins": [p.name for p in plugins],
        "n": n,
        "efficacy": _rate(eff, n),
        "generalization": _rate(gen, np_),
        "locality": _rate(same, len(loc)),
        "efficacy_before": _rate(eff0, n),
        "generalization_before": _rate(gen0, np_),
        "old_answer_after": _rate(old_after, sum(bool(e.old) for e in edits)),
        "edit_retrieved": _rate(retrieved, n) if mode != "none" else None,
        "n_paraphrases": np_,
        "n_locality": len(loc),
        "locality_accuracy_before": _rate(loc_acc0, len(loc)),
        "locality_accuracy_after": _rate(loc_acc1, len(loc)),
        "restored": restored,
        "failures": failures,
        "n_failures": {kind: sum(f["kind"] == kind for f in failures) for kind in FAILURE_KINDS},
        # "1"/"0" per edit in order: its prompt gave the new answer (to compare runs edit by edit)
        "followed_by_edit": "".join("1" if f else "0" for f in followed),
        "seconds": round(time.perf_counter() - t0, 2),
    }


__all__ = ["FAILURE_KINDS", "evaluate_edits"]
