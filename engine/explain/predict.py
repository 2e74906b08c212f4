"""Answer a prompt with the plugged memories and explain the answer.

Retrieval encodes the prompt once per key encoder, searches every plugged memory
and keeps the overall top-k by score. The answer with memory and the answer of the
bare reader come from one batched generate; the leave-one-out effects of all k
entries come from ONE batched forward of k+1 variants (all entries, then all but
entry i), not k+1 separate passes.

The GUI keeps one :class:`Predictor` per (reader, branch) and calls
``Predictor.predict(prompt, memories, mode=..., k=..., plugins=...) -> Explanation``;
entries' reader states are cached by text, so repeated questions are cheaper and an
edited entry is read afresh at once (no retraining, no index rebuild).

Knowledge plugins (``plugins=``) add their entity vectors before the linked mentions
of the prompt, on top of the memory of the mode (see :mod:`engine.explain.plugged`);
the record then also holds the answer with the memory alone
(``answer_without_plugins``) and each injected vector's leave-one-out effect.
"""
from __future__ import annotations

import logging
import math
import re
import threading
import time
from pathlib import Path
from typing import Sequence

from engine.explain.record import Explanation, RetrievedEntry
from engine.mechanisms.base import ENTRY_KINDS
from engine.mechanisms.registry import MODES, mechanism
from engine.reader.lru import LRU

log = logging.getLogger(__name__)


class PredictError(ValueError):
    """The prediction request is unusable (empty prompt, unknown mode, missing branch...)."""


def pack_name(memory) -> str:
    """A memory's display name: the pack's name, else its file name without suffix."""
    pack = memory.pack
    name = getattr(pack, "name", None)
    if callable(name):
        name = name()
    return str(name) if name else Path(pack.path).stem


# Hybrid retrieval: the dense top-k entries are re-scored as inner product +
# LEXICAL_WEIGHT x lexical coverage (see lexical_coverage) of the entry's words (its title,
# text and tags: entry_words), word weights taken over the dense top (CANDIDATES x k) of
# every memory; the set stays the dense top-k. Calibrated
# with the shipped branch on the validation split (bench/calibrate_dpm.py --lexical
# --candidates; bench/RESULTS.md, "Hybrid retrieval"): 0.2 x 1 and 0.3 x 1 tie for the
# best mean of efficacy and paraphrase, 0.5 costs chemistry relations, a pool of 4 x k
# is worse; the smaller weight is kept.
LEXICAL_WEIGHT = 0.2
CANDIDATES = 1
_WORD = re.compile(r"\w+", re.UNICODE)

# Statement keys: an entry states its fact with the object last ("... belongs to the
# subregion of Southern Europe."), a prompt stops before the object, and an edited object
# the encoder finds odd ("Ghana ... subregion of Australia and New Zealand") drags the
# entry's key away from the prompts about it. The dense top (PREFIX_POOL x k) of every
# memory are re-scored as the mean of the inner products with the entry's key and with the
# key of its text without its last PREFIX_CUT of words (statement_prefix); the top k of that
# go on to the lexical step. 0 turns it off. Measured on the validation split
# (bench/RESULTS.md, "Statement keys"): a pool of 2 x k ranks the edited entry first as
# often as 4 x k and costs half. A prefix's key is encoded the first time it is met (~90 ms
# per question on two cores, one encoder call), then kept in memory (LRU) and on disk
# (engine.encode.key_store, one file per encoder; the prepare job fills it for whole packs).
PREFIX_CUT = 0.3
PREFIX_POOL = 2
_prefix_keys = LRU(8192)  # (id(encoder), prefix) -> (encoder, key); the encoder is kept so its id stays its own
_prefix_lock = threading.Lock()
_key_stores: dict[int, tuple[object, object]] = {}  # id(encoder) -> (encoder, KeyStore or None)


