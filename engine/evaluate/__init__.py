"""Evaluation shared by the GUI, the CLI and the benchmarks: fact probes and edit metrics."""
from engine.evaluate.edits import evaluate_edits, undo_interrupted_evaluation
from engine.evaluate.probes import answer_batch, evaluate_probes
from engine.probe_files import EvalDataError, Edit, Probe, is_correct, read_edits, read_probes

__all__ = [
    "Edit",
    "EvalDataError",
    "Probe",
    "answer_batch",
    "evaluate_edits",
    "undo_interrupted_evaluation",
    "evaluate_probes",
    "is_correct",
    "read_edits",
    "read_probes",
]
