"""Job: train the DPM memory branch of a reader (the reader stays frozen).

Data: JSONL files of ``{"text": fact, "prompt": ..., "answer": ...}`` (optional
``relation``, ``subject``) where the fact is often COUNTERFACTUAL (its object
replaced), so the branch must learn to make the reader follow its memory over what
it memorised. Each example's memory is its fact plus k-1 distractors (other facts,
drawn from the prompt's nearest neighbours by key, never one about the same subject
and relation), shuffled, with their retrieval scores. A share of examples
(``p_absent``) gets only distractors and the reader's own greedy answer as target,
so the branch learns to leave the reader alone when the memory has nothing to say.
Loss: cross-entropy on the answer tokens only.

Speed: the branch only touches the last M layers, so the hidden states entering the
first branch layer do not depend on the branch, and neither do the entries' reader
states (the keys). Both are computed once under ``no_grad`` (and kept in
``<out>/precomputed.pt`` so a resumed run skips that work); every step then runs
only the last M layers.

Checkpoints (branch + optimizer + step + config) go to ``<out>/checkpoint.pt`` via a
temporary file and ``os.replace``; a new run with the same ``out`` resumes from it.
Cancelling (``should_stop``) writes a checkpoint of the last completed step and
raises ``JobCancelled``. The trained branch is saved with ``engine.mechanisms.dpm.save``
into ``out`` (``config.json`` + ``model.safetensors``).

Reproduce the shipped branch: see ``resources/branches/README.md``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from engine.mechanisms import dpm as dpm_io
from engine.mechanisms.dpm import DPMConfig, MemoryBranch, attach, lower_states as _lower_states
from engine.jsonl import JsonlError, read_jsonl
from engine.progress import JobCancelled, accepts_metrics

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
PRECOMPUTED = "precomputed.pt"


class TrainDataError(ValueError):
    """A training data file is missing or malformed (the message names file and line)."""


@dataclass
class TrainMemoryReaderConfig:
    """What to train. ``reader``: None/'default' or a local model folder."""

    out: str
    data: list[str]
    reader: str | None = None
    layers: int = 4
    heads: int = 4
    head_dim: int = 32
    value_mode: str = "tokens"
    value_space: str = "embedding"
    match: str = "cosine"
    max_value_tokens: int = 64
    k: int = 5
    lr: float = 2e-3
    scalar_lr_mult: float = 10.0  # learning-rate multiplier of the branch's scalar parameters
    batch: int = 32
    steps: int = 1500
    seed: int = 0
    checkpoint_every: int = 100
    device: str | None = None
    threads: int | None = None  # torch CPU threads (None: leave as is)
    p_absent: float = 0.15  # share of examples whose fact is left out (locality)
    max_answer_tokens: int = 8
    neighbours: int = 20  # distractors are drawn from this many nearest facts by key
    absent_pool: int = 1024  # examples whose reader answer is computed for the absent case
    keep_precomputed: bool = True  # keep <out>/precomputed.pt for a quick resume

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainMemoryReaderConfig":
        if not isinstance(d, dict):
            raise ValueError(f"train_memory_reader config must be a dict, got {type(d).__name__}")
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"train_memory_reader config: unknown field(s) {', '.join(sorted(unknown))}")
        missing = [n for n in ("out", "data") if n not in d]
        if missing:
            raise ValueError(f"train_memory_reader config: missing {', '.join(missing)}")
        cfg = cls(**d)
        if isinstance(cfg.data, str):
            cfg.data = [cfg.data]
        for name in ("steps", "batch", "k", "checkpoint_every", "max_answer_tokens", "neighbours", "absent_pool"):
            v = getattr(cfg, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"train_memory_reader config: {name} must be a positive integer, got {v!r}")
        if cfg.threads is not None and (not isinstance(cfg.threads, int) or cfg.threads < 1):
            raise ValueError(f"train_memory_reader config: threads must be a positive integer, got {cfg.threads!r}")
        if not (0.0 <= cfg.p_absent < 1.0):
            raise ValueError(f"train_memory_reader config: p_absent must be in [0, 1), got {cfg.p_absent!r}")
        if not (cfg.scalar_lr_mult > 0):
            raise ValueError(f"train_memory_reader config: scalar_lr_mult must be > 0, got {cfg.scalar_lr_mult!r}")
        if not (cfg.lr > 0):
            raise ValueError(f"train_memory_reader config: lr must be > 0, got {cfg.lr!r}")
        cfg.dpm()
        return cfg

    def dpm(self) -> DPMConfig:
        c = DPMConfig(
            layers=self.layers, heads=self.heads, head_dim=self.head_dim, value_mode=self.value_mode,
            value_space=self.value_space, max_value_tokens=self.max_value_tokens, k=self.k, match=self.match,
        )
        try:
            c.validate()
        except dpm_io.DPMError as exc:
            raise ValueError(f"train_memory_reader config: {exc}") from exc
        return c


@dataclass
class TrainMemoryReaderResult:
    out: str
    steps_done: int
    resumed_from: int = 0
    initial_loss: float | None = None
    final_loss: float | None = None
    losses: list[float] = field(default_factory=list)  # mean loss per logged window
    seconds: float = 0.0
    train_seconds: float = 0.0
    examples: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- data


def read_examples(paths: Sequence[str | Path]) -> list[dict[str, str]]:
    """All ``{text, prompt, answer, relation, subject}`` records; any bad line fails the whole read."""
    out: list[dict[str, str]] = []
    seen: set[tuple[str, str, str]] = set()
    if not paths:
        raise TrainDataError("no training data files given")
    for raw in paths:
        p = Path(raw)
        try:  # line by line: the first problem in the file is the one reported
            for n, rec in read_jsonl(p, expect="a JSON object with text, prompt, answer"):
                for key in ("text", "prompt", "answer"):
                    if not isinstance(rec.get(key), str) or not rec[key].strip():
                        raise TrainDataError(f"{p}:{n}: field {key!r} must be a non-empty string")
                trip = (rec["text"].strip(), rec["prompt"].strip(), rec["answer"].strip())
                if trip not in seen:
                    seen.add(trip)
                    out.append({
                        "text": trip[0], "prompt": trip[1], "answer": trip[2],
                        "relation": str(rec.get("relation") or ""), "subject": str(rec.get("subject") or ""),
                    })
        except JsonlError as exc:
            raise TrainDataError(str(exc)) from None
    if len(out) < 2:
        raise TrainDataError(f"need at least 2 distinct examples, found {len(out)} in {', '.join(map(str, paths))}")
    return out


def _neighbours(examples: list[dict[str, str]], facts: list[str], fact_of: list[int], n: int):
    """For each prompt: the ``n`` nearest facts other than its own (and not about the same
    subject and relation) by key, their scores, and its own fact's score.

    Shapes: int [N, n], float [N, n], float [N].
    """
    from engine.encode import get_default_encoder

    enc = get_default_encoder()
    fvec = torch.from_numpy(enc.encode(facts))  # [F, 384]
    pvec = torch.from_numpy(enc.encode([e["prompt"] for e in examples]))  # [N, 384]
    sim = pvec @ fvec.T  # [N, F]
    own = torch.tensor(fact_of)
    own_scores = sim[torch.arange(len(examples)), own].clone()  # [N]
    sim[torch.arange(len(examples)), own] = float("-inf")
    # Facts that state the same (subject, relation) with another object would contradict.
    by_sr: dict[tuple[str, str], list[int]] = {}
    for i, e in enumerate(examples):
        if e["subject"] and e["relation"]:
            by_sr.setdefault((e["subject"], e["relation"]), []).append(fact_of[i])
    for i, e in enumerate(examples):
        for f in by_sr.get((e["subject"], e["relation"]), []):
            sim[i, f] = float("-inf")
    n = min(n, len(facts) - 1)
    top = sim.topk(n, dim=-1)
    return top.indices.numpy(), top.values.numpy(), own_scores.numpy()


# --------------------------------------------------------------------------- model pieces


def _progress_fn(progress: Callable[..., None] | None) -> Callable[..., None]:
    """progress(fraction, message, **metrics), falling back to (fraction, message) for older callbacks."""
    if progress is None:
        return lambda *a, **k: None
    takes_kw = accepts_metrics(progress)

    def call(fraction: float, message: str, **metrics: Any) -> None:
        if takes_kw and metrics:
            progress(fraction, message, **metrics)
        else:
            progress(fraction, message)

    return call


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A training checkpoint (tensors and plain data only: ``weights_only=True``)."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated or foreign file
        raise ValueError(f"{path} is not a readable training checkpoint ({type(exc).__name__}: {exc}); "
                         "delete it to start over") from exc


def _packed(rows: list[torch.Tensor], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Variable-length rows [T_i, ...] -> one tensor [sum T, ...] and offsets [n+1]."""
    lens = torch.tensor([0] + [r.shape[0] for r in rows], dtype=torch.long)
    return torch.cat(rows).to(dtype), lens.cumsum(0)


