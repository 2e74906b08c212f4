"""Constrained fine-tuning (Zhu et al. 2020; the FT-L baseline of ROME/EasyEdit): the job
that makes a weight patch.

Projected gradient descent (Adam, or plain steps along the gradient) on the chosen tensors only: minimise the cross-entropy of each
fact's answer tokens given its prompt (the prompt's tokens carry no loss), and after
every optimiser step clamp each trained tensor into [theta0 - delta, theta0 + delta]. With
``locality_weight > 0`` a KL term keeps the next-token distribution of unrelated prompts
where it was. With ``context_prefixes > 0`` each answer is also trained after that many
short contexts the reader wrote itself (ROME's random prefixes; no paraphrase of the user's
is needed). All facts of a batch are trained together; :func:`make_sequential` makes one
patch per fact, each on top of the ones before (a stack, as the user would apply them).

The reader is always given back as it was (the tensors are restored from their copies,
also on cancel or error); the result is the delta, never a changed reader. A fact the
reader already answers is refused (no patch), or skipped with ``known='skip'``.
"""
from __future__ import annotations

import getpass
import logging
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from engine.mechanisms.weight_patches.attach import PatchStack, applied, parameters
from engine.mechanisms.weight_patches.config import PREFIX_STARTS, PatchConfig, PatchError, tensor_name
from engine.mechanisms.weight_patches.module import Fact, WeightPatch, tensor_sha256
from engine.probe_files import is_correct
from engine.progress import JobCancelled

log = logging.getLogger(__name__)


def _answers(reader, prompts: Sequence[str], answers: Sequence[str]) -> list[str]:
    if not prompts:
        return []
    ids = reader.tokenizer([" " + a.strip() for a in answers], add_special_tokens=False)["input_ids"]
    return reader.generate(list(prompts), max_new_tokens=max(len(r) for r in ids) + 1)


def check_facts(reader, facts: Sequence[Fact], config: PatchConfig, *, known: str = "refuse") -> list[Fact]:
    """The facts to train on: each checked (prompt and answer non-empty), the config's blocks
    inside the reader, and each fact the reader does not answer already ('refuse': one such
    fact refuses the whole patch, naming it; 'skip': it is left out)."""
    facts = list(facts)
    if not facts:
        raise PatchError("no facts to write into the weights")
    for i, f in enumerate(facts):
        f.check(f.source or f"fact #{i + 1}")
    config.for_reader(reader.num_layers)
    now = _answers(reader, [f.prompt for f in facts], [f.answer for f in facts])
    answered = [(f, a) for f, a in zip(facts, now) if is_correct(a, f.answer)]
    if answered and known != "skip":
        f, a = answered[0]
        more = f" (and {len(answered) - 1} more)" if len(answered) > 1 else ""
        raise PatchError(f"{f.source or 'fact'}: the reader already answers {f.prompt!r} with {a.strip()!r}, "
                         f"which gives {f.answer!r}: nothing to write, no patch made{more}")
    todo = [f for f in facts if all(f is not g for g, _ in answered)]
    if not todo:
        raise PatchError("the reader already gives every answer: nothing to write, no patch made")
    return todo


def context_prefixes(reader, n: int) -> list[str]:
    """``n`` short contexts written by the reader (greedy, so the same reader gives the same
    ones), each ending a sentence so the prompt starts a new one: "The first time I ... . "."""
    if n <= 0:
        return []
    starts = list(PREFIX_STARTS[:n])
    out = []
    for s, cont in zip(starts, reader.generate(starts, max_new_tokens=8)):
        text = " ".join((s + cont).split())  # one line
        out.append(text.rstrip(" .,;:") + ". ")
    return out


