"""`plugmem-studio` / `python -m app`: the desktop front end.

    python -m app [--workspace DIR] [--screenshot FILE.png] [--timeout S]

First start: the bundled demo workspace is built in the background (progress shown);
afterwards the last workspace opens. ``--screenshot`` opens the window, waits until
the first rows are painted, saves the window as PNG and exits 0.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.workspace import Workspace

os.environ.setdefault("QT_API", "pyside6")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

log = logging.getLogger("app")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="plugmem-studio", description="PlugMem Studio: curate a language model's plug-in memory.")
    p.add_argument("--workspace", metavar="DIR", help="workspace folder (holds workspace.json; *.plugmem in it are attached)")
    p.add_argument("--screenshot", metavar="FILE", help="save a PNG of the window once rows are painted, then exit")
    p.add_argument("--timeout", type=float, default=300.0, help="give up on --screenshot after this many seconds")
    p.add_argument("--select", type=int, default=None, help=argparse.SUPPRESS)  # screenshot: select an entry id
    p.add_argument("--search", default=None, help=argparse.SUPPRESS)  # screenshot: type a query
    p.add_argument("--ask", default=None, help=argparse.SUPPRESS)  # screenshot: ask this, show the explanation
    p.add_argument("--mode", default=None, help=argparse.SUPPRESS)  # screenshot: ask in this mode
    p.add_argument("--tab", default=None, help=argparse.SUPPRESS)  # screenshot: memory | ask | evaluation | entities
    p.add_argument("--evaluate", default=None, help=argparse.SUPPRESS)  # screenshot: run this evaluation file
    p.add_argument("--limit", type=int, default=30, help=argparse.SUPPRESS)  # screenshot: of that many records
    # bench/bench_startup.py: print "painted" once the first rows are painted, then quit
    p.add_argument("--startup-probe", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def open_workspace(folder: Path, notifier) -> tuple["Workspace", bool]:
    """The workspace in ``folder``; second value True when it is brand new (nothing attached)."""
    from app.workspace import Workspace, WorkspaceError

    existed = Workspace.exists(folder)
    try:
        ws = Workspace.load(folder)
    except WorkspaceError as exc:
        notifier.error("Opening the workspace", exc)
        ws = Workspace(folder)
        existed = False
    if not existed:
        for f in sorted(folder.glob("*.plugmem")) if folder.is_dir() else []:
            ws.attach(f, plugged=True)
        if ws.packs:
            ws.save()
    return ws, not existed and not ws.packs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from app.platform_check import window_problem

    problem = window_problem()
    if problem:
        print(f"plugmem-studio: {problem}", file=sys.stderr)
        return 3
    from PySide6.QtCore import QCoreApplication
    from PySide6.QtWidgets import QApplication

    from app.context import AppContext, default_workspace_folder
    from app.main_window import MainWindow
    from app.notifier import Notifier, setup_logging
    from app.settings import load_settings
    from app.theme import apply_theme

    log_file = setup_logging()
    QCoreApplication.setOrganizationName("plugmem")
    QCoreApplication.setApplicationName("plugmem-studio")
    app = QApplication.instance() or QApplication([sys.argv[0]])
    apply_theme(app)
    settings = load_settings()
    notifier = Notifier(dialogs=not args.screenshot)
    # A bug in a slot reaches the user as one clear message (traceback in the log file only).
    sys.excepthook = lambda kind, exc, tb: notifier.error("PlugMem Studio", exc.with_traceback(tb))
    if args.workspace:
        folder = Path(args.workspace).expanduser().resolve()
    elif settings.last_workspace and Path(settings.last_workspace).is_dir():
        folder = Path(settings.last_workspace)
    else:
        folder = default_workspace_folder()
    ws, fresh = open_workspace(folder, notifier)
    ctx = AppContext(ws, notifier, settings)
    win = MainWindow(ctx)
    win.show()
    ctx.load_encoder()
    ctx.model.load()  # the reader (and its memory branch) load in the background
    if fresh:
        if args.workspace:
            notifier.info(f"{folder}: empty workspace; create a pack or open one from the Workspace panel")
        else:
            ctx.build_demo()
    rc = [0]
    if args.screenshot:
        _arm_screenshot(win, Path(args.screenshot), args.timeout, rc, args)
    if args.startup_probe:
        _arm_startup_probe(win)
    log.info("started on workspace %s (log file %s)", folder, log_file)
    try:
        app.exec()
    finally:
        ctx.close()
    return rc[0]


def _arm_startup_probe(win) -> None:
    """Say "painted" on stdout when the browser first paints rows, then quit (start-up benchmark)."""
    from PySide6.QtCore import QEvent, QObject, QTimer
    from PySide6.QtWidgets import QApplication

    class FirstPaint(QObject):
        done = False

        def eventFilter(self, obj, ev):  # noqa: N802 - Qt API
            if not self.done and ev.type() == QEvent.Type.Paint and win.browser.model.rowCount() > 0:
                self.done = True
                # after this paint event has been delivered
                QTimer.singleShot(0, lambda: (print("painted", flush=True), QApplication.quit()))
            return False

    win._startup_probe = FirstPaint(win)
    win.browser.view.viewport().installEventFilter(win._startup_probe)


def _arm_screenshot(win, out: Path, timeout: float, rc: list[int], args: argparse.Namespace) -> None:
    """Poll until rows are painted (and the writer is ready; with --ask, the answer shown), grab, quit."""
    import time

    from PySide6.QtCore import QEvent, QObject, QTimer
    from PySide6.QtWidgets import QApplication

    t0 = time.monotonic()
    select, search, prompt = args.select, args.search, args.ask
    state = {"painted": False, "stage": 0, "answered": prompt is None, "evaluated": args.evaluate is None}
    win.explain.answered.connect(lambda e: state.update(answered=True))
    win.explain.failed.connect(lambda m: state.update(answered=True))
    win.evaluation.run_finished.connect(lambda r: state.update(evaluated=True))
    win.evaluation.run_failed.connect(lambda m: state.update(evaluated=True))

    class PaintWatch(QObject):
        def eventFilter(self, obj, ev):  # noqa: N802 - Qt API
            if ev.type() == QEvent.Type.Paint and win.browser.model.rowCount() > 0:
                state["painted"] = True
            return False

    watch = PaintWatch(win)
    win.browser.view.viewport().installEventFilter(watch)
    timer = QTimer(win)

    def tick():
        if time.monotonic() - t0 > timeout:
            timer.stop()
            print(f"plugmem-studio: no rows painted within {timeout:.0f} s; no screenshot", file=sys.stderr)
            rc[0] = 1
            QApplication.quit()
            return
        if not state["painted"]:
            return
        if state["stage"] == 0:
            state["stage"] = 1
            if search:
                win.browser.search_box.setText(search)
                win.browser.run_search()
            if select is not None:
                win.browser.select_id(select)
            tabs = {"memory": win.browser, "ask": win.explain, "evaluation": win.evaluation, "entities": win.entities}
            if args.tab in tabs:
                win.tabs.setCurrentWidget(tabs[args.tab])
            if prompt:
                win.tabs.setCurrentWidget(win.explain)
                if args.mode:
                    win.explain.mode.setCurrentIndex(max(0, win.explain.mode.findData(args.mode)))
                win.explain.prompt.setText(prompt)
                win.explain.ask()
            if args.evaluate:
                win.tabs.setCurrentWidget(win.evaluation)
                if args.mode:
                    win.evaluation.mode.setCurrentIndex(max(0, win.evaluation.mode.findData(args.mode)))
                win.evaluation.limit.setValue(args.limit)
                win.evaluation.run(args.evaluate)
            return
        if not (state["answered"] and state["evaluated"]):
            return
        if state["stage"] < 12:  # let selection, editor and status bar settle (~1.2 s)
            state["stage"] += 1
            return
        w = ctx_writer_ready(win) and win.ctx.model.state != "loading"
        if not w and time.monotonic() - t0 < timeout / 2:
            return
        timer.stop()
        out.parent.mkdir(parents=True, exist_ok=True)
        ok = win.grab().save(str(out))
        if not ok:
            print(f"plugmem-studio: could not write {out}", file=sys.stderr)
            rc[0] = 1
        QApplication.quit()

    timer.timeout.connect(tick)
    timer.start(100)


def ctx_writer_ready(win) -> bool:
    ctx = win.ctx
    if not ctx.current:
        return True
    w = ctx.writer_if_open(ctx.current)
    return w is None or (w.state == "ready" and w.pending == 0 and bool(ctx.device))


if __name__ == "__main__":
    raise SystemExit(main())
