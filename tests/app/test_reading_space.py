"""Reading space at 1280 x 800 (issue 23): no label, button, placeholder, title or short
column a user must read is cut, on any tab, with the app's style sheet applied.

Before: the "Selected" and "Export" buttons were cut by their menu arrows and the pane's
edge, the prompt's placeholder ended in "comp…", the pack names read "chemi…", the
evaluation figures "10.0'" with hit@k out of sight, the status bar "chemistry, ge…", and
the "Without memory" answer lost its second line when its pane was made small.
"""
from __future__ import annotations

import dataclasses

import pytest

from .conftest import ask, make_pack, open_window
from .cut_text import cut_cells, cut_text_of, cut_texts

# the demo chemistry pack's relations: 17 names in the chart's 170 px overlapped
RELATIONS = ["atomic_number", "block", "cas_number", "crystal_structure", "discoverer", "discovery_location",
             "discovery_year", "element_with_number", "element_with_symbol", "goldschmidt_class", "group",
             "period", "series", "symbol", "top_producer", "boiling_point", "melting_point"]


@pytest.fixture
def themed(qapp):
    """The app's own look (Fusion + resources/styles/app.qss: padded, larger prompt and answers)."""
    from app.theme import apply_theme

    style, sheet = qapp.style().name(), qapp.styleSheet()
    apply_theme(qapp)
    yield
    qapp.setStyleSheet(sheet)
    qapp.setStyle(style)


def _record_a_run(folder, packs):
    """A finished probe run as the evaluation job writes it, in the workspace's run store."""
    from app.evaluations import EvalRun, EvalStore

    by_rel = {r: {"n": 3, "accuracy": 2 / 3, "accuracy_without_memory": 0.5, "hit_at_k": 1.0} for r in RELATIONS}
    result = {"n": 51, "accuracy": 0.5, "accuracy_without_memory": 0.1, "hit_at_k": 1.0, "n_paraphrases": 37,
              "paraphrase_accuracy": 0.838, "paraphrase_accuracy_without_memory": 0.162, "by_relation": by_rel,
              "seconds": 20.5}
    run = EvalRun("probes", str(folder / "chemistry" / "probes_heldout.jsonl"), "dpm", 5, packs,
                  "SmolLM2-135M-Instruct", result, 100)
    EvalStore(folder).append(run, [])


@pytest.fixture
def demo_like(qtbot, themed, make_ctx, tmp_path, encoder, tiny_loader):
    """The main window at 1280 x 800 on two packs named as the demo's, with an answer asked
    and a finished evaluation run."""
    folder = tmp_path / "ws"
    paths = [str(make_pack(folder / f"{n}.plugmem", encoder).resolve()) for n in ("chemistry", "geography")]
    _record_a_run(folder, ["chemistry", "geography"])
    ctx = make_ctx(paths)
    ctx.model_loader = tiny_loader
    win = open_window(qtbot, ctx, paths[0])
    win.resize(1280, 800)
    win.fit_docks()  # what the first show does at the window's real size
    qtbot.wait(50)
    return win, paths


def _views(win):
    from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QListView

    # a list (the Patches list) has one column, and its model's columnCount is private
    return [v for v in win.findChildren(QAbstractItemView)
            if not isinstance(v, (QHeaderView, QListView)) and v.isVisible() and v.model() is not None
            and v.model().columnCount() > 1]


# long text columns that cut a cell to the column, their whole text in the cell's tooltip
# (and the browser's "updated" scrolls: the entry text keeps 45 % of the table)
LONG = {"EntryTable": ("text", "source", "updated"), "JobTable": ("job", "message"), "HistoryTable": ("what",),
        "EvalFailures": ("prompt", "answer (first line)")}