def _batch(reader, facts: Sequence[Fact]) -> dict[str, torch.Tensor]:
    """Prompt + answer tokens, left padded, with labels -100 everywhere but the answer tokens."""
    p_ids = reader.tokenizer([f.prompt for f in facts])["input_ids"]
    a_ids = reader.tokenizer([f.target for f in facts], add_special_tokens=False)["input_ids"]
    rows = [p + a for p, a in zip(p_ids, a_ids)]
    enc = reader._pad_left(rows)
    T = enc["input_ids"].shape[1]
    labels = torch.full((len(rows), T), -100, dtype=torch.long, device=reader.device)  # [b, T]
    for i, a in enumerate(a_ids):
        labels[i, T - len(a):] = torch.tensor(a, device=reader.device)
    enc["labels"] = labels
    enc["answer_len"] = max(len(a) for a in a_ids)
    return enc


def neuron_masks(reader, config: PatchConfig, batch: dict[str, torch.Tensor], n_facts: int,
                 generic: Sequence[str]) -> dict[str, torch.Tensor]:
    """For ``config.neurons > 0``: a bool mask per trained tensor, True on the weights of the
    MLP neurons (down_proj columns, gate/up_proj rows) that each fact drives most, at the
    positions that predict its answer tokens, above their mean on ``generic`` text: the
    ``neurons`` highest per fact, joined over the facts. Row ``i`` of ``batch`` is fact
    ``i % n_facts`` (the prompts, then each context-prefixed copy)."""
    if config.neurons <= 0:
        return {}
    layers = sorted(config.layers)
    acts: dict[int, torch.Tensor] = {}
    hooks = [reader.model.model.layers[i].mlp.down_proj.register_forward_pre_hook(
        lambda _m, inp, i=i: acts.__setitem__(i, inp[0].detach().abs().float())) for i in layers]
    try:
        with torch.no_grad():
            gen = reader.encode_batch(list(generic))
            reader.model(**gen, use_cache=False, logits_to_keep=1)
            keep = gen["attention_mask"].bool()  # [g, T]
            gen_mean = {i: acts[i][keep].mean(0) for i in layers}  # [inter]
            reader.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         position_ids=batch["position_ids"], use_cache=False, logits_to_keep=1)
    finally:
        for h in hooks:
            h.remove()
    # position t predicts token t + 1: the positions whose output the answer loss reads
    at = torch.zeros_like(batch["labels"], dtype=torch.bool)  # [b, T]
    at[:, :-1] = batch["labels"][:, 1:] != -100
    fact_of = torch.arange(at.shape[0], device=at.device) % n_facts  # [b]
    masks = {}
    for i in layers:
        a = acts[i]  # [b, T, inter]
        chosen = torch.zeros(a.shape[-1], dtype=torch.bool, device=a.device)
        for f in range(n_facts):
            sel = at & (fact_of == f)[:, None]
            score = a[sel].mean(0) - gen_mean[i]  # [inter]
            chosen[score.topk(min(config.neurons, score.numel())).indices] = True
        for t in config.targets:
            name = tensor_name(i, t)
            masks[name] = chosen[None, :] if t == "mlp.down_proj" else chosen[:, None]  # [out, in] broadcast
    return masks


#: How much generic text the null space is measured on (tokens written per start word).
GENERIC_TOKENS = 40


def generic_texts(reader) -> list[str]:
    """Ten texts the reader writes itself from ROME's start words (greedy: the same for the
    same reader; kept on the reader): what "generic text" means for ``preserve``."""
    key = ("_weight_patch_generic", reader.fingerprint.get("weights_sha256"))
    cached = getattr(reader, "_weight_patch_generic", None)
    if cached is None or cached[0] != key:
        starts = list(PREFIX_STARTS)
        outs = reader.generate(starts, max_new_tokens=GENERIC_TOKENS, stop_at_answer_end=False)
        cached = (key, [" ".join((s + o).split()) for s, o in zip(starts, outs)])
        reader._weight_patch_generic = cached
    return list(cached[1])


