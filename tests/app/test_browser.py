"""Memory browser through the GUI: edits and undo/redo change what the table shows;
bulk disable is one undo step; search (both modes) ranks after the debounce; the
id-only model reads only the rows it paints."""
from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import Qt

from .conftest import FACTS, open_window


def cell(browser, row: int, column: str) -> str:
    m = browser.model
    return m.data(m.index(row, m.columns().index(column)))


def texts(browser) -> list[str]:
    return [cell(browser, r, "text") for r in range(browser.model.rowCount())]


@pytest.fixture
def window(qtbot, make_ctx, small_pack):
    path = str(small_pack.resolve())
    ctx = make_ctx([path])
    win = open_window(qtbot, ctx, path)
    yield win
    win.close()


def select_row_with(win, needle: str) -> int:
    row = next(r for r, t in enumerate(texts(win.browser)) if needle in t)
    win.browser.select_id(win.browser.model.id_at(row))
    return row


def test_edit_undo_redo_through_the_gui(qtbot, window):
    win, hub = window, window.ctx.hub
    row = select_row_with(win, "Tokyo")
    assert win.editor.text.toPlainText() == "Tokyo is the capital of Japan."
    win.editor.text.setPlainText("Kyoto is the capital of Japan.")
    with qtbot.waitSignal(hub.changed, timeout=20_000):
        assert win.editor.save()
    assert cell(win.browser, row, "text") == "Kyoto is the capital of Japan."
    assert win.act_undo.isEnabled() and win.act_undo.text().startswith("Undo")

    with qtbot.waitSignal(hub.changed, timeout=20_000):
        win.act_undo.trigger()
    assert cell(win.browser, row, "text") == "Tokyo is the capital of Japan."
    assert win.act_redo.isEnabled()

    with qtbot.waitSignal(hub.changed, timeout=20_000):
        win.act_redo.trigger()
    assert cell(win.browser, row, "text") == "Kyoto is the capital of Japan."
    # the editor follows the entry it shows
    qtbot.waitUntil(lambda: win.editor.text.toPlainText() == "Kyoto is the capital of Japan.", timeout=5_000)


