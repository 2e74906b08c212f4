"""Job: task-specific map-tuning -- the plugin's mapping trained to make the frozen reader ANSWER.

General map-tuning (:mod:`map_tune`) teaches the mapped vector to spell the entity's
name, which a probe already contains; it does not move the answer (bench/RESULTS.md,
"Knowledge plugins"). Here the loss is the task's, as in the reference's
task-specific map-tuning: probe-style prompts are built from the pack's triples
(``template.format(subject=head)`` -> `` tail``), the plugin's vectors go before the
linked mentions exactly as at prediction time (:class:`PluginInjector`), and the
cross-entropy is taken on the answer tokens only (the prompt is context, never a
target). Only the mapping trains; by default it starts from the pack's general
plugin (``<pack>.plugin``), with a small learning rate.

Templates come from probe files (``probes``): each record's prompt with its subject
replaced by ``{subject}``, per relation (``wordings="all"`` adds the paraphrases).
A relation of the triples without a template has nothing to ask and is skipped (named
in the result); a relation asked for in ``relations`` without a template, or without
triples, is an error.

Splits (seeded): held-out entities (``holdout_entities`` and the held-out subjects of
``holdout_probes``, as map-tuning holds them out: never a prompt here), validation
entities (``val_fraction`` of the rest: early stopping on entities never trained on),
and, of the training entities' facts, ``fact_fraction`` of their (subject, relation)
pairs kept out as validation-by-fact.

Checkpoints, resume and cancel as in map-tuning (``<out>/checkpoint.pt``, temporary
file + ``os.replace``). The result is saved in the plugin format (``config.json`` +
``model.safetensors`` + ``entities.json``; ``training.objective = "task"``), so every
plugin loader reads it; default folder ``<pack>.task-plugin/``.
"""
from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from engine.artefacts import config_from_dict
from engine.mechanisms.plugins.answer_slot import AnswerSlotInjector, SlotPlugin, load_slot_plugin
from engine.mechanisms.plugins.embeddings import EntityEmbeddings, default_embeddings_dir
from engine.mechanisms.plugins.errors import PluginError
from engine.mechanisms.plugins.gate import calibrate, relation_probes, subject_pattern
from engine.mechanisms.plugins.attach import PluginInjector
from engine.mechanisms.plugins.map_tune import read_holdout
from engine.mechanisms.plugins.io import default_plugin_dir, default_task_plugin_dir, read_plugin_config
from engine.mechanisms.plugins.module import KnowledgePlugin
from engine.mechanisms.plugins.training import (CHECKPOINT, LoopSchedule, MappingTraining, data_fingerprint,
                                                epoch_permutation, seeded_sample)
from engine.progress import wrap_progress

log = logging.getLogger(__name__)

OBJECTIVE = "task"
WORDINGS = ("prompt", "all")
_MODEL_FIELDS = ("start", "hidden", "answer_slot", "lr", "batch", "seed", "val_fraction", "fact_fraction", "wordings", "relations",
                 "weight_decay")


