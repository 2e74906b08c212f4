"""Differentiable plug-in memory (PlugLM's DPM) for a decoder-only reader.

A memory branch sits beside the feed-forward block of the reader's last M decoder
layers: Llama-style layers compute ``h = h + mlp(norm(h))``; a forward hook on each
chosen ``mlp`` returns ``mlp(x) + mem(x)``, which gives exactly ``h + FFN(h) + Mem(h)``
without touching transformers internals (detaching removes the hooks).

What the branch attends to (``value_mode='tokens'``, the default): each retrieved
entry is run once through the frozen reader itself (no memory). For every entry
token j, the KEY is the reader's FFN input at the same layer at position j-1 (the
state that was about to predict token j) and the VALUE is a vector for token j
(``value_space``): its input embedding ('embedding', the first branches), or the
least-squares direction that raises token j's output logit above every other
('unembedding'; with tied embeddings the input embedding raises the token itself
only when it is frequent: for " Tokyo" the raised tokens were junk). A prompt
position whose state resembles "about to say the object of this fact" therefore
finds the entry position that was about to say it, and the branch adds that
token's vector to the residual stream: a learned, relation-agnostic copy from
memory (an induction head over retrieved text). Attention logits get
``beta * retrieval_score`` per entry; a learned "null" slot (value 0) lets a
position attend to nothing. ``value_mode='pooled'`` keeps one slot per entry (mean
key and mean value), the cheaper alternative it was measured against.

The output projection starts at zero, so an untrained branch leaves the reader
exactly as it was; with every entry masked the branch adds exactly zero. The
reader stays frozen and only the branch trains.

Usage::

    branch = MemoryBranch(DPMConfig(layers=4), reader)
    mem = branch.encode_values(reader, [["Tokyo is the capital of Japan.", ...]])
    with attach(reader, branch), branch.memory(mem, scores):
        logits = reader.model(**batch).logits
    branch.last_weights  # [batch, k] attention mass per entry at the recorded position
"""
from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from engine.artefacts import (MAX_SIZE, check_fields, check_shapes, check_size, config_from_dict, module_shapes,
                              read_format_config, tensor_shapes)
from engine.models.lru import LRU

log = logging.getLogger(__name__)

FORMAT = "plugmem-dpm"
FORMAT_VERSION = 2
VALUE_MODES = ("tokens", "pooled")
VALUE_SPACES = ("embedding", "unembedding", "both")
MATCH_MODES = ("cosine", "learned")
#: Where the shipped branch lives (resources/branches/<name>/config.json + model.safetensors).
DEFAULT_BRANCH = "smollm2-135m-dpm"


class _Enough(Exception):
    """Stops a forward pass once the wanted states are captured."""


class DPMError(ValueError):
    """A DPM branch cannot be used: bad config, unreadable files, or made for another reader."""