def test_nothing_is_cut_at_1280_by_800_on_any_tab(qtbot, demo_like):
    win, paths = demo_like
    p = win.explain
    win.tabs.setCurrentWidget(p)
    p.mode.setCurrentIndex(p.mode.findData("context"))
    ask(qtbot, p, "The chemical symbol of gold is")
    assert p.packs_label.text() == "from chemistry, geography"
    problems = {}

    def cut_on_this_tab():
        found = cut_texts(win)
        for v in _views(win):
            found += [f"[{v.objectName()}] {c}" for c in cut_cells(v, skip=LONG.get(v.objectName(), ()))]
        return found

    for i in range(win.tabs.count()):
        win.tabs.setCurrentIndex(i)
        # a wrapped label takes its height a few layout passes later: slow on a loaded machine
        try:
            qtbot.waitUntil(lambda: not cut_on_this_tab(), timeout=2000)
        except qtbot.TimeoutError:
            problems[win.tabs.tabText(i)] = cut_on_this_tab()
    assert problems == {}, problems
    # the cells cut on purpose keep their whole text in the tooltip
    jobs = win.jobs_panel.table
    for row in range(jobs.rowCount()):
        assert jobs.item(row, 0).toolTip() == jobs.item(row, 0).text()


def test_workspace_list_evaluation_figures_and_status_bar_read_whole(qtbot, demo_like):
    """The points of the issue one by one, as the user reads them."""
    win, paths = demo_like
    tree = win.workspace_panel.tree
    assert [tree.topLevelItem(i).text(0) for i in range(2)] == ["chemistry", "geography"]
    assert tree.columnWidth(0) >= tree.sizeHintForColumn(0)  # the names whole, not "chemi…"
    assert cut_cells(tree) == []  # and the counts and the encoder's name
    assert win.plugged_label.shown() == "Plugged in: chemistry, geography"
    b = win.browser  # a search adds the score column: the status stays in view (it showed "a…")
    with qtbot.waitSignal(b.search_done, timeout=20_000):
        b.search_box.setText("capital")
        b.run_search()
    qtbot.wait(50)
    status = b.model.columns().index("status")
    assert not b.view.isColumnHidden(b.model.columns().index("score"))
    hh = b.view.horizontalHeader()
    assert hh.sectionViewportPosition(status) + b.view.columnWidth(status) <= b.view.viewport().width()
    assert cut_cells(b.view, skip=LONG["EntryTable"]) == []
    v = win.evaluation
    win.tabs.setCurrentWidget(v)
    qtbot.waitUntil(lambda: v.detail.rowCount() == 2 + len(RELATIONS))
    qtbot.wait(30)
    d = v.detail
    heads = [d.horizontalHeaderItem(j).text() for j in range(d.columnCount())]
    assert heads == ["relation", "n", "with memory", "without", "hit@k"]
    right = d.viewport().width()
    for j in range(d.columnCount()):  # every figure column inside the table, none scrolled away
        assert d.horizontalHeader().sectionViewportPosition(j) + d.columnWidth(j) <= right, heads[j]
        fm = d.fontMetrics()
        for row in range(d.rowCount()):
            text = d.item(row, j).text()
            assert fm.horizontalAdvance(text) + 6 <= d.columnWidth(j), (heads[j], text)
    t = v.table  # the runs table: accuracy, without memory, hit@k and seconds beside the run's name
    for j in range(t.columnCount()):
        assert t.horizontalHeader().sectionViewportPosition(j) + t.columnWidth(j) <= t.viewport().width() + 1, j
    assert "probes_\u200bheldout" in t.item(0, 1).text()  # the name wraps inside its words' joints
    assert t.rowHeight(0) > t.fontMetrics().height() * 2
    # the chart's relation names: the finest levels are left out where they would overlap
    axis = v.plot.getAxis("left")
    assert len(axis._tickLevels[0]) < len(RELATIONS) / 3 and sum(len(lv) for lv in axis._tickLevels) == 1 + len(RELATIONS)  # "all" and each relation, once


