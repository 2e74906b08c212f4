"""Job: map-tuning, i.e. training a knowledge plugin's mapping network with the reader frozen.

Data: the pack's active entries. Each entry's entity mentions are linked
(:class:`~engine.mechanisms.plugins.entities.EntityLinker`); before each mention of a training
entity the mapped vector ``M(e)`` is inserted, and the reader must predict the
mention's tokens from it -- the causal-LM form of mention-masked language modelling
(in a left-to-right reader the mention is not visible before it is predicted, so no
mask is needed). With ``fact_weight > 0`` the rest of the sentence after the first
mention (the facts about the entity) is predicted too, weighted by ``fact_weight``.

Entities are split three ways: held out (``holdout_entities`` / the subjects of
``holdout_probes``: never injected, never a target -- the evaluation's entities),
validation (a seeded ``val_fraction`` of the others: early stopping), and training.
Only the mapping trains (its own lr, batch, epochs); dropout ``reader_dropout`` is
applied inside the reader (attention and feed-forward outputs of every layer) while training.

Checkpoints (mapping, optimizer, step, best state, curves, a fingerprint of the data,
the embeddings and the reader) go to ``<out>/checkpoint.pt`` through a temporary file
+ ``os.replace`` every ``checkpoint_every`` steps and on cancel; the same command
resumes. The best mapping (lowest validation mention loss) is saved as the plugin
(``config.json`` + ``model.safetensors`` + ``entities.json``, default ``<pack>.plugin/``).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from engine.artefacts import config_from_dict
from engine.mechanisms.plugins.embeddings import EntityEmbeddings, default_embeddings_dir
from engine.mechanisms.plugins.entities import EntityLinker
from engine.mechanisms.plugins.errors import PluginError
from engine.mechanisms.plugins.attach import build_inputs_embeds, mention_tokens, tokens_with_offsets
from engine.mechanisms.plugins.io import default_plugin_dir, read_plugin_config
from engine.mechanisms.plugins.module import KnowledgePlugin
from engine.mechanisms.plugins.training import CHECKPOINT, LoopSchedule, MappingTraining, data_fingerprint
from engine.probe_files import EvalDataError, read_probes
from engine.progress import wrap_progress

log = logging.getLogger(__name__)

_MODEL_FIELDS = ("hidden", "fix_norm", "lr", "batch", "reader_dropout", "fact_weight", "seed", "val_fraction",
                 "max_tokens", "weight_decay", "max_val_sentences")


@dataclass
class MapTuneConfig:
    pack: str
    embeddings: str | None = None  # default: <pack>.embeddings
    out: str | None = None  # default: <pack>.plugin
    reader: str | None = None  # None/'default' or a local model folder
    hidden: int = 0  # mapping: 0 = linear, > 0 = MLP hidden width
    fix_norm: bool = True
    lr: float = 3e-3
    weight_decay: float = 0.0
    batch: int = 16
    epochs: int = 3
    max_steps: int = 0  # > 0: stop after this many steps (whatever the epochs)
    warmup_steps: int = 15  # linear learning-rate warm-up
    reader_dropout: float = 0.0  # SmolLM2 was not trained with dropout: 0.1 doubled its loss (14 vs 7.5 nats)
    fact_weight: float = 0.0  # weight of the loss on the sentence after the mention (facts)
    holdout_entities: list[str] = field(default_factory=list)
    holdout_probes: list[str] = field(default_factory=list)  # JSONL probes; their held-out subjects are held out
    val_fraction: float = 0.1
    max_val_sentences: int = 128  # validation sentences used for early stopping (a seeded sample)
    eval_every: int = 50  # steps
    patience: int = 4  # evaluations without improvement before stopping early
    max_tokens: int = 48
    checkpoint_every: int = 25  # steps
    seed: int = 0
    device: str | None = None
    threads: int | None = None  # torch CPU threads for this job
    max_minutes: float = 0.0  # > 0: stop (keeping the best state) after this long
    force: bool = False  # start over: ignore a checkpoint or plugin already in out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MapTuneConfig":
        return config_from_dict(cls, d, PluginError, "map-tune config")

    def validate(self, where: str = "map-tune config") -> None:
        for name in ("batch", "epochs", "eval_every", "max_val_sentences", "patience", "max_tokens", "checkpoint_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise PluginError(f"{where}: {name} must be a positive integer, got {v!r}")
        if not isinstance(self.max_steps, int) or self.max_steps < 0:
            raise PluginError(f"{where}: max_steps must be >= 0, got {self.max_steps!r}")
        if not self.lr > 0:
            raise PluginError(f"{where}: lr must be > 0, got {self.lr!r}")
        if not 0.0 <= self.reader_dropout < 1.0:
            raise PluginError(f"{where}: reader_dropout must be in [0, 1), got {self.reader_dropout!r}")
        if not 0.0 < self.val_fraction < 0.5:
            raise PluginError(f"{where}: val_fraction must be in (0, 0.5), got {self.val_fraction!r}")
        if self.fact_weight < 0:
            raise PluginError(f"{where}: fact_weight must be >= 0, got {self.fact_weight!r}")
        if isinstance(self.holdout_entities, str):
            self.holdout_entities = [self.holdout_entities]
        if isinstance(self.holdout_probes, str):
            self.holdout_probes = [self.holdout_probes]

    def embeddings_dir(self) -> Path:
        return Path(self.embeddings) if self.embeddings else default_embeddings_dir(self.pack)

    def out_dir(self) -> Path:
        return Path(self.out) if self.out else default_plugin_dir(self.pack)


@dataclass
class MapTuneResult:
    out: str
    steps_done: int
    best_step: int
    best_val_loss: float | None
    val_loss_without_plugin: float | None  # the same validation mentions, no vector inserted
    entities: dict[str, int]
    examples: dict[str, int]
    stopped_early: bool = False
    resumed_from: int = 0
    train_losses: list[tuple[int, float]] = field(default_factory=list)  # (step, mean loss of the window)
    val_losses: list[tuple[int, float]] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- examples
@dataclass
class Example:
    """One sentence: token ids, insertions (token index, entity id) and loss targets (token indices)."""

    ids: list[int]
    ins_tok: list[int]
    ins_ent: list[int]
    mention_tgt: list[int]  # tokens to predict from the inserted vectors (the mentions)
    fact_tgt: list[int]  # tokens after the first mention that are not mention tokens


def read_holdout(pack, names: Sequence[str], probe_files: Sequence[str | Path]) -> set[int]:
    """Entity ids held out: ``names`` plus the subjects of held-out-entity probes in ``probe_files``.

    A probe file's records count when their ``split`` is ``heldout_entity`` or
    ``heldout_both`` (or when they have no ``split``). Unknown names are an error.
    """
    wanted: dict[str, str] = {n: "--holdout-entities" for n in names}
    for f in probe_files:
        try:
            probes = read_probes(f, require=("subject",))
        except EvalDataError as exc:
            raise PluginError(str(exc)) from None
        for pr in probes:
            if pr.split in ("", "heldout_entity", "heldout_both"):
                wanted.setdefault(pr.subject, pr.where)
    ents = pack.entities()
    forms = {e["name"]: int(e["id"]) for e in ents}
    for e in ents:
        for a in e["aliases"]:
            forms.setdefault(a, int(e["id"]))
    unknown = [(n, w) for n, w in wanted.items() if n not in forms]
    if unknown:
        n, w = unknown[0]
        raise PluginError(f"{w}: held-out entity {n!r} is not an entity of {pack.path} "
                          f"({len(unknown)} unknown in all)")
    return {forms[n] for n in wanted}


def make_examples(tokenizer, texts: Sequence[str], linker: EntityLinker, keep: Callable[[int], bool], *,
                  max_tokens: int, with_facts: bool) -> list[tuple[Example, set[int]]]:
    """Examples of the texts whose linked mentions ``keep`` accepts, with the set of their entities."""
    linked = linker.link_many(texts)
    idx = [i for i, ms in enumerate(linked) if any(keep(m.entity_id) for m in ms)]
    if not idx:
        return []
    ids, ends = tokens_with_offsets(tokenizer, [texts[i] for i in idx])
    out = []
    for row, i in enumerate(idx):
        ms = [m for m in linked[i] if keep(m.entity_id)]
        e = ends[row]
        first = mention_tokens(e, [m.start for m in ms])  # token each vector goes before
        last = mention_tokens(e, [m.end - 1 for m in ms])  # token holding the mention's last character
        ins_tok, ins_ent, tgt, used = [], [], [], set()
        for m, a, z in zip(ms, first.tolist(), last.tolist()):
            z = min(z, len(ids[row]) - 1)
            if a >= min(len(ids[row]), max_tokens) or a in used:
                continue
            used.add(a)
            ins_tok.append(a)
            ins_ent.append(m.entity_id)
            tgt.extend(range(a, min(z, max_tokens - 1) + 1))
        if not ins_tok:
            continue
        tgt = sorted(set(tgt))
        if with_facts:
            end = min(len(ids[row]), max_tokens)
            mention_set = set(tgt)
            facts = [t for t in range(min(ins_tok), end) if t not in mention_set]
        else:
            end = max(tgt) + 1
            facts = []
        out.append((Example(ids[row][:end], ins_tok, ins_ent, tgt, facts), set(ins_ent)))
    return out


def _cache_kwarg(model) -> str:
    import inspect

    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


class PrefixCache:
    """Keys/values (and last hidden state) of sentence prefixes, computed once per distinct prefix.

    The reader is frozen and a prefix comes before every inserted vector, so its
    attention keys/values never change. Stored per prefix: ``[layers, kv_heads, len,
    head_dim]`` keys and values. At most ``max_tokens`` prefix tokens are kept; past
    that, prefixes are computed per batch and not stored.
    """

    def __init__(self, reader, max_tokens: int = 4096) -> None:
        self.reader = reader
        self.max_tokens = max_tokens
        self.tokens = 0
        self.store: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    @torch.no_grad()
    def _compute(self, prefixes: list[tuple[int, ...]]) -> dict[tuple[int, ...], tuple]:
        r = self.reader
        P = max(len(p) for p in prefixes)
        ids = torch.full((len(prefixes), P), int(r.tokenizer.pad_token_id), dtype=torch.long)
        mask = torch.zeros((len(prefixes), P), dtype=torch.long)
        for i, p in enumerate(prefixes):
            ids[i, P - len(p):] = torch.tensor(p)
            mask[i, P - len(p):] = 1
        dev = r.device
        o = r.model.model(input_ids=ids.to(dev), attention_mask=mask.to(dev),
                          position_ids=(mask.cumsum(1) - 1).clamp(min=0).to(dev), use_cache=True)
        c = getattr(o, "cache", None) or getattr(o, "past_key_values", None)
        ks, vs = _cache_tensors(c)
        k = torch.stack(ks)  # [layers, n, kv_heads, P, head_dim]
        v = torch.stack(vs)
        return {p: (k[:, i, :, P - len(p):].clone(), v[:, i, :, P - len(p):].clone(), o.last_hidden_state[i, -1].clone())
                for i, p in enumerate(prefixes)}

    def assemble(self, prefixes: Sequence[tuple[int, ...]]):
        """(cache for the batch or None, prefix attention mask ``[b, P]``, last prefix hidden state ``[b, d]`` or None)."""
        dev = self.reader.device
        b = len(prefixes)
        P = max((len(p) for p in prefixes), default=0)
        mask = torch.zeros((b, P), dtype=torch.long, device=dev)
        if P == 0:
            return None, mask, None
        missing = sorted({p for p in prefixes if p and p not in self.store})
        fresh = self._compute(missing) if missing else {}
        for p, val in fresh.items():
            if self.tokens + len(p) <= self.max_tokens:
                self.store[p] = val
                self.tokens += len(p)
        got = {p: self.store.get(p) or fresh.get(p) for p in set(prefixes) if p}
        some = next(iter(got.values()))
        n_layers, kvh, _, hd = some[0].shape
        k = torch.zeros((n_layers, b, kvh, P, hd), dtype=some[0].dtype, device=dev)  # [layers, b, kv_heads, P, hd]
        v = torch.zeros_like(k)
        hp = torch.zeros((b, some[2].shape[-1]), dtype=some[2].dtype, device=dev)  # [b, d]
        for i, p in enumerate(prefixes):
            if p:
                kk, vv, hh = got[p]
                k[:, i, :, P - len(p):] = kk
                v[:, i, :, P - len(p):] = vv
                hp[i] = hh
                mask[i, P - len(p):] = 1
        from transformers import DynamicCache

        cache = DynamicCache(config=self.reader.model.config)
        for layer in range(n_layers):
            cache.update(k[layer], v[layer], layer)
        return cache, mask, hp


def _cache_tensors(cache) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-layer keys and values of a transformers cache (4.x and 5.x layouts)."""
    if hasattr(cache, "layers"):
        return [l.keys for l in cache.layers], [l.values for l in cache.layers]
    return list(cache.key_cache), list(cache.value_cache)


