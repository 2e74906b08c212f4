"""Jobs you can read (issue 23): a new job is selected and in view when it starts and the
window says so; the detail pane speaks the user's language with the function and raw
config behind "Technical details"; the dock keeps its rows and the Entry dock's History
when a loss curve appears."""
from __future__ import annotations

import re
import threading

import pytest
from PySide6.QtCore import Qt

from .conftest import open_window


@pytest.fixture
def panel(qtbot, make_ctx):
    from app.views.jobs_panel import JobsPanel

    ctx = make_ctx()
    p = JobsPanel(ctx)
    qtbot.addWidget(p)
    p.resize(900, 220)
    p.show()
    yield ctx, p
    ctx.jobs.close()


def finish_at_once(result):
    return lambda job: job.succeed(result)


def test_a_new_job_is_selected_and_scrolled_into_view(qtbot, panel):
    ctx, p = panel
    for n in range(12):  # past jobs, more than the table shows
        jid = ctx.jobs.start_in_app("count", {"n": n}, finish_at_once({"n": n}), title=f"past job {n}")
        qtbot.waitUntil(lambda: jid not in ctx.jobs.live, timeout=5_000)
    p.table.selectRow(p.table.rowCount() - 1)  # the user looks at the oldest one, at the bottom
    p.table.scrollToBottom()
    first = p.table.item(0, 0)
    assert not p.table.viewport().rect().intersects(p.table.visualItemRect(first))

    go = threading.Event()
    jid = ctx.jobs.start_in_app("count", {"n": 99}, lambda job: threading.Thread(
        target=lambda: (go.wait(10), job.succeed({})), name="test-jobs-worker").start(), title="the new job")
    assert p.selected_id() == jid
    row = p._rows.index(jid)
    assert p.table.viewport().rect().intersects(p.table.visualItemRect(p.table.item(row, 0)))
    assert "the new job" in p.summary.text() and "running" in p.summary.text()
    with qtbot.waitSignal(ctx.jobs.finished, timeout=10_000):
        go.set()


def test_the_detail_pane_says_what_the_job_did_in_words(qtbot, panel, tmp_path):
    ctx, p = panel
    probes = tmp_path / "geo" / "heldout_probes.jsonl"
    config = {"file": str(probes), "kind": "probes", "mode": "dpm", "k": 5, "limit": None}
    with qtbot.waitSignal(ctx.jobs.finished, timeout=10_000):
        jid = ctx.jobs.start_in_app("evaluate_probes", config, finish_at_once({"n": 20, "accuracy": 0.85}),
                                    title="Evaluate probes: geo/heldout_probes.jsonl · dpm k=5")
    qtbot.waitUntil(lambda: jid in p._records and p._records[jid].status == "done", timeout=5_000)
    p.table.clearSelection()
    p.table.selectRow(p._rows.index(jid))
    text = p.summary.text()
    assert "Asks the reader the fact probes in heldout_probes.jsonl" in text and "mode dpm, 5 entries" in text
    assert re.search(r"started 20\d\d-\d\d-\d\d \d\d:\d\d:\d\d · ended 20\d\d-\d\d-\d\d", text)
    assert "questions: 20" in text and "accuracy: 0.85" in text
    assert "in-app:" not in text and "{" not in text  # no function name, no raw config
    assert not p.tech_view.isVisibleTo(p)
    p.tech_btn.click()
    tech = p.tech_view.toPlainText()
    assert p.tech_view.isVisibleTo(p)
    assert "function: in-app:evaluate_probes" in tech and '"mode": "dpm"' in tech

    def broken(job):
        job.fail(ValueError("probe file has no prompts"))

    with qtbot.waitSignal(ctx.jobs.failed, timeout=10_000):
        bad = ctx.jobs.start_in_app("evaluate_probes", config, broken, title="Evaluate probes again")
    qtbot.waitUntil(lambda: bad in p._records and p._records[bad].status == "failed", timeout=5_000)
    p.table.selectRow(p._rows.index(bad))
    assert "Error:</b> ValueError: probe file has no prompts" in p.summary.text()
    assert "traceback:\nValueError: probe file has no prompts" in p.tech_view.toPlainText()


def test_a_started_job_is_announced_and_the_loss_curve_squeezes_nothing(qtbot, make_ctx, small_pack):
    path = str(small_pack.resolve())
    ctx = make_ctx([path])
    win = open_window(qtbot, ctx, path)
    try:
        win.resize(1280, 800)
        win.jobs_dock.hide()
        go = threading.Event()
        jid = ctx.jobs.start_in_app("count", {}, lambda job: threading.Thread(
            target=lambda: (go.wait(10), job.succeed({})), name="test-jobs-worker").start(), title="count")
        assert win.jobs_dock.isVisible() and win.jobs_panel.selected_id() == jid
        assert f"Started job #{jid}: count" in win.note_label.text()
        qtbot.wait(50)
        history, jobs = win.editor.history.height(), win.jobs_dock.height()
        t = win.jobs_panel.table
        assert t.viewport().height() >= 4 * t.verticalHeader().defaultSectionSize()  # four rows or more
        win.jobs_panel.plot.setVisible(True)  # what the first loss point does
        qtbot.wait(50)
        assert win.editor.history.height() == history and win.jobs_dock.height() == jobs
        # a taller Jobs dock (the user drags it up) takes room from the tabs, not the History
        win.resizeDocks([win.jobs_dock], [jobs + 150], Qt.Orientation.Vertical)
        qtbot.wait(50)
        assert win.jobs_dock.height() > jobs + 100 and win.editor.history.height() == history
        with qtbot.waitSignal(ctx.jobs.finished, timeout=10_000):
            go.set()
    finally:
        go.set()
        win.close()
