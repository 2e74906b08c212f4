"""Past evaluation results of a workspace: ``<workspace>/evaluations.jsonl``, one run a line.

Appending a line is atomic enough for one writer (the app); a line that cannot be read
(a crash mid-write, a hand edit) is skipped with a logged warning, never fatal.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from engine.mechanisms import choose_mode, mode_names

log = logging.getLogger(__name__)

FILE_NAME = "evaluations.jsonl"
RUN_VERSION = 1


@dataclass
class EvalRun:
    """One evaluation: what was run (kind, file, mode, k, limit, packs, reader) and its figures."""

    kind: str  # "probes" | "edits"
    file: str
    mode: str
    k: int
    packs: list[str]
    reader: str
    result: dict[str, Any]
    limit: int | None = None
    time: float = field(default_factory=time.time)
    id: int = 0
    version: int = RUN_VERSION
    pkm: str | None = None  # the product-key memory folder plugged into the reader for the run

    @property
    def label(self) -> str:
        layer = f" + pkm {Path(self.pkm).name}" if self.pkm else ""
        return f"#{self.id} {Path(self.file).parent.name}/{Path(self.file).stem} · {self.mode}{layer} k={self.k}"

    @property
    def short_label(self) -> str:
        """"#id mode": a compared run's column or bar name (``label`` in its tooltip)."""
        return f"#{self.id} {self.mode}" + (" +pkm" if self.pkm else "")

    def marks(self) -> str | None:
        """"1"/"0" per probe (right with memory) or edit (followed) in file order; None for a
        run made before they were kept."""
        m = self.result.get("followed_by_edit" if self.kind == "edits" else "correct_by_probe")
        return m if isinstance(m, str) else None

    def headline(self) -> dict[str, float | None]:
        """The figures that sum the run up (shown in the runs table and compared in the chart)."""
        r = self.result
        if self.kind == "edits":
            return {"efficacy": r.get("efficacy"), "generalization": r.get("generalization"),
                    "locality": r.get("locality"), "efficacy before": r.get("efficacy_before")}
        return {"accuracy": r.get("accuracy"), "without memory": r.get("accuracy_without_memory"),
                "hit@k": r.get("hit_at_k"), "paraphrases": r.get("paraphrase_accuracy")}


class EvalStore:
    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / FILE_NAME

    def load(self) -> list[EvalRun]:
        """The saved runs; a damaged line is logged ('FILE:LINE: reason') and skipped, the others are kept."""
        from engine.jsonl import JsonlError, json_lines, read_text

        if not self.path.exists():
            return []
        try:
            text = read_text(self.path)
        except JsonlError as exc:
            log.warning("%s; no past evaluations shown", exc)
            return []
        runs: list[EvalRun] = []
        known = set(EvalRun.__dataclass_fields__)
        for n, d in json_lines(self.path, text, expect="an evaluation record",
                               skip=lambda exc: log.warning("%s (line skipped)", exc)):
            try:
                if not isinstance(d.get("result"), dict):
                    raise ValueError("not an evaluation record")
                runs.append(EvalRun(**{k: v for k, v in d.items() if k in known}))
            except (ValueError, TypeError) as exc:
                log.warning("%s:%d: %s (line skipped)", self.path, n, exc)
        return runs

    def append(self, run: EvalRun, existing: list[EvalRun]) -> EvalRun:
        run.id = max((r.id for r in existing), default=0) + 1
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(asdict(run), ensure_ascii=False) + "\n")
        return run


# ---------------------------------------------------------------------------- running one
JOB_KINDS = {"probes": "evaluate_probes", "edits": "evaluate_edits"}
MODES = mode_names()


class EvalStartError(ValueError):
    """An evaluation cannot start (no file, nothing plugged for an edit evaluation…): the message says why."""


