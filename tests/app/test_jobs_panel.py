"""Jobs panel over the engine's process runner: live progress, cancel, the record after."""
from __future__ import annotations

import pytest

pytest.importorskip("engine.jobs.runner")
pytest.importorskip("engine.jobs.demo")


@pytest.fixture
def panel(qtbot, make_ctx):
    from app.views.jobs_panel import JobsPanel

    ctx = make_ctx()
    p = JobsPanel(ctx)
    qtbot.addWidget(p)
    p.show()
    yield ctx, p
    ctx.jobs.close()


def progress_of(panel, jid):
    row = panel._rows.index(jid)
    return panel.table.cellWidget(row, 2).value() / 1000, panel.table.item(row, 1).text(), panel.table.item(row, 4).text()


def test_job_progress_then_cancel(qtbot, panel):
    ctx, p = panel
    seen = []
    ctx.jobs.progress.connect(lambda jid, f, m, eta, metrics: seen.append((f, m)))
    jid = ctx.jobs.start("count", "engine.jobs.demo:count_job", {"n": 400, "delay": 0.02}, title="count to 400")
    assert jid in p._rows and p.cancel_btn.isEnabled() is (p.selected_id() == jid)
    qtbot.waitUntil(lambda: any(f > 0.05 for f, _ in seen), timeout=30_000)
    frac, status, _ = progress_of(p, jid)
    assert status == "running" and 0 < frac < 1
    p.table.selectRow(p._rows.index(jid))
    assert p.cancel_btn.isEnabled()
    with qtbot.waitSignal(ctx.jobs.failed, timeout=30_000) as sig:
        p.cancel_btn.click()
    assert sig.args[0] == jid and "cancel" in sig.args[1]
    assert not ctx.jobs.timer.isActive()  # polling stops when nothing runs
    qtbot.waitUntil(lambda: jid in p._rows and "cancel" in p.table.item(p._rows.index(jid), 1).text(), timeout=5_000)
    assert p.resume_btn.isEnabled()


def test_job_runs_to_the_end(qtbot, panel):
    ctx, p = panel
    with qtbot.waitSignal(ctx.jobs.finished, timeout=60_000) as sig:
        jid = ctx.jobs.start("count", "engine.jobs.demo:count_job", {"n": 20, "delay": 0.0}, title="count to 20")
    assert sig.args[0] == jid
    qtbot.waitUntil(lambda: progress_of(p, jid)[1] == "done", timeout=5_000)
    assert progress_of(p, jid)[0] == 1.0


def test_import_into_pack_runs_as_a_job_and_the_browser_shows_the_rows(qtbot, make_ctx, small_pack, tmp_path):
    """Import → the writer lets go, the job builds in its own process with progress in the
    panel, then the writer reopens and the table shows the new entries."""
    import json

    from .conftest import FACTS, open_window

    src = tmp_path / "more.jsonl"
    src.write_text("\n".join(json.dumps({"text": f"Moon number {i} of the planet Zorg is made of cheese."}) for i in range(40)) + "\n")
    path = str(small_pack.resolve())
    ctx = make_ctx([path])
    win = open_window(qtbot, ctx, path)
    with qtbot.waitSignal(ctx.jobs.finished, timeout=120_000):
        win.workspace_panel.import_into([str(src)], path)
        qtbot.waitUntil(lambda: ctx.is_busy(path), timeout=10_000)
        assert not win.editor.save_btn.isEnabled()
    qtbot.waitUntil(lambda: win.browser.model.rowCount() == len(FACTS) + 40, timeout=60_000)
    assert not ctx.is_busy(path)
    titles = [win.jobs_panel.table.item(r, 0).text() for r in range(win.jobs_panel.table.rowCount())]
    assert any("Import 1 file(s) into facts" in t for t in titles), titles
    win.close()


def test_an_import_refused_for_one_bad_line_says_so_and_imports_nothing(qtbot, make_ctx, small_pack, tmp_path):
    import json

    from .conftest import FACTS, open_window

    src = tmp_path / "more.jsonl"
    src.write_text("".join(json.dumps({"text": f"Moon {i} of Zorg is cheese."}) + "\n" for i in range(30))
                   + json.dumps({"text": "x" * 4001}) + "\n", encoding="utf-8")
    path = str(small_pack.resolve())
    ctx = make_ctx([path])
    win = open_window(qtbot, ctx, path)
    with qtbot.waitSignal(ctx.notifier.message, timeout=120_000,
                          check_params_cb=lambda level, text: "nothing imported" in text) as sig:
        win.workspace_panel.import_into([str(src)], path)
    assert "more.jsonl:31" in sig.args[1] and "4,001 characters" in sig.args[1]
    qtbot.waitUntil(lambda: not ctx.is_busy(path), timeout=10_000)
    assert win.browser.model.rowCount() == len(FACTS)
    win.close()