def test_ctrl_z_shortcut_undoes(qtbot, window):
    win = window
    row = select_row_with(win, "Paris")
    win.editor.title.setText("Paris (capital)")
    with qtbot.waitSignal(win.ctx.hub.changed, timeout=20_000):
        win.editor.save()
    assert cell(win.browser, row, "title") == "Paris (capital)"
    win.activateWindow()
    win.browser.view.setFocus()
    with qtbot.waitSignal(win.ctx.hub.changed, timeout=20_000):
        qtbot.keyClick(win.browser.view, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert cell(win.browser, row, "title") == "France"


def test_bulk_disable_is_one_undo_step(qtbot, window):
    win = window
    view = win.browser.view
    view.selectRow(0)
    for r in (1, 2):
        view.selectionModel().select(win.browser.model.index(r, 0),
                                     view.selectionModel().SelectionFlag.Select | view.selectionModel().SelectionFlag.Rows)
    assert len(win.browser.selected_ids()) == 3
    with qtbot.waitSignal(win.ctx.hub.changed, timeout=20_000):
        win.browser.act_disable.trigger()
    statuses = [cell(win.browser, r, "status") for r in range(len(FACTS))]
    assert statuses[:3] == ["disabled"] * 3 and set(statuses[3:]) == {"active"}

    with qtbot.waitSignal(win.ctx.hub.changed, timeout=20_000):
        win.act_undo.trigger()  # ONE undo brings all three back
    assert {cell(win.browser, r, "status") for r in range(len(FACTS))} == {"active"}

    # the status filter shows only what matches
    with qtbot.waitSignal(win.ctx.hub.changed, timeout=20_000):
        win.act_redo.trigger()
    win.browser.status.setCurrentIndex(win.browser.status.findData("disabled"))
    assert win.browser.model.rowCount() == 3


def test_full_text_search_ranks_after_debounce(qtbot, window):
    b = window.browser
    b.mode.setCurrentIndex(b.mode.findData("text"))
    with qtbot.waitSignal(b.search_done, timeout=5_000) as sig:
        qtbot.keyClicks(b.search_box, "capital")
    assert sig.args[0] == "text"
    assert b.model.searching and "score" in b.model.columns()
    shown = texts(b)
    assert len(shown) == 3 and all("capital" in t for t in shown)
    scores = [b.model.score_at(r) for r in range(len(shown))]
    assert scores == sorted(scores, reverse=True)
    # clearing the box goes back to the whole pack
    b.search_box.clear()
    qtbot.waitUntil(lambda: not b.model.searching, timeout=5_000)
    assert b.model.rowCount() == len(FACTS)


def test_debounce_waits_for_typing_to_stop(qtbot, window):
    b = window.browser
    b.mode.setCurrentIndex(b.mode.findData("text"))
    calls = []
    b.search_done.connect(lambda mode, n: calls.append(n))
    qtbot.keyClicks(b.search_box, "gold")  # four keystrokes...
    qtbot.waitUntil(lambda: bool(calls), timeout=5_000)
    qtbot.wait(400)
    assert len(calls) == 1  # ...one search


def test_semantic_search_ranks_by_meaning(qtbot, window):
    b = window.browser
    b.mode.setCurrentIndex(b.mode.findData("semantic"))
    with qtbot.waitSignal(b.search_done, timeout=20_000) as sig:
        qtbot.keyClicks(b.search_box, "Which money do people use in Japan?")
    assert sig.args[0] == "semantic"
    assert texts(b)[0] == "The currency of Japan is the yen."
    scores = [b.model.score_at(r) for r in range(b.model.rowCount())]
    assert scores == sorted(scores, reverse=True) and 0 < scores[0] <= 1.0001


def test_id_only_model_fetches_only_visible_rows(qtbot, tmp_path):
    """20k entries: the model holds ids; painting and jumping read a few blocks only."""
    from PySide6.QtWidgets import QTableView

    from app.models.entry_table import BLOCK, EntryTableModel
    from engine.store import Pack

    path = tmp_path / "big.plugmem"
    with Pack.create(path, name="big") as p:
        p.add_many([{"text": f"Fact number {i} about item {i % 97}.", "title": f"item {i}"} for i in range(20_000)])
    reader = Pack.open(path, readonly=True)
    try:
        model = EntryTableModel()
        model.set_pack(reader)
        assert model.rowCount() == 20_000
        assert model.rows_fetched == 0  # loading the query read ids only
        view = QTableView()
        qtbot.addWidget(view)
        view.setModel(model)
        view.verticalHeader().setDefaultSectionSize(20)
        view.resize(800, 600)
        view.show()
        qtbot.waitExposed(view)
        qtbot.wait(50)
        assert 0 < model.rows_fetched <= 2 * BLOCK
        col = model.columns().index
        first = model.data(model.index(0, col("text")))
        assert first == "Fact number 0 about item 0."
        view.scrollToBottom()
        qtbot.wait(50)
        assert model.rows_fetched <= 4 * BLOCK
        assert model.data(model.index(19_999, col("title"))) == "item 19999"
        view.scrollTo(model.index(10_000, 0))
        qtbot.wait(50)
        assert model.rows_fetched <= 6 * BLOCK, model.rows_fetched
        # sorting by id descending is an array flip, not a query of rows
        model.set_sort("-id")
        assert model.id_at(0) == int(np.max(model.ids()))
        view.close()
    finally:
        reader.close()


def test_big_pack_shows_its_first_rows_at_once_and_loads_the_rest_in_the_background(qtbot, tmp_path, monkeypatch):
    """Past SYNC_LIMIT ids the table shows a first keyset page at once; the full id list
    comes from the background read thread and is appended (the first rows do not move)."""
    import threading

    from app.models import entry_table
    from app.reads import ReadService
    from engine.store import Pack

    path = tmp_path / "big.plugmem"
    with Pack.create(path, name="big") as p:
        p.add_many([{"text": f"Fact number {i}."} for i in range(3_000)])
    monkeypatch.setattr(entry_table, "SYNC_LIMIT", 1_000)
    reads = ReadService()
    reader = Pack.open(path, readonly=True)
    threads = []
    try:
        model = entry_table.EntryTableModel()

        def loader(fn, done):
            def on_thread(pack):
                threads.append(threading.current_thread().name)
                return fn(pack)
            reads.submit(str(path), on_thread, done)

        model.loader = loader
        resets = []
        model.modelReset.connect(lambda: resets.append(1))
        with qtbot.waitSignal(model.ids_loaded, timeout=10_000) as sig:
            model.set_pack(reader)
            assert model.loading and model.rowCount() == entry_table.FIRST_PAGE
            assert model.data(model.index(0, model.columns().index("text"))) == "Fact number 0."
        assert sig.args == [3_000] and model.rowCount() == 3_000 and not model.loading
        assert len(resets) == 1  # the rest was appended, not a second reset
        assert threads == ["plugmem-reads_0"]
        assert model.id_at(2_999) == 3_000
        # a filter made while loading wins over the older answer
        model.set_filter("disabled")
        qtbot.waitUntil(lambda: not model.loading, timeout=10_000)
        assert model.rowCount() == 0
    finally:
        reads.close()
        reader.close()