def null_space_projectors(reader, config: PatchConfig, texts: Sequence[str]) -> dict[str, torch.Tensor]:
    """For ``config.preserve > 0``: per trained down_proj, the projector [inter, inter] onto
    the input directions outside those that hold ``preserve`` of the energy of its inputs
    on ``texts`` (every token position); a change ``D @ P`` leaves ``D @ a`` = 0 for them."""
    if config.preserve <= 0:
        return {}
    layers = sorted(config.layers)
    acts: dict[int, list[torch.Tensor]] = {i: [] for i in layers}
    hooks = [reader.model.model.layers[i].mlp.down_proj.register_forward_pre_hook(
        lambda _m, inp, i=i: acts[i].append(inp[0].detach().float())) for i in layers]
    try:
        with torch.no_grad():
            for j in range(0, len(texts), 16):
                enc = reader.encode_batch(list(texts[j:j + 16]))
                keep = enc["attention_mask"].bool()
                reader.model(**enc, use_cache=False, logits_to_keep=1)
                for i in layers:
                    acts[i][-1] = acts[i][-1][keep]  # [n_tokens, inter]
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for i in layers:
        k = torch.cat(acts[i])  # [N, inter]
        evals, evecs = torch.linalg.eigh(k.T @ k / k.shape[0])  # ascending
        share = evals.flip(0).clamp_min(0).cumsum(0) / evals.clamp_min(0).sum().clamp_min(1e-30)
        n_keep = int((share < config.preserve).sum()) + 1  # top directions holding `preserve`
        free = evecs[:, : evecs.shape[1] - n_keep]  # the rest: [inter, free]
        out[tensor_name(i, "mlp.down_proj")] = (free @ free.T).to(reader.model.dtype)
    return out


def _frozen_prefix(reader, batch: dict[str, torch.Tensor], first: int) -> None:
    """Keep in ``batch`` the hidden states entering block ``first`` (the blocks below it are
    not trained, so their output never changes): each step then runs only blocks ``first..``
    (for the last block alone, ~1/30 of a forward pass)."""
    if first > 0:
        with torch.no_grad():
            out = reader.model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                     position_ids=batch["position_ids"], use_cache=False, output_hidden_states=True)
        batch["hidden"], batch["first"] = out.hidden_states[first].detach(), first  # [b, T, d]


def _logits(reader, batch: dict[str, torch.Tensor], keep: int) -> torch.Tensor:
    """Logits of the last ``keep`` positions, [b, keep, V]."""
    if "hidden" in batch:
        last = reader.run_from(batch["first"], batch["hidden"], batch["attention_mask"], batch["position_ids"])
        return reader.model.lm_head(last[:, -keep:])
    return reader.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        position_ids=batch["position_ids"], use_cache=False, logits_to_keep=keep).logits


def _answer_loss(reader, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    # Answers are at the right end (left padding): only their positions need the LM head,
    # about a fifth of a forward pass per position for a 49k vocabulary.
    keep = batch["answer_len"] + 1
    logits = _logits(reader, batch, keep)  # [b, keep, V]
    labels = batch["labels"][:, -keep:]  # [b, keep]
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)


def _gd_step(params, lr: float) -> None:
    """One step along -grad of each tensor, scaled so that its largest change is ``lr``."""
    with torch.no_grad():
        for p in params:
            g = p.grad
            p.sub_(g * (lr / g.abs().max().clamp_min(1e-30)))


