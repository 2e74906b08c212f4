"""Evaluation view on a tiny reader: probe and edit evaluations run as jobs of the Jobs
panel (progress, ETA, log, cancel, re-run; 'interrupted' when the app closes under them),
off the GUI thread, show per-relation figures with and without memory in a table and a
chart, are kept for comparison; an edit evaluation leaves the pack as it was, also when
cancelled."""
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
    assert len(v.selected_runs()) == 2
    # the two modes side by side: a column per run, a row per figure and per relation
    r2 = sig2.args[0].result
    heads = [v.detail.horizontalHeaderItem(j).text() for j in range(v.detail.columnCount())]
    assert heads == ["", "#1 context", "#2 none"]
    assert "probes" in v.detail.horizontalHeaderItem(1).toolTip()  # the whole run label
    side = {v.detail.item(i, 0).text(): [v.detail.item(i, j).text() for j in (1, 2)] for i in range(v.detail.rowCount())}
    assert list(side) == ["all", "all, without memory", "paraphrases", "hit@k", "chemistry", "economy", "geography"]
    pct = "{:.1f}%".format
    assert side["all"] == [pct(100 * r["accuracy"]), pct(100 * r2["accuracy"])]
    assert side["hit@k"] == ["100.0%", "–"]
    assert side["geography"] == [pct(100 * r["by_relation"]["geography"]["accuracy"]),
                                 pct(100 * r2["by_relation"]["geography"]["accuracy"])]
    row = list(side).index("geography")
    assert v.detail.item(row, 1).toolTip() == "n = 2"
    # the probes the two runs answer differently, right / wrong per run
    marks = r["correct_by_probe"], r2["correct_by_probe"]
    assert len(marks[0]) == len(marks[1]) == 4
    differ = [i for i in range(4) if marks[0][i] != marks[1][i]]
    f = v.failures
    assert [f.horizontalHeaderItem(j).text() for j in range(f.columnCount())] == ["prompt", "expected", "#1 context", "#2 none"]
    assert [f.item(i, 0).text() for i in range(f.rowCount())] == [PROBES[i]["prompt"] for i in differ]
    assert [f.item(i, 2).text() for i in range(f.rowCount())] == ["right" if marks[0][i] == "1" else "wrong" for i in differ]
    assert v.failures_label.text().startswith(f"Answered differently by the compared runs: {len(differ)} of 4 probes")
    # one run again: its wrong answers, three columns
    v.table.selectRow(0)
    assert f.columnCount() == 3 and f.horizontalHeaderItem(2).text() == "answer (first line)"
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
    assert not reader.can_redo()  # Edit > Redo cannot bring the counterfactual edit back
    assert [row for row in range(v.detail.rowCount()) if v.detail.item(row, 0).text().startswith("efficacy")]
    # the same edits without memory, then both runs side by side
    v.mode.setCurrentIndex(v.mode.findData("none"))
    with qtbot.waitSignal(v.run_finished, timeout=120_000) as sig2:
        assert v.run(str(f))
    v.table.selectAll()
    assert [v.detail.horizontalHeaderItem(j).text() for j in range(3)] == ["", "#1 context", "#2 none"]
    side = {v.detail.item(i, 0).text(): [v.detail.item(i, j).text() for j in (1, 2)] for i in range(v.detail.rowCount())}
    assert list(side)[:3] == ["efficacy", "generalisation (paraphrases)", "locality"]
    assert side["edited entry retrieved"] == ["100.0%", "–"]  # nothing is retrieved without memory
    assert side["efficacy"][1] == "{:.1f}%".format(100 * sig2.args[0].result["efficacy"])
    marks = sig.args[0].result["followed_by_edit"], sig2.args[0].result["followed_by_edit"]
    assert v.failures_label.text().startswith(
        f"Answered differently by the compared runs: {int(marks[0] != marks[1])} of 1 edits")


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


def many_probes(n=400):
    return [dict(PROBES[i % 4], prompt=f"{PROBES[i % 4]['prompt']} (variant {i})") for i in range(n)]


def job_row(panel, jid):
    row = panel._rows.index(jid)
    return (panel.table.item(row, 0).text(), panel.table.item(row, 1).text(),
            panel.table.cellWidget(row, 2).value() / 1000)


@pytest.fixture
def with_panel(view, qtbot):
    from app.views.jobs_panel import JobsPanel

    ctx, v, path = view
    panel = JobsPanel(ctx)
    qtbot.addWidget(panel)
    panel.show()
    return ctx, v, path, panel


