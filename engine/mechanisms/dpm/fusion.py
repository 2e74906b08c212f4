"""``DPMFusion``: answers and leave-one-out with the retrieved entries read through the branch,
the entry states cached by text (and on disk through an ``EntryStateStore``)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import torch

from engine.mechanisms.base import LeaveOneOut
from engine.mechanisms.dpm.attach import attach
from engine.mechanisms.dpm.io import check_compatible
from engine.mechanisms.dpm.module import MemoryBranch, MemoryValues, _Enough
from engine.reader.batching import pad_left
from engine.reader.lru import LRU

if TYPE_CHECKING:
    from engine.reader.generation import PromptStates


@torch.no_grad()
def lower_states(reader, first: int, rows: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """Hidden states entering layer ``first`` for each token row (unpadded, [T_i, d] each, float32, CPU).

    Layers below the branch never see the memory, so these are shared by every memory
    variant of a prompt.
    """
    batch = pad_left(reader, rows)
    captured: list[torch.Tensor] = []

    def grab(module, args, kwargs):
        captured.append(args[0] if args else kwargs["hidden_states"])
        raise _Enough

    h = reader.layers[first].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        reader.model(**batch, use_cache=False, logits_to_keep=1)
    except _Enough:
        pass
    finally:
        h.remove()
    states = captured[0].float()  # [b, T, d]
    width = states.shape[1]
    return [states[i, width - len(r):].detach().cpu().clone() for i, r in enumerate(rows)]


def greedy(reader, batch: dict[str, torch.Tensor], max_new_tokens: int,
           texts: Sequence[Sequence[str]] | None = None, prompt_states=None) -> list[str]:
    """Greedy continuations of a left-padded batch (only the new text, special tokens dropped,
    each cut at the end of its answer: ``engine.reader.generation``). ``texts``: each
    row's entry texts (best-ranked first), whose tokens decoding may copy in fewer steps
    and whose sentence ends end an answer copied from them; ``prompt_states``:
    a ``PromptStates`` below the branch (prompts asked again skip those layers)."""
    from engine.reader.generation import greedy_generate, lookup_sources

    lookup = None if texts is None else [lookup_sources(reader.tokenizer, row) for row in texts]
    return greedy_generate(reader, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           max_new_tokens=max_new_tokens, lookup=lookup, prompt_states=prompt_states,
                           spans=None if texts is None else [list(row) for row in texts])


class EntryCache(LRU):
    """Per-text cache of an entry's reader states ``({layer: states}, embeddings)``. Keyed by
    the text, so an edited entry is simply a new key: no invalidation, no index rebuild."""

    def __init__(self, size: int = 512) -> None:  # ~0.2 MB per entry for SmolLM2 with 4 branch layers
        super().__init__(size)


class DPMFusion:
    """Plug-in memory mode: retrieved entries enter the reader through a trained branch."""

    mode = "dpm"

    def __init__(self, reader, branch: MemoryBranch, cache: EntryCache | None = None, store=None) -> None:
        from engine.reader.generation import PromptStates

        check_compatible(branch.reader_fingerprint, reader)
        self.reader, self.branch = reader, branch
        self.cache = cache if cache is not None else EntryCache()
        # Entry states kept on disk (engine.mechanisms.dpm.entry_store.EntryStateStore), or None.
        self._store = store
        # The layers below the branch never see the memory: a prompt asked again (after an
        # edit, with other packs) runs only the branch layers in its prefill.
        first = branch.layer_ids[0]
        self._prompts = PromptStates(first) if first >= 1 else None
        self._patch_key: tuple = ()  # the weight patches the cached states were read with

    def _follow_patches(self) -> tuple:
        """Forget the cached entry and prompt states when the reader's weight patches changed
        (they were read by other weights); returns the patches' key (() = none)."""
        from engine.mechanisms.weight_patches.attach import state_key

        key = state_key(self.reader)
        if key != self._patch_key:
            self.cache.clear()
            if self._prompts is not None:
                self._prompts.clear()
            self._patch_key = key
        return key

    @property
    def store(self):
        """The on-disk entry states, or None while a weight patch is applied: the store is
        keyed by the bare reader's fingerprint, so patched states must neither come from it
        nor go into it."""
        return self._store if not self._follow_patches() else None

    @store.setter
    def store(self, value) -> None:
        self._store = value

    @property
    def prompts(self) -> PromptStates | None:
        self._follow_patches()
        return self._prompts

    def read_entries(self, texts: Sequence[str]) -> dict[str, tuple[dict[int, torch.Tensor], torch.Tensor]]:
        """``{text: ({layer: states}, embeddings)}`` for ``texts``: from the cache, else from the
        store, else read by the reader (and then stored). All of them end up in the cache."""
        from engine.mechanisms.dpm.entry_store import round_states

        br, r = self.branch, self.reader
        store = self.store  # (forgets the cache first when the weight patches changed)
        out = {t: self.cache.get(t) for t in dict.fromkeys(texts)}
        todo = [t for t, v in out.items() if v is None]
        if not todo:
            return out
        tok_rows = br.tokenize_entries(r, todo)
        stored = store.get_many(todo) if store is not None else {}
        fresh = [n for n, t in enumerate(todo)
                 if t not in stored or any(s.shape[0] != len(tok_rows[n]) for s in stored[t].values())]
        if fresh:
            states, embeds = br.entry_states(r, [tok_rows[n] for n in fresh])
            # Rounded as the store keeps them: an answer never depends on where states came from.
            for j, n in enumerate(fresh):
                out[todo[n]] = ({i: round_states(states[i][j]) for i in br.key_layers}, embeds[j])
            if store is not None:
                store.put_many({todo[n]: out[todo[n]][0] for n in fresh})
        kept = [n for n in range(len(todo)) if out[todo[n]] is None]
        for n, e in zip(kept, br.entry_embeddings(r, [tok_rows[n] for n in kept])):
            out[todo[n]] = ({i: s.to(r.device) for i, s in stored[todo[n]].items()}, e)
        for t in todo:
            self.cache.put(t, out[t])
        return out

    def forget_entries(self, texts: Sequence[str]) -> None:
        """Drop entries' states from the cache and the store (the next read computes them)."""
        for t in texts:
            self.cache.discard(t)
        if self._store is not None:
            self._store.discard_many(texts)

    def memory_for(self, texts_per_row: Sequence[Sequence[str]]) -> MemoryValues:
        """The branch memory for several rows of entry texts, reading each distinct text once."""
        br = self.branch
        got = self.read_entries([t for row in texts_per_row for t in row])
        unique = list(got)
        pos = {t: n for n, t in enumerate(unique)}
        states = {i: [got[t][0][i] for t in unique] for i in br.key_layers}
        embeds = [got[t][1] for t in unique]
        return br.assemble([[pos[t] for t in row] for row in texts_per_row], states, embeds, device=self.reader.device)

    def generate_many(
        self, prompts: Sequence[str], texts: Sequence[Sequence[str]], scores: Sequence[Sequence[float]], max_new_tokens: int
    ) -> list[str]:
        """Greedy answers of several prompts, each with its own retrieved entries (one batch)."""
        r = self.reader
        if not prompts:
            return []
        k = max([len(t) for t in texts] + [1])
        mem = self.memory_for(texts)
        sc = torch.zeros((len(prompts), k), dtype=torch.float32)
        for i, row in enumerate(scores):
            sc[i, : len(row)] = torch.tensor(list(row), dtype=torch.float32)
        batch = r.encode_batch(list(prompts))
        with attach(r, self.branch), self.branch.memory(mem, sc), torch.inference_mode():
            return greedy(r, batch, max_new_tokens, texts, self.prompts)

    # ---------------------------------------------------------------- the answer mode's common methods
    # (``ContextFusion`` has the same; ``generate_many`` above is one of them)
    def reader_input(self, prompt: str, texts: Sequence[str]) -> tuple[str, int]:
        """The reader reads the prompt alone: the entries come in through the branch."""
        return prompt, 0

    def leave_one_out_inputs(self, prompt: str, texts: Sequence[str]) -> list[tuple[str, int]]:
        """Without entry i the input is the same prompt (the entry is masked in the memory)."""
        return [(prompt, 0)] * len(texts)

    @contextmanager
    def entries_on(self, texts: Sequence[Sequence[str]], scores: Sequence[Sequence[float]]) -> Iterator[None]:
        """The branch's hooks with row i's entries (``texts[i]``, ``scores[i]``) as its memory,
        for forwards the caller builds (e.g. with plugin vectors in ``inputs_embeds``)."""
        k = max(len(t) for t in texts)
        sc = torch.zeros((len(texts), k), dtype=torch.float32)  # [b, k]; missing entries are masked
        for i, row in enumerate(scores):
            sc[i, : len(row)] = torch.tensor([float(x) for x in row], dtype=torch.float32)
        mem = self.memory_for(texts)  # [b, k, L]
        with attach(self.reader, self.branch), self.branch.memory(mem, sc):
            yield

    def leave_one_out_with(self, prompt: str, texts: Sequence[str], scores: Sequence[float],
                           answer_len: int) -> Callable[[Callable[..., Any], Any], tuple[Any, list[float]]]:
        """``run(forward, batch) -> (log p per row, entry weights)`` for a batch of ``n`` rows built
        by another mechanism: row 0 reads every entry, row 1 + i all but entry i, the rest every
        entry. The entry states are read now (outside inference mode, where they are cached)."""
        mem = self.memory_for([list(texts)])  # [1, k, L]
        k = len(texts)

        def run(forward: Callable[..., Any], batch: Any) -> tuple[Any, list[float]]:
            n = batch.inputs.inputs_embeds.shape[0]
            mask = mem.mask.expand(n, *mem.mask.shape[1:]).clone()  # [n, k, L]
            for i in range(k):
                mask[1 + i, i] = False
            sc = torch.tensor([[float(s) for s in scores]], dtype=torch.float32)  # [1, k]
            # every row ends with the answer (left padding): its last prompt token is at -(answer_len+1)
            with attach(self.reader, self.branch), \
                    self.branch.memory(mem.with_mask(mask), sc, record_at=-(answer_len + 1)):
                lp, _ = forward()
                weights = [float(w) for w in self.branch.last_weights[0].float().cpu()]
            return lp, weights

        return run

    def generate(
        self, prompt: str, texts: Sequence[str], scores: Sequence[float], max_new_tokens: int, plain: str | None = None
    ) -> tuple[str, str]:
        """(answer with the memory, answer of the unplugged reader) in one batched generate.

        Row 1 has every entry masked, so the branch adds exactly zero: it is the base
        reader. Pass ``plain`` (the bare reader's answer, known from before) to skip it.
        """
        r = self.reader
        if not texts:
            plain = r.generate(prompt, max_new_tokens=max_new_tokens) if plain is None else plain
            return plain, plain
        mem = self.memory_for([list(texts)])  # [1, k, L]
        if plain is not None:
            return self.generate_many([prompt], [list(texts)], [list(scores)], max_new_tokens)[0], plain
        mem2 = mem.with_mask(torch.cat([mem.mask, torch.zeros_like(mem.mask)]))  # [2, k, L]: row 1 = no memory
        sc = torch.tensor([list(scores)], dtype=torch.float32)  # [1, k]
        batch = r.encode_batch([prompt, prompt])
        with attach(r, self.branch), self.branch.memory(mem2, sc), torch.inference_mode():
            with_mem, without = greedy(r, batch, max_new_tokens, [list(texts), []], self.prompts)
        return with_mem, without

    def leave_one_out(self, prompt: str, texts: Sequence[str], scores: Sequence[float], answer_ids: Sequence[int]) -> LeaveOneOut:
        """All k+1 variants (all entries, then all but entry i) in ONE batched pass.

        The layers below the branch never see the memory, so ``prompt + answer`` goes
        through them once; only the branch layers run for the k+1 rows, and the LM
        head only at the answer positions.
        """
        r, br = self.reader, self.branch
        k = len(texts)
        la = len(answer_ids)
        mem = self.memory_for([list(texts)])  # [1, k, L]
        rows = mem.mask.expand(k + 1, *mem.mask.shape[1:]).clone()  # [k+1, k, L]
        for i in range(k):
            rows[i + 1, i] = False
        sc = torch.tensor([list(scores)], dtype=torch.float32)  # [1, k]
        seq = list(r.tokenizer([prompt])["input_ids"][0]) + list(answer_ids)
        first = br.layer_ids[0]
        dev = r.device
        with attach(r, br), torch.inference_mode():
            low = lower_states(r, first, [seq])[0].to(dev, r.dtype)  # [T, d]
            t = low.shape[0]
            hidden = low.unsqueeze(0).expand(k + 1, t, low.shape[1])  # [k+1, T, d]
            att = torch.ones((k + 1, t), dtype=torch.long, device=dev)
            pos = torch.arange(t, device=dev).unsqueeze(0).expand(k + 1, t)
            with br.memory(mem.with_mask(rows), sc, record_at=-(la + 1)):
                last = r.run_from(first, hidden, att, pos)  # [k+1, T, d]
                weights = br.last_weights[0].float().cpu().tolist()  # [k]
            logits = r.model.lm_head(last[:, t - la - 1: t - 1]).float()  # [k+1, la, V]
            logp = torch.log_softmax(logits, dim=-1)
            target = torch.tensor(list(answer_ids), device=dev).view(1, la, 1).expand(k + 1, la, 1)
            sums = logp.gather(-1, target).squeeze(-1).sum(-1).cpu()  # [k+1]
        return LeaveOneOut(float(sums[0]), [float(x) for x in sums[1:]], weights)