def test_the_answers_keep_every_line_when_their_pane_is_small(qtbot, demo_like):
    """The "Without memory" box showed one line of two, and none once the edit banner showed:
    the splitter above the retrieved entries now stops at the answers' lines."""
    win, paths = demo_like
    p = win.explain
    win.tabs.setCurrentWidget(p)
    p.mode.setCurrentIndex(p.mode.findData("context"))
    e = ask(qtbot, p, "The chemical symbol of gold is")
    long = dataclasses.replace(e, answer_without_memory=" a soft, dense, yellow and very malleable metal that is "
                                                        "found in nature as nuggets or grains in rocks and rivers.")
    p._done(p._gen, long, {"chemistry": paths[0], "geography": paths[1]}, "")
    p.splitter.setSizes([20, 2000])  # the user drags the answers' pane as small as it goes
    p.stale.setText("An entry used in this answer was edited: press “Ask again” to see the answer follow.")
    p.stale.setVisible(True)
    qtbot.wait(50)
    label = p.without_text
    need = label.heightForWidth(label.width())
    assert need > 2 * label.fontMetrics().height()  # two lines at least at this width
    assert label.isVisible() and label.height() >= need, (label.height(), need)
    box = p.without_box.contentsRect()
    assert label.geometry().bottom() <= box.bottom() + 1  # inside its box, not cut by it
    assert p.splitter.sizes()[0] >= label.height()
    assert cut_texts(p) == []


def test_a_narrower_window_and_a_larger_font_keep_the_controls_whole(qtbot, themed, make_ctx, small_pack, qapp):
    """At 1024 x 700 and with a font a quarter larger, the controls that were cut (buttons with
    menus, the placeholders) still show their text whole: their sizes come from the font."""
    from PySide6.QtGui import QFont

    font = QFont(qapp.font())
    qapp.setFont(QFont(font.family(), max(1, round(font.pointSizeF() * 1.25))))
    try:
        path = str(small_pack.resolve())
        win = open_window(qtbot, make_ctx([path]), path)
        win.resize(1024, 700)
        win.fit_docks()
        qtbot.wait(50)
        b = win.browser
        p = win.explain
        for tab, widgets in ((b, (b.search_box, b.bulk_btn, b.new_btn, win.jobs_panel.new_btn)),
                             (p, (p.prompt, p.ask_btn, p.again_btn, p.export_btn))):
            win.tabs.setCurrentWidget(tab)
            qtbot.wait(20)
            for w in widgets:
                assert cut_text_of(w, win) is None, (w.objectName() or w.text(), cut_text_of(w, win))
        b.mode.setCurrentIndex(b.mode.findData("semantic"))  # the longer placeholder, "(by meaning)"
        win.tabs.setCurrentWidget(b)
        qtbot.wait(20)
        assert "by meaning" in b.search_box.placeholderText() and cut_text_of(b.search_box, win) is None
    finally:
        qapp.setFont(font)


def test_an_entitys_relations_read_whole(qtbot, themed, make_ctx, tmp_path, encoder):
    """The Entities tab's triples: the relation was cut to "atomic_nu…", "goldschmid…"."""
    import json

    from engine.mechanisms.plugins.entities import import_triples
    from engine.store import Pack

    pack = make_pack(tmp_path / "ws" / "chemistry.plugmem", encoder)
    rows = [("symbol", "C"), ("atomic_number", "6"), ("element_with_symbol", "Carbon"),
            ("goldschmidt_class", "atmophile"), ("crystal_structure", "diamond cubic"),
            ("electron_configuration", "[He] 2s2 2p2"), ("known_since", "antiquity")]
    f = tmp_path / "triples.jsonl"
    f.write_text("".join(json.dumps({"head": "Carbon", "relation": r, "tail": t}) + "\n" for r, t in rows))
    with Pack.open(pack) as pk:
        import_triples(pk, [f])
    path = str(pack.resolve())
    win = open_window(qtbot, make_ctx([path]), path)
    win.resize(1280, 800)
    win.fit_docks()
    v = win.entities
    win.tabs.setCurrentWidget(v)
    qtbot.waitUntil(lambda: v.model.rowCount() >= 1, timeout=20_000)
    with qtbot.waitSignal(v.triples_shown, timeout=10_000):
        v.table.setCurrentIndex(v.proxy.index(v.row_names().index("Carbon"), 0))
    qtbot.wait(50)
    assert {r for r, _ in v.triple_rows()} == {r for r, _ in rows}
    assert cut_cells(v.triples, skip=("source",)) == []  # relations whole, tails wrapped whole
    src = v.triples.item(0, 2)
    assert src.toolTip() == src.text()  # the cut source is whole in its tooltip


