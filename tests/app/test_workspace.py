"""Workspace panel and settings: plug/unplug persists; files of old versions migrate;
unreadable files give a clear message and lose nothing."""
from __future__ import annotations

import json
import threading

from PySide6.QtCore import Qt

from .conftest import wait_ready


def test_plug_unplug_checkbox_updates_the_workspace_file(qtbot, make_ctx, small_pack):
    from app.views.workspace_panel import WorkspacePanel
    from app.workspace import Workspace

    path = str(small_pack.resolve())
    ctx = make_ctx([path])
    panel = WorkspacePanel(ctx)
    qtbot.addWidget(panel)
    item = panel.item_for(path)
    assert item.checkState(0) == Qt.CheckState.Checked
    qtbot.waitUntil(lambda: item.text(1) == "10", timeout=10_000)  # entry count (counted in the background)
    assert "MiniLM" in item.text(2)  # encoder

    item.setCheckState(0, Qt.CheckState.Unchecked)
    saved = json.loads((ctx.workspace.folder / "workspace.json").read_text())
    assert saved["packs"] == [{"path": path, "plugged": False}]
    assert Workspace.load(ctx.workspace.folder).plugged() == []

    item.setCheckState(0, Qt.CheckState.Checked)
    assert Workspace.load(ctx.workspace.folder).plugged() == [path]


def test_the_list_follows_the_pack_shown_when_another_view_changes_it(qtbot, make_ctx, small_pack, tmp_path):
    """Opening an explanation's entry from another pack shows that pack in the browser; the
    workspace list selects it too (it kept the old pack highlighted)."""
    import shutil

    from app.views.workspace_panel import WorkspacePanel

    a = str(small_pack.resolve())
    b = str(tmp_path / "other.plugmem")
    shutil.copy(a, b)
    ctx = make_ctx([a, b])
    ctx.set_current(a)
    panel = WorkspacePanel(ctx)
    qtbot.addWidget(panel)
    assert panel.selected_path() == a
    ctx.set_current(b)  # what MainWindow.open_entry does
    assert panel.selected_path() == b and ctx.current == b
    panel.tree.setCurrentItem(panel.item_for(a))  # and a click in the list still changes it
    assert ctx.current == a


def test_new_pack_then_detach(qtbot, make_ctx, tmp_path, caplog):
    from app.views.workspace_panel import WorkspacePanel

    ctx = make_ctx()
    panel = WorkspacePanel(ctx)
    qtbot.addWidget(panel)
    target = tmp_path / "ws" / "notes.plugmem"
    go_on = threading.Event()
    encoder = ctx.encoder_provider
    ctx.encoder_provider = lambda: (go_on.wait(30), encoder())[1]  # hold the writer while it creates the pack
    p = panel.new_pack(str(target))
    target.write_bytes(b"")  # the file SQLite makes before the schema is in it
    assert ctx.reader(p) is None  # what a view does at once: no pack yet, and that is no error
    panel.refresh_counts(p)  # a count refresh while the file is there without its schema
    assert panel.item_for(p).text(2) == "creating…"  # it said "unreadable" for a second
    target.unlink()
    go_on.set()
    wait_ready(qtbot, ctx, p)
    assert ctx.reader(p) is not None
    assert "cannot open" not in caplog.text  # creating a pack logged 'not a PlugMem pack' twice
    assert target.exists() and ctx.workspace.paths() == [p] and ctx.current == p
    qtbot.waitUntil(lambda: panel.item_for(p).text(1) == "0", timeout=5_000)
    panel.tree.setCurrentItem(panel.item_for(p))
    panel.detach_selected()
    assert ctx.workspace.paths() == [] and panel.tree.topLevelItemCount() == 0
    assert target.exists()  # detaching never deletes the file


def test_opening_a_file_that_is_not_a_pack_says_so(qtbot, make_ctx, tmp_path):
    from app.views.workspace_panel import WorkspacePanel

    bogus = tmp_path / "notes.plugmem"
    bogus.write_text("this is not SQLite\n" * 20)
    ctx = make_ctx()
    panel = WorkspacePanel(ctx)
    qtbot.addWidget(panel)
    with qtbot.waitSignal(ctx.notifier.message, timeout=30_000) as sig:
        panel.open_pack(str(bogus))
    level, text = sig.args
    assert level == "error" and "notes.plugmem" in text
    assert "Traceback" not in text
    assert bogus.read_text().startswith("this is not SQLite")  # untouched


def test_workspace_file_migrates_from_version_0(tmp_path):
    from app.workspace import Workspace

    (tmp_path / "workspace.json").write_text(json.dumps({"attached": ["/a.plugmem", "/b.plugmem"], "plugged": ["/b.plugmem"]}))
    ws = Workspace.load(tmp_path)
    from app.workspace import WORKSPACE_VERSION

    assert [(p.path, p.plugged) for p in ws.packs] == [("/a.plugmem", False), ("/b.plugmem", True)]
    assert ws.version == WORKSPACE_VERSION and ws.reader is None and ws.dpm_branch is None


def test_unreadable_workspace_file_is_kept_aside_with_a_clear_message(tmp_path):
    import pytest

    from app.workspace import Workspace, WorkspaceError

    (tmp_path / "workspace.json").write_text("{not json")
    with pytest.raises(WorkspaceError, match="workspace.json"):
        Workspace.load(tmp_path)
    assert (tmp_path / "workspace.json.bad").read_text() == "{not json"