# --------------------------------------------------------------------------- the job


def train_memory_reader(
    config: TrainMemoryReaderConfig | dict[str, Any],
    progress: Callable[..., None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    *,
    reader=None,
) -> dict[str, Any]:
    """Train (or resume training) a DPM branch; returns a ``TrainMemoryReaderResult`` dict.

    ``reader`` lets a caller pass an already loaded reader (tests, the app's own);
    otherwise ``config.reader`` is loaded on ``config.device``. Raises ``JobCancelled``
    (after a checkpoint) when ``should_stop()`` turns true.
    """
    cfg = config if isinstance(config, TrainMemoryReaderConfig) else TrainMemoryReaderConfig.from_dict(config)
    say = _progress_fn(progress)
    stop = should_stop or (lambda: False)
    t0 = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / CHECKPOINT

    examples = read_examples(cfg.data)
    say(0.0, f"read {len(examples):,} examples")
    if reader is None:
        from engine.reader.reader import load_reader

        reader = load_reader(cfg.reader, cfg.device)
    dev = reader.device
    dcfg = cfg.dpm()
    if dcfg.layers > reader.num_layers:
        raise ValueError(f"train_memory_reader: layers={dcfg.layers} but the reader has {reader.num_layers}")
    first = reader.num_layers - dcfg.layers

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        branch = MemoryBranch(dcfg, reader)
    branch.to(dev)
    params = [p for p in branch.parameters() if p.requires_grad]
    # Scalars (gains, copy scale, temperature, thresholds) get a larger step: they set the
    # branch's overall strength, which Adam would otherwise raise only ~lr per step.
    scalars = [p for p in params if p.numel() <= 8]
    matrices = [p for p in params if p.numel() > 8]
    opt = torch.optim.AdamW(
        [{"params": matrices, "lr_mult": 1.0}, {"params": scalars, "lr_mult": cfg.scalar_lr_mult}],
        lr=cfg.lr, weight_decay=0.0,
    )

    result = TrainMemoryReaderResult(out=str(out), steps_done=0, examples=len(examples))
    step = 0
    if ckpt_path.is_file():
        ck = load_checkpoint(ckpt_path)
        if ck.get("dpm") != asdict(dcfg):
            raise ValueError(
                f"{ckpt_path} holds a checkpoint of another branch shape ({ck.get('dpm')}); "
                "choose another output folder or delete the checkpoint"
            )
        dpm_io.check_compatible(ck.get("reader") or {}, reader, what=f"The checkpoint {ckpt_path}")
        branch.load_state_dict(ck["branch"])
        opt.load_state_dict(ck["optimizer"])
        step = int(ck["step"])
        result.losses = list(ck.get("losses", []))
        result.initial_loss = ck.get("initial_loss")
        result.resumed_from = step
        say(step / cfg.steps, f"resumed from step {step:,}", step=step)

    # ---- facts, tokens, retrieval
    facts = list(dict.fromkeys(e["text"] for e in examples))
    fact_pos = {t: i for i, t in enumerate(facts)}
    fact_of = [fact_pos[e["text"]] for e in examples]
    tok = reader.tokenizer
    prompt_ids = [list(r) for r in tok([e["prompt"] for e in examples])["input_ids"]]
    answer_ids = [
        list(ids[: cfg.max_answer_tokens])
        for ids in tok([" " + e["answer"].lstrip() for e in examples], add_special_tokens=False)["input_ids"]
    ]
    fact_ids = branch.tokenize_entries(reader, facts)

    pre = _precompute(cfg, reader, branch, examples, facts, fact_of, prompt_ids, answer_ids, fact_ids, first, out, say, stop, step)
    nbr_idx, nbr_score, own_score = pre["nbr_idx"], pre["nbr_score"], pre["own_score"]
    own_answer: dict[int, list[int]] = pre["own_answer"]
    lower, lower_off, lower_key = pre["lower"], pre["lower_off"], pre["lower_key"]
    fkeys, fkeys_off = pre["fact_keys"], pre["fact_keys_off"]
    d = reader.hidden_size

    # Within the pool, leave the fact out often enough to make p_absent overall (at most half the time).
    p_absent_pool = min(0.5, cfg.p_absent * len(examples) / max(len(own_answer), 1)) if own_answer else 0.0

    def targets_for(i: int, absent: bool) -> list[int]:
        return own_answer[i] if absent else answer_ids[i]

    def make_batch(step_no: int):
        rng = np.random.default_rng([cfg.seed, step_no])
        idx = rng.choice(len(examples), size=min(cfg.batch, len(examples)), replace=len(examples) < cfg.batch)
        keys, mem_rows, score_rows = [], [], []
        for i in idx.tolist():
            absent = i in own_answer and rng.random() < p_absent_pool
            pool = nbr_idx[i]
            n_d = cfg.k if absent else cfg.k - 1
            chosen = rng.choice(len(pool), size=min(n_d, len(pool)), replace=False)
            mem = [int(pool[c]) for c in chosen]
            sc = [float(nbr_score[i][c]) for c in chosen]
            if not absent:
                mem.append(fact_of[i])
                sc.append(float(own_score[i]))
            order = rng.permutation(len(mem))
            mem_rows.append([mem[o] for o in order])
            score_rows.append([sc[o] for o in order])
            keys.append((i, absent))
        return keys, mem_rows, score_rows

    def loss_of(keys, mem_rows, score_rows) -> torch.Tensor:
        hs = []
        for key in keys:
            j = lower_key[key]
            hs.append(lower[lower_off[j]:lower_off[j + 1]])
        tgts = [targets_for(i, a) for i, a in keys]
        width = max(h.shape[0] for h in hs)
        b = len(hs)
        hidden = torch.zeros((b, width, d), dtype=reader.dtype)  # [b, T, d]
        att = torch.zeros((b, width), dtype=torch.long)
        for r, h in enumerate(hs):
            hidden[r, width - h.shape[0]:] = h.to(reader.dtype)
            att[r, width - h.shape[0]:] = 1
        pos = (att.cumsum(-1) - 1).clamp(min=0)
        # The batch's distinct facts: reader states (keys) from the cache, embeddings from the table.
        uniq = list(dict.fromkeys(f for m in mem_rows for f in m))
        where = {f: n for n, f in enumerate(uniq)}
        embeds = branch.entry_embeddings(reader, [fact_ids[f] for f in uniq])  # [T_f, d] each
        states = {
            layer: [fkeys[fkeys_off[f]:fkeys_off[f + 1], li].float().to(dev) for f in uniq]
            for li, layer in enumerate(branch.layer_ids)
            if layer in branch.key_layers
        }
        mem = branch.assemble([[where[f] for f in m] for m in mem_rows], states, embeds, device=dev)
        sc = torch.zeros((b, mem.mask.shape[1]), dtype=torch.float32)
        for r, s in enumerate(score_rows):
            sc[r, : len(s)] = torch.tensor(s)
        # Only the positions that predict an answer token go through the LM head (the
        # vocabulary projection is the costliest matmul of a step).
        rows_i, cols_i, labels = [], [], []
        for r, t in enumerate(tgts):
            start = width - len(t) - 1  # the last prompt token predicts the first answer token
            for j, tok_id in enumerate(t):
                rows_i.append(r)
                cols_i.append(start + j)
                labels.append(tok_id)
        with branch.memory(mem, sc.to(dev)):
            last = reader.run_from(first, hidden.to(dev), att.to(dev), pos.to(dev))  # [b, T, d]
        picked = last[torch.tensor(rows_i, device=dev), torch.tensor(cols_i, device=dev)]  # [n_answer_tokens, d]
        logits = reader.model.lm_head(picked).float()  # [n_answer_tokens, V]
        return torch.nn.functional.cross_entropy(logits, torch.tensor(labels, device=dev))

    def checkpoint(at: int) -> None:
        _save_torch(ckpt_path, {
            "branch": branch.state_dict(),
            "optimizer": opt.state_dict(),
            "step": at,
            "config": asdict(cfg),
            "dpm": asdict(dcfg),
            "reader": reader.fingerprint,
            "losses": result.losses,
            "initial_loss": result.initial_loss,
        })

    warmup = max(1, min(100, cfg.steps // 10))

    def lr_at(s: int) -> float:
        """Linear warm-up, then cosine decay to a tenth."""
        if s < warmup:
            return cfg.lr * (s + 1) / warmup
        t = (s - warmup) / max(1, cfg.steps - warmup)
        return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))

    window: list[float] = []
    log_every = max(1, min(25, cfg.steps // 40))
    t_train = time.perf_counter()
    att_handle = attach(reader, branch)
    branch.train()
    cancelled = False
    try:
        while step < cfg.steps:
            if stop():
                cancelled = True
                break
            keys, mem_rows, score_rows = make_batch(step)
            for g in opt.param_groups:
                g["lr"] = lr_at(step) * g["lr_mult"]
            loss = loss_of(keys, mem_rows, score_rows)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {float(loss)} at step {step}; lower lr (now {cfg.lr})")
            if stop():  # cancelled mid-step: drop this step, keep the last completed one
                cancelled = True
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step += 1
            value = float(loss.detach())
            if result.initial_loss is None:
                result.initial_loss = value
            window.append(value)
            if step % log_every == 0 or step == cfg.steps:
                mean = sum(window) / len(window)
                result.losses.append(round(mean, 5))
                window = []
                say(step / cfg.steps, f"step {step:,}/{cfg.steps:,}  loss {mean:.4f}", loss=mean, step=step, lr=lr_at(step - 1))
            if step % cfg.checkpoint_every == 0 and step < cfg.steps:
                checkpoint(step)
    finally:
        att_handle.detach()
        branch.eval()
    result.train_seconds = time.perf_counter() - t_train
    result.steps_done = step
    result.final_loss = result.losses[-1] if result.losses else None
    checkpoint(step)
    if cancelled:
        say(step / cfg.steps, f"cancelled at step {step:,}; checkpoint kept in {ckpt_path}", step=step)
        raise JobCancelled(f"training stopped at step {step:,} of {cfg.steps:,}; run it again with the same output "
                           f"folder ({out}) to resume")
    result.seconds = time.perf_counter() - t0
    dpm_io.save(branch, out, extra={
        "steps": step, "batch": cfg.batch, "lr": cfg.lr, "seed": cfg.seed, "p_absent": cfg.p_absent,
        "data": [Path(p).as_posix() for p in cfg.data], "examples": len(examples),
        "final_loss": result.final_loss, "train_seconds": round(result.train_seconds, 1),
    })
    say(1.0, f"trained {step:,} steps; branch saved to {out}", loss=result.final_loss, step=step)
    return result.to_dict()


def _stamp(cfg: TrainMemoryReaderConfig, reader, examples: list[dict[str, str]]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(reader.fingerprint, sort_keys=True).encode())
    h.update(json.dumps([cfg.layers, cfg.max_value_tokens, cfg.max_answer_tokens, cfg.neighbours, cfg.k,
                         cfg.absent_pool, cfg.p_absent > 0, cfg.seed]).encode())
    for e in examples:
        h.update(json.dumps(e, sort_keys=True).encode())
    return h.hexdigest()


def _precompute(cfg, reader, branch, examples, facts, fact_of, prompt_ids, answer_ids, fact_ids, first, out, say, stop, step):
    """Everything that does not depend on the branch: neighbours, the reader's own answers,
    the hidden states entering the first branch layer, the facts' reader states."""
    path = out / PRECOMPUTED
    stamp = _stamp(cfg, reader, examples)
    frac = step / cfg.steps
    if path.is_file():
        try:
            pre = torch.load(str(path), map_location="cpu", weights_only=True)
            if pre.get("stamp") == stamp:
                say(frac, "reusing precomputed reader states")
                pre["own_answer"] = {int(k): list(v) for k, v in pre["own_answer"].items()}
                pre["lower_key"] = {(int(i), bool(a)): int(j) for i, a, j in pre["lower_key_list"]}
                return pre
        except Exception as exc:  # noqa: BLE001 - a stale or broken cache is simply rebuilt
            log.info("precomputed states in %s unusable (%s); recomputing", path, exc)

    def check_stop() -> None:
        if stop():
            raise JobCancelled(f"training stopped while preparing data; run it again with the same output folder ({out})")

    say(frac, "encoding keys for retrieval")
    nbr_idx, nbr_score, own_score = _neighbours(examples, facts, fact_of, max(cfg.neighbours, cfg.k))

    # Locality targets: the reader's own greedy answer for examples whose fact is absent.
    own_answer: dict[int, list[int]] = {}
    if cfg.p_absent > 0:
        rng0 = np.random.default_rng(cfg.seed)
        pool = sorted(rng0.choice(len(examples), size=min(len(examples), cfg.absent_pool), replace=False).tolist())
        say(frac, f"greedy answers of the reader for {len(pool)} locality examples")
        for s in range(0, len(pool), 64):
            check_stop()
            part = pool[s:s + 64]
            # All 3 tokens, as the shipped branch was trained (not cut at the answer's end).
            texts = reader.generate([examples[i]["prompt"] for i in part], max_new_tokens=3, batch_size=64,
                                    stop_at_answer_end=False)
            for i, t in zip(part, texts):
                ids = reader.tokenizer(t, add_special_tokens=False)["input_ids"][:3]
                if ids:
                    own_answer[i] = list(ids)

    keys = [(i, False) for i in range(len(examples))] + [(i, True) for i in sorted(own_answer)]
    rows = [prompt_ids[i] + (own_answer[i] if a else answer_ids[i]) for i, a in keys]
    order = sorted(range(len(rows)), key=lambda n: len(rows[n]))
    lower_rows: list[torch.Tensor | None] = [None] * len(rows)
    bs = 64
    for s in range(0, len(order), bs):
        check_stop()
        part = order[s:s + bs]
        for n, st in zip(part, _lower_states(reader, first, [rows[n] for n in part])):
            lower_rows[n] = st
        say(frac, f"reader states of prompts {min(s + bs, len(order)):,}/{len(order):,}")
    lower, lower_off = _packed(lower_rows, torch.float32)

    fact_rows: list[torch.Tensor | None] = [None] * len(facts)
    order = sorted(range(len(facts)), key=lambda n: len(fact_ids[n]))
    for s in range(0, len(order), bs):
        check_stop()
        part = order[s:s + bs]
        states, _ = branch.entry_states(reader, [fact_ids[n] for n in part], layers=branch.layer_ids)
        for j, n in enumerate(part):
            fact_rows[n] = torch.stack([states[layer][j].cpu() for layer in branch.layer_ids], dim=1)  # [T, M, d]
        say(frac, f"reader states of facts {min(s + bs, len(order)):,}/{len(order):,}")
    fact_keys, fact_keys_off = _packed(fact_rows, torch.float16)

    pre = {
        "stamp": stamp,
        "nbr_idx": torch.from_numpy(np.ascontiguousarray(nbr_idx)),
        "nbr_score": torch.from_numpy(np.ascontiguousarray(nbr_score)),
        "own_score": torch.from_numpy(np.ascontiguousarray(own_score)),
        "own_answer": {str(k): torch.tensor(v) for k, v in own_answer.items()},
        "lower": lower,
        "lower_off": lower_off,
        "lower_key_list": [[int(i), int(a), j] for j, (i, a) in enumerate(keys)],
        "fact_keys": fact_keys,
        "fact_keys_off": fact_keys_off,
    }
    if cfg.keep_precomputed:
        _save_torch(path, pre)
    pre["own_answer"] = own_answer
    pre["lower_key"] = {key: j for j, key in enumerate(keys)}
    return pre


def _save_torch(path: Path, state: dict[str, Any]) -> None:
    from engine.artefacts import atomic_write

    atomic_write(path, lambda p: torch.save(state, str(p)))
