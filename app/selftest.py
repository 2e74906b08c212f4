"""`plugmem-studio --self-test`: prove an installed bundle works, offscreen, in under a minute.

Steps (each printed; the first failure exits non-zero with the reason):
1. Qt starts offscreen and the main window of the demo workspace paints;
2. the demo packs open (copied from the bundle on first start) with their key index;
3. one full-text and one semantic search return the expected entry;
4. the default reader answers one demo probe WITH memory, and the answer is checked.

It runs in a private, temporary user folder unless ``--home`` is given, so it never
touches the user's own workspace.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

PROBE = {"prompt": "The capital of Japan is", "answer": "Tokyo", "query": "capital of Japan", "domain": "geography"}


class SelfTestError(RuntimeError):
    pass


def _step(name: str, t0: float) -> None:
    print(f"self-test: {name} ({time.perf_counter() - t0:.1f} s)", flush=True)


def run(home: Path) -> None:
    t0 = time.perf_counter()
    os.environ["PLUGMEM_HOME"] = str(home)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtWidgets import QApplication

    from app.theme import apply_theme

    app = QApplication.instance() or QApplication([sys.argv[0]])
    apply_theme(app)
    _step("Qt started", t0)

    from engine.demo import ensure_demo_workspace
    from engine.encode import get_default_encoder
    from engine.memory import Memory

    ws = ensure_demo_workspace()
    encoder = get_default_encoder()
    packs = {Path(p).stem: p for p in ws["packs"]}
    if PROBE["domain"] not in packs:
        raise SelfTestError(f"demo pack {PROBE['domain']!r} missing (found: {', '.join(packs) or 'none'})")
    memories = [Memory.open(p, encoder) for p in packs.values()]
    try:
        geo = memories[list(packs).index(PROBE["domain"])]
        n = geo.pack.count("active")
        if n < 100:
            raise SelfTestError(f"demo pack {PROBE['domain']} has only {n} active entries")
        _step("demo workspace open: " + ", ".join(f"{k} ({m.pack.count():,} entries)" for k, m in zip(packs, memories)), t0)

        fts = geo.text_search("Japan capital", k=5)
        if not any("Tokyo" in h.entry.text for h in fts):
            raise SelfTestError(f"full-text search for 'Japan capital' did not find Tokyo: {[h.entry.text for h in fts]}")
        hits = geo.search(PROBE["query"], k=5)
        if not any(PROBE["answer"] in h.entry.text for h in hits):
            raise SelfTestError(f"semantic search for {PROBE['query']!r} did not find {PROBE['answer']}: "
                                f"{[h.entry.text for h in hits]}")
        _step("searches ok", t0)

        _show_main_window(Path(ws["folder"]), t0)

        from engine.explain.predict import Predictor
        from engine.session import open_session

        # need_branch=False: without the shipped branch the context mode still proves the
        # reader reads memory.
        session = open_session(need_branch=False)
        mode = "dpm" if session.branch is not None else "context"
        if session.note:
            print(f"self-test: {session.note}; using context mode", flush=True)
        predictor = Predictor.from_session(session)
        rec = predictor.predict(PROBE["prompt"], memories, mode=mode, k=5)
        answer = rec.answer.strip()
        if not answer.lower().startswith(PROBE["answer"].lower()):
            raise SelfTestError(f"probe {PROBE['prompt']!r} answered {answer!r}, expected {PROBE['answer']!r}")
        if not rec.retrieved:
            raise SelfTestError("the answer came with no retrieved entries")
        _step(f"probe answered with memory ({mode}): {PROBE['prompt']} -> {answer}", t0)
    finally:
        for m in memories:
            m.close()
    app.processEvents()


def _show_main_window(folder: Path, t0: float, timeout: float = 120.0) -> None:
    """Open the real main window on the demo workspace and wait for its first rows."""
    from PySide6.QtCore import QCoreApplication
    from PySide6.QtWidgets import QApplication

    from app.__main__ import open_workspace
    from app.context import AppContext
    from app.main_window import MainWindow
    from app.notifier import Notifier
    from app.settings import AppSettings

    QCoreApplication.setOrganizationName("plugmem-selftest")
    notifier = Notifier(dialogs=False)
    ws, _ = open_workspace(folder, notifier)
    if not ws.packs:
        raise SelfTestError(f"{folder}: the demo workspace has no packs")
    ctx = AppContext(ws, notifier, AppSettings())
    win = MainWindow(ctx, restore=False)
    try:
        win.show()
        ctx.load_encoder()
        end = time.monotonic() + timeout
        while win.browser.model.rowCount() == 0 and time.monotonic() < end:
            QApplication.processEvents()
            time.sleep(0.02)
        errors = [text for level, text in notifier.history if level == "error"]
        if errors:
            raise SelfTestError(f"the main window reported: {errors[0]}")
        if win.browser.model.rowCount() == 0:
            raise SelfTestError(f"the main window showed no entries within {timeout:.0f} s")
        win.grab()  # paint it once
        _step(f"main window painted {win.browser.model.rowCount():,} rows", t0)
    finally:
        win.close()
        ctx.close()
        QApplication.processEvents()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="plugmem-studio --self-test")
    p.add_argument("--home", type=Path, help="user data folder to use (default: a temporary one)")
    a = p.parse_args(argv)
    try:
        if a.home:
            run(a.home)
        else:
            with tempfile.TemporaryDirectory(prefix="plugmem-selftest-") as tmp:
                run(Path(tmp))
    except SelfTestError as exc:
        print(f"self-test FAILED: {exc}", file=sys.stderr, flush=True)
        return 1
    except Exception as exc:  # anything else is also a failure with its reason
        import traceback

        traceback.print_exc()
        print(f"self-test FAILED: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 1
    print("self-test passed", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