def test_evaluation_is_a_job_with_progress_and_its_figures_land_in_the_view(qtbot, with_panel, tmp_path):
    ctx, v, _, panel = with_panel
    f = write_jsonl(tmp_path / "many.jsonl", many_probes(240))
    v.mode.setCurrentIndex(v.mode.findData("context"))
    v.limit.setValue(0)
    seen = []
    ctx.jobs.progress.connect(lambda jid, frac, msg, eta, m: seen.append((jid, frac, msg, eta)))
    with qtbot.waitSignal(v.run_finished, timeout=180_000) as sig:
        assert v.run(str(f))
        jid = v.job_id
        title, status, _ = job_row(panel, jid)  # listed at once, running
        assert "Evaluate probes:" in title and "many.jsonl" in title and status == "running"
        assert panel.cancel_btn.isEnabled()  # the running job is selected, and can be cancelled there
        qtbot.waitUntil(lambda: 0 < job_row(panel, jid)[2] < 1, timeout=60_000)  # live progress in the panel
        assert v.bar.isVisible() and v.bar.value() > 0
    run = sig.args[0]
    assert run.result["n"] == 240 and run.mode == "context" and run.packs == ["facts"]
    # progress went up with an ETA; the log says which pass it is in and ends with the figures
    fracs = [fr for j, fr, _, _ in seen if j == jid]
    assert fracs == sorted(fracs) and fracs[-1] == 1.0
    assert any(eta is not None and eta > 0 for j, fr, _, eta in seen if j == jid and fr < 1)
    text = panel.log_view.toPlainText()
    assert "with memory: answered" in text and "without memory: answered" in text, text
    assert "done: accuracy" in text
    # past jobs: done, 100%, the full result kept in the record; the figures are in the view
    qtbot.waitUntil(lambda: job_row(panel, jid)[1] == "done", timeout=5_000)
    rec = ctx.jobs.record(jid)
    assert rec.status == "done" and rec.fraction == 1.0 and rec.result["result"]["n"] == 240
    assert v.detail.item(0, 0).text() == "all" and v.detail.item(0, 1).text() == "240"
    assert not v.running and v.run_btn.isEnabled() and not ctx.jobs.is_running()
    # wrong answers are listed by their first line, the whole continuation in the tooltip
    fails = run.result["failures"]
    assert v.failures.rowCount() == len(fails) > 0
    got = fails[0]["got"]
    first = got.lstrip().splitlines()[0].rstrip() if got.strip() else "(empty answer)"
    assert v.failures.item(0, 2).text() == first and "\n" not in first
    assert got in v.failures.item(0, 2).toolTip()


def test_cancelled_edit_evaluation_leaves_the_pack_unchanged(qtbot, with_panel, tmp_path):
    """Cancel while the edit is applied: the job ends 'cancelled', the view says so, and the
    pack has the same entries, texts and undo stack as before."""
    ctx, v, path, panel = with_panel
    f = write_jsonl(tmp_path / "edits.jsonl", [{
        "old_text": "Tokyo is the capital of Japan.", "new_text": "Kyoto is the capital of Japan.",
        "prompt": "The capital of Japan is", "new": "Kyoto", "paraphrase": "Japan's capital city is", "old": "Tokyo",
        "subject": "Japan", "relation": "geography"}])
    long_answer = "a noble gas that glows orange red in a discharge tube and is used in signs"
    write_jsonl(tmp_path / "probes_heldout.jsonl",  # the locality probes: a long second pass
                [{"prompt": f"Fact {i}: neon is", "answer": long_answer, "subject": "Neon", "relation": "chemistry"}
                 for i in range(120)])
    reader = ctx.reader(path)

    def state():
        entries = {e.id: (e.text, e.title, e.status) for e in reader.get_many(reader.ids())}
        stack = reader.conn.execute("SELECT id, kind, label FROM changes WHERE stack=1 AND undone=0 ORDER BY id").fetchall()
        return reader.count(), entries, [tuple(r) for r in stack], reader.undo_label()

    before = state()
    v.mode.setCurrentIndex(v.mode.findData("context"))
    changes = []

    def on_change(p, c):
        changes.append(c.kind)
        if len(changes) == 1:  # the evaluation's edit is in the pack: cancel now
            v.cancel_btn.click()

    ctx.hub.changed.connect(on_change)
    ended = []
    v.run_failed.connect(lambda text: ended.append(text))
    v.run_finished.connect(lambda run: ended.append(run))
    assert v.run(str(f))
    jid = v.job_id
    qtbot.waitUntil(lambda: bool(ended), timeout=180_000)
    assert isinstance(ended[0], str), "the evaluation ran to its end: it was not cancelled"
    assert "cancelled" in ended[0] and "undone" in ended[0] and not v.status.property("error")
    assert len(changes) == 2  # the edit, then its undo
    assert state() == before
    assert not ctx.is_busy(path) and v.runs == [] and v.run_btn.isEnabled()
    qtbot.waitUntil(lambda: job_row(panel, jid)[1] == "cancelled", timeout=5_000)
    assert ctx.jobs.record(jid).status == "cancelled"


