"""The training loop that map-tuning and task-tuning share.

Both train a plugin's mapping modules with the reader frozen, and both need the same
run-time guarantees: linear warm-up, cancel and time limit checked before every step,
validation every ``eval_every`` steps with early stopping on ``patience``, the best
state kept, and checkpoints (``<out>/checkpoint.pt``, temporary file + ``os.replace``)
from which the same command resumes to the result of an uninterrupted run. A job
supplies its modules, its optimiser, a ``backward(step, batch)`` that computes and
backpropagates one batch's loss, and a ``validate()``; everything else lives here.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from engine.artefacts import atomic_write
from engine.mechanisms.plugins.errors import PluginError
from engine.progress import JobCancelled

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
_LOOP_FORMAT = 2  # checkpoints written by this loop; earlier ones had one layout per job
_CARRIED = ("best_step", "best_val_loss", "stopped_early")


@dataclass
class LoopSchedule:
    total: int  # steps
    steps_per_epoch: int
    lr: float
    warmup_steps: int
    eval_every: int
    patience: int
    checkpoint_every: int
    max_minutes: float = 0.0


def module_state(modules: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """The trained modules' tensors in one flat dict (``mapping.*``, ``slot.*``), copied to the CPU."""
    return {f"{name}.{k}": t.detach().cpu().clone() for name, m in modules.items() for k, t in m.state_dict().items()}


def load_module_state(modules: dict[str, torch.nn.Module], state: dict[str, torch.Tensor]) -> None:
    for name, m in modules.items():
        m.load_state_dict({k[len(name) + 1:]: t for k, t in state.items() if k.startswith(name + ".")})


def data_fingerprint(parts: Sequence[Any]) -> str:
    """A hash of what a run trains on, so a checkpoint is never resumed on other data."""
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()


def seeded_sample(items: Sequence[Any], n: int, seed) -> list[Any]:
    """At most ``n`` of ``items``, a seeded sample kept in its original order."""
    if len(items) <= n:
        return list(items)
    pick = np.random.default_rng(seed).choice(len(items), size=n, replace=False)
    return [items[i] for i in sorted(pick.tolist())]