def test_the_probes_under_review_read_whole_beside_long_paraphrases(qtbot, demo_like):
    """Made probes, reviewed before they are saved: the prompt (what the user checks) was cut to
    "Hydrogen was …" once the paraphrases, sized to their contents, took the room."""
    from app.views.probe_maker import COLUMNS

    win, paths = demo_like
    v = win.evaluation
    win.tabs.setCurrentWidget(v)
    v.mode.setCurrentIndex(v.mode.findData("context"))
    dlg = v.make_probes(paths[0])
    dlg.make_btn.click()
    qtbot.waitUntil(lambda: dlg.table.rowCount() > 0, timeout=10_000)
    para = COLUMNS.index("paraphrases")
    for r in range(dlg.table.rowCount()):  # paraphrases as long as the demo's
        dlg.table.item(r, para).setText("The standard atomic weight of this element is | Its atomic weight is")
    qtbot.wait(50)
    others = tuple(c for c in COLUMNS if c != "prompt")
    assert cut_cells(dlg.table, skip=others) == []
    dlg.close()


def test_both_side_docks_fit_a_1024_by_700_window(qtbot, demo_like):
    """Side by side, the Workspace and Entry docks and the tabs needed 1,234 px: a 1024 px screen
    got a window wider than itself. Below that width the Entry dock goes under the Workspace
    list, or, where the column is too short for it and the Patches list, they become tabs; both
    stay open, nothing is cut on any tab (the pack names neither), and a wider window puts them
    back."""
    from PySide6.QtCore import Qt

    win, paths = demo_like
    left = Qt.DockWidgetArea.LeftDockWidgetArea
    assert win.dockWidgetArea(win.editor_dock) == Qt.DockWidgetArea.RightDockWidgetArea
    win.resize(1024, 700)  # as the user drags the window narrower: no other call
    qtbot.wait(50)
    assert (win.width(), win.height()) == (1024, 700)
    assert win.workspace_dock.isVisible() and win.editor_dock.isVisible()
    assert win.dockWidgetArea(win.editor_dock) == left  # in the pack list's column, not beside it
    if 700 >= win.side_docks.height_needed_stacked():
        assert win.side_docks.mode == "stacked"
        assert win.editor_dock.geometry().top() > win.workspace_dock.geometry().bottom()
    else:  # with the Patches list the column is too short at 700 px: the three are tabs
        assert win.side_docks.mode == "tabbed"
        assert {win.editor_dock, win.patches_dock} <= set(win.tabifiedDockWidgets(win.workspace_dock))
    assert win.browser.select_id(1)  # an entry in the editor, as the user works
    qtbot.waitUntil(lambda: win.editor.text.toPlainText() != "", timeout=10_000)
    problems = {}
    for i in range(win.tabs.count()):
        win.tabs.setCurrentIndex(i)
        qtbot.wait(30)
        found = cut_texts(win)
        for d in (win.workspace_dock, win.editor_dock, win.centralWidget()):  # nothing past the window
            g = d.geometry()
            if g.right() >= win.width() or g.bottom() >= win.height():
                found.append(f"{d.objectName()} ends at {g.right()}, {g.bottom()}")
        if found:
            problems[win.tabs.tabText(i)] = found
    assert problems == {}, problems
    win.workspace_dock.raise_()  # its tab in front, as the user clicks it
    qtbot.wait(50)
    assert cut_cells(win.workspace_panel.tree) == []  # pack names, counts, encoder whole
    jobs = win.jobs_panel.table  # its columns needed 500 px and more: it scrolled sideways
    assert jobs.horizontalScrollBar().maximum() == 0 and cut_cells(jobs, skip=LONG["JobTable"]) == []
    short = win.side_docks.height_needed_stacked() - 1
    win.resize(1024, short)  # too short for both in one column: tabs of one area, the entry in front
    qtbot.wait(50)
    assert win.height() == short
    assert win.editor_dock in win.tabifiedDockWidgets(win.workspace_dock) and win.editor_dock.isVisible()
    assert cut_texts(win) == []
    win.resize(1024, 300)  # the window stops where the tabs and the Jobs dock would be cut
    qtbot.wait(50)
    assert win.height() > 300 and cut_texts(win) == []
    win.resize(1280, 800)
    qtbot.wait(50)
    assert win.dockWidgetArea(win.editor_dock) == Qt.DockWidgetArea.RightDockWidgetArea
    assert win.tabifiedDockWidgets(win.workspace_dock) == [] and win.patches_dock.isVisible()
    assert win.patches_dock.geometry().top() > win.workspace_dock.geometry().bottom()  # under it again
    assert cut_texts(win) == []


