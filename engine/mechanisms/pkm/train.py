"""Job: grow a product-key memory on a domain corpus (the reader stays frozen).

``run(config, progress, should_stop)``: the corpus (packs or corpus files) is split by
document into a training and a held-out part (:mod:`engine.mechanisms.pkm.corpus`) and cut
into token windows. The layers below the memory never see it, so the hidden states
entering its layer are computed once for every window under ``no_grad``; each step then
runs only the layers from the memory's up (``Reader.run_from``) and the LM head. The values
have their own optimiser and learning rate (Adam, constant 1e-3, as XLM trains them; dense
gradients, or ``SparseAdam`` over sparse ones from 262k slots); the query network and the
sub-keys a lower one. A step is ``batch`` windows in micro-batches, ``should_stop`` is read
between micro-batches (a cancelled step is dropped), so a cancel is heard within about one
micro-batch.

Checkpoints (memory + both optimisers + step + losses) go to ``<out>/checkpoint.pt`` through
a temporary file and ``os.replace``; a run with the same ``out`` and the same corpus and shape
resumes from it (also after kill -9). At the end the held-out perplexity without and with the
memory and the memory usage on the held-out part go into the artefact's ``config.json``.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from engine.artefacts import atomic_write, config_from_dict, remove_stale_temps
from engine.mechanisms.pkm import io
from engine.mechanisms.pkm.attach import attach
from engine.mechanisms.pkm.config import PKMConfig, PKMError
from engine.mechanisms.pkm.corpus import Windows, load_corpus, loss_mask, windows
from engine.mechanisms.pkm.module import ProductKeyMemory
from engine.mechanisms.pkm.usage import UsageCounter
from engine.progress import EtaEstimator, JobCancelled, accepts_metrics

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
#: From this many slots the values get sparse gradients and SparseAdam (see bench/RESULTS.md).
SPARSE_FROM = 262_144
#: Fields a resumed run must share with its checkpoint (the rest: how long, where, how often).
_IDENTITY = ("corpus", "slots", "layer", "heads", "k", "key_dim", "query_norm", "placement", "init", "batch",
             "seq_len", "value_lr", "lr", "heldout", "seed", "max_tokens")


@dataclass
class GrowConfig:
    out: str
    corpus: list[str]
    reader: str | None = None  # None: the default SmolLM2; or a local model folder
    device: str | None = None
    slots: int = 65_536
    layer: int = -1
    heads: int = 4
    k: int = 32
    key_dim: int = 256
    query_norm: str = "layer"
    placement: str = "beside"
    init: str = "zero"
    steps: int = 300
    batch: int = 8  # windows per step
    micro_batch: int = 2  # windows per forward/backward (should_stop is read between them)
    seq_len: int = 128
    value_lr: float = 1e-3
    lr: float = 1e-4  # query network, its norm and the sub-keys
    heldout: float = 0.2  # share of documents held out
    seed: int = 0
    checkpoint_every: int = 50
    sparse: bool | None = None  # None: sparse value updates from SPARSE_FROM slots
    max_tokens: int | None = None  # cap on the training tokens (None: the whole training part)
    max_heldout_tokens: int | None = 32_768
    threads: int | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GrowConfig":
        return config_from_dict(cls, d, PKMError, "pkm grow config")

    def validate(self, where: str = "pkm grow config") -> None:
        if isinstance(self.corpus, (str, Path)):
            self.corpus = [str(self.corpus)]
        self.corpus = [str(p) for p in self.corpus]
        for name in ("steps", "batch", "micro_batch", "seq_len", "checkpoint_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise PKMError(f"{where}: {name} must be a positive whole number, got {v!r}")
        if self.seq_len < 2:
            raise PKMError(f"{where}: seq_len must be at least 2, got {self.seq_len}")
        for name in ("value_lr", "lr"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v < 1:
                raise PKMError(f"{where}: {name} must be a number in (0, 1), got {v!r}")
        if not isinstance(self.heldout, (int, float)) or not 0 < self.heldout < 1:
            raise PKMError(f"{where}: heldout must be a share in (0, 1), got {self.heldout!r}")
        for name in ("max_tokens", "max_heldout_tokens", "threads"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise PKMError(f"{where}: {name} must be a positive whole number or null, got {v!r}")
        self.pkm().validate(where)

    def pkm(self) -> PKMConfig:
        return PKMConfig(layer=self.layer, slots=self.slots, heads=self.heads, k=self.k, key_dim=self.key_dim,
                         query_norm=self.query_norm, placement=self.placement, init=self.init)

    def identity(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: d[k] for k in _IDENTITY}


@dataclass
class GrowResult:
    out: str
    steps_done: int
    resumed_from: int = 0
    layer: int = 0
    slots: int = 0
    train_documents: int = 0
    heldout_documents: int = 0
    train_tokens: int = 0
    heldout_tokens: int = 0
    losses: list[float] = field(default_factory=list)  # mean training loss per logged window
    heldout_ppl_without: float | None = None
    heldout_ppl_with: float | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    train_seconds: float = 0.0
    cache_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- pieces shared with the bench


class _Enough(Exception):
    pass


@torch.no_grad()
def lower_states(reader, layer: int, ids: torch.Tensor, *, batch: int = 8,
                 should_stop: Callable[[], bool] | None = None) -> torch.Tensor:
    """Hidden states entering ``reader.layers[layer]`` for windows ``ids`` [n, T] -> [n, T, d] on the CPU."""
    out = []
    captured: list[torch.Tensor] = []

    def grab(module, args, kwargs):
        captured.append(args[0] if args else kwargs["hidden_states"])
        raise _Enough

    h = reader.layers[layer].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        for s in range(0, ids.shape[0], batch):
            if should_stop is not None and should_stop():
                raise JobCancelled("cancelled while reading the corpus; nothing was trained yet")
            captured.clear()
            chunk = ids[s:s + batch].to(reader.device)
            try:
                reader.model(input_ids=chunk, attention_mask=torch.ones_like(chunk), use_cache=False, logits_to_keep=1)
            except _Enough:
                pass
            out.append(captured[0].detach().cpu())
    finally:
        h.remove()
    return torch.cat(out)


def window_nll(reader, layer: int, hidden: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed next-token NLL over the real targets of windows ``ids`` [b, T] from their states
    entering ``layer`` ``hidden`` [b, T, d] (whatever is attached to the reader takes part), and
    how many targets were counted."""
    dev = reader.device
    b, t = ids.shape
    att = torch.ones(b, t, dtype=torch.long, device=dev)
    pos = torch.arange(t, device=dev).unsqueeze(0).expand(b, t)
    last = reader.run_from(layer, hidden.to(dev), att, pos)  # [b, T, d]
    logits = reader.model.lm_head(last[:, :-1]).float()  # [b, T-1, V]
    targets = ids[:, 1:].to(dev)
    keep = mask[:, 1:].to(dev)
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    return (nll * keep.reshape(-1)).sum(), int(keep.sum())