def batch_losses(reader, plugin: KnowledgePlugin, batch: Sequence[Example], *, inject: bool = True,
                 context_only: bool = False, prefix_cache: PrefixCache | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Mean cross-entropy on mention tokens and on fact tokens (0 when none) for a batch, + token counts.

    ``inject=False`` inserts nothing (the bare reader on the same sentences).
    ``context_only`` drops targets at a sentence's first token (the bare reader has no
    input to predict them from), so that with/without comparisons use the same tokens.

    Speed: nothing before a row's first insertion depends on the plugin, so that
    prefix's keys/values come from a :class:`PrefixCache` (each distinct prefix is
    computed once, without gradients; fact sentences share a few templates) and only
    the rest -- vector, mention, facts -- runs with gradients.
    """
    dev = reader.device
    base = reader.model.model
    emb = reader.model.get_input_embeddings()
    pad = int(reader.tokenizer.pad_token_id)
    a0 = [min(ex.ins_tok) for ex in batch]  # split point of each row
    prefix_cache = prefix_cache or PrefixCache(reader, max_tokens=0)
    cache, pre_mask, hp = prefix_cache.assemble([tuple(ex.ids[:a]) for ex, a in zip(batch, a0)])
    ins_row = [i for i, ex in enumerate(batch) for _ in ex.ins_tok] if inject else []
    ins_tok = [t - a0[i] for i, ex in enumerate(batch) for t in ex.ins_tok] if inject else []
    ents = [e for ex in batch for e in ex.ins_ent] if inject else []
    vec = plugin.vectors(ents, dev) if ents else torch.zeros((0, reader.hidden_size), device=dev)
    built = build_inputs_embeds(emb, [ex.ids[a0[i]:] for i, ex in enumerate(batch)],
                                torch.tensor(ins_row, dtype=torch.long), torch.tensor(ins_tok, dtype=torch.long),
                                vec, pad)
    start = (built.attention_mask == 0).sum(1).cpu()  # [b]: first real suffix column (left padding)
    pos = built.position_ids + pre_mask.sum(1, keepdim=True)  # suffix positions continue the prefix
    kw = {_cache_kwarg(base): cache} if cache is not None else {}
    h = base(inputs_embeds=built.inputs_embeds, attention_mask=torch.cat([pre_mask, built.attention_mask], 1),
             position_ids=pos, use_cache=cache is not None, **kw).last_hidden_state  # [b, Ws, d]
    losses, counts = [], []
    for attr in ("mention_tgt", "fact_tgt"):
        pairs = [(i, t) for i, ex in enumerate(batch) for t in getattr(ex, attr) if t >= 1 or not context_only]
        cols = [int(built.token_col[i, t - a0[i]]) - 1 for i, t in pairs]  # suffix column predicting each target
        keep = [k for k, (i, t) in enumerate(pairs) if cols[k] >= int(start[i]) or (hp is not None and a0[i] > 0)]
        pairs = [pairs[k] for k in keep]
        cols = [cols[k] for k in keep]
        if not pairs:
            losses.append(torch.zeros((), device=dev))
            counts.append(0)
            continue
        r = torch.tensor([i for i, _ in pairs], device=dev)
        c = torch.tensor(cols, device=dev)
        from_prefix = c < start.to(dev)[r]  # the token right before the target is the prefix's last one
        sel = h[r, c.clamp(min=0)]  # [n, d]
        if hp is not None and bool(from_prefix.any()):
            sel = torch.where(from_prefix[:, None], hp[r], sel)
        tgt = torch.tensor([batch[i].ids[t] for i, t in pairs], device=dev)
        logits = reader.model.lm_head(sel)  # [n, V]
        losses.append(torch.nn.functional.cross_entropy(logits.float(), tgt))
        counts.append(len(pairs))
    return losses[0], losses[1], counts[0], counts[1]


@torch.no_grad()
def mean_losses(reader, plugin: KnowledgePlugin, examples: Sequence[Example], *, inject: bool = True,
                batch_size: int = 32, prefix_cache: PrefixCache | None = None) -> tuple[float | None, float | None]:
    """Token-weighted mean mention loss and fact loss over ``examples`` (None when there are no such tokens).

    Targets at a sentence's first token are left out (``context_only``), with or without the plugin.
    """
    sums, counts = [0.0, 0.0], [0, 0]
    prefix_cache = prefix_cache or PrefixCache(reader)
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].ids))
    for s in range(0, len(order), batch_size):
        chunk = [examples[i] for i in order[s:s + batch_size]]
        lm, lf, nm, nf = batch_losses(reader, plugin, chunk, inject=inject, context_only=True, prefix_cache=prefix_cache)
        sums[0] += float(lm) * nm
        sums[1] += float(lf) * nf
        counts[0] += nm
        counts[1] += nf
    return tuple(sums[k] / counts[k] if counts[k] else None for k in range(2))  # type: ignore[return-value]


class _ReaderDropout:
    """Residual dropout in the frozen reader while active: on each decoder layer's attention and
    feed-forward outputs before they join the residual stream (where a transformer is normally
    trained with dropout). Dropping the residual stream itself would wreck a 30-layer reader."""

    def __init__(self, reader, p: float) -> None:
        self.reader, self.p, self.handles, self.active = reader, p, [], False
        if p > 0:
            for layer in reader.layers:
                for name in ("self_attn", "mlp"):
                    sub = getattr(layer, name, None)
                    if sub is not None:
                        self.handles.append(sub.register_forward_hook(self._hook))

    def _hook(self, module, args, output):
        if not self.active:
            return None
        if isinstance(output, tuple):
            return (torch.nn.functional.dropout(output[0], self.p, True),) + tuple(output[1:])
        return torch.nn.functional.dropout(output, self.p, True)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def _batches(n_examples: int, lengths: Sequence[int], batch: int, seed: int, epoch: int) -> list[list[int]]:
    """An epoch's batches: shuffled, sorted by length inside windows of 8 batches (less padding), shuffled again."""
    rng = np.random.default_rng([seed, epoch])
    perm = rng.permutation(n_examples)
    window = batch * 8
    out = []
    for s in range(0, n_examples, window):
        w = sorted(perm[s:s + window].tolist(), key=lambda i: lengths[i])
        out += [w[k:k + batch] for k in range(0, len(w), batch)]
    return [out[i] for i in rng.permutation(len(out))]