def test_cancelled_evaluation_runs_again_from_the_jobs_panel(qtbot, with_panel, tmp_path):
    ctx, v, _, panel = with_panel
    f = write_jsonl(tmp_path / "probes.jsonl", PROBES)
    v.mode.setCurrentIndex(v.mode.findData("none"))
    import threading

    gate = threading.Event()
    ctx.model.submit(lambda model: gate.wait(30))  # the model thread is busy (answering a question, say)
    with qtbot.waitSignal(v.run_failed, timeout=120_000) as sig:
        assert v.run(str(f))
        jid = v.job_id
        v.cancel()  # while it waits for the model thread: it stops before its first batch
        gate.set()
    assert "cancelled" in sig.args[0] and v.runs == []
    qtbot.waitUntil(lambda: job_row(panel, jid)[1] == "cancelled", timeout=5_000)
    panel.table.selectRow(panel._rows.index(jid))
    assert panel.resume_btn.isEnabled() and "again" in panel.resume_btn.toolTip()
    with qtbot.waitSignal(v.run_finished, timeout=120_000) as sig2:
        panel.resume_btn.click()
    run = sig2.args[0]
    assert (run.file, run.mode, run.result["n"]) == (str(f.resolve()), "none", 4)
    assert v.table.rowCount() == 1


def test_closing_the_app_during_an_evaluation_lists_it_interrupted(qtbot, view, tmp_path):
    ctx, v, _ = view
    f = write_jsonl(tmp_path / "many.jsonl", many_probes(400))
    v.mode.setCurrentIndex(v.mode.findData("none"))
    v.limit.setValue(0)
    assert v.run(str(f))
    jid = v.job_id
    qtbot.waitUntil(lambda: v.bar.value() > 0, timeout=60_000)
    ctx.close()  # what closing the main window does
    from engine.jobs.records import JobRecords

    records = JobRecords(ctx.jobs_db)
    try:
        rec = records.get(jid)
    finally:
        records.close()
    assert rec.status == "interrupted" and "closed" in rec.error and 0 < rec.fraction < 1


def test_wrong_answers_show_their_first_line(qtbot, make_ctx, tmp_path):
    """A past run whose reader went on to a new line after answering: the failures list
    shows the first line, the tooltip the whole continuation and what was retrieved."""
    from app.evaluations import EvalRun, EvalStore
    from app.views.evaluation import EvaluationView

    ctx = make_ctx()
    got = "\n Lyon.\nThe capital of Italy is Rome."
    result = {"n": 4, "accuracy": 0.75, "accuracy_without_memory": 0.25, "hit_at_k": 1.0, "seconds": 1.0,
              "failures": [{"prompt": "The capital of France is", "answer": "Paris", "got": got,
                            "retrieved": ["Paris is the capital of France."]}]}
    EvalStore(ctx.workspace.folder).append(EvalRun("probes", str(tmp_path / "p.jsonl"), "context", 5, ["facts"], "tiny",
                                                   result), [])
    v = EvaluationView(ctx)
    qtbot.addWidget(v)
    assert v.failures.rowCount() == 1  # the newest run is selected at start
    assert [v.failures.item(0, c).text() for c in range(3)] == ["The capital of France is", "Paris", "Lyon."]
    tip = v.failures.item(0, 2).toolTip()
    assert got in tip and "Paris is the capital of France." in tip
    v.table.clearSelection()
    assert v.failures.rowCount() == 0


def edit_result_with_failures() -> dict:
    """An edit run's result as engine.evaluate.edits reports it: a failure of each kind."""
    ret = [{"rank": 1, "pack": "facts", "id": 7, "text": "Lyon is the capital of France.", "score": 0.61, "edited": False},
           {"rank": 2, "pack": "facts", "id": 3, "text": "Nice is the capital of France.", "score": 0.55, "edited": True}]
    return {"n": 2, "efficacy": 0.5, "generalization": 0.0, "locality": 0.5, "n_paraphrases": 1, "n_locality": 2,
            "restored": True, "seconds": 1.0,
            "failures": [
                {"kind": "efficacy", "prompt": "The capital of France is", "expected": "Nice", "new": "Nice",
                 "got": " Lyon.", "edited_rank": 2, "retrieved": ret},
                {"kind": "paraphrase", "prompt": "France's capital city is", "expected": "Nice", "new": "Nice",
                 "got": " Paris, in France, in", "edited_rank": None, "retrieved": ret[:1]},
                {"kind": "locality", "prompt": "The capital of Spain is", "expected": " Madrid.", "before": " Madrid.",
                 "got": " Nice.", "edited_rank": 1, "retrieved": ret[1:]}],
            "n_failures": {"efficacy": 1, "paraphrase": 1, "locality": 1}}