def statement_prefix(text: str, cut: float | None = None) -> str:
    """``text`` without its last ``cut`` share of words (at least one word goes, one stays):
    "Ghana belongs to the subregion of Western Africa." -> "Ghana belongs to the subregion"."""
    cut = PREFIX_CUT if cut is None else cut
    words = text.strip().rstrip(".!?").split()
    drop = max(1, int(round(cut * len(words))))
    return " ".join(words[:-drop]) if len(words) > drop else text.strip()


def key_store_of(encoder):
    """The on-disk key store of ``encoder`` (opened once per encoder), or None for an encoder
    without a fingerprint or a store that cannot be opened (keys are then encoded each session)."""
    with _prefix_lock:
        held = _key_stores.get(id(encoder))
        if held is not None and held[0] is encoder:
            return held[1]
        store = None
        fp = getattr(encoder, "fingerprint", None)
        if fp is not None and hasattr(fp, "to_dict"):
            from engine.encode.key_store import KeyStore

            try:
                store = KeyStore.for_encoder(fp)
            except (OSError, ValueError) as exc:  # a folder that cannot be made: no store
                log.warning("statement keys will not be kept on disk: %s", exc)
        _key_stores[id(encoder)] = (encoder, store)
        return store


def reset_statement_keys() -> None:
    """Forget the statement keys held in memory and close the key stores (the next retrieval
    opens them again, under the folder the environment names then): what a new session
    starts from."""
    with _prefix_lock:
        _prefix_keys.clear()
        held = list(_key_stores.values())
        _key_stores.clear()
    for _, store in held:
        if store is not None:
            store.close()


def _prefix_key_rows(encoder, texts: Sequence[str]):
    """Keys of the statement prefixes of ``texts`` (float32 [n, dim]): from memory, else from
    the encoder's key store, else encoded (and kept in both)."""
    import numpy as np

    prefixes = [statement_prefix(t) for t in texts]
    keys: dict[str, object] = {}
    todo = []
    with _prefix_lock:
        for pre in dict.fromkeys(prefixes):
            hit = _prefix_keys.get((id(encoder), pre))
            if hit is not None and hit[0] is encoder:
                keys[pre] = hit[1]
            else:
                todo.append(pre)
    if todo:
        store = key_store_of(encoder)
        stored = store.get_many(todo) if store is not None else {}
        fresh = [p for p in todo if p not in stored]
        if fresh:
            stored.update(zip(fresh, encoder.encode(fresh)))
            if store is not None:
                store.put_many({p: stored[p] for p in fresh})
        with _prefix_lock:
            for pre, vec in stored.items():
                keys[pre] = vec
                _prefix_keys.put((id(encoder), pre), (encoder, vec))
    return np.stack([keys[p] for p in prefixes]) if prefixes else np.zeros((0, 0), dtype=np.float32)


def entry_words(entry) -> str:
    """What the lexical step reads of an entry: its title, text and tags (a tag's ``_`` and
    ``-`` separate words, so the tag ``discovery_year`` matches "the year"). Tags name what
    an entry is about in the curator's words, which a question often shares when the
    entry's own sentence does not ("The chemical series of X is the" / "X belongs to the
    actinides.", tagged ``series``)."""
    tags = " ".join(str(t).replace("_", " ").replace("-", " ") for t in (getattr(entry, "tags", None) or ()))
    return " ".join(part for part in (getattr(entry, "title", ""), entry.text, tags) if part)


def lexical_coverage(prompt: str, texts: Sequence[str]) -> list[float]:
    """For each text, the share in [0, 1] of the prompt's distinctive words it contains.

    A word weighs its inverse document frequency among ``texts`` (the candidates of one
    question): a word every candidate has ("the", the subject of them all) weighs almost
    nothing, one that only some have ("subregion" among region / subregion / intermediate
    region entries, "yttrium" beside "ytterbium") weighs most. Words are compared in lower
    case, whole; words of the prompt no candidate has do not count.
    """
    docs = [set(w.lower() for w in _WORD.findall(t)) for t in texts]
    n = len(docs)
    idf: dict[str, float] = {}
    for w in set(w.lower() for w in _WORD.findall(prompt)):
        df = sum(w in d for d in docs)
        if df:
            idf[w] = math.log((n + 1) / df)
    total = sum(idf.values())
    if total <= 0:
        return [0.0] * n
    return [sum(v for w, v in idf.items() if w in d) / total for d in docs]