def test_each_label_the_issue_named_reads_whole_at_1280_by_800(qtbot, demo_like):
    """The issue's "Reading space" list, label by label, as the user sees them at 1280 x 800
    (the figures "hit@l", "50.0'" and the "Without memory" box have their own tests above)."""
    win, paths = demo_like
    assert (win.width(), win.height()) == (1280, 800)
    b = win.browser
    win.tabs.setCurrentWidget(b)
    qtbot.wait(30)
    for mode in ("text", "semantic"):  # the search placeholder, "(full text)" and "(by meaning)"
        b.mode.setCurrentIndex(b.mode.findData(mode))
        qtbot.wait(20)
        assert b.search_box.text() == "" and cut_text_of(b.search_box, win) is None, (mode, cut_text_of(b.search_box, win))
    assert b.bulk_btn.text() == "Selected" and cut_text_of(b.bulk_btn, win) is None  # read "Selecte⌄"
    cols = b.model.columns()  # the status column whole and in view
    status = cols.index("status")
    assert not b.view.isColumnHidden(status)
    hh = b.view.horizontalHeader()
    assert hh.sectionViewportPosition(status) + b.view.columnWidth(status) <= b.view.viewport().width()
    assert b.view.columnWidth(status) >= b.view.sizeHintForColumn(status)  # "active", "disabled" whole
    assert cut_cells(b.view, skip=LONG["EntryTable"]) == []  # and its title (the checker's own measure)
    tree = win.workspace_panel.tree  # the encoder column of the pack list
    heads = [tree.headerItem().text(i) for i in range(tree.columnCount())]
    enc = heads.index("Encoder")
    assert tree.topLevelItem(0).text(enc).startswith("MiniLM")
    assert tree.columnWidth(enc) >= tree.sizeHintForColumn(enc)
    assert tree.header().sectionViewportPosition(enc) + tree.columnWidth(enc) <= tree.viewport().width()
    p = win.explain  # the pane titles naming the plugged packs
    win.tabs.setCurrentWidget(p)
    p.mode.setCurrentIndex(p.mode.findData("context"))
    ask(qtbot, p, "The chemical symbol of gold is")
    qtbot.wait(30)
    assert p.with_box.title() == "With memory (context)" and cut_text_of(p.with_box, win) is None
    assert p.packs_label.text() == "from chemistry, geography" and cut_text_of(p.packs_label, win) is None
    assert p.without_box.title() == "Without memory" and cut_text_of(p.without_box, win) is None
    assert win.plugged_label.shown() == win.plugged_label.text() == "Plugged in: chemistry, geography"
