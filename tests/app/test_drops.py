"""Import as people do it (issue 23): files and folders dropped on the window go into the
pack shown, dropped on a pack into that pack; .plugmem files are opened; an empty pack
says how to fill it."""
from __future__ import annotations

import json

from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QDropEvent

from .conftest import FACTS, open_window, wait_ready


def drop_on(handler, paths, pos=QPointF(10, 10)):
    """Hand a drop of ``paths`` to ``handler`` (what Qt calls when a drag ends over the widget:
    Qt delivers no synthesized, non-spontaneous drop through sendEvent)."""
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    ev = QDropEvent(pos, Qt.DropAction.CopyAction, mime, Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier)
    handler(ev)
    return ev.isAccepted()  # a bool: pytest must not repr a Qt event it may have lost


def test_a_folder_dropped_on_the_window_and_files_on_a_pack_are_imported(qtbot, make_ctx, small_pack, tmp_path):
    path = str(small_pack.resolve())
    ctx = make_ctx([path])
    win = open_window(qtbot, ctx, path)
    try:
        notes = tmp_path / "notes"
        (notes / "sub").mkdir(parents=True)
        (notes / "a.md").write_text("# Aspirin\n\nAspirin thins the blood.\n\nIt relieves mild pain.\n")
        (notes / "sub" / "b.txt").write_text("Ibuprofen is an NSAID.\n")
        with qtbot.waitSignal(ctx.jobs.finished, timeout=120_000):
            assert drop_on(win.dropEvent, [notes])
        qtbot.waitUntil(lambda: win.browser.model.rowCount() == len(FACTS) + 3, timeout=60_000)

        empty = win.workspace_panel.new_pack(str(tmp_path / "ws" / "drugs.plugmem"))
        wait_ready(qtbot, ctx, empty)
        qtbot.waitUntil(lambda: "drugs is empty: drop files or folders" in win.browser.count_label.text(),
                        timeout=10_000)
        rows = tmp_path / "drugs.jsonl"
        rows.write_text("".join(json.dumps({"text": f"Drug {i} is taken twice a day."}) + "\n" for i in range(5)))
        ctx.set_current(path)  # the drop names its pack: not the one shown
        tree = win.workspace_panel.tree
        item = win.workspace_panel.item_for(empty)
        pos = QPointF(tree.visualItemRect(item).center())
        with qtbot.waitSignal(ctx.jobs.finished, timeout=120_000):
            assert drop_on(lambda ev: win.workspace_panel._drops.eventFilter(tree.viewport(), ev), [rows], pos)
        qtbot.waitUntil(lambda: not ctx.is_busy(empty), timeout=30_000)
        from engine.store import Pack

        with Pack.open(empty, readonly=True) as p:
            assert p.count("active") == 5
        with Pack.open(path, readonly=True) as p:
            assert p.count("active") == len(FACTS) + 3
    finally:
        win.close()


def test_import_a_folder_from_the_import_menu(qtbot, make_ctx, small_pack, tmp_path, monkeypatch):
    """Import… → A folder…: the folder the user picks is imported whole, subfolders included."""
    from PySide6.QtWidgets import QFileDialog

    path = str(small_pack.resolve())
    ctx = make_ctx([path])
    win = open_window(qtbot, ctx, path)
    try:
        notes = tmp_path / "pharmacy-notes"
        (notes / "2026").mkdir(parents=True)
        (notes / "aspirin.md").write_text("# Aspirin\n\nAspirin thins the blood.\n")
        (notes / "2026" / "metformin.txt").write_text("Metformin treats type 2 diabetes.\n")
        asked = []
        # the user's choice in the system's folder dialog
        monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: asked.append(a[1:]) or str(notes))
        menu = win.workspace_panel.buttons["import"].menu()
        action = next(a for a in menu.actions() if a.text() == "A folder…")
        with qtbot.waitSignal(ctx.jobs.finished, timeout=120_000):
            action.trigger()
        assert asked and "facts" in asked[0][0]  # the dialog names the pack it imports into
        qtbot.waitUntil(lambda: win.browser.model.rowCount() == len(FACTS) + 2, timeout=60_000)
        texts = {win.browser.model.entry_at(r).text for r in range(win.browser.model.rowCount())}
        assert {"Aspirin thins the blood.", "Metformin treats type 2 diabetes."} <= texts
    finally:
        win.close()