def retrieve_many(prompts: Sequence[str], memories: Sequence, k: int,
                  lexical: float | None = None) -> list[list[tuple[str, object]]]:
    """Per prompt, the top-k ``(pack name, Hit)`` over all memories, best score first.

    Prompts are encoded once per distinct key encoder (packs made by different
    encoders each get their own query vectors; scores are inner products of
    normalised vectors either way). With :data:`PREFIX_POOL` set, the dense top
    ``PREFIX_POOL * k`` of every memory are re-scored by statement keys (the mean of the
    inner products with the entry's key and its :func:`statement_prefix`'s key) and the
    top k of all memories kept. With ``lexical`` (default :data:`LEXICAL_WEIGHT`) above
    0, those are re-scored as score + lexical × :func:`lexical_coverage` of their
    :func:`entry_words` (title, text and tags), the words weighed over the top
    ``CANDIDATES * k``: the sentence encoder alone ranks
    near-duplicate entries ("the region of" / "the subregion of", "ytterbium" /
    "yttrium") by wording more than by the word that tells them apart. Ties keep the
    order of ``memories``.
    """
    lexical = LEXICAL_WEIGHT if lexical is None else float(lexical)
    prompts = list(prompts)
    merged: list[list[tuple[str, object]]] = [[] for _ in prompts]
    if not prompts:
        return merged
    depth = k * max(CANDIDATES if lexical > 0 else 1, PREFIX_POOL or 1)
    queries: dict[int, object] = {}
    from engine.memory import Hit

    for m in memories:
        enc = m.encoder
        if id(enc) not in queries:
            queries[id(enc)] = enc.encode(prompts)
        name = pack_name(m)
        found = m.search_vectors(queries[id(enc)], depth)
        if PREFIX_POOL:  # statement keys: the mean with the prefix key's inner product
            flat = [h for hits in found for h in hits]
            pre = _prefix_key_rows(enc, [h.entry.text for h in flat])
            at = 0
            for i, hits in enumerate(found):
                q = queries[id(enc)][i]
                found[i] = [Hit(h.entry, (float(h.score) + float(pre[at + j] @ q)) / 2) for j, h in enumerate(hits)]
                at += len(hits)
        for row, hits in zip(merged, found):
            row.extend((name, h) for h in hits)

    pool = k * CANDIDATES
    for prompt, row in zip(prompts, merged):
        row.sort(key=lambda ph: -float(ph[1].score))
        if lexical > 0 and row:
            del row[pool:]
            cov = lexical_coverage(prompt, [entry_words(h.entry) for _, h in row])[:k]
            row[:] = [(name, Hit(h.entry, float(h.score) + lexical * c)) for (name, h), c in zip(row[:k], cov)]
            row.sort(key=lambda ph: -float(ph[1].score))
        del row[k:]
    return merged


def retrieve(prompt: str, memories: Sequence, k: int, lexical: float | None = None) -> list[tuple[str, object]]:
    """Top-k ``(pack name, Hit)`` over all memories for one prompt, best score first."""
    return retrieve_many([prompt], memories, k, lexical)[0]


def check_request(prompt: str, mode: str, k: int, max_new_tokens: int) -> None:
    if not isinstance(prompt, str) or not prompt.strip():
        raise PredictError("The prompt is empty: type a question or the start of a sentence for the model to complete.")
    if mode not in MODES:
        raise PredictError(f"Unknown mode {mode!r}; choose one of {', '.join(MODES)}.")
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise PredictError(f"k must be a positive number of entries, got {k!r}.")
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise PredictError(f"max_new_tokens must be at least 1, got {max_new_tokens!r}.")


