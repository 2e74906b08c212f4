"""The weight-patch pictures of docs/screenshots/, from a real window (run it under Xvfb with
QT_QPA_PLATFORM=xcb at 1280 x 800).

    python scripts/screenshots_patches.py WORKSPACE OUT_DIR --entry PACK_STEM:ID --ask PROMPT

WORKSPACE holds the demo packs and ``patches/<name>/`` folders (made with ``plugmem patch
create``); every patch there is applied in name order. Writes ``patch_dialog.png`` (the dialog
prefilled from the entry, Advanced open), ``patches_explain.png`` (the window on Ask and explain
after *Answer without each patch*, the Patches dock beside it) and ``patches_dock.png``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("workspace", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--entry", required=True, help="PACK_STEM:ID, the entry the dialog is prefilled from")
    ap.add_argument("--ask", required=True)
    ap.add_argument("--mode", default="context")
    ap.add_argument("--timeout", type=float, default=900)
    a = ap.parse_args()

    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    from app.__main__ import open_workspace
    from app.context import AppContext
    from app.main_window import MainWindow
    from app.notifier import Notifier, setup_logging
    from app.theme import apply_theme
    from app.views.patches import WritePatchDialog, prefill_from_entry

    setup_logging()
    app = QApplication.instance() or QApplication([sys.argv[0]])
    apply_theme(app)
    notifier = Notifier(dialogs=False)
    ws, _ = open_workspace(a.workspace.resolve(), notifier)
    ws.patches = sorted(p.name for p in ws.patches_folder.iterdir() if (p / "config.json").is_file())
    stem, entry_id = a.entry.split(":")
    pack = next(p for p in ws.paths() if Path(p).stem == stem)
    ws.current = pack
    ws.save()
    ctx = AppContext(ws, notifier)
    win = MainWindow(ctx, restore=False)
    win.resize(1280, 800)
    win.move(0, 0)
    win.show()
    ctx.load_encoder()
    ctx.model.load()
    a.out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    st = {"stage": "rows", "wait": 0}

    def shoot(name: str, *tops) -> None:
        app.processEvents()
        try:  # the layout tests' checker: text a user cannot read whole
            from tests.app.cut_text import cut_texts

            for top in tops:
                print(f"{name}: cut text in {type(top).__name__}:", cut_texts(top) or "none", flush=True)
        except ImportError:
            pass
        # the whole X screen (root window), as the user sees it: the dialog is its own window
        app.primaryScreen().grabWindow(0).save(str(a.out / name))
        print("wrote", a.out / name, flush=True)

    def tick() -> None:
        if time.monotonic() - t0 > a.timeout:
            print("timed out at stage", st["stage"], file=sys.stderr)
            app.exit(1)
            return
        s = st["stage"]
        if s == "rows" and win.browser.model.rowCount() > 0 and ctx.model.state == "ready":
            win.browser.select_id(int(entry_id))
            dlg = WritePatchDialog(win.patches, prefill_from_entry(ctx.reader(pack), int(entry_id)), win)
            dlg.advanced.setChecked(True)
            dlg.locality.setPlainText("The capital of France is\nThe chemical symbol of gold is")
            dlg.move(330, 120)
            dlg.show()
            st.update(stage="dialog", dlg=dlg, wait=15)
        elif s == "dialog":
            st["wait"] -= 1
            if st["wait"] <= 0:
                shoot("patch_dialog.png", st["dlg"], win)
                st["dlg"].reject()
                win.tabs.setCurrentWidget(win.explain)
                win.explain.mode.setCurrentIndex(max(0, win.explain.mode.findData(a.mode)))
                win.explain.prompt.setText(a.ask)
                win.explain.without_done.connect(lambda e: st.update(stage="shoot", wait=15))
                win.explain.answered.connect(lambda e: st.update(stage="answered"))
                win.explain.ask()
                st["stage"] = "asking"
        elif s == "answered":
            st["stage"] = "without"
            if not win.explain.answer_without_patches():
                print("no patch applied: nothing to answer without", file=sys.stderr)
                app.exit(1)
        elif s == "shoot":
            st["wait"] -= 1
            if st["wait"] <= 0:
                shoot("patches_explain.png", win)
                win.patches_dock.grab().save(str(a.out / "patches_dock.png"))
                print("wrote", a.out / "patches_dock.png", flush=True)
                app.exit(0)

    timer = QTimer()
    timer.timeout.connect(tick)
    timer.start(100)
    try:
        return app.exec()
    finally:
        timer.stop()
        ctx.close()


if __name__ == "__main__":
    raise SystemExit(main())