@dataclass
class TaskTuneConfig:
    pack: str
    probes: list[str] = field(default_factory=list)  # probe files giving each relation's question templates
    holdout_probes: list[str] = field(default_factory=list)  # their held-out subjects are never trained on
    holdout_entities: list[str] = field(default_factory=list)
    start: str | None = None  # general plugin to start from (default <pack>.plugin); "none": a fresh mapping
    embeddings: str | None = None  # for a fresh mapping (default <pack>.embeddings)
    out: str | None = None  # default <pack>.task-plugin
    reader: str | None = None
    relations: list[str] = field(default_factory=list)  # only these (default: every relation with a template)
    wordings: str = "prompt"  # "prompt": each probe's prompt; "all": its paraphrases too
    hidden: int = 0  # a fresh mapping's MLP width (0: linear)
    answer_slot: bool = False  # also a vector of the subject where the answer begins (answer_slot.py)
    gate: bool = True  # calibrate a relation gate (gate.py): inject only into questions of the trained relations
    lr: float = 2e-3
    weight_decay: float = 0.0
    batch: int = 32
    epochs: int = 3
    max_steps: int = 0
    warmup_steps: int = 10
    val_fraction: float = 0.1
    fact_fraction: float = 0.1
    max_val: int = 256  # validation prompts per split (a seeded sample)
    eval_every: int = 25
    patience: int = 4
    checkpoint_every: int = 25
    seed: int = 0
    device: str | None = None
    threads: int | None = None
    max_minutes: float = 0.0
    force: bool = False

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TaskTuneConfig":
        return config_from_dict(cls, d, PluginError, "task-tune config")

    def validate(self, where: str = "task-tune config") -> None:
        for name in ("batch", "epochs", "eval_every", "patience", "checkpoint_every", "max_val"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise PluginError(f"{where}: {name} must be a positive integer, got {v!r}")
        for name in ("max_steps", "warmup_steps", "hidden"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise PluginError(f"{where}: {name} must be an integer >= 0, got {v!r}")
        if not self.lr > 0:
            raise PluginError(f"{where}: lr must be > 0, got {self.lr!r}")
        if not 0.0 < self.val_fraction < 0.5:
            raise PluginError(f"{where}: val_fraction must be in (0, 0.5), got {self.val_fraction!r}")
        if not 0.0 <= self.fact_fraction < 0.5:
            raise PluginError(f"{where}: fact_fraction must be in [0, 0.5), got {self.fact_fraction!r}")
        if self.wordings not in WORDINGS:
            raise PluginError(f"{where}: wordings must be one of {', '.join(WORDINGS)}, got {self.wordings!r}")
        for name in ("probes", "holdout_probes", "holdout_entities", "relations"):
            if isinstance(getattr(self, name), str):
                setattr(self, name, [getattr(self, name)])
        if not self.probes:
            raise PluginError(f"{where}: no probe files give question templates (--probes FILE: e.g. the "
                              "domain's probes_train.jsonl)")

    def out_dir(self) -> Path:
        return Path(self.out) if self.out else default_task_plugin_dir(self.pack)

    def start_dir(self) -> Path | None:
        if self.start and self.start.lower() == "none":
            return None
        return Path(self.start) if self.start else default_plugin_dir(self.pack)


@dataclass
class TaskExample:
    prompt: str
    answer: str  # the tail, as the reader should continue: without the leading space
    entity_id: int
    relation: str


@dataclass
class TaskTuneResult:
    out: str
    steps_done: int
    best_step: int
    best_val_loss: float | None  # mean answer-token loss on the validation entities
    val_loss_start: float | None  # the same, with the mapping it started from
    val_loss_without_plugin: float | None  # the same prompts, no vector inserted
    val_fact_loss: float | None  # validation-by-fact (training entities, facts kept out), at the best step
    relations: list[str]
    skipped_relations: list[str]
    entities: dict[str, int]
    examples: dict[str, int]
    started_from: str | None = None
    stopped_early: bool = False
    resumed_from: int = 0
    train_losses: list[tuple[int, float]] = field(default_factory=list)
    val_losses: list[tuple[int, float]] = field(default_factory=list)
    seconds: float = 0.0
    gate: dict[str, Any] | None = None  # the relation gate calibrated at the end (gate.calibrate), or None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- data
def relation_templates(probe_files: Sequence[str | Path], *, wordings: str = "prompt") -> dict[str, list[str]]:
    """Question templates per relation: each probe's prompt (and with ``wordings="all"`` its
    paraphrases) with its subject replaced by ``{subject}``; a prompt that does not name
    its subject gives no template. Bad files are refused naming the file and line."""
    out: dict[str, list[str]] = {}
    for pr in relation_probes(probe_files):
        texts = [pr.prompt] + (list(pr.paraphrases) if wordings == "all" else [])
        pat = subject_pattern(pr.subject)
        for q in texts:
            if len(pat.findall(q)) != 1:
                continue
            t = pat.sub("{subject}", q.replace("{", "{{").replace("}", "}}"))
            seen = out.setdefault(pr.relation, [])
            if t not in seen:
                seen.append(t)
    return out


def build_examples(pack, templates: dict[str, list[str]], relations: Sequence[str] = ()) -> tuple[
        list[TaskExample], list[str], list[str]]:
    """Every (triple, template) prompt of the pack, the relations used and those skipped (no template)."""
    ents = {int(e["id"]): e["name"] for e in pack.entities()}
    triples = pack.triples()
    if not triples:
        raise PluginError(f"{pack.path}: no triples to build questions from; import some first "
                          "(`plugmem triples import PACK FILE`)")
    have = sorted({t["relation"] for t in triples})
    for r in relations:
        if r not in have:
            raise PluginError(f"task-tune: relation {r!r} has no triples in {pack.path} (it has: {', '.join(have)})")
        if not templates.get(r):
            raise PluginError(f"task-tune: relation {r!r} has no probe in the probe files, so no question to ask "
                              "about it; add probes of it or leave it out of --relations")
    wanted = list(relations) or [r for r in have if templates.get(r)]
    skipped = [r for r in have if r not in wanted]
    if not wanted:
        raise PluginError(f"task-tune: none of the relations of {pack.path} ({', '.join(have)}) has a probe in the "
                          "probe files, so there is no question to train on")
    keep = set(wanted)
    out = []
    for t in triples:
        if t["relation"] not in keep or not str(t["tail"]).strip():
            continue
        name = ents[int(t["head"])]
        for tpl in templates[t["relation"]]:
            out.append(TaskExample(tpl.format(subject=name), str(t["tail"]).strip(), int(t["head"]), t["relation"]))
    return out, wanted, skipped


def split_examples(examples: Sequence[TaskExample], held: set[int], has_emb: set[int], *, val_fraction: float,
                   fact_fraction: float, seed: int) -> tuple[list[TaskExample], list[TaskExample], list[TaskExample],
                                                            set[int]]:
    """(train, validation entities, validation facts, validation entity ids); held-out entities are dropped."""
    cand = sorted({ex.entity_id for ex in examples if ex.entity_id in has_emb and ex.entity_id not in held})
    if len(cand) < 2:
        raise PluginError(f"task-tune: {len(cand)} entities with embeddings and questions outside the held-out "
                          "ones; at least 2 are needed (one to train on, one to validate on)")
    rng = np.random.default_rng(seed)
    n_val = min(len(cand) - 1, max(1, int(round(val_fraction * len(cand)))))
    val_ents = set(rng.choice(cand, size=n_val, replace=False).tolist())
    pairs = sorted({(ex.entity_id, ex.relation) for ex in examples
                    if ex.entity_id in has_emb and ex.entity_id not in held and ex.entity_id not in val_ents})
    n_fact = int(round(fact_fraction * len(pairs)))
    frng = np.random.default_rng([seed, 2])
    val_pairs = {pairs[i] for i in frng.choice(len(pairs), size=n_fact, replace=False).tolist()} if n_fact else set()
    train, val_e, val_f = [], [], []
    for ex in examples:
        if ex.entity_id not in has_emb or ex.entity_id in held:
            continue
        if ex.entity_id in val_ents:
            val_e.append(ex)
        elif (ex.entity_id, ex.relation) in val_pairs:
            val_f.append(ex)
        else:
            train.append(ex)
    return train, val_e, val_f, val_ents


def linked_examples(injector: PluginInjector, examples: Sequence[TaskExample]) -> tuple[list[TaskExample], int]:
    """The examples whose prompt links their subject (the plugin can only help those) and the number dropped."""
    kept = [ex for ex in examples if any(inj.entity_id == ex.entity_id for inj in injector.link(ex.prompt))]
    return kept, len(examples) - len(kept)


# --------------------------------------------------------------------------- the objective
def answer_loss(injector: PluginInjector, prompts: Sequence[str], answer_ids: Sequence[Sequence[int]], *,
                enabled: bool = True) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy on the answer tokens only (the prompt is context, never a target) + token count.

    Gradients reach the mapping through the inserted vectors; the reader is frozen.
    """
    batch = injector.build(list(prompts), answer_ids, enabled=enabled)
    sums = injector.logprob_rows(batch, answer_ids)  # [b] summed log p of each answer
    n = sum(len(a) for a in answer_ids)
    return -sums.sum() / max(n, 1), n


@torch.no_grad()
def mean_answer_loss(injector: PluginInjector, examples: Sequence[TaskExample], *, enabled: bool = True,
                     batch_size: int = 32) -> float | None:
    if not examples:
        return None
    ids = injector._answer_ids([" " + ex.answer for ex in examples])
    total, count = 0.0, 0
    for s in range(0, len(examples), batch_size):
        loss, n = answer_loss(injector, [ex.prompt for ex in examples[s:s + batch_size]], ids[s:s + batch_size],
                              enabled=enabled)
        total += float(loss) * n
        count += n
    return total / count


# --------------------------------------------------------------------------- the job
def task_tune(
    config: TaskTuneConfig | dict[str, Any],
    progress: Callable[..., None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    *,
    reader=None,
) -> dict[str, Any]:
    """Train (or resume) a task-specific plugin for ``config.pack``; returns a :class:`TaskTuneResult` dict.

    Raises ``JobCancelled`` (after a checkpoint) when ``should_stop()`` turns true.
    """
    from engine.store import Pack

    cfg = config if isinstance(config, TaskTuneConfig) else TaskTuneConfig.from_dict(config)
    cfg.validate()
    say = wrap_progress(progress, 0.0, 1.0)
    stop = should_stop or (lambda: False)
    t0 = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    out = cfg.out_dir()
    if (out / "config.json").is_file() and not (out / CHECKPOINT).is_file() and not cfg.force:
        read_plugin_config(out)
        raise PluginError(f"{out} already holds a trained plugin; not overwritten (use --force or another --out)")
    templates = relation_templates(cfg.probes, wordings=cfg.wordings)
    start = cfg.start_dir()
    # Everything the user can get wrong is checked before the reader loads.
    with Pack.open(cfg.pack, readonly=True) as pack:
        examples, used, skipped = build_examples(pack, templates, cfg.relations)
        held = read_holdout(pack, cfg.holdout_entities, cfg.holdout_probes)
        if start is not None and not (start / "config.json").is_file():
            raise PluginError(f"{start}: no general plugin to start from (train one with `plugmem map-tune "
                              f"{cfg.pack}`, or start from a fresh mapping with start='none')")
        if start is None:
            emb_dir = Path(cfg.embeddings) if cfg.embeddings else default_embeddings_dir(cfg.pack)
            emb = EntityEmbeddings.load(emb_dir)
            emb.check_pack(pack, f"The entity embeddings in {emb_dir}")
    if reader is None:
        from engine.reader.reader import load_reader

        say(0.0, "loading the reader")
        reader = load_reader(cfg.reader, cfg.device)
    with Pack.open(cfg.pack, readonly=True) as pack:
        if start is not None:
            plugin = load_slot_plugin(start, reader, pack) if cfg.answer_slot else KnowledgePlugin.load(start, reader, pack)
        else:
            plugin = KnowledgePlugin.create(reader, emb, hidden=cfg.hidden, name=pack.name, seed=cfg.seed,
                                            aliases={int(e["id"]): list(e["aliases"]) for e in pack.entities()})
            if cfg.answer_slot:
                plugin = SlotPlugin.from_plugin(plugin)
    if skipped:
        log.info("task-tune: relations without a probe template are skipped: %s", ", ".join(skipped))
    has_emb = {int(i) for i in plugin.embeddings.entity_ids.tolist()}
    train, val_e, val_f, val_ents = split_examples(examples, held, has_emb, val_fraction=cfg.val_fraction,
                                                   fact_fraction=cfg.fact_fraction, seed=cfg.seed)
    injector = AnswerSlotInjector(reader, plugin) if cfg.answer_slot else PluginInjector(reader, plugin)
    modules = {"mapping": plugin.mapping, **({"slot": plugin.slot_mapping} if cfg.answer_slot else {})}
    train, dropped = linked_examples(injector, train)
    val_e, _ = linked_examples(injector, val_e)
    val_f, _ = linked_examples(injector, val_f)
    val_e, val_f = seeded_sample(val_e, cfg.max_val, cfg.seed + 1), seeded_sample(val_f, cfg.max_val, cfg.seed + 2)
    if not train or not val_e:
        raise PluginError(f"{cfg.pack}: too few questions whose subject the plugin links ({len(train)} training, "
                          f"{len(val_e)} validation)")
    say(0.0, f"{len(train):,} training questions on {len(used)} relations, {len(val_e)} on validation entities, "
        f"{len(val_f)} on kept-out facts; {len(held)} held-out entities")
    steps_per_epoch = math.ceil(len(train) / cfg.batch)
    total = cfg.epochs * steps_per_epoch
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    train_ids = injector._answer_ids([" " + ex.answer for ex in train])
    params = [p for m in modules.values() for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    model_cfg = {k: (str(getattr(cfg, k)) if k == "start" else getattr(cfg, k)) for k in _MODEL_FIELDS}
    start_fp = hashlib.sha256(b"".join(t.detach().float().cpu().numpy().tobytes() for m in modules.values()
                                       for t in m.state_dict().values())).hexdigest()
    data_fp = data_fingerprint([plugin.entity_set, sorted(held), reader.fingerprint.get("weights_sha256"), start_fp,
                                [(ex.prompt, ex.answer) for ex in train[:200]], len(train), len(val_e), len(val_f)])
    result = TaskTuneResult(out=str(out), steps_done=0, best_step=0, best_val_loss=None, val_loss_start=None,
                            val_loss_without_plugin=None, val_fact_loss=None, relations=used, skipped_relations=skipped,
                            entities={"held_out": len(held), "validation": len(val_ents),
                                      "training": len({ex.entity_id for ex in train})},
                            examples={"train": len(train), "validation_entities": len(val_e),
                                      "validation_facts": len(val_f), "subject_not_linked": dropped},
                            started_from=str(start) if start is not None else None)
    run = MappingTraining(job="task-tune", activity="task-tuning",
                          modules=modules, optimizer=opt, out=out, model=model_cfg, data=data_fp,
                          result=result, carried=("val_loss_start", "val_loss_without_plugin", "val_fact_loss"),
                          force=cfg.force, mismatch="other options, data, start plugin or reader")
    if run.resume():
        say(run.step / total, f"resumed from step {run.step}")

    def validate() -> tuple[float, dict[str, Any]]:
        v = mean_answer_loss(injector, val_e, batch_size=cfg.batch)
        return float(v), {"val_fact_loss": mean_answer_loss(injector, val_f, batch_size=cfg.batch)}

    if result.val_loss_without_plugin is None:
        say(run.step / total, f"validation answer loss of the bare reader and of the start mapping "
            f"({len(val_e)} questions)")
        result.val_loss_without_plugin = mean_answer_loss(injector, val_e, enabled=False, batch_size=cfg.batch)
        for m in modules.values():
            m.eval()
        result.val_loss_start = validate()[0]

    def backward(step: int, idx: list[int]) -> torch.Tensor:
        loss, _ = answer_loss(injector, [train[i].prompt for i in idx], [train_ids[i] for i in idx])
        loss.backward()
        return loss

    try:
        run.run(LoopSchedule(total=total, steps_per_epoch=steps_per_epoch, lr=cfg.lr, warmup_steps=cfg.warmup_steps,
                             eval_every=cfg.eval_every, patience=cfg.patience, checkpoint_every=cfg.checkpoint_every,
                             max_minutes=cfg.max_minutes),
                batches=epoch_permutation(len(train), cfg.batch, cfg.seed), backward=backward, validate=validate,
                say=say, should_stop=stop, t0=t0, loss_label="answer loss",
                val_label=lambda v: f"validation answer loss {v:.4f} (start {result.val_loss_start:.4f}, bare reader "
                                    f"{result.val_loss_without_plugin:.4f})")
    finally:
        for p in params:
            p.requires_grad_(False)
    step = run.step
    if cfg.gate:
        say(1.0, "calibrating the relation gate on the training probes' wordings")
        try:
            result.gate = calibrate({r: templates[r] for r in used}, cfg.probes)
        except PluginError as exc:  # e.g. one relation only, or no paraphrase to calibrate on
            log.warning("task-tune: no relation gate (%s); the plugin is applied to every question", exc)
    result.seconds = round(time.perf_counter() - t0, 1)
    plugin.training = {"objective": OBJECTIVE, "config": {k: v for k, v in asdict(cfg).items() if k != "force"},
                       "general": plugin.training if start is not None else None,
                       # What it was trained to answer: the relation gate (gate.py) compares questions with these.
                       "templates": {r: templates[r] for r in used},
                       **{k: v for k, v in result.to_dict().items() if k != "out"}}
    plugin.save(out)
    say(1.0, f"task-tuned {step} steps; validation answer loss {result.best_val_loss:.4f} at step {result.best_step} "
        f"(start {result.val_loss_start:.4f}, bare reader {result.val_loss_without_plugin:.4f}); saved to {out}",
        val_loss=result.best_val_loss, step=step)
    return result.to_dict()