def test_edit_failures_are_listed_by_kind_with_the_edited_entrys_rank(qtbot, make_ctx, tmp_path):
    """An edit run lists the edit prompts not followed, the paraphrases that missed and the
    untouched facts whose answer changed, each with the edited entry's rank; the tooltip
    lists the retrieved entries by rank with the edited one starred."""
    from app.evaluations import EvalRun, EvalStore
    from app.views.evaluation import EvaluationView

    ctx = make_ctx()
    EvalStore(ctx.workspace.folder).append(EvalRun("edits", str(tmp_path / "e.jsonl"), "dpm", 5, ["facts"], "tiny",
                                                   edit_result_with_failures()), [])
    v = EvaluationView(ctx)
    qtbot.addWidget(v)
    t = v.failures
    assert [t.horizontalHeaderItem(c).text() for c in range(t.columnCount())] == [
        "kind", "prompt", "expected", "answer (first line)", "edited entry"]
    rows = [[t.item(r, c).text() for c in range(5)] for r in range(t.rowCount())]
    assert rows == [
        ["edit prompt", "The capital of France is", "Nice", "Lyon.", "rank 2 of 2"],
        ["paraphrase", "France's capital city is", "Nice", "Paris, in France, in", "not retrieved"],
        ["locality", "The capital of Spain is", "Madrid.", "Nice.", "rank 1 of 1"],
    ]
    tip = t.item(0, 3).toolTip()
    assert "1. Lyon is the capital of France." in tip and "2. * Nice is the capital of France." in tip
    assert "Before the edits:\n Madrid." in t.item(2, 3).toolTip()
    assert "1 edit prompt, 1 paraphrase, 1 locality" in v.failures_label.text()
    # a run made before failures had kinds: its efficacy failures, said so
    old = {"n": 2, "efficacy": 0.5, "seconds": 1.0, "restored": True,
           "failures": [{"prompt": "The capital of France is", "new": "Nice", "got": " Lyon."}]}
    store = EvalStore(ctx.workspace.folder)
    store.append(EvalRun("edits", str(tmp_path / "e.jsonl"), "dpm", 5, ["facts"], "tiny", old), store.load())
    v2 = EvaluationView(ctx)  # the newest run is selected
    qtbot.addWidget(v2)
    assert [v2.failures.item(0, c).text() for c in range(5)] == [
        "edit prompt", "The capital of France is", "Nice", "Lyon.", "–"]
    assert "kept no paraphrase or locality failures" in v2.failures_label.text()


def test_compared_runs_list_the_probes_they_answer_differently(qtbot, make_ctx, tmp_path):
    """Two past runs of one probe file (dpm and context): the pane lists, in the file's order,
    the probes one got right and the other wrong; runs of another file are not compared so."""
    import os

    from PySide6.QtCore import QItemSelectionModel, Qt

    from app.evaluations import EvalRun, EvalStore
    from app.views.evaluation import EvaluationView

    ctx = make_ctx()
    f = write_jsonl(tmp_path / "probes.jsonl", PROBES)
    os.utime(f, (1, 1))  # older than the runs
    store = EvalStore(ctx.workspace.folder)
    base = {"n": 4, "hit_at_k": 1.0, "accuracy_without_memory": 0.0, "seconds": 1.0, "failures": []}
    runs = []
    for mode, marks in (("dpm", "1101"), ("context", "0111")):
        run = EvalRun("probes", str(f), mode, 5, ["facts"], "tiny", {**base, "accuracy": marks.count("1") / 4,
                                                                       "correct_by_probe": marks})
        runs.append(store.append(run, runs))
    old = EvalRun("probes", str(tmp_path / "other.jsonl"), "dpm", 5, ["facts"], "tiny", {**base, "accuracy": 0.5})
    store.append(old, runs)
    v = EvaluationView(ctx)
    qtbot.addWidget(v)

    def select_first_two():
        v.table.clearSelection()
        for row in range(v.table.rowCount()):
            if v.table.item(row, 0).data(Qt.ItemDataRole.UserRole) in (1, 2):
                v.table.selectionModel().select(v.table.model().index(row, 0), QItemSelectionModel.SelectionFlag.Select
                                                | QItemSelectionModel.SelectionFlag.Rows)

    select_first_two()
    t = v.failures
    rows = [[t.item(i, j).text() for j in range(4)] for i in range(t.rowCount())]
    assert rows == [[PROBES[0]["prompt"], PROBES[0]["answer"], "right", "wrong"],
                    [PROBES[2]["prompt"], PROBES[2]["answer"], "wrong", "right"]]
    assert v.failures_label.text() == "Answered differently by the compared runs: 2 of 4 probes"
    f.write_text(f.read_text(encoding="utf-8"), encoding="utf-8")  # touched after the runs
    v.table.selectAll()  # with the run of another file: a table of headlines, the usual pane
    assert t.columnCount() == 3
    select_first_two()
    assert "has changed since" in v.failures_label.text()
