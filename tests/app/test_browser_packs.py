"""The browser after switching packs and for disabled entries (issue 23): no row of the old
pack stays selected while the editor is empty, a click opens the new pack's entry;
disabled entries are struck through and grey."""
from __future__ import annotations

import shutil

from PySide6.QtCore import Qt

from .conftest import FACTS, open_window, wait_ready
from .test_editor import pick, setup  # noqa: F401 - the same window on the same pack


def test_after_switching_packs_no_old_row_stays_selected_and_a_click_opens_the_entry(
        qtbot, make_ctx, small_pack, tmp_path):
    a = str(small_pack.resolve())
    b = str(tmp_path / "ws" / "copy.plugmem")
    shutil.copy(a, b)
    ctx = make_ctx([a, b])
    win = open_window(qtbot, ctx, a)
    try:
        pick(win, "Tokyo")
        assert win.editor.mode == "edit" and win.editor.path == a
        ctx.set_current(b)
        wait_ready(qtbot, ctx, b)
        qtbot.waitUntil(lambda: win.browser.model.rowCount() == len(FACTS), timeout=10_000)
        assert win.browser.selected_ids() == [] and win.browser.view.selectionModel().selectedRows() == []
        assert win.editor.mode == "none"
        # the same row of the other pack, clicked, opens that pack's entry
        row = next(r for r in range(len(FACTS)) if "Tokyo" in win.browser.model.entry_at(r).text)
        rect = win.browser.view.visualRect(win.browser.model.index(row, 2))
        qtbot.mouseClick(win.browser.view.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
        assert win.editor.mode == "edit" and win.editor.path == b
        assert "Tokyo" in win.editor.text.toPlainText()
    finally:
        win.close()


def test_disabled_entries_are_struck_through_and_grey(qtbot, setup):
    win, path = setup
    m = win.browser.model
    e = pick(win, "Everest")
    with qtbot.waitSignal(win.ctx.hub.changed, timeout=20_000):
        win.browser.act_disable.trigger()
    col = m.columns().index("text")
    font = Qt.ItemDataRole.FontRole
    fg = Qt.ItemDataRole.ForegroundRole
    off = m.index(m.row_of(e.id), col)
    on = m.index(next(r for r in range(m.rowCount()) if m.id_at(r) != e.id), col)
    assert m.data(off, font).strikeOut() and m.data(off, fg) is not None
    assert m.data(on, font) is None and m.data(on, fg) is None
