"""Job: TransE entity embeddings from a pack's triples (Bordes et al. 2013).

Nodes are the pack's entities plus every distinct literal tail (a capital, a code,
a number: kept as nodes so that the facts shape the geometry, but only entity
vectors are saved). Training: ``h + r ≈ t`` under an L1 (or L2) distance, margin
ranking loss against corrupted triples (head or tail replaced by a random node,
``negatives`` per triple), Adam, entity vectors renormalised to unit length after
every step. The whole epoch is tensor work; a few thousand triples take well under a
second per epoch on one CPU core.

Checkpoints (``<out>/checkpoint.pt``: tensors, optimizer, epoch, loss curve, the
training config and a fingerprint of the triples) are written through a temporary
file and ``os.replace`` every ``checkpoint_every`` epochs and when cancelled; running
the same config again resumes from the last one. The result is an
:class:`~engine.mechanisms.plugins.embeddings.EntityEmbeddings` folder (default
``<pack>.embeddings/``).
"""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from engine.artefacts import atomic_write, check_size, config_from_dict
from engine.mechanisms.plugins.embeddings import CONFIG, EntityEmbeddings, default_embeddings_dir
from engine.mechanisms.plugins.errors import EmbeddingError, PluginError
from engine.progress import JobCancelled, wrap_progress

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
#: config fields that change what is trained (a checkpoint made with others is refused)
_MODEL_FIELDS = ("dim", "batch", "lr", "margin", "p_norm", "negatives", "seed")


@dataclass
class TransEConfig:
    pack: str
    out: str | None = None  # default: <pack>.embeddings beside the pack
    dim: int = 64
    epochs: int = 300
    batch: int = 256
    lr: float = 0.01
    margin: float = 2.0
    p_norm: int = 1
    negatives: int = 4
    seed: int = 0
    checkpoint_every: int = 25  # epochs
    device: str | None = "cpu"
    force: bool = False  # start over even if out holds other embeddings or another run's checkpoint

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TransEConfig":
        return config_from_dict(cls, d, PluginError, "train-transe config")

    def validate(self, where: str = "train-transe config") -> None:
        for name in ("dim", "epochs", "batch", "negatives", "checkpoint_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise PluginError(f"{where}: {name} must be a positive integer, got {v!r}")
        check_size(self.dim, "dim", PluginError, where)  # [entities, dim] is allocated at once
        if self.p_norm not in (1, 2):
            raise PluginError(f"{where}: p_norm must be 1 or 2, got {self.p_norm!r}")
        if not (self.lr > 0 and self.margin > 0):
            raise PluginError(f"{where}: lr and margin must be > 0, got {self.lr!r} and {self.margin!r}")

    def out_dir(self) -> Path:
        return Path(self.out) if self.out else default_embeddings_dir(self.pack)


@dataclass
class TransEResult:
    out: str
    entities: int
    literals: int
    relations: int
    triples: int
    epochs_done: int
    resumed_from: int = 0
    losses: list[float] = field(default_factory=list)  # mean loss per epoch
    tail_hits_at_10: float | None = None  # raw link prediction on (up to 2,000) training triples
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Graph:
    entity_ids: list[int]
    names: list[str]
    literals: list[str]
    relations: list[str]
    triples: np.ndarray  # int64 [n, 3]: head node, relation, tail node
    fingerprint: str

    @property
    def nodes(self) -> int:
        return len(self.entity_ids) + len(self.literals)


def load_graph(pack) -> Graph:
    """The pack's triples as node/relation indices (entities first, by id; then literal tails)."""
    ents = pack.entities()
    if not ents:
        raise PluginError(f"{pack.path}: no entities; import triples first (`plugmem triples import`)")
    ids = [int(e["id"]) for e in ents]
    names = [e["name"] for e in ents]
    index = {eid: i for i, eid in enumerate(ids)}
    rows = pack.conn.execute("SELECT head, relation, tail, tail_id FROM triples ORDER BY id").fetchall()
    if not rows:
        raise PluginError(f"{pack.path}: no triples; import some first (`plugmem triples import`)")
    literals = sorted({t for _, _, t, tid in rows if tid is None})
    lit_index = {t: len(ids) + i for i, t in enumerate(literals)}
    relations = sorted({r for _, r, _, _ in rows})
    rel_index = {r: i for i, r in enumerate(relations)}
    arr = np.array([(index[h], rel_index[r], index[tid] if tid is not None else lit_index[t]) for h, r, t, tid in rows],
                   dtype=np.int64)
    h = hashlib.sha256()
    for eid, n in zip(ids, names):
        h.update(f"e{eid}\t{n}\n".encode())
    for hh, r, t, tid in rows:
        h.update(f"t{hh}\t{r}\t{t}\t{tid}\n".encode())
    return Graph(ids, names, literals, relations, arr, h.hexdigest())


def _distance(h: torch.Tensor, r: torch.Tensor, t: torch.Tensor, p: int) -> torch.Tensor:
    return (h + r - t).norm(p=p, dim=-1)


@torch.no_grad()
def tail_hits_at_k(ent: torch.Tensor, rel: torch.Tensor, triples: torch.Tensor, p: int, k: int = 10,
                   sample: int = 2000, seed: int = 0) -> float:
    """Share of triples whose true tail is among the ``k`` nodes nearest to ``h + r`` (raw setting)."""
    g = torch.Generator().manual_seed(seed)
    if len(triples) > sample:
        triples = triples[torch.randperm(len(triples), generator=g)[:sample]]
    hits = 0
    for chunk in triples.split(256):
        q = ent[chunk[:, 0]] + rel[chunk[:, 1]]  # [c, dim]
        d = torch.cdist(q, ent, p=float(p))  # [c, nodes]
        true = d.gather(1, chunk[:, 2:3])  # [c, 1]
        rank = (d < true).sum(1)  # [c]
        hits += int((rank < k).sum())
    return hits / max(len(triples), 1)


def _load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a damaged checkpoint is reported, not trusted
        raise EmbeddingError(f"{path} is unreadable ({type(exc).__name__}: {exc}); delete it or use --force") from None


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda p: torch.save(state, str(p)))


