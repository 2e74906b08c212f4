"""A task plugin's relation gate: inject only into questions of the relations it was trained for (issue 21).

A task-tuned plugin (above all one with an answer slot) lifts the relations it was
trained on and pulls the answers of others towards theirs (bench/RESULTS.md: an
intermediate region answered as a region). So the plugin records the question
templates it was trained on (``training.templates``: relation -> templates with
``{subject}``), and at answer time the key encoder compares the question, with its
subject replaced by a placeholder, with those templates (cosine of normalised keys).
Below ``threshold`` the plugin injects nothing and the explanation says so, naming
the nearest trained relation and its similarity.

The threshold is calibrated on the TRAINING side only (:func:`calibrate`): the
paraphrases of the trained relations' probes (wordings it was not trained on) must
pass; the same questions scored against the templates of the OTHER trained relations
(each relation in turn playing one the plugin never saw) must not. The lowest threshold
that refuses 95 % of the latter is kept, with both shares, in ``training.gate`` of the
plugin's config.json (maximising passed + refused instead let a quarter of the
other-relation questions through on the geography demo: region and subregion are
worded alike, cosine 0.91).
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from engine.mechanisms.plugins.errors import PluginError

log = logging.getLogger(__name__)

REFUSE = 0.95  # share of other-relation validation questions the calibrated gate must refuse
PLACEHOLDER = "X"  # the subject, in templates and questions alike: the gate compares wordings, not entities


@dataclass
class GateDecision:
    plugin: str
    applied: bool
    relation: str | None  # the nearest trained relation
    score: float  # its cosine similarity to the question
    threshold: float

    @property
    def message(self) -> str:
        if self.applied:
            return (f"plugin {self.plugin} applied: the question matches the relation {self.relation} it was trained "
                    f"for ({self.score:.2f} >= {self.threshold:.2f})")
        return (f"plugin {self.plugin} not applied: the question matches no relation it was trained for "
                f"(best: {self.relation}, {self.score:.2f} < {self.threshold:.2f})")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "score": round(float(self.score), 4), "message": self.message}


def masked(text: str, start: int, end: int) -> str:
    """``text`` with characters [start, end) (the subject's mention) replaced by the placeholder."""
    return text[:start] + PLACEHOLDER + text[end:]


def template_text(template: str) -> str:
    return template.replace("{subject}", PLACEHOLDER).replace("{{", "{").replace("}}", "}")


def check_templates(templates: Any, where: str) -> dict[str, list[str]]:
    if not isinstance(templates, dict) or not templates or not all(
            isinstance(r, str) and isinstance(ts, list) and ts and all(isinstance(t, str) and "{subject}" in t
                                                                        for t in ts)
            for r, ts in templates.items()):
        raise PluginError(f"{where}: templates must map each relation to a list of question templates naming "
                          "{subject}")
    return templates


class RelationGate:
    """Decides, per question, whether a plugin trained for ``templates`` should inject into it."""

    def __init__(self, templates: dict[str, list[str]], threshold: float, encoder=None, *,
                 where: str = "relation gate") -> None:
        self.templates = check_templates(templates, where)
        if not isinstance(threshold, (int, float)) or not -1.0 <= float(threshold) <= 1.0:
            raise PluginError(f"{where}: threshold must be a number in [-1, 1], got {threshold!r}")
        self.threshold = float(threshold)
        self._encoder = encoder
        self._keys: np.ndarray | None = None  # [n_templates, dim]
        self._rel: list[str] = [r for r, ts in self.templates.items() for _ in ts]

    @classmethod
    def from_training(cls, training: dict[str, Any] | None, where: str) -> "RelationGate | None":
        """The gate a plugin's ``training`` record describes (None: the plugin has no gate, always applied)."""
        gate = (training or {}).get("gate")
        if gate is None:
            return None
        if not isinstance(gate, dict) or "threshold" not in gate:
            raise PluginError(f"{where}: training.gate must be an object with a threshold (damaged plugin)")
        return cls(training.get("templates"), gate["threshold"], where=f"{where}: training")

    @property
    def encoder(self):
        if self._encoder is None:
            from engine.encode.encoder import get_default_encoder

            self._encoder = get_default_encoder()
        return self._encoder

    def _template_keys(self) -> np.ndarray:
        if self._keys is None:
            self._keys = self.encoder.encode([template_text(t) for ts in self.templates.values() for t in ts])
        return self._keys

    def scores(self, questions: Sequence[str], exclude: Sequence[str | None] | None = None
               ) -> list[tuple[str | None, float]]:
        """(nearest trained relation, cosine) per masked question; ``exclude[i]``: a relation left out for it."""
        if not questions:
            return []
        q = self.encoder.encode(list(questions))  # [n, dim]
        sim = q @ self._template_keys().T  # [n, n_templates]
        rel = np.array(self._rel, dtype=object)
        if exclude is not None:
            sim = np.where(rel[None, :] == np.array(list(exclude), dtype=object)[:, None], -np.inf, sim)
        best = sim.argmax(axis=1)
        return [(None, -2.0) if np.isinf(sim[i, j]) else (str(rel[j]), float(sim[i, j])) for i, j in enumerate(best)]

    def decide(self, text: str, start: int, end: int, *, plugin: str = "") -> GateDecision:
        """Whether to inject into ``text`` whose subject is the mention at [start, end)."""
        rel, score = self.scores([masked(text, start, end)])[0]
        return GateDecision(plugin, score >= self.threshold, rel, score, self.threshold)


# --------------------------------------------------------------------------- calibration
def subject_pattern(subject: str) -> re.Pattern:
    """The subject as a whole word, any case: how a question's mention of it is found."""
    return re.compile(r"(?<!\w)" + re.escape(subject) + r"(?!\w)", re.IGNORECASE)


def relation_probes(probe_files: Sequence[str | Path]):
    """Every probe of the files, each with a relation and a subject (a bad file: PluginError naming it)."""
    from engine.probe_files import EvalDataError, read_probes

    for f in probe_files:
        try:
            probes = read_probes(f, require=("relation", "subject"))
        except EvalDataError as exc:
            raise PluginError(str(exc)) from None
        yield from probes


def _masked_probe_texts(probe_files: Sequence[str | Path], relations: set[str]) -> dict[str, dict[str, set[str]]]:
    """relation -> {"prompt": masked prompts, "paraphrase": masked paraphrases} of the probe files."""
    out: dict[str, dict[str, set[str]]] = {}
    for pr in relation_probes(probe_files):
        if pr.relation in relations:
            pat = subject_pattern(pr.subject)
            d = out.setdefault(pr.relation, {"prompt": set(), "paraphrase": set()})
            for kind, texts in (("prompt", [pr.prompt]), ("paraphrase", list(pr.paraphrases))):
                for t in texts:
                    if len(pat.findall(t)) == 1:
                        d[kind].add(pat.sub(PLACEHOLDER, t))
    return out


def calibrate(templates: dict[str, list[str]], probe_files: Sequence[str | Path], encoder=None, *,
              refuse: float = REFUSE) -> dict[str, Any]:
    """A threshold from the training probe files (never the held-out ones): see the module docstring.

    Returns ``{"threshold", "passed", "refused", "refuse_target", "n_same", "n_other", "probes"}``;
    at least two trained relations are needed (one plays the unseen relation for the others).
    """
    templates = check_templates(templates, "gate calibration")
    if not 0.0 < refuse <= 1.0:
        raise PluginError(f"gate calibration: refuse must be in (0, 1], got {refuse!r}")
    if len(templates) < 2:
        raise PluginError("gate calibration: the plugin was trained on one relation; at least two are needed to "
                          "calibrate a relation gate (one plays the relation it never saw)")
    gate = RelationGate(templates, 0.0, encoder)
    texts = _masked_probe_texts(probe_files, set(templates))
    trained = {template_text(t) for ts in templates.values() for t in ts}
    same, other, other_rel = [], [], []
    for rel, d in sorted(texts.items()):
        same += sorted(t for t in d["paraphrase"] if t not in trained)  # other wordings of a trained relation
        for t in sorted(d["prompt"] | d["paraphrase"]):
            other.append(t)
            other_rel.append(rel)  # scored without its own relation's templates: a relation never trained
    if not same or not other:
        raise PluginError(f"gate calibration: the probe files {', '.join(map(str, probe_files))} give no paraphrase "
                          "of the trained relations to calibrate on")
    pos = np.array([s for _, s in gate.scores(same)])
    neg = np.array([s for _, s in gate.scores(other, exclude=other_rel)])
    cands = np.unique(np.concatenate([pos, neg, [1.0 + 1e-6]]))
    # The lowest threshold that refuses ``refuse`` of the other-relation questions: hurting a relation
    # it was never trained for costs more than missing a gain on another wording of a trained one.
    t = next(float(c) for c in cands if (neg < c).mean() >= refuse)
    lower = cands[cands < t]
    thr = float((t + lower.max()) / 2) if len(lower) else t  # midway: the same split, robust to rounding
    return {"threshold": round(min(thr, 1.0), 4), "passed": round(float((pos >= thr).mean()), 4),
            "refused": round(float((neg < thr).mean()), 4), "refuse_target": refuse, "n_same": int(len(pos)),
            "n_other": int(len(neg)), "probes": [str(p) for p in probe_files]}


def write_gate(folder: str | Path, gate: dict[str, Any] | None, templates: dict[str, list[str]] | None = None) -> Path:
    """Set (or, with ``gate=None``, remove) ``training.gate`` in a plugin folder's config.json, atomically."""
    from engine.artefacts import atomic_write
    from engine.mechanisms.plugins.answer_slot import SlotPluginFiles

    folder = Path(folder)
    meta = SlotPluginFiles.read_config(folder)  # checked: a plugin folder of any version this program reads
    training = dict(meta.get("training") or {})
    if templates is not None:
        training["templates"] = check_templates(templates, f"{folder}")
    if gate is None:
        training.pop("gate", None)
    else:
        check_templates(training.get("templates"), f"{folder / 'config.json'}: training")
        training["gate"] = gate
    meta["training"] = training
    atomic_write(folder / "config.json",
                 lambda p: p.write_text(json.dumps(meta, **SlotPluginFiles.json_options), encoding="utf-8"))
    return folder