@dataclass
class DPMConfig:
    """The branch's shape. ``layers`` = how many of the reader's last layers get a branch."""

    layers: int = 4
    heads: int = 4
    head_dim: int = 32
    value_mode: str = "tokens"  # 'tokens' (one key/value per entry token) | 'pooled' (one per entry)
    # What a value token is (see MemoryBranch.value_vectors): its input embedding
    # ('embedding', branches trained before 2026-11-28), the direction that raises
    # that token's output logit above all others ('unembedding'), or both, each at unit RMS.
    value_space: str = "embedding"
    max_value_tokens: int = 64  # entry texts are truncated to this many tokens
    k: int = 5  # entries retrieved per prompt (the branch works with any k; this is the trained one)
    gate: bool = False  # an input-dependent sigmoid gate on the branch output
    match: str = "cosine"  # 'cosine' (reader-state similarity, shared) | 'learned' (per-layer q/k projections)
    # Inference-time multiplier of every branch layer's output (1.0 while training). The
    # trained branch is calibrated afterwards on a validation split: a larger value makes
    # the reader follow an edited entry more often, until paraphrases and locality suffer.
    output_scale: float = 1.0
    # Inference-time multiplier of the retrieval score's learned weight (beta) in the
    # branch's attention logits (1.0 while training), calibrated with output_scale: a
    # larger value puts more of the attention on the best-retrieved entries and less on
    # the "attend to nothing" slot.
    score_scale: float = 1.0

    def validate(self, where: str = "DPM config") -> None:
        for name in ("layers", "heads", "head_dim", "k"):
            check_size(getattr(self, name), name, DPMError, where)
        check_size(self.max_value_tokens, "max_value_tokens", DPMError, where, low=2)
        if self.heads * self.head_dim > MAX_SIZE:  # the width of the learned projections, [hidden, heads * head_dim]
            raise DPMError(f"{where}: heads x head_dim must be at most {MAX_SIZE:,}, got {self.heads} x {self.head_dim}")
        if self.value_mode not in VALUE_MODES:
            raise DPMError(f"{where}: value_mode must be one of {VALUE_MODES}, got {self.value_mode!r}")
        if self.value_space not in VALUE_SPACES:
            raise DPMError(f"{where}: value_space must be one of {VALUE_SPACES}, got {self.value_space!r}")
        if self.match not in MATCH_MODES:
            raise DPMError(f"{where}: match must be one of {MATCH_MODES}, got {self.match!r}")
        if not isinstance(self.gate, bool):
            raise DPMError(f"{where}: gate must be true or false, got {self.gate!r}")
        for name in ("output_scale", "score_scale"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not (0.0 < float(v) <= 100.0):
                raise DPMError(f"{where}: {name} must be a number in (0, 100], got {v!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "DPM config") -> "DPMConfig":
        return config_from_dict(cls, d, DPMError, where)


@dataclass
class MemoryValues:
    """The retrieved entries as the branch reads them.

    ``keys[layer]`` [b, k, L, d]: the reader's FFN input at ``layer`` for the entry
    position before each value token; ``values`` [b, k, L, d]: the value tokens'
    input embeddings; ``mask`` [b, k, L] bool: which slots exist. Clear an entry's
    row of ``mask`` to leave the entry out.
    """

    keys: dict[int, torch.Tensor]
    values: torch.Tensor
    mask: torch.Tensor

    @property
    def shape(self) -> tuple[int, int, int]:
        b, k, length = self.mask.shape
        return b, k, length

    def with_mask(self, mask: torch.Tensor) -> "MemoryValues":
        """The same entries with another mask (broadcast the entries over ``mask``'s batch)."""
        b, k, length = self.mask.shape
        if mask.dim() != 3 or tuple(mask.shape[1:]) != (k, length):
            raise DPMError(f"mask must be [n, {k}, {length}], got {tuple(mask.shape)}")
        return MemoryValues(self.keys, self.values, mask.to(self.mask.device).bool() & self.mask.expand_as(mask))


# --------------------------------------------------------------------------- modules


def final_norm_weight(reader) -> torch.Tensor | None:
    """The weight of the norm before the LM head (Llama's ``model.norm``), or None."""
    base = getattr(reader.model, "model", None) or getattr(reader.model, "base_model", None)
    for name in ("norm", "final_layernorm", "ln_f"):
        w = getattr(getattr(base, name, None), "weight", None)
        if isinstance(w, torch.Tensor) and w.dim() == 1:
            return w
    return None


@torch.no_grad()
def unembedding_map(reader, eps: float = 1e-3) -> torch.Tensor:
    """``P`` [d, d] float32 such that ``w_t @ P`` is token t's 'unembedding' value vector
    (see :meth:`MemoryBranch.value_vectors`): ``(W_U^T W_U + eps * mean(diag) * I)^-1``
    then divided by the final norm's weight (whose tiny entries are clamped)."""
    w = reader.model.get_output_embeddings().weight.float()  # [V, d]
    gram = w.T @ w
    gram += torch.eye(gram.shape[0], device=gram.device) * (eps * gram.diagonal().mean())
    p = torch.linalg.inv(gram)
    g = final_norm_weight(reader)
    if g is not None:
        g = g.float()
        g = torch.where(g.abs() < 1e-3, torch.full_like(g, 1e-3) * torch.sign(g + 1e-12), g)
        p = p / g.unsqueeze(0)
    return p.contiguous()


def _rms(t: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Scale the last dimension to unit root-mean-square (no parameters)."""
    return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + eps)


def _attend(logits: torch.Tensor, null: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Softmax over a null slot (value 0) and the memory slots.

    logits [b, H, T, kL]; null [H]; mask [b, kL] bool; bias [b, kL] -> probs [b, H, T, kL].
    """
    b, h, t, n = logits.shape
    logits = (logits + bias.view(b, 1, 1, n)).masked_fill(~mask.view(b, 1, 1, n), float("-inf"))
    null = null.view(1, h, 1, 1).expand(b, h, t, 1)
    return torch.softmax(torch.cat([null, logits], dim=-1), dim=-1)[..., 1:]


class _CosineMatch(nn.Module):
    """Attention by the cosine similarity of reader states (match='cosine').

    The prompt's FFN input at the first branch layer is compared with the entries' FFN
    inputs at the same layer: nothing relation-specific is learned, only a temperature,
    the weight of the retrieval score and the "attend to nothing" threshold. When the
    prompt repeats an entry's wording the states are identical (cosine 1), so the
    position that was about to say the object is found exactly; paraphrases land close.
    """

    def __init__(self, score_scale: float = 1.0) -> None:
        super().__init__()
        self.log_tau = nn.Parameter(torch.tensor(math.log(20.0)))
        self.beta = nn.Parameter(torch.tensor(1.0))
        self.null_logit = nn.Parameter(torch.zeros(1))
        self.score_scale = float(score_scale)

    def forward(self, x: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """x [b, T, d]; keys [b, k, L, d]; mask [b, k, L]; scores [b, k] -> probs [b, 1, T, kL]."""
        b, k, length, d = keys.shape
        xn = nn.functional.normalize(x, dim=-1)  # [b, T, d]
        kn = nn.functional.normalize(keys.reshape(b, k * length, d), dim=-1)  # [b, kL, d]
        logits = (xn @ kn.transpose(-1, -2)).unsqueeze(1) * self.log_tau.exp()  # [b, 1, T, kL]
        bias = (self.beta * self.score_scale * scores).unsqueeze(-1).expand(b, k, length).reshape(b, k * length)
        return _attend(logits, self.null_logit, mask.reshape(b, k * length), bias)


class _MemoryAttention(nn.Module):
    """One layer's branch: attention over the entries' value tokens, projected into the residual stream.

    With match='learned' the layer has its own multi-head query/key projections; with
    match='cosine' the attention comes from the branch's shared :class:`_CosineMatch`.
    """

    def __init__(self, hidden: int, cfg: DPMConfig) -> None:
        super().__init__()
        self.learned = cfg.match == "learned"
        if self.learned:
            inner = cfg.heads * cfg.head_dim
            self.heads, self.head_dim = cfg.heads, cfg.head_dim
            self.q = nn.Linear(hidden, inner, bias=False)
            self.k = nn.Linear(hidden, inner, bias=False)
            with torch.no_grad():
                # Same projection for queries and keys: attention starts as similarity of reader states.
                self.k.weight.copy_(self.q.weight)
            self.head_mix = nn.Parameter(torch.full((cfg.heads,), 1.0 / cfg.heads))
            self.beta = nn.Parameter(torch.tensor(1.0))  # weight of the retrieval score in the logits
            self.null_logit = nn.Parameter(torch.zeros(cfg.heads))  # "attend to nothing" slot, value 0
        self.o = nn.Linear(hidden, hidden, bias=False)
        nn.init.zeros_(self.o.weight)  # the reader is unchanged until trained
        # Values are RMS-normalised and the output is scaled by a learned gain: a reader's
        # residual stream is ~100x larger than its token embeddings (SmolLM2: RMS ~20 vs
        # 0.14), which a zero-initialised projection trained with Adam's bounded steps
        # would otherwise take tens of thousands of steps to reach.
        self.log_gain = nn.Parameter(torch.tensor(math.log(10.0)))
        # The copy path: the attended tokens' own (normalised) embeddings, scaled. With tied
        # embeddings this is the direction that raises exactly those tokens' logits; a
        # dedicated scalar learns it in tens of steps, where W_o would need thousands to
        # become identity-like. Starts at 0 (the reader is unchanged until trained).
        self.copy = nn.Parameter(torch.zeros(()))
        self.gate = nn.Linear(hidden, 1) if cfg.gate else None
        self.output_scale = float(cfg.output_scale)
        self.score_scale = float(cfg.score_scale)

    def attend(self, x: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """(learned) x [b, T, d]; keys [b, k, L, d]; mask [b, k, L]; scores [b, k] -> probs [b, H, T, kL]."""
        b, t, _ = x.shape
        _, k, length, d = keys.shape
        h, hd = self.heads, self.head_dim
        q = self.q(_rms(x)).view(b, t, h, hd).transpose(1, 2)  # [b, H, T, hd]
        key = self.k(_rms(keys).reshape(b, k * length, d)).view(b, k * length, h, hd).transpose(1, 2)  # [b, H, kL, hd]
        logits = q @ key.transpose(-1, -2) / math.sqrt(hd)  # [b, H, T, kL]
        bias = (self.beta * self.score_scale * scores).unsqueeze(-1).expand(b, k, length).reshape(b, k * length)
        return _attend(logits, self.null_logit, mask.reshape(b, k * length), bias)

    def forward(self, x: torch.Tensor, values: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """x [b, T, d]; values [b, k, L, d]; probs [b, H, T, kL] -> the branch output [b, T, d]."""
        b, k, length, d = values.shape
        mixed = torch.einsum("bhts,h->bts", probs, self.head_mix) if self.learned else probs[:, 0]  # [b, T, kL]
        read = mixed @ _rms(values).reshape(b, k * length, d)  # [b, T, d]
        out = (self.o(read) + self.copy * read) * (self.log_gain.exp() * self.output_scale)  # [b, T, d]
        if self.gate is not None:
            out = out * torch.sigmoid(self.gate(x))
        return out


class MemoryBranch(nn.Module):
    """The DPM branch for one reader: a ``_MemoryAttention`` per chosen layer.

    Build it with ``MemoryBranch(config, reader)`` (or explicit ``hidden_size``,
    ``num_layers`` and ``reader_fingerprint``). Parameters live in float32 on the
    reader's device after :func:`attach`.
    """

    def __init__(
        self,
        config: DPMConfig,
        reader=None,
        *,
        hidden_size: int | None = None,
        num_layers: int | None = None,
        reader_fingerprint: dict | None = None,
    ) -> None:
        super().__init__()
        config.validate()
        if reader is not None:
            hidden_size, num_layers = reader.hidden_size, reader.num_layers
            reader_fingerprint = reader.fingerprint
        if hidden_size is None or num_layers is None:
            raise DPMError("MemoryBranch needs a reader, or hidden_size and num_layers")
        if config.layers > num_layers:
            raise DPMError(f"DPM config: layers={config.layers} but the reader has only {num_layers} layers")
        self.config = config
        self.hidden_size = int(hidden_size)
        self.num_layers = int(num_layers)
        self.reader_fingerprint = dict(reader_fingerprint or {})
        self.layer_ids = list(range(num_layers - config.layers, num_layers))
        self.blocks = nn.ModuleDict({str(i): _MemoryAttention(self.hidden_size, config) for i in self.layer_ids})
        self.match = _CosineMatch(config.score_scale) if config.match == "cosine" else None
        self._value_map: tuple[tuple, torch.Tensor] | None = None  # (reader key, [d, d]) for 'unembedding'
        self._probs: torch.Tensor | None = None  # the shared attention of the current forward (cosine)
        self._mem: tuple[MemoryValues, torch.Tensor] | None = None
        self._record_at: int = -1
        self._recorded: list[torch.Tensor] = []
        self.last_weights: torch.Tensor | None = None  # [b, k]

    @property
    def key_layers(self) -> list[int]:
        """Layers whose reader states the branch compares with: the first branch layer
        alone for match='cosine', every branch layer for match='learned'."""
        return self.layer_ids[:1] if self.config.match == "cosine" else list(self.layer_ids)

    # ------------------------------------------------------------------ values

    def tokenize_entries(self, reader, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of entry texts (the reader's prompt tokenisation), truncated to ``max_value_tokens``."""
        if not texts:
            return []
        ids = reader.tokenizer(list(texts))["input_ids"]
        return [list(row[: self.config.max_value_tokens]) for row in ids]

    @torch.no_grad()
    def entry_states(
        self, reader, token_rows: Sequence[Sequence[int]], layers: Sequence[int] | None = None
    ) -> tuple[dict[int, list[torch.Tensor]], list[torch.Tensor]]:
        """Run entries through the frozen reader (no memory): the FFN inputs at ``layers``
        (default :attr:`key_layers`; the forward stops after the last one).

        Returns ``(states, embeds)``: ``states[layer][n]`` [T_n, d] and ``embeds[n]``
        [T_n, d] (input embeddings), unpadded, float32, on the reader's device.
        """
        rows = [list(r) for r in token_rows]
        layers = list(layers) if layers is not None else self.key_layers
        if not rows:
            return {i: [] for i in layers}, []
        if any(not r for r in rows):
            raise DPMError("an entry has no tokens")
        captured: dict[int, torch.Tensor] = {}
        handles = []
        last = max(layers)
        for i in layers:
            def grab(module, args, _i=i):
                captured[_i] = args[0].detach()
                if _i == last:
                    raise _Enough  # the layers above are not needed
            handles.append(reader.layers[i].mlp.register_forward_pre_hook(grab))
        saved, self._mem = self._mem, None  # the entries are read by the reader alone
        try:
            batch = pad_left(reader, rows)
            try:
                reader.model(**batch, use_cache=False, logits_to_keep=1)
            except _Enough:
                pass
        finally:
            self._mem = saved
            for h in handles:
                h.remove()
        width = batch["input_ids"].shape[1]
        states = {i: [captured[i][n, width - len(r):].float() for n, r in enumerate(rows)] for i in layers}
        return states, self.entry_embeddings(reader, rows)

    def entry_embeddings(self, reader, token_rows: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """The value vectors [T_n, d] (float32) of entries' tokens (:meth:`value_vectors`), as
        :meth:`entry_states` gives them."""
        return [self.value_vectors(reader, torch.tensor(list(row), device=reader.device)) for row in token_rows]

    @torch.no_grad()
    def value_vectors(self, reader, ids: torch.Tensor) -> torch.Tensor:
        """The vectors the branch adds to the residual stream for tokens ``ids`` (float32 [..., d]).

        ``value_space='embedding'``: the tokens' input embeddings. With tied embeddings that
        is also their output direction, but adding it raises the token's own logit above
        the others only for frequent tokens: for " Tokyo" or " BSD" the raised tokens are
        junk ("<filename>", " strugg"; the token itself ranks ~100th) until the branch's
        own projection learns around it (measured: a trained branch copes; bench/RESULTS.md,
        "What a value token is"). ``'unembedding'``: the least-squares direction
        v that makes the LM head's logit change ``W_U (g * v)`` closest to "this token
        only" (W_U the output embeddings [V, d], g the final norm's weight):
        ``v = (W_U^T W_U + eps I)^-1 w_t / g``, one d x d map computed once per reader.
        ``'both'``: the sum of the two, each scaled to unit root-mean-square.
        """
        space = self.config.value_space
        if space == "embedding":
            return reader.model.get_input_embeddings()(ids).float()
        key = (id(reader.model), str(reader.device))
        if self._value_map is None or self._value_map[0] != key:
            self._value_map = (key, unembedding_map(reader))
        w = reader.model.get_output_embeddings().weight[ids].float()  # [..., d]
        un = w @ self._value_map[1]
        if space == "unembedding":
            return un
        return _rms(reader.model.get_input_embeddings()(ids).float()) + _rms(un)

    def assemble(
        self,
        rows: Sequence[Sequence[int]],
        states: dict[int, Sequence[torch.Tensor]],
        embeds: Sequence[torch.Tensor],
        device: torch.device | str | None = None,
    ) -> MemoryValues:
        """Build the branch's memory from per-entry states.

        ``rows[b]`` lists indices into ``states[layer]`` / ``embeds`` (one per retrieved
        entry of batch row b; rows may differ in length, missing entries are masked).
        """
        rows = [list(r) for r in rows]
        b = len(rows)
        k = max([len(r) for r in rows] + [1])
        d = self.hidden_size
        dev = torch.device(device) if device is not None else (embeds[0].device if len(embeds) else torch.device("cpu"))
        pooled = self.config.value_mode == "pooled"
        lengths = [e.shape[0] for e in embeds]
        length = 1 if pooled else max([n - 1 for n in lengths] + [1])
        key_layers = [i for i in self.key_layers if i in states]
        keys = {i: torch.zeros((b, k, length, d), device=dev) for i in key_layers}
        values = torch.zeros((b, k, length, d), device=dev)
        mask = torch.zeros((b, k, length), dtype=torch.bool, device=dev)
        for r, idx in enumerate(rows):
            for c, n in enumerate(idx):
                e = embeds[n]  # [T, d]
                t = e.shape[0]
                if t < 2:
                    continue  # a one-token entry has no (context -> token) pair
                if pooled:
                    values[r, c, 0] = e[1:].mean(0).to(dev)
                    for i in key_layers:
                        keys[i][r, c, 0] = states[i][n][:-1].mean(0).to(dev)
                    mask[r, c, 0] = True
                else:
                    values[r, c, : t - 1] = e[1:].to(dev)  # value j = token j+1
                    for i in key_layers:
                        keys[i][r, c, : t - 1] = states[i][n][:-1].to(dev)  # key j = state at token j
                    mask[r, c, : t - 1] = True
        return MemoryValues(keys, values, mask)

    @torch.no_grad()
    def encode_values(self, reader, texts: Sequence[Sequence[str]]) -> MemoryValues:
        """Entry texts per batch row -> the branch's memory (see :class:`MemoryValues`)."""
        rows_txt = [list(r) for r in texts]
        flat = [t for r in rows_txt for t in r]
        tok_rows = self.tokenize_entries(reader, flat)
        states, embeds = self.entry_states(reader, tok_rows)
        idx, n = [], 0
        for r in rows_txt:
            idx.append(list(range(n, n + len(r))))
            n += len(r)
        return self.assemble(idx, states, embeds, device=reader.device)

    # ------------------------------------------------------------------ memory context

    @contextmanager
    def memory(self, mem: MemoryValues, scores: torch.Tensor, *, record_at: int = -1) -> Iterator["MemoryBranch"]:
        """Set the memory for forward passes inside the block.

        ``mem`` [b|1, k, L] (from :meth:`encode_values`), ``scores`` [b|1, k] retrieval
        scores. A leading dimension of 1 is broadcast over the batch. ``record_at`` is
        the sequence position whose attention mass per entry is recorded in
        ``last_weights`` (averaged over heads and layers; the last forward pass wins).
        """
        b, k, length = mem.mask.shape
        if scores.dim() != 2 or scores.shape[1] != k or scores.shape[0] not in (1, b):
            raise DPMError(f"memory(): scores must be [{b} or 1, {k}], got {tuple(scores.shape)}")
        dev = next(self.parameters()).device
        missing = [i for i in self.key_layers if i not in mem.keys]
        if missing:
            raise DPMError(f"memory(): no keys for layer(s) {missing}")
        self._mem = (
            MemoryValues({i: mem.keys[i].to(dev, torch.float32) for i in self.key_layers},
                         mem.values.to(dev, torch.float32), mem.mask.to(dev).bool()),
            scores.to(dev, torch.float32),
        )
        self._record_at = record_at
        self._recorded = []
        self._probs = None
        self.last_weights = None
        try:
            yield self
        finally:
            self._mem = None
            self._recorded = []
            self._probs = None

    def _branch(self, layer: int, x: torch.Tensor) -> torch.Tensor | None:
        """The branch output for layer ``layer`` given its FFN input x [b, T, d], or None."""
        if self._mem is None:
            return None
        mem, scores = self._mem
        b = x.shape[0]

        def fit(t: torch.Tensor) -> torch.Tensor:
            if t.shape[0] == b:
                return t
            if t.shape[0] != 1:
                raise DPMError(f"memory batch {t.shape[0]} does not match the input batch {b}")
            return t.expand(b, *t.shape[1:])

        key_layer = layer if self.match is None else self.layer_ids[0]
        keys, vals, mask, scores = fit(mem.keys[key_layer]), fit(mem.values), fit(mem.mask), fit(scores)
        block = self.blocks[str(layer)]
        xf = x.float()
        if self.match is None:
            probs = block.attend(xf, keys, mask, scores)  # [b, H, T, kL]
        else:
            # One attention per forward pass, from the first branch layer (whose input the
            # branch has not touched yet); the later layers reuse it.
            stale = self._probs is None or self._probs.shape[0] != b or self._probs.shape[2] != x.shape[1]
            if layer == self.layer_ids[0] or stale:
                self._probs = self.match(xf, keys, mask, scores)  # [b, 1, T, kL]
            probs = self._probs
        out = block(xf, vals, probs)  # [b, T, d]
        if x.shape[1] > 0:
            b_, h_, t_, _ = probs.shape
            k_, length_ = mask.shape[1], mask.shape[2]
            per_entry = probs.reshape(b_, h_, t_, k_, length_).sum(-1)  # [b, H, T, k]
            pos = self._record_at if -x.shape[1] <= self._record_at < x.shape[1] else -1
            self._recorded.append(per_entry[:, :, pos].detach().mean(1))  # [b, k]
            if len(self._recorded) == len(self.layer_ids):
                self.last_weights = torch.stack(self._recorded).mean(0)  # [b, k]
                self._recorded = []
        return out.to(x.dtype)


# --------------------------------------------------------------------------- attaching


class Attachment:
    """Hooks of a branch on a reader; :meth:`detach` (or leaving the ``with``) removes them."""

    def __init__(self, reader, branch: MemoryBranch, handles: list, *, owner: bool = True) -> None:
        self.reader, self.branch, self._handles, self._owner = reader, branch, handles, owner

    def detach(self) -> None:
        """Remove the hooks (a no-op for a nested attach of an already attached branch)."""
        if not self._owner:
            return
        for h in self._handles:
            h.remove()
        self._handles = []
        if getattr(self.reader, "_dpm_attachment", None) is self:
            setattr(self.reader, "_dpm_attachment", None)

    def __enter__(self) -> MemoryBranch:
        return self.branch

    def __exit__(self, *exc: object) -> None:
        self.detach()


def attach(reader, branch: MemoryBranch) -> Attachment:
    """Hook ``branch`` onto the FFN of the reader's last M layers; returns an ``Attachment``.

    The branch is moved to the reader's device (float32). Only one branch can be
    attached to a reader at a time; attaching the attached branch again is a no-op.
    """
    check_compatible(branch.reader_fingerprint, reader, what="this DPM branch")
    current = getattr(reader, "_dpm_attachment", None)
    if current is not None:
        if current.branch is branch:
            return Attachment(reader, branch, [], owner=False)
        raise DPMError("another DPM branch is already attached to this reader; detach it first")
    branch.to(reader.device)
    handles = []
    for i in branch.layer_ids:
        mlp = reader.layers[i].mlp

        def hook(module, inputs, output, _i=i):
            extra = branch._branch(_i, inputs[0])
            return output if extra is None else output + extra

        handles.append(mlp.register_forward_hook(hook))
    att = Attachment(reader, branch, handles)
    setattr(reader, "_dpm_attachment", att)
    return att


def detach(reader) -> None:
    """Remove whatever DPM branch is attached to ``reader`` (no-op when none)."""
    att = getattr(reader, "_dpm_attachment", None)
    if att is not None:
        att.detach()


# --------------------------------------------------------------------------- save / load

_CHECKED_KEYS = ("architecture", "hidden_size", "num_layers", "vocab_size", "weights_sha256")


def check_compatible(expected: dict, reader, what: str = "this DPM branch") -> None:
    """Raise ``DPMError`` when a branch made for the reader ``expected`` does not fit ``reader``.

    The reader's name is informational; architecture, sizes and weights hash must match.
    """
    if not expected:
        return
    mine = reader.fingerprint
    diffs = [
        f"{key} {expected.get(key)!r} vs {mine.get(key)!r}"
        for key in _CHECKED_KEYS
        if key in expected and expected.get(key) != mine.get(key)
    ]
    if diffs:
        raise DPMError(
            f"{what} was trained for the reader {expected.get('name', '?')!r}, not the loaded reader "
            f"{mine.get('name', '?')!r} ({'; '.join(diffs)}); train a branch for this reader"
        )


def save(branch: MemoryBranch, folder: str | Path, *, extra: dict[str, Any] | None = None) -> Path:
    """Write ``config.json`` (config + the reader fingerprint + ``extra``) and ``model.safetensors``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": asdict(branch.config),
        "hidden_size": branch.hidden_size,
        "num_layers": branch.num_layers,
        "reader": branch.reader_fingerprint,
    }
    if extra:
        meta["training"] = extra
    state = {k: v.detach().float().cpu().contiguous() for k, v in branch.state_dict().items()}
    _atomic_write(folder / "model.safetensors", lambda p: save_file(state, str(p), metadata={"format": FORMAT}))
    _atomic_write(folder / "config.json", lambda p: p.write_text(json.dumps(meta, indent=2), encoding="utf-8"))
    return folder


def read_config(folder: str | Path) -> dict[str, Any]:
    """The saved ``config.json`` of a branch folder, validated (raises ``DPMError``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DPMError(f"DPM branch folder not found: {folder}")
    path = folder / "config.json"
    meta, version = read_format_config(path, FORMAT, "a DPM branch", DPMError,
                                       f"{folder} is not a DPM branch folder: no config.json")
    if version != FORMAT_VERSION:
        raise DPMError(
            f"{path}: branch format version {version} is not the one this program reads ({FORMAT_VERSION}); "
            "retrain the branch with `plugmem train-memory-reader`"
        )
    # 'reader' must be an object: a string once slipped past the compatibility check.
    check_fields(meta, {"config": "dict", "reader": "dict", "hidden_size": "int?", "num_layers": "int?",
                        "training": "dict?"}, DPMError, str(path), required=("config", "reader"))
    DPMConfig.from_dict(meta["config"], f"{path}: config")
    return meta


def load(folder: str | Path, reader) -> MemoryBranch:
    """Load a branch saved by :func:`save` for ``reader``; another reader's branch is refused."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    meta = read_config(folder)
    check_compatible(meta["reader"], reader, what=f"The DPM branch in {folder}")
    cfg = DPMConfig.from_dict(meta["config"])  # checked, naming the file, by read_config
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise DPMError(f"{folder}: no model.safetensors")
    # Shapes first, from the file header and a meta-device branch: nothing is allocated
    # for a config that asks for more than the file holds.
    try:
        expected = module_shapes(lambda: MemoryBranch(cfg, reader))
    except DPMError as exc:  # e.g. more layers than the reader has
        raise DPMError(f"{folder / 'config.json'}: {exc}") from None
    check_shapes(expected, tensor_shapes(weights, DPMError), weights, DPMError)
    branch = MemoryBranch(cfg, reader)
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise DPMError(f"{weights} is unreadable: {exc}") from exc
    bad_values = [k for k, v in state.items() if not torch.isfinite(v).all()]
    if bad_values:
        raise DPMError(f"{weights}: non-finite values in {bad_values[:3]}")
    branch.load_state_dict(state)
    branch.to(reader.device)
    branch.eval()
    return branch


def default_branch_path() -> Path:
    """The branch shipped with the app (trained for the default reader, SmolLM2-135M-Instruct).

    ``$PLUGMEM_DPM_BRANCH`` overrides it (a branch folder).
    """
    env = os.environ.get("PLUGMEM_DPM_BRANCH")
    if env:
        return Path(env).expanduser()
    from engine.resources import resources_dir

    return resources_dir() / "branches" / DEFAULT_BRANCH


def load_default_branch(reader) -> MemoryBranch:
    """The shipped branch for ``reader``; ``DPMError`` names the folder when missing or for another reader."""
    return load(default_branch_path(), reader)


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; an artefact is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- prediction helpers


def pad_left(reader, rows: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
    """Left-pad token rows: ``input_ids``, ``attention_mask``, ``position_ids`` ``[b, T]`` on the reader's device."""
    width = max(len(r) for r in rows)
    pad = int(reader.tokenizer.pad_token_id)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    att = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if len(r):
            ids[i, width - len(r):] = torch.tensor(list(r), dtype=torch.long)
            att[i, width - len(r):] = 1
    pos = (att.cumsum(-1) - 1).clamp(min=0)  # positions count real tokens only
    dev = reader.device
    return {"input_ids": ids.to(dev), "attention_mask": att.to(dev), "position_ids": pos.to(dev)}


def answer_logprob_rows(
    reader, prompt_rows: Sequence[Sequence[int]], answer_ids: Sequence[int], **forward_kw: Any
) -> tuple[torch.Tensor, Any]:
    """One batched forward of ``prompt_row + answer_ids`` per row.

    Returns the summed log-probability of the answer per row (float32 ``[n]`` on the
    CPU) and the model output (for attentions). The answer occupies the last
    ``len(answer_ids)`` positions of every row (left padding), so the last prompt
    token sits at position ``-(len(answer_ids) + 1)`` in every row.
    """
    la = len(answer_ids)
    batch = pad_left(reader, [list(p) + list(answer_ids) for p in prompt_rows])
    out = reader.model(**batch, use_cache=False, logits_to_keep=la + 1, **forward_kw)
    logp = torch.log_softmax(out.logits[:, :-1].float(), dim=-1)  # [b, la, V]
    targets = batch["input_ids"][:, -la:]  # [b, la]
    sums = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1).sum(-1)  # [b]
    return sums.float().cpu(), out


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


@dataclass
class LeaveOneOut:
    """Log-probability of the answer with all entries, without each one, and each entry's fusion weight."""

    logp_all: float
    logp_without: list[float]  # [k]
    weights: list[float] | None  # [k]


def greedy(reader, batch: dict[str, torch.Tensor], max_new_tokens: int,
           texts: Sequence[Sequence[str]] | None = None, prompt_states=None) -> list[str]:
    """Greedy continuations of a left-padded batch (only the new text, special tokens dropped,
    each cut at the end of its answer: ``engine.models.generation``). ``texts``: each
    row's entry texts, whose tokens decoding may copy in fewer steps; ``prompt_states``:
    a ``PromptStates`` below the branch (prompts asked again skip those layers)."""
    from engine.models.generation import greedy_generate, lookup_sources

    lookup = None if texts is None else [lookup_sources(reader.tokenizer, row) for row in texts]
    return greedy_generate(reader, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           max_new_tokens=max_new_tokens, lookup=lookup, prompt_states=prompt_states)


class EntryCache(LRU):
    """Per-text cache of an entry's reader states ``({layer: states}, embeddings)``. Keyed by
    the text, so an edited entry is simply a new key: no invalidation, no index rebuild."""

    def __init__(self, size: int = 512) -> None:  # ~0.2 MB per entry for SmolLM2 with 4 branch layers
        super().__init__(size)


class DPMFusion:
    """Plug-in memory mode: retrieved entries enter the reader through a trained branch."""

    mode = "dpm"

    def __init__(self, reader, branch: MemoryBranch, cache: EntryCache | None = None, store=None) -> None:
        from engine.models.generation import PromptStates

        check_compatible(branch.reader_fingerprint, reader)
        self.reader, self.branch = reader, branch
        self.cache = cache if cache is not None else EntryCache()
        # Entry states kept on disk (engine.models.entry_store.EntryStateStore), or None.
        self.store = store
        # The layers below the branch never see the memory: a prompt asked again (after an
        # edit, with other packs) runs only the branch layers in its prefill.
        first = branch.layer_ids[0]
        self.prompts = PromptStates(first) if first >= 1 else None

    def read_entries(self, texts: Sequence[str]) -> dict[str, tuple[dict[int, torch.Tensor], torch.Tensor]]:
        """``{text: ({layer: states}, embeddings)}`` for ``texts``: from the cache, else from the
        store, else read by the reader (and then stored). All of them end up in the cache."""
        from engine.models.entry_store import round_states

        br, r = self.branch, self.reader
        out = {t: self.cache.get(t) for t in dict.fromkeys(texts)}
        todo = [t for t, v in out.items() if v is None]
        if not todo:
            return out
        tok_rows = br.tokenize_entries(r, todo)
        stored = self.store.get_many(todo) if self.store is not None else {}
        fresh = [n for n, t in enumerate(todo)
                 if t not in stored or any(s.shape[0] != len(tok_rows[n]) for s in stored[t].values())]
        if fresh:
            states, embeds = br.entry_states(r, [tok_rows[n] for n in fresh])
            # Rounded as the store keeps them: an answer never depends on where states came from.
            for j, n in enumerate(fresh):
                out[todo[n]] = ({i: round_states(states[i][j]) for i in br.key_layers}, embeds[j])
            if self.store is not None:
                self.store.put_many({todo[n]: out[todo[n]][0] for n in fresh})
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
        if self.store is not None:
            self.store.discard_many(texts)

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
