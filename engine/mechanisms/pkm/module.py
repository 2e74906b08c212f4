"""The product-key memory itself (Lample et al. 2019, read in facebookresearch/XLM's
``xlm/model/memory``; written here for a frozen causal reader).

A query network maps the FFN input ``n`` [N, d] to H queries of ``key_dim``; each query is
split in two halves scored against two sets of sqrt(slots) sub-keys; the top k of each
half give k x k candidate sums, of which the top k are kept (the exact top k over all
``slots`` product keys, at the cost of 2 sqrt(slots) dot products). A softmax over the k
scores weighs the k value rows (an ``EmbeddingBag`` in sum mode); the H heads are summed.
With ``init='zero'`` the values are zero, so the layer adds exactly 0 until it is trained.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from engine.mechanisms.pkm.config import PKMConfig


class _RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(dim)), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def _norm(kind: str, dim: int) -> nn.Module:
    if kind == "layer":
        return nn.LayerNorm(dim)
    if kind == "batch":
        return nn.BatchNorm1d(dim)
    if kind == "rms":
        return _RMSNorm(dim)
    return nn.Identity()


class ProductKeyMemory(nn.Module):
    """``forward(x [..., d]) -> [..., d]``; ``lookup(x)`` gives the slots read and their weights."""

    def __init__(self, config: PKMConfig, hidden_size: int, *, seed: int | None = None) -> None:
        super().__init__()
        config.validate()
        self.config, self.hidden_size = config, int(hidden_size)
        h, kd, n = config.heads, config.key_dim, config.n_keys
        self.query = nn.Linear(self.hidden_size, h * kd)
        self.query_norm = _norm(config.query_norm, h * kd)
        self.keys = nn.Parameter(torch.empty(h, 2, n, kd // 2))  # [heads, half, sqrt(slots), key_dim/2]
        self.values = nn.EmbeddingBag(config.slots, self.hidden_size, mode="sum")  # [slots, d]
        if self.keys.device.type != "meta":
            self.reset_parameters(seed)

    def reset_parameters(self, seed: int | None = None) -> None:
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        half = self.config.key_dim // 2
        bound = 1.0 / math.sqrt(half)
        with torch.no_grad():
            # Uniform sub-keys (XLM's choice): spread out, so every slot is reachable at start.
            self.keys.copy_(torch.rand(self.keys.shape, generator=gen) * 2 * bound - bound)
            w = torch.empty_like(self.query.weight)
            nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=gen)
            self.query.weight.copy_(w)
            self.query.bias.zero_()
            if self.config.init == "zero":
                self.values.weight.zero_()
            else:
                self.values.weight.copy_(torch.randn(self.values.weight.shape, generator=gen) * self.hidden_size ** -0.5)

    def lookup(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [N, d] -> (slot indices [N, H, k] long, weights [N, H, k], each head's summing to 1)."""
        cfg = self.config
        h, kd, n, k = cfg.heads, cfg.key_dim, cfg.n_keys, cfg.k
        q = self.query_norm(self.query(x))  # [N, H * kd]
        q = q.view(-1, h, 2, kd // 2)  # [N, H, 2, kd/2]
        s = torch.einsum("nhsd,hsmd->nhsm", q, self.keys)  # [N, H, 2, sqrt(slots)]
        s_top, i_top = s.topk(k, dim=-1)  # [N, H, 2, k]
        sums = s_top[:, :, 0, :, None] + s_top[:, :, 1, None, :]  # [N, H, k, k]
        best, flat = sums.flatten(2).topk(k, dim=-1)  # [N, H, k]
        i1 = i_top[:, :, 0].gather(-1, flat // k)  # [N, H, k]
        i2 = i_top[:, :, 1].gather(-1, flat % k)
        return i1 * n + i2, torch.softmax(best.float(), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1]).float()  # [N, d]
        idx, w = self.lookup(flat)  # [N, H, k]
        n = flat.shape[0]
        out = self.values(idx.view(n, -1), per_sample_weights=w.view(n, -1))  # [N, d]: sum over heads and k
        return out.view(shape).to(x.dtype)

    def value_parameters(self) -> list[nn.Parameter]:
        return [self.values.weight]

    def other_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if not name.startswith("values.")]