@torch.no_grad()
def heldout_nll(reader, layer: int, hidden: torch.Tensor, w: Windows, *, batch: int = 8) -> float:
    """Mean next-token NLL of windows ``w`` (perplexity = exp of it) with what is attached now."""
    mask = loss_mask(w)
    total, n = 0.0, 0
    for s in range(0, w.ids.shape[0], batch):
        nll, count = window_nll(reader, layer, hidden[s:s + batch], w.ids[s:s + batch], mask[s:s + batch])
        total, n = total + float(nll), n + count
    return total / max(1, n)


def memory_usage(reader, memory: ProductKeyMemory, layer: int, hidden: torch.Tensor, w: Windows,
                 placement: str = "beside", *, batch: int = 8) -> tuple[float, UsageCounter]:
    """(held-out mean NLL with the memory, its usage over the real tokens of ``w``)."""
    mask = loss_mask(w)
    counter = UsageCounter(memory.config.slots)
    total, n = 0.0, 0
    with torch.no_grad(), attach(reader, memory, layer, placement) as att:
        for s in range(0, w.ids.shape[0], batch):
            att.recording = []
            nll, count = window_nll(reader, layer, hidden[s:s + batch], w.ids[s:s + batch], mask[s:s + batch])
            total, n = total + float(nll), n + count
            keep = mask[s:s + batch].reshape(-1)
            for idx, wt in att.recording:
                counter.add(idx[keep], wt[keep])
            att.recording = None
    return total / max(1, n), counter


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A training checkpoint (tensors and plain data only: ``weights_only=True``)."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated or foreign file
        raise PKMError(f"{path} is not a readable training checkpoint ({type(exc).__name__}: {exc}); "
                       "delete it to start over") from None


def _say(progress):
    if progress is None:
        return lambda *a, **k: None
    with_metrics = accepts_metrics(progress)
    return lambda f, m, **kw: progress(f, m, **kw) if with_metrics and kw else progress(f, m)


