"""The memory branch itself: ``MemoryBranch`` (an attention over the retrieved entries per
branch layer) and the ``MemoryValues`` it reads (see engine.mechanisms.dpm)."""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import nn

from engine.mechanisms.dpm.config import DPMConfig, DPMError
from engine.reader.batching import pad_left

class _Enough(Exception):
    """Stops a forward pass once the wanted states are captured."""


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
