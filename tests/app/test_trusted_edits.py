"""Edits you can trust (issue 23): Ctrl+Z in a field undoes the pack after Save and the
field's typing before it; revert previews its diff and keeps the chosen version selected;
undo rows name who; validation names the field as one types."""
from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QTextCursor

from .test_editor import pick, save_versions, setup  # noqa: F401 - the same window on the same pack

CTRL = Qt.KeyboardModifier.ControlModifier
SHIFT = Qt.KeyboardModifier.ShiftModifier


def test_ctrl_z_in_the_field_undoes_typing_before_save_and_the_pack_after(qtbot, setup):
    win, path = setup
    win.activateWindow()  # the window's shortcuts need an active window
    ed, hub, reader = win.editor, win.ctx.hub, win.ctx.reader(path)
    e = pick(win, "Helium")
    ed.text.setFocus()
    ed.text.moveCursor(QTextCursor.MoveOperation.End)
    qtbot.keyClicks(ed.text, " Inert")
    assert ed.text.toPlainText() == e.text + " Inert"
    # before Save: the field's own undo, the pack untouched
    qtbot.keyClick(ed.text, Qt.Key.Key_Z, CTRL)
    assert ed.text.toPlainText() == e.text
    assert reader.get(e.id).version == e.version

    qtbot.keyClicks(ed.text, " It is inert.")
    with qtbot.waitSignal(hub.changed, timeout=20_000):
        qtbot.keyClick(ed.text, Qt.Key.Key_S, CTRL)  # Save, focus stays in the field
    saved = e.text + " It is inert."
    assert reader.get(e.id).text == saved
    qtbot.waitUntil(lambda: ed.text.toPlainText() == saved and not ed.is_dirty(), timeout=5_000)
    assert ed.text.hasFocus()

    # right after Save, the same keys in the same field act on the pack's history
    with qtbot.waitSignal(hub.changed, timeout=20_000):
        qtbot.keyClick(ed.text, Qt.Key.Key_Z, CTRL)
    assert reader.get(e.id).text == e.text
    qtbot.waitUntil(lambda: ed.text.toPlainText() == e.text, timeout=5_000)
    with qtbot.waitSignal(hub.changed, timeout=20_000):
        qtbot.keyClick(ed.text, Qt.Key.Key_Z, CTRL | SHIFT)
    assert reader.get(e.id).text == saved
    qtbot.waitUntil(lambda: ed.text.toPlainText() == saved, timeout=5_000)

    # the undo and redo rows of the history name who did them
    qtbot.waitUntil(lambda: ed.history.rowCount() == 4, timeout=5_000)
    rows = [(ed.history.item(r, 1).text(), ed.history.item(r, 2).text()) for r in range(2)]
    assert rows[0][1].startswith("redo") and rows[1][1].startswith("undo")
    assert [who for who, _ in rows] == [win.ctx.author] * 2


def test_ctrl_z_in_the_title_after_save_undoes_the_pack(qtbot, setup):
    win, path = setup
    win.activateWindow()
    ed, hub, reader = win.editor, win.ctx.hub, win.ctx.reader(path)
    e = pick(win, "Paris")
    ed.title.setFocus()
    ed.title.selectAll()
    qtbot.keyClicks(ed.title, "Paris")
    with qtbot.waitSignal(hub.changed, timeout=20_000):
        ed.save_btn.click()
    assert reader.get(e.id).title == "Paris"
    qtbot.waitUntil(lambda: not ed.is_dirty(), timeout=5_000)
    ed.title.setFocus()
    with qtbot.waitSignal(hub.changed, timeout=20_000):
        qtbot.keyClick(ed.title, Qt.Key.Key_Z, CTRL)
    assert reader.get(e.id).title == "France"


def test_revert_previews_the_difference_and_keeps_the_chosen_version_selected(qtbot, setup):
    win, path = setup
    ed, hub, reader = win.editor, win.ctx.hub, win.ctx.reader(path)
    e = save_versions(qtbot, win, "Iron", ("Iron has the atomic number 27.", "Iron has the atomic number 28."))
    ed.history.selectRow(2)  # the imported version
    chosen = ed._history[2]

    ed.revert_btn.click()
    preview = ed.preview
    assert preview is not None and preview.isVisible()
    shown = preview.diff.toPlainText()
    assert "Iron has the atomic number 2826." in shown  # current then version, word by word
    html = preview.diff.toHtml()
    assert "line-through" in html and "underline" in html
    preview.reject()  # Cancel changes nothing
    assert reader.get(e.id).text == "Iron has the atomic number 28."
    qtbot.waitUntil(lambda: ed.preview is None, timeout=2_000)

    ed.revert_btn.click()
    with qtbot.waitSignal(hub.changed, timeout=20_000):
        ed.preview.revert_btn.click()
    assert reader.get(e.id).text == "Iron has the atomic number 26."
    qtbot.waitUntil(lambda: ed.history.rowCount() == 4, timeout=5_000)
    selected = {i.row() for i in ed.history.selectedIndexes()}
    assert selected == {3} and ed._history[3].id == chosen.id  # still the version chosen


def test_validation_names_the_field_as_one_types(qtbot, setup):
    from engine.store import MAX_TITLE_CHARS
    from engine.store.pack import MAX_TAG_CHARS, MAX_TAGS

    win, path = setup
    ed = win.editor
    pick(win, "Nile")
    ed.title.setText("N" * (MAX_TITLE_CHARS + 1))
    msg = ed.validation.text()
    assert ed.validation.isVisibleTo(ed)
    assert msg == f"Title has {MAX_TITLE_CHARS + 1} characters; the limit is {MAX_TITLE_CHARS}."
    assert ed.title.property("invalid") is True and not ed.tags.property("invalid")
    assert not ed.save_btn.isEnabled()
    ed.tags.setText("geography, " + "x" * (MAX_TAG_CHARS + 1))
    lines = ed.validation.text().splitlines()
    assert lines[0].startswith("Title has") and lines[1].startswith("Tags: tag 'xxx")
    assert max(len(w) for w in lines[1].split()) < 40  # shortened: one long word would widen the dock
    assert ed.tags.property("invalid") is True
    ed.title.setText("The Nile")
    ed.tags.setText(", ".join(f"t{n}" for n in range(MAX_TAGS + 1)))
    assert ed.validation.text() == f"Tags: {MAX_TAGS + 1} tags; the limit is {MAX_TAGS}."
    assert not ed.title.property("invalid")
    ed.tags.setText("geography")
    assert not ed.validation.isVisibleTo(ed) and ed.save_btn.isEnabled()

    # a new entry with a title but no text: the field is named, never "record 1"
    win.act_new_entry.trigger()
    ed.title.setText("Mars")
    assert ed.validation.text() == "Text is empty." and "record" not in ed.validation.text()
    assert ed.text.property("invalid") is True and not ed.save_btn.isEnabled()
