"""Ask and explain through the GUI, on a tiny reader: the answer with and without the
plugged packs, ranked entries with score / weight / leave-one-out bars, plug/unplug
changes the answer, click → editor, edit → ask again, export; predictions never run on
the GUI thread."""
from __future__ import annotations

import json
import threading
import time

import pytest
from PySide6.QtCore import Qt

from .conftest import ask, open_on_explain, wait_ready

PROMPT = "Which currency do people pay with in Japan?"


@pytest.fixture
def window(qtbot, make_ctx, small_pack, tiny_loader):
    path = str(small_pack.resolve())
    ctx = make_ctx([path])
    ctx.model_loader = tiny_loader
    win = open_on_explain(qtbot, ctx, path)
    yield win, path
    win.close()


def test_answer_with_and_without_memory_and_plug_unplug(qtbot, window):
    win, path = window
    p = win.explain
    p.mode.setCurrentIndex(p.mode.findData("context"))
    p.k.setValue(3)
    e = ask(qtbot, p, PROMPT)
    assert e.mode == "context" and e.packs == ["facts"]
    assert [r.text for r in e.retrieved][0] == "The currency of Japan is the yen."
    assert len(e.retrieved) == 3 and p.model.rowCount() == 3
    assert e.answer != e.answer_without_memory  # the entries in the context changed what it says
    assert p.with_text.text() == e.answer.strip() and p.without_text.text() == e.answer_without_memory.strip()
    assert p.with_box.title() == "With memory (context)" and p.packs_label.text() == "from facts"
    # every numeric column is drawn as a bar, scaled to the largest value
    from app.models.explanation_table import BAR_ROLE, COLUMNS

    for col in ("score", "weight", "leave-one-out"):
        value, scale, signed = p.model.data(p.model.index(0, COLUMNS.index(col)), BAR_ROLE)
        assert scale > 0 and abs(value) <= scale and signed == (col == "leave-one-out")
    scores = [r.score for r in e.retrieved]
    assert scores == sorted(scores, reverse=True)

    # unplug the pack in the workspace panel: the notice asks for a new answer, which has no memory
    item = win.workspace_panel.item_for(path)
    item.setCheckState(0, Qt.CheckState.Unchecked)
    assert p.stale.isVisibleTo(p) and "plugged" in p.stale.text()
    e2 = ask(qtbot, p, again=True)
    assert e2.retrieved == [] and e2.packs == []
    assert e2.answer == e2.answer_without_memory == e.answer_without_memory
    assert "No pack is plugged in" in p.status.text()
    assert not p.stale.isVisibleTo(p)

    item.setCheckState(0, Qt.CheckState.Checked)
    e3 = ask(qtbot, p, again=True)
    assert e3.answer == e.answer  # plugged again: the same answer as the first time