def test_train_memory_reader_job_then_dpm_mode_uses_the_new_branch(qtbot, make_ctx, small_pack, tiny_reader, tmp_path):
    """New job → train the memory branch (child process, a few steps on a tiny reader):
    progress and a loss curve in the panel; at the end the workspace uses the branch and
    "Ask and explain" answers in mode 'dpm' through it."""
    import json

    from app.views.explain import ExplainPanel
    from app.views.jobs_panel import JobsPanel

    reader_dir = tmp_path / "tiny-reader"
    tiny_reader.save(reader_dir)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"text": f"The capital of Land{i} is City{i}.", "prompt": f"The capital of Land{i} is",
                                        "answer": f" City{i}"}) + "\n" for i in range(12)), encoding="utf-8")
    path = str(small_pack.resolve())
    ctx = make_ctx([path])
    ctx.workspace.reader = str(reader_dir)  # the real loading path, on a tiny reader folder
    panel = JobsPanel(ctx)
    explain = ExplainPanel(ctx)
    for w in (panel, explain):
        qtbot.addWidget(w)
    panel.show()
    with qtbot.waitSignal(ctx.jobs.finished, timeout=180_000) as sig:
        jid = panel.train_memory_reader([str(data)], steps=4, batch=4, checkpoint_every=2, layers=1, k=2)
        assert jid is not None
    assert sig.args[0] == jid and ctx.workspace.dpm_branch and (tmp_path / "ws" / "branches").is_dir()
    live_losses = [r for r in panel.jobs.records() if str(r.id) == jid][0].result["final_loss"]
    assert live_losses is not None
    qtbot.waitUntil(lambda: ctx.model.state == "ready", timeout=60_000)
    assert ctx.model.has_branch
    explain.mode.setCurrentIndex(explain.mode.findData("dpm"))
    with qtbot.waitSignal(explain.answered, timeout=60_000) as ans:
        explain.prompt.setText("The capital of Land3 is")
        explain.ask()
    assert ans.args[0].mode == "dpm" and ans.args[0].retrieved
    ctx.jobs.close()


def test_in_app_job_is_listed_like_a_process_job(qtbot, panel):
    """A job that runs inside the app (on a thread) shows progress and its end in the panel and
    the records; without a way to start it again, Resume stays off and says why."""
    import threading

    ctx, p = panel
    go = threading.Event()

    def run(job):
        def work():
            go.wait(10)
            job.progress(0.5, "half way")
            job.fail(ValueError("probe file has no prompts"))

        threading.Thread(target=work, name="test-in-app-worker").start()

    jid = ctx.jobs.start_in_app("check_things", {"file": "x.jsonl"}, run, title="Check things")
    assert progress_of(p, jid)[1] == "running" and p.cancel_btn.isEnabled()
    with qtbot.waitSignal(ctx.jobs.failed, timeout=10_000) as sig:
        go.set()
    assert sig.args == [jid, "failed: ValueError: probe file has no prompts"]
    qtbot.waitUntil(lambda: progress_of(p, jid)[1] == "failed", timeout=5_000)
    frac, _, msg = progress_of(p, jid)
    assert frac == 0.5 and "no prompts" in msg
    rec = ctx.jobs.record(jid)
    assert rec.status == "failed" and rec.config == {"file": "x.jsonl"} and rec.pid is not None
    p.table.selectRow(p._rows.index(jid))
    assert not p.resume_btn.isEnabled()
    with pytest.raises(ValueError, match="ran inside the app"):
        ctx.jobs.resume(jid)


def test_an_import_whose_file_is_refused_ends_failed_and_says_why(qtbot, make_ctx, small_pack, tmp_path, caplog):
    """A CSV without a `text` column: the job ends *failed* (it read "done — added 0
    entries"), the user is told the file and line, and the pack is as before."""
    from .conftest import FACTS, open_window

    src = tmp_path / "drugs.csv"
    src.write_text("name,dose\naspirin,500 mg\n", encoding="utf-8")
    path = str(small_pack.resolve())
    ctx = make_ctx([path])
    win = open_window(qtbot, ctx, path)
    with qtbot.waitSignal(ctx.jobs.failed, timeout=120_000) as sig:
        win.workspace_panel.import_into([str(src)], path)
    assert sig.args[1].startswith("failed: ") and "drugs.csv" in sig.args[1] and "text" in sig.args[1]
    qtbot.waitUntil(lambda: not ctx.is_busy(path), timeout=10_000)
    level, shown = ctx.notifier.history[-1]
    assert level == "error" and shown.startswith("Importing into facts.plugmem: 1 input(s) refused") and "drugs.csv" in shown
    assert "CorpusError" not in shown  # the user's error, not a bug report
    win.jobs_panel.refresh()
    rows = [(win.jobs_panel.table.item(r, 0).text(), win.jobs_panel.table.item(r, 1).text())
            for r in range(win.jobs_panel.table.rowCount())]
    assert [st for title, st in rows if "Import 1 file(s) into facts" in title] == ["failed"], rows
    qtbot.waitUntil(lambda: win.browser.model.rowCount() == len(FACTS), timeout=10_000)
    assert "did not exit" not in caplog.text  # the worker ends once its result is sent
    win.close()

