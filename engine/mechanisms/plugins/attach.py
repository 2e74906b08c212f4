"""Putting a knowledge plugin's vectors into a prompt, and answering with them.

For every linked mention in a prompt, the plugin's vector for the entity is inserted as
an extra input position just before the mention's first token::

    "The capital of Afghanistan is"  ->  The | capital | of | [M(e_Afghanistan)] | Afghanistan | is

The reader is frozen and reads ``inputs_embeds``: nothing on it changes, so there is
nothing to undo. Input building is vectorised (:func:`build_inputs_embeds`): the new
column of every token and inserted vector comes from a cumulative count of insertions per
row, and both are written with one indexed assignment each; no Python loop runs over
tokens. :func:`build_inputs_embeds_loop` is the per-token reference it is tested and
benchmarked against.

:class:`PluginInjector` is what prediction and evaluation use: prompt(s) in, inputs
(``inputs_embeds``, attention mask, position ids) + the list of injected entities
out; greedy generation and answer log-probabilities with or without the plugin; and
leave-one-out effects of each injected vector, all batched.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Collection, Sequence

import numpy as np
import torch
from torch import nn

from engine.mechanisms.plugins.errors import PluginError
from engine.mechanisms.plugins.module import KnowledgePlugin


@dataclass
class BuiltInputs:
    inputs_embeds: torch.Tensor  # [b, W, d], left-padded
    attention_mask: torch.Tensor  # [b, W] long
    position_ids: torch.Tensor  # [b, W]
    token_col: torch.Tensor  # [b, L]: column of each original token in the new rows (-1 = none)
    insert_col: torch.Tensor  # [m]: column of each inserted vector

    def model_kwargs(self) -> dict[str, torch.Tensor]:
        return {"inputs_embeds": self.inputs_embeds, "attention_mask": self.attention_mask,
                "position_ids": self.position_ids}


def build_inputs_embeds(
    embedding: nn.Embedding,
    rows: Sequence[Sequence[int]],
    ins_row: torch.Tensor,
    ins_tok: torch.Tensor,
    ins_vec: torch.Tensor,
    pad_id: int = 0,
) -> BuiltInputs:
    """Token rows + vectors inserted before given tokens -> left-padded ``inputs_embeds``.

    ``ins_row[m], ins_tok[m]``: insert ``ins_vec[m]`` (``[m, d]``) into row ``ins_row[m]``
    just before its token ``ins_tok[m]`` (``== len(row)`` appends). Several insertions
    before one token keep their given order. Vectorised: no loop over tokens.
    """
    dev = embedding.weight.device
    b = len(rows)
    lens = torch.tensor([len(r) for r in rows], dtype=torch.long)  # [b]
    L = int(lens.max()) if b else 0
    flat = torch.tensor([t for r in rows for t in r], dtype=torch.long)  # [sum(lens)]
    row_of = torch.repeat_interleave(torch.arange(b), lens)  # [sum]
    starts = torch.cumsum(lens, 0) - lens  # [b]
    col_of = torch.arange(len(flat)) - starts[row_of]  # [sum]
    ids = torch.full((b, L), int(pad_id), dtype=torch.long)
    ids[row_of, col_of] = flat
    ins_row = ins_row.to(torch.long).cpu()
    ins_tok = ins_tok.to(torch.long).cpu()
    m = len(ins_row)
    if m and bool(((ins_tok < 0) | (ins_tok > lens[ins_row])).any()):
        raise ValueError("build_inputs_embeds: an insertion points outside its row")
    cnt = torch.zeros((b, L + 1), dtype=torch.long)  # insertions before token j of row i
    cnt.index_put_((ins_row, ins_tok), torch.ones(m, dtype=torch.long), accumulate=True)
    upto = cnt.cumsum(1)  # [b, L+1]: insertions before or at token j
    newlen = lens + upto[:, -1]  # [b]
    W = int(newlen.max()) if b else 0
    offset = W - newlen  # [b]: left padding
    token_col = offset[:, None] + torch.arange(L)[None, :] + upto[:, :L]  # [b, L]
    valid = torch.arange(L)[None, :] < lens[:, None]  # [b, L]
    token_col = torch.where(valid, token_col, torch.full_like(token_col, -1))
    # rank of each insertion among those before the same token (stable order)
    if m:
        key = ins_row * (L + 1) + ins_tok  # [m]
        order = torch.sort(key, stable=True).indices
        _, counts = torch.unique_consecutive(key[order], return_counts=True)
        first = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)  # [m] in sorted order
        rank_sorted = torch.arange(m) - first
        rank = torch.empty(m, dtype=torch.long)
        rank[order] = rank_sorted
        insert_col = offset[ins_row] + ins_tok + (upto - cnt)[ins_row, ins_tok] + rank  # [m]
    else:
        insert_col = torch.zeros(0, dtype=torch.long)
    tok_emb = embedding(ids.to(dev))  # [b, L, d]
    out = torch.zeros((b, W, tok_emb.shape[-1]), dtype=tok_emb.dtype, device=dev)  # [b, W, d]
    vr, vc = valid.nonzero(as_tuple=True)
    out = out.index_put((vr.to(dev), token_col[vr, vc].to(dev)), tok_emb[vr.to(dev), vc.to(dev)])
    if m:
        out = out.index_put((ins_row.to(dev), insert_col.to(dev)), ins_vec.to(out.dtype))
    att = (torch.arange(W)[None, :] >= offset[:, None]).long()  # [b, W]
    pos = (att.cumsum(-1) - 1).clamp(min=0)  # positions count real inputs only
    return BuiltInputs(out, att.to(dev), pos.to(dev), token_col, insert_col)


def build_inputs_embeds_loop(
    embedding: nn.Embedding,
    rows: Sequence[Sequence[int]],
    ins_row: torch.Tensor,
    ins_tok: torch.Tensor,
    ins_vec: torch.Tensor,
    pad_id: int = 0,
) -> BuiltInputs:
    """Per-token reference of :func:`build_inputs_embeds` (same result; for tests and the benchmark)."""
    dev = embedding.weight.device
    before: dict[tuple[int, int], list[int]] = {}
    for k, (r, t) in enumerate(zip(ins_row.tolist(), ins_tok.tolist())):
        before.setdefault((r, t), []).append(k)
    seqs, tcols, icols = [], [], {}
    L = max((len(r) for r in rows), default=0)
    for i, row in enumerate(rows):
        seq, cols = [], []
        for j in range(len(row) + 1):
            for k in before.get((i, j), []):
                icols[k] = len(seq)
                seq.append(ins_vec[k])
            if j < len(row):
                cols.append(len(seq))
                seq.append(embedding(torch.tensor([row[j]], device=dev))[0])
        seqs.append(seq)
        tcols.append(cols)
    W = max((len(s) for s in seqs), default=0)
    d = embedding.weight.shape[1]
    out, att = [], []
    token_col = torch.full((len(rows), L), -1, dtype=torch.long)
    insert_col = torch.zeros(len(ins_row), dtype=torch.long)
    for i, seq in enumerate(seqs):
        pad = W - len(seq)
        out.append(torch.stack([torch.zeros(d, device=dev, dtype=embedding.weight.dtype)] * pad + seq) if W else
                   torch.zeros((0, d), device=dev))
        att.append([0] * pad + [1] * len(seq))
        for j, c in enumerate(tcols[i]):
            token_col[i, j] = c + pad
        for k, c in icols.items():
            if int(ins_row[k]) == i:
                insert_col[k] = c + pad
    att_t = torch.tensor(att, dtype=torch.long)
    pos = (att_t.cumsum(-1) - 1).clamp(min=0)
    return BuiltInputs(torch.stack(out), att_t.to(dev), pos.to(dev), token_col, insert_col)


def tokens_with_offsets(tokenizer, texts: Sequence[str]) -> tuple[list[list[int]], list[np.ndarray]]:
    """Token ids of each text and the END character offset of each token (``[T]`` int arrays)."""
    try:
        enc = tokenizer(list(texts), return_offsets_mapping=True)
    except (NotImplementedError, ValueError, TypeError) as exc:
        raise PluginError(f"the reader's tokenizer gives no character offsets ({exc}); a fast tokenizer is needed "
                          "to place plugin vectors before mentions") from None
    ends = [np.array([e for _, e in offs], dtype=np.int64) if offs else np.zeros(0, np.int64)
            for offs in enc["offset_mapping"]]
    return [list(r) for r in enc["input_ids"]], ends


def mention_tokens(ends: np.ndarray, starts: Sequence[int]) -> np.ndarray:
    """Index of the first token ending after each mention start (the token a vector goes before)."""
    return np.searchsorted(ends, np.asarray(starts, dtype=np.int64), side="right")


# --------------------------------------------------------------------------- injection
@dataclass
class Injection:
    """One injected vector: the mention, its entity, and where it went."""

    mention: str
    start: int  # characters [start, end) of the prompt
    end: int
    entity_id: int
    entity: str
    plugin: str
    token: int  # index of the prompt token the vector is inserted before
    loo_delta: float | None = None  # log p(answer | all vectors) - log p(answer | all but this one)
    kind: str = "mention"  # "mention": before the mention; "slot": the answer slot, right after the prompt

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class InjectedBatch:
    inputs: BuiltInputs
    injected: list[list[Injection]]  # per row, in prompt order (dropped ones excluded)
    prompt_lens: list[int]


@dataclass
class PluginLeaveOneOut:
    logp_all: float  # log p(answer | every injected vector)
    logp_none: float  # log p(answer | no vector): the bare reader
    injected: list[Injection] = field(default_factory=list)  # with loo_delta filled


class PluginInjector:
    """Turns prompts into reader inputs with the plugins' vectors before linked mentions.

    Several plugins (one per domain) may be plugged; overlapping mentions from two
    plugins resolve to the longer one (then the leftmost). A plugin with an answer slot
    (``answer_slot.SlotPlugin``) also puts a vector of the prompt's last linked entity,
    when that mention is its own, right after the prompt (an injection of kind "slot",
    left out on its own by leave-one-out); ``slots=False`` leaves every slot out. A
    plugin with a relation gate (``gate.RelationGate``) injects nothing into a question
    that matches no relation it was trained for (:meth:`gate_decisions` says why).
    """

    def __init__(self, reader, plugins: KnowledgePlugin | Sequence[KnowledgePlugin], *, slots: bool = True,
                 gates: bool = True) -> None:
        self.reader = reader
        self.plugins = [plugins] if isinstance(plugins, KnowledgePlugin) else list(plugins)
        for p in self.plugins:
            p.check_reader(reader)
        self._linkers = [p.linker() for p in self.plugins]
        self.slots, self.gates = slots, gates
        self._gate_cache: dict[tuple[int, str], Any] = {}

    # ---------------------------------------------------------------- linking
    def _mentions(self, text: str) -> list[tuple[int, int, int, Any]]:
        found = []
        for pi, (p, lk) in enumerate(zip(self.plugins, self._linkers)):
            for m in lk.link(text):
                if p.has(m.entity_id):
                    found.append((m.start, -(m.end - m.start), pi, m))
        return found

    def _gate(self, pi: int, text: str, mentions: Sequence[Any]):
        """Plugin ``pi``'s gate decision on ``text`` (None: it has no gate), cached per question."""
        gate = getattr(self.plugins[pi], "gate", None)
        if gate is None or not self.gates or not mentions:
            return None
        key = (pi, text)
        if key not in self._gate_cache:
            if len(self._gate_cache) > 512:
                self._gate_cache.clear()
            last = max(mentions, key=lambda m: m.start)  # the question's subject: its last linked mention
            self._gate_cache[key] = gate.decide(text, last.start, last.end, plugin=self.plugins[pi].name)
        return self._gate_cache[key]

    def gate_decisions(self, text: str) -> list[Any]:
        """For each gated plugin that links something in ``text``: whether it is applied, and why."""
        found = self._mentions(text)
        out = []
        for pi in range(len(self.plugins)):
            d = self._gate(pi, text, [m for _, _, i, m in found if i == pi])
            if d is not None:
                out.append(d)
        return out

    def link(self, text: str) -> list[Injection]:
        """The injections a prompt gets (token index filled by :meth:`build`; -1 here)."""
        found = self._mentions(text)
        closed = {pi for pi in range(len(self.plugins))
                  if (d := self._gate(pi, text, [m for _, _, i, m in found if i == pi])) is not None and not d.applied}
        found = [f for f in found if f[2] not in closed]
        found.sort(key=lambda x: (x[0], x[1]))
        out: list[Injection] = []
        taken_end = -1
        for start, _, pi, m in found:  # leftmost, then longest, non-overlapping
            if start < taken_end:
                continue
            taken_end = m.end
            p = self.plugins[pi]
            out.append(Injection(m.text, m.start, m.end, m.entity_id, p.linker().names.get(m.entity_id, "?"), p.name, -1))
        if out and self.slots and hasattr(self.plugins[self._plugin_index(out[-1].plugin)], "slot_mapping"):
            last = out[-1]  # the subject: the slot goes where the answer begins (answer_slot.py)
            n = len(text)
            out.append(Injection("", n, n, last.entity_id, last.entity, last.plugin, -1, kind="slot"))
        return out

    def _plugin_index(self, name: str) -> int:
        for i, p in enumerate(self.plugins):
            if p.name == name:
                return i
        raise KeyError(name)

    # ---------------------------------------------------------------- building
    def build(
        self,
        prompts: Sequence[str],
        answers: Sequence[Sequence[int]] | None = None,
        *,
        drop: Sequence[Collection[int]] | None = None,
        enabled: bool = True,
        links: Sequence[list[Injection]] | None = None,
    ) -> InjectedBatch:
        """Reader inputs for ``prompts`` (+ answer token ids appended, if given).

        ``drop[i]``: indices (into row i's links) of injections to leave out;
        ``enabled=False`` injects nothing (the bare reader, same padding scheme).
        ``links`` reuses links computed before (leave-one-out variants of one prompt).
        """
        r = self.reader
        ids, ends = tokens_with_offsets(r.tokenizer, prompts)
        for i, row in enumerate(ids):
            if not row:
                raise PluginError(f"prompt #{i} is empty")
        rows = [row + list(answers[i]) if answers is not None else row for i, row in enumerate(ids)]
        all_links = list(links) if links is not None else [self.link(p) if enabled else [] for p in prompts]
        ins_row, ins_tok, per_plugin, injected = [], [], {}, []
        for i, links_i in enumerate(all_links):
            kept = []
            toks = mention_tokens(ends[i], [x.start for x in links_i]) if links_i else []
            used_tokens: set[int] = set()
            for k, (inj, t) in enumerate(zip(links_i, toks)):
                slot = inj.kind == "slot"
                t = len(ids[i]) if slot else int(t)  # a slot goes before the first answer token
                if not enabled or (drop is not None and k in drop[i]) or (not slot and t >= len(ids[i])) \
                        or (not slot and t in used_tokens):
                    continue
                used_tokens.add(t)
                inj = Injection(**{**asdict(inj), "token": t})
                kept.append(inj)
                per_plugin.setdefault((self._plugin_index(inj.plugin), slot), []).append(len(ins_row))
                ins_row.append(i)
                ins_tok.append(t)
            injected.append(kept)
        dev = r.device
        d = r.hidden_size
        vec = torch.zeros((len(ins_row), d), device=dev, dtype=r.dtype)
        if ins_row:
            flat = [inj for row in injected for inj in row]
            for (pi, slot), where in per_plugin.items():
                p = self.plugins[pi]
                v = (p.slot_vectors if slot else p.vectors)([flat[k].entity_id for k in where], dev)  # [m_p, d]
                vec = vec.index_put((torch.tensor(where, device=dev),), v.to(vec.dtype))
        built = build_inputs_embeds(r.model.get_input_embeddings(), rows, torch.tensor(ins_row, dtype=torch.long),
                                    torch.tensor(ins_tok, dtype=torch.long), vec, int(r.tokenizer.pad_token_id))
        return InjectedBatch(built, injected, [len(x) for x in ids])

    # ---------------------------------------------------------------- inference
    @torch.no_grad()
    def generate(self, prompts: str | Sequence[str], max_new_tokens: int = 8, *, enabled: bool = True,
                 batch_size: int = 16) -> str | list[str]:
        """Greedy continuation(s) with the plugin vectors injected (``enabled=False``: bare reader),
        each cut at the end of its answer (``engine.reader.generation``)."""
        from engine.reader.generation import greedy_generate

        single = isinstance(prompts, str)
        plist = [prompts] if single else list(prompts)
        out = [""] * len(plist)
        if max_new_tokens <= 0 or not plist:
            return out[0] if single else out
        for s in range(0, len(plist), batch_size):
            chunk = plist[s:s + batch_size]
            b = self.build(chunk, enabled=enabled).inputs
            texts = greedy_generate(self.reader, inputs_embeds=b.inputs_embeds, attention_mask=b.attention_mask,
                                    max_new_tokens=max_new_tokens)
            for i, text in enumerate(texts):
                out[s + i] = text
        return out[0] if single else out

    def _answer_ids(self, answers: Sequence[str]) -> list[list[int]]:
        ids = self.reader.tokenizer(list(answers), add_special_tokens=False)["input_ids"] if answers else []
        for i, row in enumerate(ids):
            if not row:
                raise PluginError(f"answer #{i} is empty")
        return [list(r) for r in ids]

    def logprob_rows(self, batch: InjectedBatch, answer_ids: Sequence[Sequence[int]]) -> torch.Tensor:
        """Summed log p of each row's answer tokens (``[b]``, float32) from one forward of ``batch``."""
        return self.logprob_rows_output(batch, answer_ids)[0]

    def logprob_rows_output(self, batch: InjectedBatch, answer_ids: Sequence[Sequence[int]],
                            **forward_kw: Any) -> tuple[torch.Tensor, Any]:
        """:meth:`logprob_rows` and the base model's output (``forward_kw``: e.g. ``output_attentions=True``).

        Whatever hooks sit on the reader (a DPM memory branch) act in this forward too.
        """
        b = batch.inputs
        out = self.reader.model.model(**b.model_kwargs(), use_cache=False, **forward_kw)
        h = out.last_hidden_state  # [b, W, d]
        rows, cols, tgt = [], [], []
        for i, (plen, ans) in enumerate(zip(batch.prompt_lens, answer_ids)):
            for j, t in enumerate(ans):
                rows.append(i)
                cols.append(int(b.token_col[i, plen + j]) - 1)  # the position that predicts answer token j
                tgt.append(t)
        dev = h.device
        sel = h[torch.tensor(rows, device=dev), torch.tensor(cols, device=dev)]  # [n_tok, d]
        logp = torch.log_softmax(self.reader.model.lm_head(sel).float(), -1)  # [n_tok, V]
        tok_lp = logp.gather(-1, torch.tensor(tgt, device=dev)[:, None]).squeeze(-1)  # [n_tok]
        sums = torch.zeros(len(answer_ids), device=dev).index_add(0, torch.tensor(rows, device=dev), tok_lp).cpu()
        return sums, out

    @torch.no_grad()
    def answer_logprob(self, prompts: Sequence[str], answers: Sequence[str], *, enabled: bool = True,
                       batch_size: int = 16) -> torch.Tensor:
        """log p(answer | prompt) per pair, with (or without) the plugin; float32 ``[n]``."""
        if len(prompts) != len(answers):
            raise ValueError(f"answer_logprob: {len(prompts)} prompts but {len(answers)} answers")
        a_ids = self._answer_ids(answers)
        out = torch.empty(len(prompts))
        for s in range(0, len(prompts), batch_size):
            batch = self.build(prompts[s:s + batch_size], a_ids[s:s + batch_size], enabled=enabled)
            out[s:s + batch_size] = self.logprob_rows(batch, a_ids[s:s + batch_size])
        return out

    @torch.no_grad()
    def leave_one_out(self, prompt: str, answer: str) -> PluginLeaveOneOut:
        """log p(answer) with every vector, with none, and without each one: k+2 rows in ONE forward."""
        a = self._answer_ids([answer])[0]
        links = self.link(prompt)
        k = len(links)
        drops = [set()] + [{i} for i in range(k)] + [set(range(k))]
        batch = self.build([prompt] * (k + 2), [a] * (k + 2), drop=drops, links=[links] * (k + 2))
        lp = self.logprob_rows(batch, [a] * (k + 2)).tolist()
        injected = batch.injected[0]
        for i, inj in enumerate(injected):
            inj.loo_delta = lp[0] - lp[1 + i]
        return PluginLeaveOneOut(lp[0], lp[-1], injected)

    def explain(self, prompt: str, max_new_tokens: int = 8) -> dict[str, Any]:
        """Answer with and without the plugin, and the injected entities with their leave-one-out effect.

        The leave-one-out effect is measured on the answer given WITH the plugin.
        """
        answer = self.generate(prompt, max_new_tokens=max_new_tokens)
        without = self.generate(prompt, max_new_tokens=max_new_tokens, enabled=False)
        rec: dict[str, Any] = {"prompt": prompt, "answer": answer, "answer_without_plugin": without,
                               "plugins": [p.name for p in self.plugins], "answer_logprob": None,
                               "answer_logprob_without_plugin": None}
        if answer.strip():
            loo = self.leave_one_out(prompt, answer)
            rec.update(answer_logprob=loo.logp_all, answer_logprob_without_plugin=loo.logp_none,
                       injected=[i.to_dict() for i in loo.injected])
        else:
            b = self.build([prompt])
            rec["injected"] = [i.to_dict() for i in b.injected[0]]
        return rec
