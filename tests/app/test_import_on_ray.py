"""Import → "Files, encoded on Ray…" (issue 22): the same import with the keys encoded by a
local Ray instance; without Ray installed the app says how to get it and imports nothing."""
from __future__ import annotations

import json
import sys

import pytest

from .conftest import FACTS, open_window


def ray_action(win):
    menu = win.workspace_panel.buttons["import"].menu()
    return next(a for a in menu.actions() if a.text() == "Files, encoded on Ray…")


def test_without_ray_the_app_says_how_to_get_it(qtbot, make_ctx, small_pack, monkeypatch):
    from PySide6.QtWidgets import QFileDialog

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as where it is absent
    asked = []
    monkeypatch.setattr(QFileDialog, "getOpenFileNames", lambda *a, **k: asked.append(a) or ([], ""))
    path = str(small_pack.resolve())
    ctx = make_ctx([path])
    win = open_window(qtbot, ctx, path)
    try:
        ray_action(win).trigger()
        level, shown = ctx.notifier.history[-1]
        assert level == "error" and "Ray is not installed" in shown and shown.endswith("pip install plugmem-studio[scale]")
        assert not asked and not ctx.is_busy(path)  # no file asked for, no job started
        assert win.browser.model.rowCount() == len(FACTS)
    finally:
        win.close()


def test_files_imported_on_ray_reach_the_pack(qtbot, make_ctx, small_pack, tmp_path, monkeypatch):
    pytest.importorskip("ray")
    from PySide6.QtWidgets import QFileDialog

    src = tmp_path / "drugs.jsonl"
    src.write_text("".join(json.dumps({"text": f"Drug {i} is taken {i} times a day."}) + "\n" for i in range(6)))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "fine"}) + "\n" + "{not json\n")
    picks = [[str(bad)], [str(src)]]
    monkeypatch.setattr(QFileDialog, "getOpenFileNames", lambda *a, **k: (picks.pop(0), ""))
    path = str(small_pack.resolve())
    ctx = make_ctx([path])
    win = open_window(qtbot, ctx, path)
    try:
        # a bad line: refused on Ray as locally, with file:line, nothing imported
        with qtbot.waitSignal(ctx.jobs.failed, timeout=240_000) as sig:
            ray_action(win).trigger()
        assert "bad.jsonl:2" in sig.args[1], sig.args[1]
        qtbot.waitUntil(lambda: not ctx.is_busy(path), timeout=30_000)
        assert win.browser.model.rowCount() == len(FACTS)
        with qtbot.waitSignal(ctx.jobs.finished, timeout=240_000):
            ray_action(win).trigger()
        qtbot.waitUntil(lambda: win.browser.model.rowCount() == len(FACTS) + 6, timeout=60_000)
        assert [r.kind for r in ctx.jobs.records()].count("ray_build") == 2  # both ran as Ray builds
    finally:
        win.close()
