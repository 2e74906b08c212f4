"""`python -m app --screenshot`: the real window opens on a workspace, paints rows, saves a PNG."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_screenshot_of_a_workspace(tmp_path, small_pack):
    out = tmp_path / "shot.png"
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", PLUGMEM_HOME=str(tmp_path / "home"),
               XDG_CONFIG_HOME=str(tmp_path / "cfg"), XDG_STATE_HOME=str(tmp_path / "state"))
    r = subprocess.run([sys.executable, "-m", "app", "--workspace", str(small_pack.parent), "--screenshot", str(out),
                        "--timeout", "90"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=150)
    assert r.returncode == 0, r.stderr[-2000:]
    assert out.stat().st_size > 10_000
    from PySide6.QtGui import QImage

    img = QImage(str(out))
    assert img.width() >= 800 and img.height() >= 500
    # the workspace remembers the attached pack
    ws = (small_pack.parent / "workspace.json").read_text()
    assert "facts.plugmem" in ws
    assert "Traceback" not in r.stderr


def test_the_window_fits_a_1280_by_800_screen(qtbot, make_ctx, small_pack):
    """Every tab, dock and control shown at once still fits a common laptop screen (the
    evaluation controls in one row made the window 1,542 pixels wide at least)."""
    from .conftest import open_window

    path = str(small_pack.resolve())
    win = open_window(qtbot, make_ctx([path]), path)
    hint = win.minimumSizeHint()
    assert hint.width() <= 1280 and hint.height() <= 800, hint
    win.resize(1280, 800)
    assert win.width() == 1280
    for i in range(win.tabs.count()):  # no tab asks for more than the window leaves it
        assert win.tabs.widget(i).minimumSizeHint().width() <= win.tabs.width(), win.tabs.tabText(i)
    # the entries' text keeps a readable share of the browser (it was 158 of 587 px)
    qtbot.wait(50)
    view = win.browser.view
    win.browser.fit_columns()
    text = view.columnWidth(win.browser.model.columns().index("text"))
    assert text >= 0.44 * view.viewport().width(), (text, view.viewport().width())


def test_many_long_pack_names_do_not_widen_the_window(qtbot, make_ctx, tmp_path, encoder, tiny_loader):
    """Pack names are shown in the status bar and above the answer; with many plugged packs
    they are cut to the room there is (the full list in the tooltip), not allowed to make
    the window wider than the screen."""
    import dataclasses

    from .conftest import ask, make_pack, open_window

    names = [f"european-union-member-state-statistics-{i}" for i in range(6)]
    paths = [str(make_pack(tmp_path / "ws" / f"{n}.plugmem", encoder).resolve()) for n in names]
    ctx = make_ctx(paths)
    ctx.model_loader = tiny_loader
    win = open_window(qtbot, ctx, paths[0])
    win.tabs.setCurrentWidget(win.explain)
    win.resize(1280, 800)
    p = win.explain
    p.mode.setCurrentIndex(p.mode.findData("context"))
    e = ask(qtbot, p, "The capital of France is")
    assert e.packs == names
    text = "Paris is the capital of France, and its largest city, on the Seine, with the Louvre and Notre-Dame."
    long = dataclasses.replace(e, answer=" Paris.", answer_without_memory=" a city in the north of the country.",
                               retrieved=[dataclasses.replace(r, text=text) for r in e.retrieved])
    with qtbot.waitSignal(p.answered):
        p._done(p._gen, long, {n: q for n, q in zip(names, paths)}, "")
    qtbot.wait(50)  # the layout is redone on the next turn of the event loop
    assert win.minimumSizeHint().width() <= 1280, win.minimumSizeHint()  # 2,523 when the names were whole
    assert win.width() == 1280
    assert p.minimumSizeHint().width() <= win.tabs.width()
    assert abs(p.with_box.width() - p.without_box.width()) <= 2, (p.with_box.width(), p.without_box.width())
    assert win.plugged_label.shown().endswith("…")
    # above the answer the names wrap onto lines of their own, whole; the title stays short
    assert p.with_box.title() == "With memory (context)" and p.with_box.shown_title() == p.with_box.title()
    assert p.packs_label.height() >= p.packs_label.heightForWidth(p.packs_label.width()) > p.packs_label.fontMetrics().height()
    for n in names:  # nothing is lost: every name is above the answer, in the tooltips and the status bar's
        assert n in p.packs_label.text() and n in p.with_box.toolTip()
        assert n in win.plugged_label.text() and n in win.plugged_label.toolTip()
    # the entries that explain the answer are read whole: they wrap instead of being cut
    from PySide6.QtCore import QRect, Qt

    from app.models.explanation_table import COLUMNS

    col = COLUMNS.index("entry")
    width = p.table.columnWidth(col)
    for row in range(p.model.rowCount()):
        shown = p.model.index(row, col).data()
        need = p.table.fontMetrics().boundingRect(QRect(0, 0, width - 8, 10_000), Qt.TextFlag.TextWordWrap, shown)
        assert need.height() > p.table.fontMetrics().height()  # more than one line at this width
        assert p.table.rowHeight(row) >= need.height(), (row, p.table.rowHeight(row), need.height())


def test_one_line_notes_are_visible_in_the_status_bar(qtbot, make_ctx, small_pack):
    """'no problems found' after Check, 'Exported ...': shown where the user looks (every
    status-bar widget was permanent, so showMessage() had no room and they reached only the log)."""
    from .conftest import open_window

    path = str(small_pack.resolve())
    ctx = make_ctx([path])
    win = open_window(qtbot, ctx, path)
    win.resize(1280, 800)
    with qtbot.waitSignal(win.workspace_panel.check_done, timeout=60_000):
        win.workspace_panel.check(path)
    qtbot.waitUntil(lambda: "facts: no problems found" in win.note_label.text(), timeout=5_000)
    qtbot.wait(50)
    assert win.note_label.isVisible() and win.note_label.shown().startswith("facts: no problems")
    assert win.note_label.shown() == win.note_label.text()  # whole, and the names beside it too
    assert win.plugged_label.shown() == win.plugged_label.text() == "Plugged in: facts"
    long = ("Saving entry 2 of facts.plugmem: an edit evaluation is running on this pack in another program; "
            "it undoes its temporary edits when it ends, and would undo this change with them.")
    win.show_note(long)  # a long note is cut, not the names beside it (they read "Plugge…", "Reader…")
    qtbot.wait(50)
    for label in (win.plugged_label, win.jobs_label, win.reader_label):
        assert label.shown() == label.text(), label.shown()
    assert win.note_label.shown().startswith("Saving entry 2 of facts.plugmem: an edit evaluation")
    assert win.note_label.toolTip() == long
    win.show_note("Explanation saved to /tmp/x.json", ms=50)
    assert win.note_label.shown().startswith("Explanation saved")
    qtbot.waitUntil(lambda: win.note_label.text() == "", timeout=2_000)
    win.close()
