"""A job in the user's words: what it does, on which pack and files, when it started and
ended, its result or its error. The function name and the raw config are kept apart, for
the Jobs dock's "Technical details"."""
from __future__ import annotations

import html
import json
import time
from pathlib import Path
from typing import Any

# what each kind of job does, as a sentence about its config
_WHAT = {
    "build_memory": "Imports {inputs} into the pack {pack}: each passage becomes an entry with its key.",
    "ray_build": "Imports {inputs} into the pack {pack}, the keys encoded by workers of a Ray instance.",
    "prepare_states": "Reads every active entry of {packs} once and keeps the states on disk, "
                      "so that first answers are fast.",
    "train_memory_reader": "Trains the memory reader (the memory branch) for {steps} steps on {data}.",
    "evaluate_probes": "Asks the reader the fact probes in {file}, with and without the plugged memory "
                       "(mode {mode}, {k} entries per question).",
    "evaluate_edits": "Applies the edits in {file} one by one, checks the answers follow, and undoes each "
                      "edit (mode {mode}, {k} entries per question).",
    "train_transe": "Learns entity embeddings (TransE, {epochs} epochs) from the triples of {pack}.",
    "map_tune": "Trains the knowledge plugin of {pack}: a mapping from its entity embeddings into the reader.",
    "task_tune": "Trains the task plugin of {pack} to answer the questions of {probes}, the reader frozen.",
}
_RESULT_LABELS = {"read": "entries read", "already": "already prepared", "n": "questions"}


def when(t: Any) -> str:
    """A date and time, local ("2026-12-04 19:02:31"), from epoch seconds; "" when unknown."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(t))) if isinstance(t, (int, float)) and t else ""


def _names(v: Any) -> str:
    items = v if isinstance(v, (list, tuple)) else [v]
    names = [Path(str(x)).name for x in items if x]
    if not names:
        return "—"
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    return f"{len(names)} file(s): {shown}" if len(names) > 1 else shown


def _packs(v: Any) -> str:
    items = v if isinstance(v, (list, tuple)) else [v]
    return ", ".join(Path(str(x)).stem for x in items if x) or "—"


def what_it_does(kind: str, title: str, config: dict[str, Any]) -> str:
    """One sentence; the job's title when its kind is not known here."""
    template = _WHAT.get(kind)
    if kind == "build_memory" and config.get("as_examples"):
        template = ("Imports the probe file(s) {inputs} into the pack {pack} as worked examples: each prompt "
                    "and paraphrase becomes an entry tagged example, the question followed by its answer.")
    if template is None:
        return title or kind
    words = {"inputs": _names(config.get("inputs")), "pack": _packs(config.get("pack")),
             "packs": _packs(config.get("packs")), "data": _names(config.get("data")),
             "file": _names(config.get("file")), "steps": f"{config.get('steps', '?'):,}"
             if isinstance(config.get("steps"), int) else "?", "mode": config.get("mode", "?"),
             "k": config.get("k", "?"), "epochs": config.get("epochs", "?"),
             "probes": _names(config.get("probes"))}
    return template.format(**words)


def _result_lines(result: Any) -> list[str]:
    if not isinstance(result, dict):
        return [str(result)] if result not in (None, "") else []
    lines = []
    for key, v in result.items():
        if isinstance(v, bool) or not isinstance(v, (int, float, str)) or isinstance(v, str) and (
                len(v) > 120 or "/" in v or "\\" in v):
            continue  # lists, paths and tables are for the technical details
        label = _RESULT_LABELS.get(key, key.replace("_", " "))
        lines.append(f"{label}: {v:,}" if isinstance(v, int) else f"{label}: {v:.4g}" if isinstance(v, float)
                     else f"{label}: {v}")
    return lines[:8]


def summary_html(*, kind: str, title: str, status: str, config: dict[str, Any], started: Any, finished: Any,
                 result: Any = None, error: str | None = None, message: str = "") -> str:
    """The detail pane's text for one job (live or from its record)."""
    e = html.escape
    rows = [f"<b>{e(title or kind)}</b> — {e(status)}", e(what_it_does(kind, title, config))]
    span = [f"{word} {when(t)}" for word, t in (("started", started), ("ended", finished)) if when(t)]
    if span:
        took = f" ({float(finished) - float(started):.1f} s)" if len(span) == 2 else ""
        rows.append(e(" · ".join(span) + took))
    if error:
        rows.append(f'<span style="color:#b3261e"><b>Error:</b> {e(error)}</span>')
    elif message and status != "done":
        rows.append(e(message))
    res = _result_lines(result)
    if res:
        rows.append("<b>Result:</b> " + e("; ".join(res)))
    return "<br>".join(rows)


def technical_text(*, job_id: str, kind: str, fn: str, config: dict[str, Any], extra: dict[str, Any]) -> str:
    """Function, ids and the raw config (JSON), then the traceback if any."""
    lines = [f"job id: {job_id}", f"kind: {kind}", f"function: {fn}"]
    lines += [f"{k}: {v}" for k, v in extra.items() if v not in (None, "") and k != "traceback"]
    lines.append("config: " + json.dumps(config, indent=2, ensure_ascii=False, default=str))
    if extra.get("traceback"):
        lines.append("traceback:\n" + str(extra["traceback"]))
    return "\n".join(lines)