# --------------------------------------------------------------------------- the job


def run(config: GrowConfig | dict[str, Any], progress: Callable[..., None] | None = None,
        should_stop: Callable[[], bool] | None = None, *, reader=None) -> dict[str, Any]:
    """Grow (or resume growing) a memory; returns a :class:`GrowResult` dict. ``reader``: an
    already loaded reader (tests, the app's own). ``JobCancelled`` after a checkpoint when
    ``should_stop()`` turns true."""
    cfg = config if isinstance(config, GrowConfig) else GrowConfig.from_dict(config)
    cfg.validate()
    say = _say(progress)
    stop = should_stop or (lambda: False)
    t0 = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    corpus = load_corpus(cfg.corpus)
    train_names, held_names = corpus.split(cfg.heldout, cfg.seed)
    say(0.0, f"read {len(corpus.documents):,} documents ({len(train_names):,} to train on, "
             f"{len(held_names):,} held out)")
    if reader is None:
        from engine.reader import load_reader

        reader = load_reader(cfg.reader, cfg.device)
    pcfg = cfg.pkm()
    layer = pcfg.resolved_layer(reader.num_layers, "pkm grow config")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / CHECKPOINT

    train_w = windows(reader.tokenizer, corpus, train_names, cfg.seq_len, cfg.max_tokens)
    held_w = windows(reader.tokenizer, corpus, held_names, cfg.seq_len, cfg.max_heldout_tokens)
    if train_w.tokens < cfg.seq_len or held_w.tokens < 2:
        raise PKMError(f"{', '.join(corpus.sources)}: too little text to grow a memory on ({train_w.tokens:,} training "
                       f"tokens, {held_w.tokens:,} held out); need at least seq_len={cfg.seq_len} training tokens")
    t_cache = time.perf_counter()
    say(0.01, f"reading the corpus through the layers below layer {layer}")
    train_h = lower_states(reader, layer, train_w.ids, should_stop=stop)  # [n, T, d]
    held_h = lower_states(reader, layer, held_w.ids, should_stop=stop)
    cache_seconds = time.perf_counter() - t_cache
    train_mask = loss_mask(train_w)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        memory = ProductKeyMemory(pcfg, reader.hidden_size, seed=cfg.seed)
    sparse = cfg.sparse if cfg.sparse is not None else pcfg.slots >= SPARSE_FROM
    memory.values.sparse = bool(sparse)
    memory.to(reader.device)
    opt_values = (torch.optim.SparseAdam if sparse else torch.optim.Adam)(memory.value_parameters(), lr=cfg.value_lr)
    opt_other = torch.optim.Adam(memory.other_parameters(), lr=cfg.lr)

    result = GrowResult(out=str(out), steps_done=0, layer=layer, slots=pcfg.slots, train_documents=len(train_names),
                        heldout_documents=len(held_names), train_tokens=train_w.tokens, heldout_tokens=held_w.tokens,
                        cache_seconds=round(cache_seconds, 2))
    step, train_seconds = 0, 0.0
    ppl_without = None
    remove_stale_temps(ckpt_path)  # a run killed while writing its checkpoint
    if ckpt_path.is_file():
        ck = load_checkpoint(ckpt_path)
        if ck.get("identity") != cfg.identity():
            diff = sorted(k for k in cfg.identity() if (ck.get("identity") or {}).get(k) != cfg.identity()[k])
            raise PKMError(f"{ckpt_path} is a checkpoint of another run (differs in {', '.join(diff)}); "
                           "choose another output folder or delete the checkpoint")
        io.check_reader(ck.get("reader") or {}, reader, f"The checkpoint {ckpt_path}")
        memory.load_state_dict(ck["memory"])
        opt_values.load_state_dict(ck["opt_values"])
        opt_other.load_state_dict(ck["opt_other"])
        step = result.resumed_from = int(ck["step"])
        result.losses = list(ck.get("losses", []))
        train_seconds = float(ck.get("train_seconds", 0.0))
        ppl_without = ck.get("ppl_without")
        say(step / cfg.steps, f"resumed from step {step:,} in {ckpt_path}", step=step)
    if ppl_without is None:
        ppl_without = math.exp(heldout_nll(reader, layer, held_h, held_w))
    result.heldout_ppl_without = round(ppl_without, 4)

    def checkpoint(at: int) -> None:
        atomic_write(ckpt_path, lambda p: torch.save({
            "memory": memory.state_dict(), "opt_values": opt_values.state_dict(), "opt_other": opt_other.state_dict(),
            "step": at, "identity": cfg.identity(), "reader": reader.fingerprint, "losses": result.losses,
            "train_seconds": train_seconds, "ppl_without": ppl_without,
        }, p))

    eta = EtaEstimator()
    log_every = max(1, min(10, cfg.steps // 50))
    window: list[float] = []
    cancelled = False
    n_train = train_w.ids.shape[0]
    micro = [(s, min(cfg.batch, s + cfg.micro_batch)) for s in range(0, cfg.batch, cfg.micro_batch)]
    att = attach(reader, memory, layer, pcfg.placement)
    memory.train()
    try:
        while step < cfg.steps and not cancelled:
            t_step = time.perf_counter()
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)  # the same batches after a resume
            rows = torch.randint(n_train, (cfg.batch,), generator=gen)
            opt_values.zero_grad(set_to_none=True)
            opt_other.zero_grad(set_to_none=True)
            total, count = 0.0, 0
            tokens = int(train_mask[rows, 1:].sum())
            for a, b in micro:
                if stop():
                    cancelled = True
                    break
                r = rows[a:b]
                nll, c = window_nll(reader, layer, train_h[r], train_w.ids[r], train_mask[r])
                (nll / max(1, tokens)).backward()
                total, count = total + float(nll.detach()), count + c
            if cancelled:
                break
            loss = total / max(1, count)
            if not math.isfinite(loss):
                raise FloatingPointError(f"the training loss is {loss} at step {step}; lower value_lr (now {cfg.value_lr})")
            opt_values.step()
            opt_other.step()
            step += 1
            train_seconds += time.perf_counter() - t_step
            window.append(loss)
            if step % log_every == 0 or step == cfg.steps:
                mean = sum(window) / len(window)
                window = []
                result.losses.append(round(mean, 5))
                left = eta.update(step / cfg.steps)
                say(step / cfg.steps, f"step {step:,}/{cfg.steps:,}  loss {mean:.4f}", loss=mean, step=step,
                    **({"eta": round(left, 1)} if left is not None else {}))
            if step % cfg.checkpoint_every == 0 and step < cfg.steps:
                checkpoint(step)
    finally:
        att.detach()
        memory.eval()
    result.steps_done = step
    result.train_seconds = round(train_seconds, 2)
    checkpoint(step)
    if cancelled:
        say(step / cfg.steps, f"cancelled at step {step:,}; checkpoint kept in {ckpt_path}", step=step)
        raise JobCancelled(f"growing stopped at step {step:,} of {cfg.steps:,}; run it again with the same output "
                           f"folder ({out}) to resume")
    say(0.99, "measuring the held-out perplexity and the memory usage")
    nll_with, counter = memory_usage(reader, memory, layer, held_h, held_w, pcfg.placement)
    result.heldout_ppl_with = round(math.exp(nll_with), 4)
    result.usage = counter.report().to_dict()
    result.seconds = round(time.perf_counter() - t0, 2)
    corpus_meta = {"sources": corpus.sources, "sha256": corpus.sha256, "chars": corpus.chars,
                   "documents": len(corpus.documents), "heldout_share": cfg.heldout, "seed": cfg.seed,
                   "heldout_documents": held_names[:10_000], "train_tokens": train_w.tokens,
                   "heldout_tokens": held_w.tokens}
    training = {"steps": step, "batch": cfg.batch, "seq_len": cfg.seq_len, "value_lr": cfg.value_lr, "lr": cfg.lr,
                "sparse": bool(sparse), "losses": result.losses, "heldout_ppl_without": result.heldout_ppl_without,
                "heldout_ppl_with": result.heldout_ppl_with, "usage": result.usage,
                "train_seconds": result.train_seconds, "cache_seconds": result.cache_seconds}
    io.save(memory, out, reader_fingerprint=reader.fingerprint, layer=layer, corpus=corpus_meta, training=training)
    io.save_usage(out, counter.weights, counter.counts)
    say(1.0, f"grew {step:,} steps; held-out perplexity {result.heldout_ppl_without:.2f} -> "
             f"{result.heldout_ppl_with:.2f}; memory saved to {out}", loss=result.losses[-1] if result.losses else None,
        step=step)
    return result.to_dict()


def grow(config: dict[str, Any], progress=None, should_stop=None) -> dict[str, Any]:
    """The job function the runner names ('engine.mechanisms.pkm.train:grow')."""
    return run(config, progress, should_stop)