@dataclass
class EvalRequest:
    """What to evaluate: a probe or edit file, the mode, k and an optional limit (the job's config)."""

    file: str
    kind: str  # "probes" | "edits"
    mode: str
    k: int = 5
    limit: int | None = None

    @property
    def title(self) -> str:
        f = Path(self.file)
        what = "edits" if self.kind == "edits" else "probes"
        return f"Evaluate {what}: {f.parent.name}/{f.name} · {self.mode} k={self.k}"

    def config(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_config(cls, d: dict[str, Any]) -> "EvalRequest":
        """The request a job record holds (for running it again); EvalStartError when it is not one."""
        try:
            req = cls(str(d["file"]), str(d["kind"]), str(d["mode"]), int(d.get("k", 5)),
                      int(d["limit"]) if d.get("limit") else None)
        except (KeyError, TypeError, ValueError) as exc:
            raise EvalStartError(f"the job's config is not an evaluation request ({exc})") from None
        if req.kind not in JOB_KINDS or req.mode not in MODES:
            raise EvalStartError(f"the job's config has kind {req.kind!r} and mode {req.mode!r}; "
                                 f"expected one of {', '.join(JOB_KINDS)} and {', '.join(MODES)}")
        return req


def _phase(kind: str, fraction: float, use_memory: bool) -> str:
    """Which pass of the evaluation a fraction belongs to (the engine's progress slices)."""
    if kind == "edits":
        return "before the edits" if fraction <= 0.45 else "after the edits" if fraction <= 0.95 else ""
    if not use_memory:
        return ""
    return "with memory" if fraction <= 0.5 else "without memory"


def start_evaluation(ctx, req: EvalRequest, on_end: Callable[[str, str, Any, Any], None]) -> str:
    """Start ``req`` as a job of the Jobs panel, running on the model thread; returns the job id.

    The job reports progress (with an ETA), log lines and can be cancelled: the engine
    stops at its next batch, and an edit evaluation undoes its edits on the way out
    (also on failure or cancel). The packs an edit evaluation edits are marked busy
    while it runs. ``on_end(job_id, status, outcome, error)`` is called on the GUI
    thread: ``outcome`` is the job's result when done — ``{result, mode, note, reader,
    packs}`` — and ``error`` the exception of a failed or cancelled run (else None).
    Raises :class:`EvalStartError` when the evaluation cannot start.
    """
    if not req.file or not Path(req.file).is_file():
        raise EvalStartError(f"Evaluation file not found: {req.file or '(none chosen)'}")
    kind, mode, k, limit, path = req.kind, req.mode, req.k, req.limit, req.file
    mems, skipped = ctx.plugged_memories() if mode != "none" or kind == "edits" else ([], [])
    if kind == "edits" and not mems:
        raise EvalStartError("An edit evaluation edits the plugged packs (and undoes its edits after): plug one in first.")
    locality = Path(path).with_name("probes_heldout.jsonl") if kind == "edits" else None
    busy = [m.path for m in mems] if kind == "edits" else []
    packs = [m.name for m in mems] if (mode != "none" or kind == "edits") else []
    left_out = ("Left out: " + "; ".join(skipped) + ".") if skipped else ""
    plugin_paths = list(ctx.workspace.plugins())  # the packs whose plugin box is ticked, as Ask and explain
    host = ctx.model
    handle: list[Any] = []

    def task(model):  # on the model thread
        from engine.evaluate import evaluate_edits, evaluate_probes, read_edits, read_probes

        job = handle[0]
        used, fell_back = choose_mode(mode, has_branch=model.branch is not None, doing="evaluated")
        use_memory = bool(mems) and used != "none"
        job.progress(0.0, f"reader ready ({model.describe()}); evaluating in mode {used}, k={k}")

        def progress(fraction: float, message: str = "", **metrics: Any) -> None:
            phase = _phase(kind, fraction, use_memory)
            job.progress(fraction, f"{phase}: {message}" if phase and message else message, **metrics)

        predictor = model.predictor
        plugins, plugin_notes = model.plugins_for(plugin_paths) if plugin_paths else ([], [])
        dropped = ("Knowledge plugins left out: " + "; ".join(plugin_notes) + ".") if plugin_notes else ""
        if kind == "edits":
            loc = read_probes(locality) if locality is not None and locality.is_file() else []
            res = evaluate_edits(predictor, mems, read_edits(path), loc, used, k=k, limit=limit,
                                 progress=progress, should_stop=job.should_stop, plugins=plugins)
        else:
            res = evaluate_probes(predictor, mems, read_probes(path), used, k=k, limit=limit,
                                  progress=progress, should_stop=job.should_stop, plugins=plugins)
        from engine.explain.pkm import layer_info

        layer = layer_info(model.reader)  # the plugged product-key memory is part of the reader for every probe
        return {"result": res, "mode": used, "note": " ".join(x for x in (fell_back, left_out, dropped) if x),
                "reader": model.describe(), "packs": packs if used != "none" or kind == "edits" else [],
                "pkm": layer["folder"] if layer else None}

    def done(outcome: dict) -> None:
        job = handle[0]
        job.progress(1.0, "done: " + summary(kind, outcome["result"]))
        job.succeed(outcome)

    def run(job) -> None:
        handle.append(job)
        for p in busy:
            ctx.set_busy(p, True, "evaluating edits")
        where = f" on {', '.join(packs)}" if packs else " without memory"
        job.progress(0.0, f"{kind} of {path}{where}" + (f" (first {limit})" if limit else "")
                     + ("; loading the reader" if host.state != "ready" else "") + (f". {left_out}" if left_out else ""))
        host.submit(task, done, on_error=job.fail, what="Evaluating")

    def ended(job_id: str, status: str, result: Any) -> None:
        for p in busy:
            ctx.set_busy(p, False)
        job = handle[0] if handle else None
        on_end(job_id, status, result, getattr(job, "exception", None))

    return ctx.jobs.start_in_app(JOB_KINDS[kind], req.config(), run, title=req.title, on_end=ended)


def summary(kind: str, r: dict[str, Any]) -> str:
    """One line of figures for the log ("accuracy 50.0% with memory, 25.0% without; 4 probes in 1.2 s")."""
    def pct(x: float | None) -> str:
        return "–" if x is None else f"{100 * x:.1f}%"

    if kind == "edits":
        return (f"efficacy {pct(r.get('efficacy'))} (before {pct(r.get('efficacy_before'))}), generalisation "
                f"{pct(r.get('generalization'))}, locality {pct(r.get('locality'))}; {r.get('n', 0)} edits in "
                f"{r.get('seconds', 0):.1f} s; " + ("every edit undone" if r.get("restored") else "SOME EDITS NOT RESTORED"))
    return (f"accuracy {pct(r.get('accuracy'))} with memory, {pct(r.get('accuracy_without_memory'))} without; "
            f"{r.get('n', 0)} probes in {r.get('seconds', 0):.1f} s")