class Predictor:
    """Answers and explanations for one reader (and optionally one trained DPM branch).

    ``branch``: a ``MemoryBranch`` for mode 'dpm' (``engine.mechanisms.dpm.load_default_branch``
    gives the shipped one). Keep the object alive between questions: it caches the
    entries' reader states by text. ``entry_store``: an
    ``engine.mechanisms.dpm.entry_store.EntryStateStore`` (or None) that keeps them on disk
    too, so entries read in an earlier session, or prepared by
    ``engine.jobs.prepare_states``, are not read again.
    """

    @classmethod
    def from_session(cls, session, *, context_style: str = "facts") -> "Predictor":
        """The predictor of an ``engine.session.Session``: its reader, branch and entry store."""
        return cls(session.reader, session.branch, context_style=context_style, entry_store=session.entry_store)

    def __init__(self, reader, branch=None, *, context_style: str = "facts", entry_store=None) -> None:
        from engine.mechanisms.context.mechanism import ContextMechanism

        self.reader = reader
        self.branch = branch
        # The reader is frozen, so its answer without memory never changes: asking again
        # (after an edit, with other packs...) reuses it instead of generating it again.
        self._plain = LRU(256)  # (prompt, max_new_tokens) -> answer
        mechanisms = [ContextMechanism(context_style)]
        if branch is not None:
            from engine.mechanisms.dpm.mechanism import DPMMechanism

            mechanisms.append(DPMMechanism(branch, store=entry_store))
        #: mode name -> the fusion that answers in it (its mechanism's handle on this reader)
        self._fusions = {}
        for m in mechanisms:
            try:
                self._fusions[m.name] = m.fusion(reader)
            except ValueError as exc:  # DPMError: a branch of another reader
                raise PredictError(str(exc)) from exc
        self._dpm = self._fusions.get("dpm")  # the entry states it caches are warmed and forgotten below

    def fusion(self, mode: str):
        """The fusion that answers in ``mode`` (a mode of the registry), or None for 'none'."""
        if mode not in MODES:
            raise PredictError(f"Unknown mode {mode!r}; choose one of {', '.join(MODES)}.")
        spec = mechanism(mode)
        if spec.kind not in ENTRY_KINDS:  # 'none': the bare reader
            return None
        fusion = self._fusions.get(mode)
        if fusion is None:
            raise PredictError(f"Mode {mode!r} needs a trained {spec.artefact}: train or load one, or use mode "
                               f"{spec.fallback!r}.")
        return fusion

    def warm_entries(self, texts: Sequence[str]) -> None:
        """Read entries' reader states now (e.g. right after an edit, in the background),
        so the next DPM prediction that retrieves them does not wait for it."""
        texts = [t for t in texts if t]
        if self._dpm is not None and texts:
            self._dpm.read_entries(texts)

    def forget_entries(self, texts: Sequence[str]) -> None:
        """Drop entries' reader states, cached and stored (the next prediction reads them afresh)."""
        if self._dpm is not None:
            self._dpm.forget_entries(texts)

    def plugin_injector(self, plugins: Sequence):
        """A ``PluginInjector`` of ``plugins`` (``KnowledgePlugin`` objects) for this reader (checked for it)."""
        from engine.mechanisms.plugins.errors import PluginError
        from engine.mechanisms.plugins.attach import PluginInjector
        from engine.mechanisms.plugins.module import KnowledgePlugin

        plugins = tuple(plugins)
        for i, p in enumerate(plugins):
            if not isinstance(p, KnowledgePlugin):
                raise PredictError(f"plugin #{i + 1} is a {type(p).__name__}, not a KnowledgePlugin: load it with "
                                   "engine.mechanisms.plugins.io.load_plugin(folder, reader, pack)")
        names = [p.name for p in plugins]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise PredictError(f"two plugged knowledge plugins are both named {twice[0]!r}: plug one plugin per domain")
        # Cheap to make (the plugins keep their linkers), so made afresh: a plugin whose aliases
        # were just re-read from its pack links with the new ones at once.
        try:
            return PluginInjector(self.reader, list(plugins))
        except PluginError as exc:
            raise PredictError(str(exc)) from exc

    def predict(self, prompt: str, memories: Sequence = (), mode: str = "dpm", k: int = 5, max_new_tokens: int = 8,
                *, explain: bool = True, plugins: Sequence = ()) -> Explanation:
        """:meth:`_predict`, with the weight patches applied to the reader named in the record."""
        from engine.mechanisms.weight_patches.attach import PatchStack

        from engine.explain.pkm import layer_info, slots_read

        expl = self._predict(prompt, memories, mode, k, max_new_tokens, explain=explain, plugins=plugins)
        expl.weight_patches = PatchStack.of(self.reader).names()
        info = layer_info(self.reader)
        if info is not None:  # a product-key memory on the reader: both answers read it
            expl.pkm_layer = info
            expl.mechanisms = ["pkm", *[m for m in expl.mechanisms or [] if m != "pkm"]]
            if explain:
                expl.pkm_slots = slots_read(self.reader, prompt, expl.answer)
        return expl

    def answers_without_pkm(self, prompt: str, memories: Sequence = (), mode: str = "dpm", k: int = 5,
                            max_new_tokens: int = 8, *, plugins: Sequence = ()) -> dict[str, str]:
        """The answers with the plugged product-key memory taken off ({answer, answer_without_memory};
        {} with none plugged); it is plugged again after."""
        from engine.explain.pkm import attached_layer, without_layer

        if attached_layer(self.reader) is None:
            return {}
        with without_layer(self.reader):
            got = self._predict(prompt, memories, mode, k, max_new_tokens, explain=False, plugins=plugins)
        return {"answer": got.answer, "answer_without_memory": got.answer_without_memory}

    def answers_without_patches(self, prompt: str, memories: Sequence = (), mode: str = "dpm", k: int = 5,
                                max_new_tokens: int = 8, *, plugins: Sequence = ()) -> dict[str, dict[str, str]]:
        """The answers with each applied weight patch left out in turn ({patch name: {answer,
        answer_without_memory}}; a later patch made on top of it no longer fits and is left
        out with it, as on removal)."""
        from engine.mechanisms.weight_patches.attach import PatchStack, without

        out: dict[str, dict[str, str]] = {}
        for patch in PatchStack.of(self.reader).patches:
            with without(self.reader, patch):
                got = self._predict(prompt, memories, mode, k, max_new_tokens, explain=False, plugins=plugins)
            out[patch.name] = {"answer": got.answer, "answer_without_memory": got.answer_without_memory}
        return out

    def _predict(
        self,
        prompt: str,
        memories: Sequence = (),
        mode: str = "dpm",
        k: int = 5,
        max_new_tokens: int = 8,
        *,
        explain: bool = True,
        plugins: Sequence = (),
    ) -> Explanation:
        """Answer ``prompt`` with the plugged ``memories`` (``engine.memory.Memory`` objects) and explain it.

        ``mode``: 'dpm' (the trained branch), 'context' (entries before the prompt) or
        'none' (the bare reader). With no memory plugged, or nothing retrieved, the
        answer is exactly the bare reader's. ``explain=False`` skips the leave-one-out
        pass (weights and loo_delta stay None).

        ``plugins``: ``KnowledgePlugin`` objects; their vectors go before the prompt's
        linked mentions while the memory of ``mode`` acts as usual. The record then
        lists them (``plugins``), the injected entities with their leave-one-out
        effect (``injected``) and the memory-only answer (``answer_without_plugins``);
        the retrieved entries' effects are measured with the plugins on.
        ``answer_without_memory`` is always the bare reader (nothing plugged).
        """
        t0 = time.perf_counter()
        check_request(prompt, mode, k, max_new_tokens)
        memories = list(memories or [])
        packs = [pack_name(m) for m in memories]
        fusion = self.fusion(mode)
        plugins = list(plugins or ())
        injector = self.plugin_injector(plugins) if plugins else None
        reader = self.reader

        hits = retrieve(prompt, memories, k) if (memories and fusion is not None) else []
        from engine.mechanisms.weight_patches.attach import state_key

        from engine.explain.pkm import layer_key

        # a weight patch or a product-key memory changes the bare answer too
        key = (prompt, max_new_tokens, state_key(reader), layer_key(reader))
        known = self._plain.get(key)
        texts = [h.entry.text for _, h in hits]
        scores = [float(h.score) for _, h in hits]
        if not hits:
            plain = known if known is not None else reader.generate(prompt, max_new_tokens=max_new_tokens)
            self._plain.put(key, plain)
            if injector is None:
                return Explanation(prompt, plain, plain, mode, packs, [], None, time.perf_counter() - t0, k)
            memory_answer = plain
        else:
            memory_answer, plain = fusion.generate(prompt, texts, scores, max_new_tokens, plain=known)
            self._plain.put(key, plain)
        retrieved = [
            RetrievedEntry(p, int(h.entry.id), h.entry.title, h.entry.text, h.entry.source, float(h.score))
            for p, h in hits
        ]
        if injector is not None:
            return self._predict_plugged(prompt, mode, k, max_new_tokens, explain, injector, plugins, fusion, texts,
                                         scores, packs, retrieved, plain, memory_answer, t0)
        answer, without = memory_answer, plain
        logp_all = None
        answer_ids = reader.tokenizer(answer, add_special_tokens=False)["input_ids"] if answer else []
        if explain and answer_ids:
            loo = fusion.leave_one_out(prompt, texts, scores, answer_ids)
            logp_all = loo.logp_all
            for i, r in enumerate(retrieved):
                r.loo_delta = loo.logp_all - loo.logp_without[i]
                r.weight = None if loo.weights is None else float(loo.weights[i])
        elif explain:
            log.info("Empty answer for %r: no leave-one-out effects to compute", prompt)
        return Explanation(prompt, answer, without, mode, packs, retrieved, logp_all, time.perf_counter() - t0, k)

    def _predict_plugged(self, prompt, mode, k, max_new_tokens, explain, injector, plugins, fusion, texts, scores,
                         packs, retrieved, plain, memory_answer, t0) -> Explanation:
        """The answer with the plugins on top of the memory (``texts`` empty: the plugins alone)."""
        from engine.explain.plugged import PluginFusion

        pf = PluginFusion(self.reader, injector)
        used = fusion if texts else None
        answer = pf.generate([prompt], max_new_tokens, fusion=used, texts=[texts], scores=[scores])[0]
        answer_ids = self.reader.tokenizer(answer, add_special_tokens=False)["input_ids"] if answer else []
        logp_all = None
        if explain and answer_ids:
            loo = pf.leave_one_out(prompt, answer_ids, fusion=used, texts=texts, scores=scores)
            logp_all = loo.logp_all
            injected = loo.injected
            for i, r in enumerate(retrieved):
                r.loo_delta = loo.logp_all - loo.logp_without_entry[i]
                r.weight = None if loo.weights is None else float(loo.weights[i])
        else:
            if explain:
                log.info("Empty answer for %r: no leave-one-out effects to compute", prompt)
            injected = pf.injected(prompt, used, texts)
        return Explanation(prompt, answer, plain, mode, packs, retrieved, logp_all, time.perf_counter() - t0, k,
                           plugins=[p.name for p in plugins], injected=injected, answer_without_plugins=memory_answer,
                           plugin_gates=[d.to_dict() for d in injector.gate_decisions(prompt)])


def predict(
    reader,
    prompt: str,
    memories: Sequence = (),
    mode: str = "dpm",
    k: int = 5,
    branch=None,
    max_new_tokens: int = 8,
    *,
    context_style: str = "facts",
    explain: bool = True,
    plugins: Sequence = (),
) -> Explanation:
    """One-shot :meth:`Predictor.predict` (no state kept between calls)."""
    check_request(prompt, mode, k, max_new_tokens)
    return Predictor(reader, branch, context_style=context_style).predict(
        prompt, memories, mode, k, max_new_tokens, explain=explain, plugins=plugins
    )