class MappingTraining:
    """One run of a mapping-training job: resume, the loop, checkpoints, the best state.

    ``result`` is the job's result dataclass; the loop fills its ``steps_done``,
    ``best_step``, ``best_val_loss``, ``stopped_early``, ``resumed_from``,
    ``train_losses`` and ``val_losses``, plus the fields named in ``carried`` (set by the
    job or by ``validate``'s extras), which a checkpoint keeps across a resume.
    """

    def __init__(self, *, job: str, activity: str, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer,
                 out: Path, model: dict[str, Any], data: str, result, carried: Sequence[str] = (),
                 mismatch: str = "other options, data or reader", force: bool = False) -> None:
        self.job, self.activity = job, activity  # "map-tune" (the command), "map-tuning" (what it does)
        self.modules, self.opt, self.result = modules, optimizer, result
        self.params = [p for m in modules.values() for p in m.parameters()]
        self.model, self.data, self.mismatch = model, data, mismatch
        self.carried = tuple(_CARRIED) + tuple(c for c in carried if c not in _CARRIED)
        self.ckpt = out / CHECKPOINT
        self.step, self.bad = 0, 0
        self.best_state: dict[str, torch.Tensor] | None = None
        out.mkdir(parents=True, exist_ok=True)
        if self.ckpt.is_file() and force:
            self.ckpt.unlink()

    # ------------------------------------------------------------------ checkpoints
    def resume(self) -> bool:
        """Load ``checkpoint.pt`` if there is one (refusing another run's); True when resumed."""
        if not self.ckpt.is_file():
            return False
        try:
            ck = torch.load(str(self.ckpt), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a damaged checkpoint is reported, not trusted
            raise PluginError(f"{self.ckpt} is unreadable ({type(exc).__name__}); delete it or use --force") from None
        if not isinstance(ck, dict) or ck.get("loop") != _LOOP_FORMAT:
            raise PluginError(f"{self.ckpt} was written by an earlier version of {self.activity}; it cannot be resumed: "
                              "use --force to start over, or another --out")
        if ck.get("model") != self.model or ck.get("data") != self.data:
            raise PluginError(f"{self.ckpt} is a checkpoint of another {self.activity} run ({self.mismatch}); use the "
                              "same options, --force to start over, or another --out")
        load_module_state(self.modules, ck["modules"])
        self.opt.load_state_dict(ck["opt"])
        self.step, self.bad, self.best_state = int(ck["step"]), int(ck["bad"]), ck.get("best_state")
        for k in self.carried:
            setattr(self.result, k, ck.get(k))
        self.result.stopped_early = bool(self.result.stopped_early)
        self.result.best_step = int(self.result.best_step or 0)
        self.result.train_losses = [tuple(x) for x in ck.get("train_losses", [])]
        self.result.val_losses = [tuple(x) for x in ck.get("val_losses", [])]
        self.result.resumed_from = self.step
        return True

    def checkpoint(self) -> None:
        state = {"loop": _LOOP_FORMAT, "modules": module_state(self.modules), "opt": self.opt.state_dict(),
                 "step": self.step, "bad": self.bad, "best_state": self.best_state, "model": self.model,
                 "data": self.data, "train_losses": [list(x) for x in self.result.train_losses],
                 "val_losses": [list(x) for x in self.result.val_losses],
                 **{k: getattr(self.result, k) for k in self.carried}}
        atomic_write(self.ckpt, lambda p: torch.save(state, str(p)))

    # ------------------------------------------------------------------ the loop
    def _evaluate(self, validate: Callable[[], tuple[float, dict[str, Any]]], *, margin: float) -> float:
        for m in self.modules.values():
            m.eval()
        try:
            v, extras = validate()
        finally:
            for m in self.modules.values():
                m.train()
        v = float(v)
        self.result.val_losses.append((self.step, round(v, 5)))
        if self.result.best_val_loss is None or v < self.result.best_val_loss - margin:
            self.result.best_val_loss, self.result.best_step, self.bad = v, self.step, 0
            for k, x in extras.items():
                setattr(self.result, k, x)
            self.best_state = module_state(self.modules)
        else:
            self.bad += 1
        return v

    def run(self, schedule: LoopSchedule, *, batches: Callable[[int], Sequence[list[int]]],
            backward: Callable[[int, list[int]], torch.Tensor], validate: Callable[[], tuple[float, dict[str, Any]]],
            say: Callable[..., None], should_stop: Callable[[], bool], t0: float,
            loss_label: str = "loss", val_label: Callable[[float], str] = lambda v: f"validation loss {v:.4f}") -> None:
        """Train from ``self.step`` to ``schedule.total`` (or early stop / time limit), then load the best state.

        ``batches(epoch)`` gives that epoch's batches (a pure function of the epoch, so a
        resumed run repeats the uninterrupted one); ``backward(step, idx)`` returns the
        batch's loss after calling ``backward()`` on it. Raises ``JobCancelled`` after a
        checkpoint when ``should_stop()`` turns true.
        """
        s, r = schedule, self.result
        warmup = max(1, min(s.warmup_steps, s.total))
        window: list[float] = []
        epoch_batches: tuple[int, Sequence[list[int]]] | None = None
        for m in self.modules.values():
            m.train()
        try:
            while self.step < s.total and not r.stopped_early:
                if should_stop():
                    self.checkpoint()
                    raise JobCancelled(f"{self.job} cancelled at step {self.step}/{s.total}; run it again to resume "
                                       f"from {self.ckpt}")
                if s.max_minutes and time.perf_counter() - t0 > s.max_minutes * 60:
                    log.info("%s: time limit of %.1f min reached at step %d", self.job, s.max_minutes, self.step)
                    break
                epoch, k = divmod(self.step, s.steps_per_epoch)
                if epoch_batches is None or epoch_batches[0] != epoch:
                    epoch_batches = (epoch, batches(epoch))
                for g in self.opt.param_groups:
                    g["lr"] = s.lr * min(1.0, (self.step + 1) / warmup)
                self.opt.zero_grad(set_to_none=True)
                loss = backward(self.step, epoch_batches[1][k])
                torch.nn.utils.clip_grad_norm_(self.params, 1.0)
                self.opt.step()
                self.step += 1
                window.append(float(loss.detach()))
                if self.step % 5 == 0 or self.step == s.total:
                    mean = sum(window) / len(window)
                    r.train_losses.append((self.step, round(mean, 5)))
                    window = []
                    say(self.step / s.total, f"step {self.step}/{s.total}  {loss_label} {mean:.4f}", loss=mean,
                        step=self.step)
                if self.step % s.eval_every == 0 or self.step == s.total:
                    v = self._evaluate(validate, margin=1e-4)
                    r.stopped_early = self.bad >= s.patience
                    say(self.step / s.total, f"step {self.step}/{s.total}  {val_label(v)}", val_loss=v, step=self.step)
                if self.step % s.checkpoint_every == 0:
                    self.checkpoint()
        finally:
            for m in self.modules.values():
                m.eval()
        if self.best_state is None or not r.val_losses or r.val_losses[-1][0] != self.step:
            self._evaluate(validate, margin=0.0)
            for m in self.modules.values():
                m.eval()
        r.steps_done = self.step
        self.checkpoint()
        load_module_state(self.modules, self.best_state)


def epoch_permutation(n: int, batch: int, seed: int) -> Callable[[int], list[list[int]]]:
    """Batches of a seeded permutation per epoch: ``(seed, epoch)`` fixes them."""
    def batches(epoch: int) -> list[list[int]]:
        perm = np.random.default_rng([seed, epoch]).permutation(n).tolist()
        return [perm[i:i + batch] for i in range(0, n, batch)]
    return batches