def train_transe(
    config: TransEConfig | dict[str, Any],
    progress: Callable[..., None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Train (or resume) TransE on the pack's triples; returns a :class:`TransEResult` dict.

    Raises :class:`JobCancelled` when ``should_stop()`` turns true (after writing a
    checkpoint of the last completed epoch).
    """
    from engine.device import pick_device
    from engine.store import Pack

    cfg = config if isinstance(config, TransEConfig) else TransEConfig.from_dict(config)
    cfg.validate()
    say = wrap_progress(progress, 0.0, 1.0)
    stop = should_stop or (lambda: False)
    t0 = time.perf_counter()
    out = cfg.out_dir()
    with Pack.open(cfg.pack, readonly=True) as pack:
        graph = load_graph(pack)
    if (out / CONFIG).is_file() and not cfg.force:
        try:
            prev = EntityEmbeddings.load(out)
        except EmbeddingError:
            prev = None
        if prev is not None and prev.source != "transe":
            raise EmbeddingError(f"{out} holds {prev.source} embeddings; not overwritten (use --force, or another --out)")
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / CHECKPOINT
    dev = pick_device(cfg.device)

    n_nodes, n_rel = graph.nodes, len(graph.relations)
    gen = torch.Generator().manual_seed(cfg.seed)
    bound = 6.0 / cfg.dim ** 0.5
    ent = torch.empty(n_nodes, cfg.dim).uniform_(-bound, bound, generator=gen)
    rel = torch.empty(n_rel, cfg.dim).uniform_(-bound, bound, generator=gen)
    rel = rel / rel.norm(dim=-1, keepdim=True)
    ent = ent / ent.norm(dim=-1, keepdim=True)
    ent = ent.to(dev).requires_grad_(True)
    rel = rel.to(dev).requires_grad_(True)
    opt = torch.optim.Adam([ent, rel], lr=cfg.lr)
    model_cfg = {k: getattr(cfg, k) for k in _MODEL_FIELDS}

    result = TransEResult(out=str(out), entities=len(graph.entity_ids), literals=len(graph.literals),
                          relations=n_rel, triples=len(graph.triples), epochs_done=0)
    epoch = 0
    if ckpt_path.is_file() and cfg.force:
        ckpt_path.unlink()
    if ckpt_path.is_file():
        ck = _load_checkpoint(ckpt_path)
        if ck.get("model") != model_cfg:
            raise EmbeddingError(f"{ckpt_path} is a checkpoint of another TransE config ({ck.get('model')}); "
                                 "use the same options, --force to start over, or another --out")
        if ck.get("data") != graph.fingerprint:
            raise EmbeddingError(f"{ckpt_path}: the pack's entities or triples changed since this checkpoint; "
                                 "use --force to start over on the current triples")
        with torch.no_grad():
            ent.copy_(ck["ent"].to(dev))
            rel.copy_(ck["rel"].to(dev))
        opt.load_state_dict(ck["opt"])
        epoch = int(ck["epoch"])
        result.losses = [float(x) for x in ck.get("losses", [])]
        result.resumed_from = epoch
        say(min(epoch / cfg.epochs, 1.0), f"resumed from epoch {epoch}")

    def checkpoint() -> None:
        _save_checkpoint(ckpt_path, {"ent": ent.detach().cpu(), "rel": rel.detach().cpu(), "opt": opt.state_dict(),
                                     "epoch": epoch, "losses": result.losses, "model": model_cfg,
                                     "data": graph.fingerprint})

    triples = torch.from_numpy(graph.triples).to(dev)  # [n, 3]
    n = len(triples)
    while epoch < cfg.epochs:
        if stop():
            checkpoint()
            raise JobCancelled(f"train-transe cancelled at epoch {epoch}/{cfg.epochs}; run it again to resume from {ckpt_path}")
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)  # an epoch's batches depend on (seed, epoch) only
        order = torch.randperm(n, generator=g).to(dev)
        total = 0.0
        for start in range(0, n, cfg.batch):
            pos = triples[order[start:start + cfg.batch]]  # [b, 3]
            b = len(pos)
            neg = pos.repeat_interleave(cfg.negatives, 0)  # [b*neg, 3]
            corrupt = torch.randint(0, n_nodes, (len(neg),), generator=g).to(dev)
            side = (torch.rand(len(neg), generator=g) < 0.5).to(dev)  # True: replace the head
            neg = neg.clone()
            neg[:, 0] = torch.where(side, corrupt, neg[:, 0])
            neg[:, 2] = torch.where(side, neg[:, 2], corrupt)
            d_pos = _distance(ent[pos[:, 0]], rel[pos[:, 1]], ent[pos[:, 2]], cfg.p_norm)  # [b]
            d_neg = _distance(ent[neg[:, 0]], rel[neg[:, 1]], ent[neg[:, 2]], cfg.p_norm)  # [b*neg]
            loss = torch.relu(cfg.margin + d_pos.repeat_interleave(cfg.negatives) - d_neg).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                ent.div_(ent.norm(dim=-1, keepdim=True).clamp(min=1e-12))
            total += float(loss.detach()) * b
        epoch += 1
        mean = total / n
        result.losses.append(round(mean, 6))
        say(epoch / cfg.epochs, f"epoch {epoch}/{cfg.epochs}  loss {mean:.4f}", loss=mean, epoch=epoch)
        if epoch % cfg.checkpoint_every == 0 or epoch == cfg.epochs:
            checkpoint()
    result.epochs_done = epoch
    result.tail_hits_at_10 = round(tail_hits_at_k(ent.detach().cpu(), rel.detach().cpu(), triples.cpu(), cfg.p_norm), 4)
    emb = EntityEmbeddings(np.array(graph.entity_ids, dtype=np.int64), graph.names,
                           ent.detach().cpu()[: len(graph.entity_ids)].numpy(), "transe",
                           {"config": model_cfg, "epochs": epoch, "final_loss": result.losses[-1] if result.losses else None,
                            "tail_hits_at_10": result.tail_hits_at_10, "literals": len(graph.literals),
                            "relations": graph.relations, "triples": len(graph.triples), "data": graph.fingerprint})
    emb.save(out)
    result.seconds = round(time.perf_counter() - t0, 2)
    say(1.0, f"TransE: {epoch} epochs, loss {result.losses[-1]:.4f}, tail hits@10 {result.tail_hits_at_10:.3f}; saved to {out}",
        loss=result.losses[-1], epoch=epoch)
    return result.to_dict()