def test_settings_are_typed_and_migrated(qapp):
    from app.settings import SETTINGS_VERSION, AppSettings, load_settings, qsettings, save_settings

    qs = qsettings()
    qs.setValue("settings/json", json.dumps({"version": 1, "semantic": True, "workspace": "/w", "search_k": "50"}))
    s = load_settings(qs)
    assert (s.version, s.search_mode, s.last_workspace, s.search_k) == (SETTINGS_VERSION, "semantic", "/w", 50)
    s.sort = "nonsense"
    save_settings(s, qs)
    assert load_settings(qs).sort == "id"  # invalid values fall back to defaults
    qs.setValue("settings/json", "{broken")
    assert load_settings(qs) == AppSettings()
    qs.remove("settings/json")


def test_window_geometry_and_columns_are_restored(qtbot, make_ctx, tmp_path):
    from app.main_window import MainWindow

    ctx = make_ctx()
    win = MainWindow(ctx)
    qtbot.addWidget(win)
    win.show()
    win.resize(700, 520)  # the offscreen screen is small: Qt may clamp it; compare what it got
    qtbot.wait(50)
    size = (win.width(), win.height())
    text_col = win.browser.model.columns().index("text")
    win.browser.view.setColumnWidth(text_col, 333)
    win.editor_dock.hide()
    win.close()  # saves state and closes the context

    ctx2 = make_ctx(folder=tmp_path / "ws2")
    win2 = MainWindow(ctx2)
    qtbot.addWidget(win2)
    # (the offscreen screen is 800 px wide, so Qt clamps widths; heights come back exactly)
    assert win2.height() == size[1] and win2.height() != 860
    assert win2.browser.view.columnWidth(text_col) == 333
    assert win2.editor_dock.isHidden()
    assert ctx2.settings.last_workspace == "" and win2.ctx.workspace.folder.name == "ws2"
    win2.close()
    from app.settings import load_settings

    assert load_settings().last_workspace.endswith("ws2")  # the last workspace opens next time


def test_export_and_check_from_the_panel(qtbot, make_ctx, small_pack, tmp_path):
    from app.views.workspace_panel import WorkspacePanel

    path = str(small_pack.resolve())
    ctx = make_ctx([path])
    panel = WorkspacePanel(ctx)
    qtbot.addWidget(panel)
    dest = tmp_path / "out.jsonl"
    with qtbot.waitSignal(ctx.notifier.message, timeout=20_000) as sig:
        panel.export_pack(str(dest), path)
    assert sig.args[0] == "info" and "Exported 10 entries" in sig.args[1]
    lines = dest.read_text().splitlines()
    assert len(lines) == 10 and "Paris is the capital of France." in lines[0]

    bad = panel.export_pack(str(tmp_path / "out.xlsx"), path)
    assert bad is None and "choose a .jsonl or .csv" in ctx.notifier.history[-1][1]

    with qtbot.waitSignal(panel.check_done, timeout=60_000) as sig:
        panel.check(path)
    assert sig.args[1]["ok"], sig.args[1]


def test_prepare_for_fast_answers_runs_as_a_job_and_fills_the_state_store(qtbot, make_ctx, small_pack, tmp_path):
    """Pack menu → "Prepare for fast answers": a job reads every entry through the workspace's
    reader once; the states are then on disk for the next session's memory-branch answers."""
    from app.views.workspace_panel import WorkspacePanel
    from engine.mechanisms import dpm
    from engine.reader import load_reader
    from engine.mechanisms.dpm.entry_store import EntryStateStore
    from engine.reader.tiny import make_tiny_reader
    from engine.store import Pack

    from tests.engine.test_dpm import copy_branch

    folder = make_tiny_reader(seed=0).save(tmp_path / "tiny-reader")
    reader = load_reader(folder)
    branch_dir = dpm.save(copy_branch(reader), tmp_path / "branch")
    path = str(small_pack.resolve())
    ctx = make_ctx([path])
    ctx.workspace.reader, ctx.workspace.dpm_branch = str(folder), str(branch_dir)
    panel = WorkspacePanel(ctx)
    qtbot.addWidget(panel)
    action = next(a for a in panel.context_menu(path).actions() if a.text() == "Prepare for fast answers")
    with qtbot.waitSignal(ctx.jobs.finished, timeout=120_000) as sig:
        action.trigger()
    assert sig.args[1]["read"] == 10 and sig.args[1]["entries"] == 10
    with Pack.open(path, readonly=True) as pack:
        texts = [e.text for e in pack.page(0, 100)]
    with EntryStateStore.for_branch(reader, dpm.load(branch_dir, reader)) as store:
        assert len(texts) == 10 and store.missing(texts) == []

    from app.views.workspace_panel import start_prepare_states

    assert start_prepare_states(ctx, []) is None
    assert "no pack: plug or select one first" in ctx.notifier.history[-1][1]


def test_every_mode_list_of_the_app_is_the_registry(qapp):
    """The mode lists of Ask, Evaluation and the settings read engine.mechanisms (they were
    written out four times)."""
    from app import evaluations, settings
    from app.views import evaluation, explain
    from engine.mechanisms import mode_names, modes

    assert [key for _, key, _ in explain.MODES] == list(mode_names())
    assert [key for _, key in evaluation.MODES] == list(mode_names())
    assert evaluations.MODES == mode_names()
    assert [label for label, _, _ in explain.MODES] == [m.label for m in modes()]
    assert settings.AppSettings.from_dict({"ask_mode": "magic"}).ask_mode == mode_names()[0]
    assert settings.AppSettings.from_dict({"ask_mode": "context"}).ask_mode == "context"
