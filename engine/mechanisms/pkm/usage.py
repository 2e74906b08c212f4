"""How much of a product-key memory a text uses: XLM's memory-usage figures
(``xlm/evaluation/evaluator.py``, the memory part), over the slots every head read.

``weights``: per slot, the softmax weight it received summed over every token and head;
``counts``: how often it was among the k read. From those: the share of slots used (non-zero
weight), KL divergence of both distributions to the uniform one (0 = perfectly even;
log(slots) = one slot takes everything), the Gini coefficient of the weights, how many of
the most-weighted slots hold 50 / 90 / 99 % of the weight, and the top-1 usage (the share
of slots that were some token's best slot)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import numpy as np
import torch


@dataclass
class UsageCounter:
    """Accumulates lookups ``(slots [N, H, k], weights [N, H, k])`` for ``slots`` slots."""

    slots: int
    weights: np.ndarray = field(init=False)
    counts: np.ndarray = field(init=False)
    top1: np.ndarray = field(init=False)
    tokens: int = 0

    def __post_init__(self) -> None:
        self.weights = np.zeros(self.slots, dtype=np.float64)
        self.counts = np.zeros(self.slots, dtype=np.int64)
        self.top1 = np.zeros(self.slots, dtype=np.int64)

    def add(self, idx: torch.Tensor, w: torch.Tensor) -> None:
        idx, w = idx.reshape(idx.shape[0], -1, idx.shape[-1]), w.reshape(w.shape[0], -1, w.shape[-1])
        flat = idx.reshape(-1).numpy()
        self.weights += np.bincount(flat, weights=w.reshape(-1).double().numpy(), minlength=self.slots)
        self.counts += np.bincount(flat, minlength=self.slots)
        best = idx.gather(-1, w.argmax(-1, keepdim=True)).reshape(-1).numpy()  # [N * H]
        self.top1 += np.bincount(best, minlength=self.slots)
        self.tokens += int(idx.shape[0])

    def extend(self, lookups: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> "UsageCounter":
        for idx, w in lookups:
            self.add(idx, w)
        return self

    def report(self) -> "Usage":
        return usage_of(self.weights, self.counts, self.top1, tokens=self.tokens)


@dataclass
class Usage:
    slots: int
    tokens: int
    used: float  # share of slots with non-zero accumulated weight
    top1_used: float  # share of slots that were the best slot of some token and head
    kl_weights: float  # KL(weight distribution || uniform), nats
    kl_counts: float  # KL(access-count distribution || uniform), nats
    gini: float  # Gini coefficient of the slot weights (0 even, 1 one slot)
    slots_50: int  # fewest slots holding 50 % of the weight
    slots_90: int
    slots_99: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def kl_to_uniform(x: np.ndarray) -> float:
    """KL(p || uniform) of the distribution proportional to ``x`` (0 for an all-zero x)."""
    total = float(x.sum())
    if total <= 0:
        return 0.0
    p = x[x > 0] / total
    return float(np.log(len(x)) + (p * np.log(p)).sum())


def gini(x: np.ndarray) -> float:
    """Gini coefficient of non-negative ``x`` (0: all equal; (n-1)/n: one holds everything)."""
    total = float(x.sum())
    if total <= 0:
        return 0.0
    s = np.sort(x) / total
    n = len(s)
    return float(1.0 - 2.0 * (np.cumsum(s).sum() - 0.5) / n) if n else 0.0


def slots_holding(x: np.ndarray, share: float) -> int:
    """The fewest slots whose weights add up to ``share`` of the total."""
    total = float(x.sum())
    if total <= 0:
        return 0
    c = np.cumsum(np.sort(x)[::-1]) / total
    return int(min(len(x), np.searchsorted(c, share - 1e-12) + 1))


def usage_of(weights: np.ndarray, counts: np.ndarray, top1: np.ndarray | None = None, *, tokens: int = 0) -> Usage:
    weights, counts = np.asarray(weights, dtype=np.float64), np.asarray(counts)
    n = len(weights)
    top1 = counts if top1 is None else np.asarray(top1)
    return Usage(slots=n, tokens=tokens, used=float((weights > 0).mean()) if n else 0.0,
                 top1_used=float((top1 > 0).mean()) if n else 0.0, kl_weights=kl_to_uniform(weights),
                 kl_counts=kl_to_uniform(counts.astype(np.float64)), gini=gini(weights),
                 slots_50=slots_holding(weights, 0.5), slots_90=slots_holding(weights, 0.9),
                 slots_99=slots_holding(weights, 0.99))
