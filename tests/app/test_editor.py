"""Entry editor: inline validation blocks bad saves; history shows who/when/what; revert
is an edit back to an old version; add and delete entries."""
from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import FACTS, open_window


@pytest.fixture
def setup(qtbot, make_ctx, small_pack):
    path = str(small_pack.resolve())
    ctx = make_ctx([path])
    win = open_window(qtbot, ctx, path)
    yield win, path
    win.close()


def pick(win, needle):
    m = win.browser.model
    for r in range(m.rowCount()):
        e = m.entry_at(r)
        if needle in e.text:
            win.browser.select_id(e.id)
            return e
    raise AssertionError(needle)


def save_versions(qtbot, win, needle, texts):
    """Select the entry holding ``needle``, save each of ``texts`` in turn; the entry as it was."""
    ed = win.editor
    e = pick(win, needle)
    for new in texts:
        ed.text.setPlainText(new)
        with qtbot.waitSignal(win.ctx.hub.changed, timeout=20_000):
            ed.save()
    qtbot.waitUntil(lambda: ed.history.rowCount() == len(texts) + 1, timeout=5_000)
    return e


def test_validation_messages_block_saving_and_nothing_is_written(qtbot, setup):
    win, path = setup
    ed = win.editor
    e = pick(win, "Helium")
    ed.text.setPlainText("   ")
    assert ed.validation.isVisibleTo(ed) and "empty" in ed.validation.text()
    assert not ed.save_btn.isEnabled()
    assert ed.save() is False
    ed.text.setPlainText("x" * 4001)
    assert "4,001 characters; the limit is 4,000" in ed.validation.text()
    assert not ed.save_btn.isEnabled() and ed.save() is False
    ed.text.setPlainText("Helium is a noble gas.")
    assert not ed.validation.isVisibleTo(ed) and ed.save_btn.isEnabled()
    ed.discard_btn.click()
    assert ed.text.toPlainText() == e.text
    reader = win.ctx.reader(path)
    assert reader.get(e.id).version == e.version  # nothing was saved


def test_history_shows_changes_and_revert_restores_an_old_version(qtbot, setup):
    win, path = setup
    ed, hub = win.editor, win.ctx.hub
    e = save_versions(qtbot, win, "Iron", ("Iron has the atomic number 27.", "Iron has the atomic number 28."))
    whats = [ed.history.item(r, 2).text() for r in range(3)]
    assert "27" in whats[1] and "28" in whats[0]  # newest first
    assert ed.history.item(0, 1).text() == win.ctx.author
    # revert to the first version (the import)
    ed.history.selectRow(2)
    assert ed.revert_btn.isEnabled()
    ed.revert_btn.click()  # shows what would change first
    with qtbot.waitSignal(hub.changed, timeout=20_000):
        ed.preview.revert_btn.click()
    assert win.ctx.reader(path).get(e.id).text == "Iron has the atomic number 26."
    qtbot.waitUntil(lambda: ed.history.rowCount() == 4, timeout=5_000)
    # the revert is itself one undoable edit
    with qtbot.waitSignal(hub.changed, timeout=20_000):
        win.act_undo.trigger()
    assert win.ctx.reader(path).get(e.id).text == "Iron has the atomic number 28."


def test_add_and_delete_entries(qtbot, setup):
    win, path = setup
    ed, hub, b = win.editor, win.ctx.hub, win.browser
    win.act_new_entry.trigger()
    assert ed.mode == "new" and not ed.save_btn.isEnabled()
    ed.title.setText("Mars")
    ed.text.setPlainText("Mars has two moons, Phobos and Deimos.")
    ed.tags.setText("astronomy, planets")
    with qtbot.waitSignal(hub.changed, timeout=20_000) as sig:
        ed.save()
    new_id = int(sig.args[1].ids[0])
    assert b.model.rowCount() == len(FACTS) + 1
    e = win.ctx.reader(path).get(new_id)
    assert (e.title, e.tags, e.status) == ("Mars", ["astronomy", "planets"], "active")
    # the new entry is found by meaning at once
    b.mode.setCurrentIndex(b.mode.findData("semantic"))
    with qtbot.waitSignal(b.search_done, timeout=20_000):
        b.search_box.setText("moons of the red planet")
    assert b.model.id_at(0) == new_id
    b.search_box.clear()
    qtbot.waitUntil(lambda: not b.model.searching, timeout=5_000)
    assert b.select_id(new_id)
    with qtbot.waitSignal(hub.changed, timeout=20_000):
        ed.delete_btn.click()
    assert b.model.rowCount() == len(FACTS) and b.model.row_of(new_id) == -1


def test_a_save_during_another_programs_edit_evaluation_is_refused_and_the_typed_text_kept(qtbot, setup,
                                                                                          evaluating_elsewhere):
    """Another program's edit evaluation would undo this change with its own temporary
    edits: the save is refused with a message naming the pack, and nothing typed is lost."""
    win, path = setup
    ed = win.editor
    e = pick(win, "Helium")
    with evaluating_elsewhere(path):
        ed.text.setPlainText("Helium is a noble gas.")
        with qtbot.waitSignal(win.ctx.notifier.message, timeout=20_000) as sig:
            assert ed.save()
        level, text = sig.args
        assert level == "error" and "an edit evaluation is running on this pack in another program" in text
        assert text.startswith(f"Saving entry {e.id} of {Path(path).name}: an edit evaluation")  # the pack named once
        assert ed.is_dirty() and ed.text.toPlainText() == "Helium is a noble gas."
        assert win.ctx.reader(path).get(e.id).text == e.text
    with qtbot.waitSignal(win.ctx.hub.changed, timeout=20_000):
        assert ed.save()  # the evaluation is over: the same text saves
    assert win.ctx.reader(path).get(e.id).text == "Helium is a noble gas."


def test_an_error_names_the_pack_once_and_keeps_other_messages_whole():
    from app.notifier import Notifier

    n = Notifier(dialogs=False)
    n.error("Saving entry 2 of geo.plugmem", ValueError("geo.plugmem: entry 2 was deleted"))
    n.error("Saving entry 2 of geo.plugmem", ValueError("chem.plugmem: entry 2 was deleted"))
    n.error("Saving entry 2 of geo.plugmem", ValueError("line 3: text: must not be empty"))
    assert [t for _, t in n.history] == ["Saving entry 2 of geo.plugmem: entry 2 was deleted",
                                        "Saving entry 2 of geo.plugmem: chem.plugmem: entry 2 was deleted",
                                        "Saving entry 2 of geo.plugmem: line 3: text: must not be empty"]