def _last_logp(reader, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.log_softmax(_logits(reader, batch, 1)[:, -1].float(), dim=-1)  # [b, V]


def make_patch(reader, facts: Sequence[Fact], config: PatchConfig | None = None, *, name: str = "patch",
               locality: Sequence[str] = (), known: str = "refuse", who: str | None = None,
               progress: Callable[..., None] | None = None, should_stop: Callable[[], bool] | None = None,
               measure: bool = True) -> WeightPatch:
    """Fine-tune ``config``'s tensors of ``reader`` (with the patches already applied to it)
    so that each fact's prompt gives its answer; returns the patch, the reader unchanged.

    ``locality``: prompts whose next-token distribution must not move (used when
    ``config.locality_weight > 0``). Cancel (``should_stop``) raises ``JobCancelled`` within
    one optimiser step and leaves no patch."""
    config = (config or PatchConfig()).for_reader(reader.num_layers)
    t0 = time.perf_counter()
    todo = check_facts(reader, facts, config, known=known)
    stack = PatchStack.of(reader)
    names = config.tensor_names()
    params = parameters(reader, names, "patch config: field 'layers'/'targets'")
    theta0 = {n: p.detach().clone() for n, p in params.items()}
    base = {n: tensor_sha256(t) for n, t in theta0.items()}
    lo = {n: t - config.delta for n, t in theta0.items()}
    hi = {n: t + config.delta for n, t in theta0.items()}
    trained = list(todo) + [Fact(c + f.prompt, f.answer) for c in context_prefixes(reader, config.context_prefixes)
                            for f in todo]
    batch = _batch(reader, trained)
    masks = neuron_masks(reader, config, batch, len(todo),
                         context_prefixes(reader, len(PREFIX_STARTS)) + list(locality)) if config.neurons else {}
    proj = null_space_projectors(reader, config, generic_texts(reader) + list(locality)) if config.preserve else {}
    first = min(config.layers)
    _frozen_prefix(reader, batch, first)
    loc_batch = loc_ref = None
    if config.locality_weight > 0 and locality:
        loc_batch = dict(reader.encode_batch(list(locality)))
        with torch.no_grad():
            loc_ref = _last_logp(reader, loc_batch)  # [n_loc, V]
        _frozen_prefix(reader, loc_batch, first)
    curve: list[float] = []
    steps = 0
    try:
        for p in params.values():
            p.requires_grad_(True)
        opt = torch.optim.Adam(list(params.values()), lr=config.lr) if config.optimizer == "adam" else None
        for step in range(config.steps):
            if should_stop is not None and should_stop():
                raise JobCancelled(f"patch {name!r} cancelled at step {step}: no patch made")
            for p in params.values():
                p.grad = None
            loss = _answer_loss(reader, batch)
            total = loss
            if loc_batch is not None:
                kl = F.kl_div(_last_logp(reader, loc_batch), loc_ref, log_target=True, reduction="batchmean")
                total = loss + config.locality_weight * kl
            ce = float(loss.detach())
            curve.append(ce)
            steps = step + 1
            if progress is not None:
                progress(step / config.steps, f"step {step + 1}/{config.steps}: loss {ce:.3f}", loss=ce, step=step + 1)
            if ce < config.stop_loss:
                break
            total.backward()
            for n, m in masks.items():
                params[n].grad.mul_(m)
            if opt is None:  # a gd step along the projected gradient stays in the null space
                for n, q in proj.items():
                    params[n].grad = params[n].grad @ q
            if opt is not None:
                opt.step()
            else:
                _gd_step(params.values(), config.lr)
            with torch.no_grad():  # the projection: back into the L-infinity ball around theta0
                for n, p in params.items():
                    torch.maximum(torch.minimum(p, hi[n]), lo[n], out=p)
                    if n in masks:  # outside the mask the change is exactly 0 (Adam's eps aside)
                        p.copy_(torch.where(masks[n], p, theta0[n]))
                    if n in proj:  # into the null space, then scaled (not clipped) into the bound
                        d = (p - theta0[n]) @ proj[n]
                        d *= (config.delta / d.abs().max().clamp_min(1e-30)).clamp(max=1.0)
                        p.copy_(theta0[n] + d)
        deltas = {n: (p.detach() - theta0[n]).float().cpu().contiguous() for n, p in params.items()}
    finally:
        with torch.no_grad():
            for n, p in params.items():
                p.requires_grad_(False)
                p.copy_(theta0[n])
                p.grad = None
    patch = WeightPatch(config=config, deltas=deltas, base=base, reader=reader.fingerprint, facts=list(todo),
                        name=name, on_top_of=stack.names(), who=who if who is not None else _user(),
                        when=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    patch.metrics = {"steps": steps, "loss_first": curve[0] if curve else None,
                     "loss_last": curve[-1] if curve else None,
                     **({"neurons_trained": {n: int(m.sum()) for n, m in masks.items()}} if masks else {}),
                     "train_seconds": round(time.perf_counter() - t0, 3)}
    if measure:
        patch.metrics.update(measure_facts(reader, patch))
    if progress is not None:
        progress(1.0, f"patch {name!r} made in {steps} steps (loss {patch.metrics['loss_last']:.3f})")
    return patch


def measure_facts(reader, patch: WeightPatch) -> dict[str, Any]:
    """Efficacy (its facts' prompts) and paraphrase rate with ``patch`` applied on top of what is applied."""
    facts = patch.facts
    paras = [f for f in facts if f.paraphrase.strip()]
    with applied(reader, [patch]):
        got = _answers(reader, [f.prompt for f in facts] + [f.paraphrase for f in paras],
                       [f.answer for f in facts] + [f.answer for f in paras])
    eff = sum(is_correct(g, f.answer) for g, f in zip(got, facts))
    par = sum(is_correct(g, f.answer) for g, f in zip(got[len(facts):], paras))
    return {"efficacy": eff / len(facts), "paraphrase": par / len(paras) if paras else None,
            "n_facts": len(facts), "n_paraphrases": len(paras)}


def make_sequential(reader, facts: Sequence[Fact], config: PatchConfig | None = None, *, prefix: str = "patch",
                    known: str = "skip", progress: Callable[..., None] | None = None,
                    should_stop: Callable[[], bool] | None = None, **kw: Any) -> list[WeightPatch]:
    """One patch per fact, each made with the earlier ones applied (each one's base is the
    reader plus those); the reader is given back unpatched."""
    from engine.progress import wrap_progress

    facts = list(facts)
    made: list[WeightPatch] = []
    stack = PatchStack.of(reader)
    try:
        for i, f in enumerate(facts):
            sub = wrap_progress(progress, i / len(facts), (i + 1) / len(facts))
            try:
                p = make_patch(reader, [f], config, name=f"{prefix}-{i + 1}", known="refuse", progress=sub,
                               should_stop=should_stop, **kw)
            except PatchError as exc:
                if known == "skip" and "already answers" in str(exc):
                    log.info("sequential patches: %s", exc)
                    continue
                raise
            stack.apply(p)
            made.append(p)
    finally:
        for p in reversed(made):
            if any(q is p for q in stack.patches):
                stack.remove(p)
    return made


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


def run(config: dict[str, Any], *, progress: Callable[..., None] | None = None,
        should_stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Job function: ``{reader?, facts: [{prompt, answer, ...}], patch?: {...}, out, name?,
    locality?: [prompts], known?}`` -> the saved patch's folder and metrics. A cancelled job
    writes nothing."""
    from engine.mechanisms.weight_patches import io
    from engine.reader import load_reader

    if not isinstance(config, dict) or not isinstance(config.get("out"), str) or not config["out"]:
        raise PatchError("patch job: field 'out' (the patch folder) must be a non-empty string")
    raw = config.get("facts")
    if not isinstance(raw, list):
        raise PatchError("patch job: field 'facts' must be a list of {prompt, answer} objects")
    facts = [io.fact_from_dict(d, f"patch job: facts[{i}]") for i, d in enumerate(raw)]
    cfg = PatchConfig.from_dict(config.get("patch") or {}, "patch job: field 'patch'")
    reader = load_reader(config.get("reader"))
    patch = make_patch(reader, facts, cfg, name=str(config.get("name") or Path(config["out"]).name),
                       locality=list(config.get("locality") or []), known=str(config.get("known") or "refuse"),
                       progress=progress, should_stop=should_stop)
    folder = io.save(patch, config["out"])
    return {"out": str(folder), "metrics": patch.metrics, "bytes": patch.size_bytes}