# --------------------------------------------------------------------------- the job
def map_tune(
    config: MapTuneConfig | dict[str, Any],
    progress: Callable[..., None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    *,
    reader=None,
) -> dict[str, Any]:
    """Train (or resume) a knowledge plugin for ``config.pack``; returns a :class:`MapTuneResult` dict.

    ``reader`` lets a caller pass an already loaded reader. Raises ``JobCancelled``
    (after a checkpoint) when ``should_stop()`` turns true.
    """
    from engine.store import Pack

    cfg = config if isinstance(config, MapTuneConfig) else MapTuneConfig.from_dict(config)
    cfg.validate()
    say = wrap_progress(progress, 0.0, 1.0)
    stop = should_stop or (lambda: False)
    t0 = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    out = cfg.out_dir()
    if (out / "config.json").is_file() and not (out / CHECKPOINT).is_file() and not cfg.force:
        read_plugin_config(out)  # a plugin folder: refuse to overwrite it
        raise PluginError(f"{out} already holds a trained plugin; not overwritten (use --force or another --out)")

    emb = EntityEmbeddings.load(cfg.embeddings_dir())
    with Pack.open(cfg.pack, readonly=True) as pack:
        emb.check_pack(pack, f"The entity embeddings in {cfg.embeddings_dir()}")
        held = read_holdout(pack, cfg.holdout_entities, cfg.holdout_probes)
        linker = EntityLinker.from_pack(pack)
        aliases = {int(e["id"]): list(e["aliases"]) for e in pack.entities()}
        texts = [e.text for e in pack.get_many(pack.ids(status="active"))]
        pack_name = pack.name
    if not texts:
        raise PluginError(f"{cfg.pack}: no active entries to map-tune on")
    say(0.0, f"{len(texts):,} entries, {len(emb):,} entity embeddings, {len(held)} held-out entities")

    if reader is None:
        from engine.reader.reader import load_reader

        say(0.0, "loading the reader")
        reader = load_reader(cfg.reader, cfg.device)
    has_emb = {int(i) for i in emb.entity_ids.tolist()}
    candidates = sorted(has_emb - held)
    rng = np.random.default_rng(cfg.seed)
    n_val = max(1, int(round(cfg.val_fraction * len(candidates))))
    val_ents = set(rng.choice(candidates, size=min(n_val, len(candidates) - 1), replace=False).tolist()) \
        if len(candidates) > 1 else set()
    keep = lambda e: e in has_emb and e not in held  # noqa: E731
    pairs = make_examples(reader.tokenizer, texts, linker, keep, max_tokens=cfg.max_tokens,
                          with_facts=cfg.fact_weight > 0)
    train = [ex for ex, ents in pairs if not ents & val_ents]
    val = [ex for ex, ents in pairs if ents & val_ents]
    if len(val) > cfg.max_val_sentences:
        pick = np.random.default_rng([cfg.seed, 1]).choice(len(val), size=cfg.max_val_sentences, replace=False)
        val = [val[i] for i in sorted(pick.tolist())]
    if not train or not val:
        raise PluginError(f"{cfg.pack}: too few entries mention the pack's entities to map-tune "
                          f"({len(train)} training and {len(val)} validation sentences)")
    steps_per_epoch = math.ceil(len(train) / cfg.batch)
    total = cfg.epochs * steps_per_epoch
    if cfg.max_steps:
        total = min(total, cfg.max_steps)

    plugin = KnowledgePlugin.create(reader, emb, hidden=cfg.hidden, fix_norm=cfg.fix_norm, aliases=aliases,
                                    name=pack_name, seed=cfg.seed)
    opt = torch.optim.AdamW(plugin.mapping.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    data_fp = data_fingerprint([emb.fingerprint, sorted(held), reader.fingerprint.get("weights_sha256"),
                            len(train), len(val), [ex.ids for ex in train[:50]]])
    result = MapTuneResult(out=str(out), steps_done=0, best_step=0, best_val_loss=None, val_loss_without_plugin=None,
                           entities={"with_embeddings": len(has_emb), "held_out": len(held),
                                     "validation": len(val_ents), "training": len(candidates) - len(val_ents)},
                           examples={"train": len(train), "validation": len(val)})
    run = MappingTraining(job="map-tune", activity="map-tuning",
                          modules={"mapping": plugin.mapping}, optimizer=opt, out=out,
                          model={k: getattr(cfg, k) for k in _MODEL_FIELDS}, data=data_fp, result=result,
                          carried=("val_loss_without_plugin",), force=cfg.force,
                          mismatch="other options, data, embeddings or reader")
    if run.resume():
        say(run.step / total, f"resumed from step {run.step}")
    prefixes = PrefixCache(reader)  # the frozen reader's keys/values of sentence prefixes, for this job

    def validate() -> tuple[float, dict[str, Any]]:
        return float(mean_losses(reader, plugin, val, prefix_cache=prefixes)[0]), {}

    if result.val_loss_without_plugin is None:
        say(run.step / total, f"validation loss of the bare reader on {len(val)} sentences")
        result.val_loss_without_plugin = mean_losses(reader, plugin, val, inject=False, prefix_cache=prefixes)[0]
    dropout = _ReaderDropout(reader, cfg.reader_dropout)
    lengths = [len(ex.ids) for ex in train]
    rng_devices = [reader.device] if reader.device.type == "cuda" else []

    def backward(step: int, idx: list[int]) -> torch.Tensor:
        # Dropout masks depend on (seed, step) only, so a resumed run repeats the uninterrupted one.
        with torch.random.fork_rng(devices=rng_devices):
            torch.manual_seed(cfg.seed * 1_000_003 + step)
            dropout.active = True
            try:
                lm, lf, _, nf = batch_losses(reader, plugin, [train[i] for i in idx], prefix_cache=prefixes)
            finally:
                dropout.active = False
            loss = lm + cfg.fact_weight * lf if nf else lm
            loss.backward()
        return loss

    try:
        run.run(LoopSchedule(total=total, steps_per_epoch=steps_per_epoch, lr=cfg.lr, warmup_steps=cfg.warmup_steps,
                             eval_every=cfg.eval_every, patience=cfg.patience, checkpoint_every=cfg.checkpoint_every,
                             max_minutes=cfg.max_minutes),
                batches=lambda epoch: _batches(len(train), lengths, cfg.batch, cfg.seed, epoch),
                backward=backward, validate=validate, say=say, should_stop=stop, t0=t0,
                val_label=lambda v: f"validation mention loss {v:.4f} (bare reader "
                                    f"{result.val_loss_without_plugin:.4f})")
    finally:
        dropout.remove()
    step = run.step
    result.seconds = round(time.perf_counter() - t0, 1)
    plugin.training = {"config": {k: v for k, v in asdict(cfg).items() if k not in ("force",)},
                       **{k: v for k, v in result.to_dict().items() if k != "out"}}
    plugin.save(out)
    say(1.0, f"map-tuned {step} steps; best validation mention loss {result.best_val_loss:.4f} at step "
        f"{result.best_step} (bare reader {result.val_loss_without_plugin:.4f}); plugin saved to {out}",
        val_loss=result.best_val_loss, step=step)
    return result.to_dict()
