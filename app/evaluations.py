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
from typing import Any

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

    @property
    def label(self) -> str:
        return f"#{self.id} {Path(self.file).parent.name}/{Path(self.file).stem} · {self.mode} k={self.k}"

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
        if not self.path.exists():
            return []
        runs: list[EvalRun] = []
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("%s unreadable (%s); no past evaluations shown", self.path, exc)
            return []
        known = set(EvalRun.__dataclass_fields__)
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                if not isinstance(d, dict) or not isinstance(d.get("result"), dict):
                    raise ValueError("not an evaluation record")
                runs.append(EvalRun(**{k: v for k, v in d.items() if k in known}))
            except (ValueError, TypeError) as exc:
                log.warning("%s:%d skipped (%s)", self.path, n, exc)
        return runs

    def append(self, run: EvalRun, existing: list[EvalRun]) -> EvalRun:
        run.id = max((r.id for r in existing), default=0) + 1
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(asdict(run), ensure_ascii=False) + "\n")
        return run
