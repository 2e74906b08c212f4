"""Evaluation view on a tiny reader: probe and edit evaluations run off the GUI thread,
show per-relation figures with and without memory in a table and a chart, are kept
for comparison, can be cancelled; an edit evaluation leaves the pack as it was."""
from __future__ import annotations

import json

import pytest

from .conftest import wait_ready

PROBES = [
    {"prompt": "The currency of Japan is", "answer": "the yen", "relation": "economy", "subject": "Japan"},
    {"prompt": "The capital of France is", "answer": "Paris", "relation": "geography", "subject": "France"},
    {"prompt": "The chemical symbol of gold is", "answer": "Au", "relation": "chemistry", "subject": "Gold",
     "paraphrases": ["Gold has the chemical symbol"]},
    {"prompt": "The highest mountain on Earth is", "answer": "Mount Everest", "relation": "geography", "subject": "Everest"},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def view(qtbot, make_ctx, small_pack, tiny_loader):
    from app.views.evaluation import EvaluationView

    path = str(small_pack.resolve())
    ctx = make_ctx([path])
    ctx.model_loader = tiny_loader
    v = EvaluationView(ctx)
    qtbot.addWidget(v)
    v.show()
    wait_ready(qtbot, ctx, path)
    yield ctx, v, path
    v.cancel()


def test_probe_evaluation_table_chart_and_history(qtbot, view, tmp_path):
    ctx, v, _ = view
    f = write_jsonl(tmp_path / "probes.jsonl", PROBES)
    v.mode.setCurrentIndex(v.mode.findData("context"))
    v.k.setValue(3)
    with qtbot.waitSignal(v.run_finished, timeout=120_000) as sig:
        assert v.run(str(f))
        assert v.running and not v.run_btn.isEnabled() and v.cancel_btn.isEnabled()
    run = sig.args[0]
    r = run.result
    assert (run.kind, run.mode, run.k, run.packs) == ("probes", "context", 3, ["facts"])
    assert r["n"] == 4 and r["n_paraphrases"] == 1
    assert r["hit_at_k"] == 1.0  # every probe's fact is among the 3 retrieved entries
    assert set(r["by_relation"]) == {"economy", "geography", "chemistry"}
    # the table: overall, paraphrases, then one row per relation, with and without memory
    rows = [[v.detail.item(i, j).text() for j in range(5)] for i in range(v.detail.rowCount())]
    assert rows[0][:2] == ["all", "4"] and rows[0][4] == "100.0%"
    assert [row[0] for row in rows[2:]] == ["chemistry", "economy", "geography"]
    # the chart: the same categories, two series (with / without memory)
    cats, with_mem, without, _ = v.chart_data([run])
    assert cats == ["all", "chemistry", "economy", "geography"]
    assert with_mem[0] == r["accuracy"] and without[0] == r["accuracy_without_memory"]
    assert len([i for i in v.plot.getPlotItem().items if type(i).__name__ == "BarGraphItem"]) == 2
    assert not v.running and v.run_btn.isEnabled() and "Done" in v.status.text()

    # a second run (no memory) is kept beside the first; selecting both compares them
    v.mode.setCurrentIndex(v.mode.findData("none"))
    with qtbot.waitSignal(v.run_finished, timeout=120_000) as sig2:
        v.run()
    assert sig2.args[0].result["hit_at_k"] is None and v.table.rowCount() == 2
    assert v.selected_runs() == [sig2.args[0]]  # the new run is the one shown
    assert v.detail.item(0, 4).text() == "–"  # no retrieval without memory
    v.table.selectAll()
    assert len(v.selected_runs()) == 2 and v.detail.rowCount() == 2
    # past runs survive a restart of the view (kept in the workspace)
    from app.views.evaluation import EvaluationView

    again = EvaluationView(ctx)
    qtbot.addWidget(again)
    assert [x.id for x in again.runs] == [1, 2] and again.table.rowCount() == 2
    assert again.runs[0].result == r


def test_edit_evaluation_edits_then_restores_the_pack(qtbot, view, tmp_path):
    ctx, v, path = view
    f = write_jsonl(tmp_path / "edits.jsonl", [{
        "old_text": "Tokyo is the capital of Japan.", "new_text": "Kyoto is the capital of Japan.",
        "prompt": "The capital of Japan is", "new": "Kyoto", "paraphrase": "Japan's capital city is", "old": "Tokyo",
        "subject": "Japan", "relation": "geography"}])
    reader = ctx.reader(path)
    before = {e.id: (e.text, e.version) for e in reader.get_many(reader.ids())}
    v.mode.setCurrentIndex(v.mode.findData("context"))
    changes = []
    ctx.hub.changed.connect(lambda p, c: changes.append(c.kind))
    with qtbot.waitSignal(v.run_finished, timeout=120_000) as sig:
        assert v.run(str(f))
        assert ctx.is_busy(path) and ctx.busy_reason(path) == "evaluating edits"
    r = sig.args[0].result
    assert sig.args[0].kind == "edits" and r["n"] == 1 and r["restored"] is True
    assert r["edit_retrieved"] == 1.0  # the edited entry was found at once, no rebuild
    assert not ctx.is_busy(path)
    after = {e.id: e.text for e in reader.get_many(reader.ids())}
    assert after == {i: t for i, (t, _) in before.items()}
    assert changes  # the views were told (edit, then its undo)
    assert [row for row in range(v.detail.rowCount()) if v.detail.item(row, 0).text().startswith("efficacy")]


def test_cancel_keeps_nothing(qtbot, view, tmp_path):
    ctx, v, _ = view
    many = [dict(PROBES[i % 4], prompt=f"{PROBES[i % 4]['prompt']} (variant {i})") for i in range(400)]
    f = write_jsonl(tmp_path / "many.jsonl", many)
    v.mode.setCurrentIndex(v.mode.findData("none"))
    v.limit.setValue(0)  # all of them
    with qtbot.waitSignal(v.run_failed, timeout=120_000) as sig:
        v.run(str(f))
        qtbot.waitUntil(lambda: v.bar.value() > 0, timeout=60_000)
        v.cancel_btn.click()
    assert "cancelled" in sig.args[0]
    assert v.runs == [] and v.table.rowCount() == 0 and not v.running


def test_bad_file_gives_a_clear_inline_message(qtbot, view, tmp_path):
    ctx, v, _ = view
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(PROBES[0]) + "\n{not json\n", encoding="utf-8")
    with qtbot.waitSignal(v.run_failed, timeout=60_000) as sig:
        v.run(str(bad))
    assert "bad.jsonl:2" in sig.args[0] and "Traceback" not in sig.args[0]
    assert v.status.property("error") and v.runs == []