def test_click_entry_opens_editor_then_edit_and_ask_again(qtbot, window):
    win, path = window
    p = win.explain
    p.mode.setCurrentIndex(p.mode.findData("context"))
    p.k.setValue(2)
    e = ask(qtbot, p, PROMPT)
    top = e.retrieved[0]
    rect = p.table.visualRect(p.model.index(0, 2))
    with qtbot.waitSignal(p.entry_activated, timeout=5_000) as sig:
        qtbot.mouseClick(p.table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert sig.args == [path, top.id]
    assert win.editor.entry.id == top.id and win.editor.text.toPlainText() == top.text
    assert win.browser.selected_ids() == [top.id]
    assert win.tabs.currentWidget() is p  # the question stays in view

    win.editor.text.setPlainText("The currency of Japan is the dollar.")
    with qtbot.waitSignal(win.ctx.hub.changed, timeout=20_000):
        win.editor.save()
    assert p.stale.isVisibleTo(p) and "edited" in p.stale.text()
    assert p.model.data(p.model.index(0, 2)).startswith("✎")
    e2 = ask(qtbot, p, again=True)
    assert e2.retrieved[0].id == top.id and e2.retrieved[0].text == "The currency of Japan is the dollar."
    assert e2.answer != e.answer  # the model read the edited entry
    assert not p.stale.isVisibleTo(p)


def test_prediction_runs_off_the_gui_thread(qtbot, window):
    win, _ = window
    p = win.explain
    p.mode.setCurrentIndex(p.mode.findData("context"))
    threads = []
    host = win.ctx.model
    ask(qtbot, p, "Warm-up question about Paris?")  # load the reader first
    from engine.explain import Predictor

    real = Predictor.predict

    def spy(*a, **kw):  # records where predict runs, then runs the real one
        threads.append(threading.current_thread().name)
        return real(*a, **kw)

    Predictor.predict = spy
    try:
        t0 = time.perf_counter()
        with qtbot.waitSignal(p.answered, timeout=60_000):
            p.prompt.setText("What is the symbol of gold?")
            assert p.ask()
            returned = time.perf_counter() - t0
            assert p.busy and not p.ask_btn.isEnabled()
    finally:
        Predictor.predict = real
    assert returned < 0.2
    assert threads and threads[0].startswith("plugmem-model") and threads[0] != threading.main_thread().name
    assert host.state == "ready" and not p.busy and p.ask_btn.isEnabled()


def test_modes_k_and_inline_messages(qtbot, window):
    win, _ = window
    p = win.explain
    assert not p.ask()  # empty prompt
    assert "Type a question" in p.status.text() and p.status.property("error")
    e = ask(qtbot, p, PROMPT)  # the tiny reader has no memory branch: dpm is switched off
    dpm_item = p.mode.model().item(p.mode.findData("dpm"))
    assert not dpm_item.isEnabled() and p.current_mode() == "context" and e.mode == "context"
    p.mode.setCurrentIndex(p.mode.findData("none"))
    e = ask(qtbot, p, PROMPT)
    assert e.mode == "none" and e.retrieved == [] and "bare reader" in p.verdict.text()
    p.mode.setCurrentIndex(p.mode.findData("context"))
    p.k.setValue(5)
    e = ask(qtbot, p, PROMPT)
    assert len(e.retrieved) == 5
    assert win.ctx.settings.ask_k == 5 and win.ctx.settings.ask_mode == "context"


def test_dpm_mode_with_a_memory_branch(qtbot, make_ctx, small_pack, tiny_reader):
    """With a branch (here freshly initialised: it starts as a no-op) 'dpm' answers and
    reports a fusion weight for every retrieved entry."""
    from app.model_host import LoadedModel
    from app.views.explain import ExplainPanel
    from engine.mechanisms import dpm

    branch = dpm.MemoryBranch(dpm.DPMConfig(layers=1, max_value_tokens=16), tiny_reader)
    path = str(small_pack.resolve())
    ctx = make_ctx([path])
    ctx.model_loader = lambda: LoadedModel(tiny_reader, branch)
    p = ExplainPanel(ctx)
    qtbot.addWidget(p)
    p.mode.setCurrentIndex(p.mode.findData("dpm"))
    p.k.setValue(3)
    e = ask(qtbot, p, PROMPT)
    assert e.mode == "dpm" and len(e.retrieved) == 3
    assert all(r.weight is not None for r in e.retrieved)
    assert e.answer == e.answer_without_memory  # an untrained branch leaves the reader unchanged
    # An edit of an entry in the answer is read through the reader in the background at once,
    # so that "Ask again" does not wait for it.
    new_text = "The currency of Japan is the dollar, since this morning."
    predictor = ctx.model.model.predictor
    with qtbot.waitSignal(ctx.hub.changed, timeout=20_000):
        ctx.writer(path).submit(lambda m: m.edit(e.retrieved[0].id, text=new_text), broadcast=True)
    assert p.stale.isVisibleTo(p)
    qtbot.waitUntil(lambda: predictor._dpm.cache.get(new_text) is not None, timeout=20_000)
    e2 = ask(qtbot, p, again=True)
    assert e2.retrieved[0].text == new_text or new_text in [r.text for r in e2.retrieved]
    dpm.detach(tiny_reader)


def test_export_json_and_html(qtbot, window, tmp_path):
    win, _ = window
    p = win.explain
    assert not p.export_btn.isEnabled()
    with pytest.raises(ValueError, match="ask something first"):
        p.export(tmp_path / "x.json")
    p.mode.setCurrentIndex(p.mode.findData("context"))
    p.prompt.setText("<b>Japan</b> & money?")
    e = ask(qtbot, p, "<b>Japan</b> & money?")
    assert p.export_btn.isEnabled()
    d = json.loads(p.export(tmp_path / "e.json").read_text(encoding="utf-8"))
    assert d["prompt"] == "<b>Japan</b> & money?" and d["answer"] == e.answer
    assert {"pack", "id", "text", "score", "weight", "loo_delta"} <= set(d["retrieved"][0])
    page = p.export(tmp_path / "e.html").read_text(encoding="utf-8")
    assert page.startswith("<!doctype html>") and "&lt;b&gt;Japan&lt;/b&gt; &amp; money?" in page
    assert "<b>Japan</b>" not in page  # user text is escaped
    with pytest.raises(ValueError, match="choose a .json or .html"):
        p.export(tmp_path / "e.txt")


def test_answer_boxes_show_the_first_line_and_export_keeps_the_whole(qtbot, make_ctx, small_pack, tiny_loader, tmp_path):
    """The reader runs on after answering ("Tokyo.\\nThe capital of France is…"): the boxes show
    the first line, the tooltip and the exported JSON the whole continuation."""
    import dataclasses

    from app.views.explain import ExplainPanel, first_line

    path = str(small_pack.resolve())
    ctx = make_ctx([path])
    ctx.model_loader = tiny_loader
    p = ExplainPanel(ctx)
    qtbot.addWidget(p)
    wait_ready(qtbot, ctx, path)
    p.mode.setCurrentIndex(p.mode.findData("context"))
    e = ask(qtbot, p, PROMPT)
    # the record of that real answer, as a reader that goes on to a new line would give it
    multi = dataclasses.replace(e, answer=" Tokyo.\nThe capital of France is Paris.\n",
                                answer_without_memory="\n\n Kyoto\nis an old capital")
    with qtbot.waitSignal(p.answered):
        p._done(p._gen, multi, {"facts": path}, "")
    assert p.with_text.text() == "Tokyo."
    assert p.without_text.text() == "Kyoto"  # leading line breaks are skipped, then cut at the next one
    assert p.with_text.toolTip() == multi.answer and p.without_text.toolTip() == multi.answer_without_memory
    d = json.loads(p.export(tmp_path / "multi.json").read_text(encoding="utf-8"))
    assert d["answer"] == multi.answer and d["answer_without_memory"] == multi.answer_without_memory
    assert first_line("\n \n") == "" and first_line("a\r\nb") == "a"
    assert p.verdict.text() == "The memory changed the answer."
    # Two continuations that differ only after their first line: the boxes show the same answer,
    # so the verdict must not say it changed.
    same = dataclasses.replace(e, answer=" Tokyo.\nJapan is an island.", answer_without_memory=" Tokyo.\n\nTokyo is big")
    with qtbot.waitSignal(p.answered):
        p._done(p._gen, same, {"facts": path}, "")
    assert p.with_text.text() == p.without_text.text() == "Tokyo."
    assert p.verdict.text().startswith("The memory did not change the answer")
