"""GUI benchmark: a 1M-entry pack in the memory browser's table.

Measures, on the same id-only model and view the browser uses
(``app.views.browser.make_entry_view`` over ``EntryTableModel``):

* **time to first painted rows**: from opening the pack (read-only, as the app's GUI
  reader) to the first paint of the table's viewport with rows in it;
* **event-loop stalls** while scrolling: a 5 ms heartbeat timer runs throughout; each
  gap between its ticks is one sample (a gap of 5 ms = no stall). The driver scrolls at
  60 steps a second: line steps, page steps, random jumps, drags to the ends; then the
  same again while a job runs in a child process polled by the app's JobWatcher;
* the other things the GUI thread does on such a pack: a status-filter reload, a
  full-text search as you type, and the workspace panel's entry counts.

    .venv/bin/python bench/gui_scroll.py [--n 1000000] [--rebuild] [--append]

The pack (no vectors: the table never reads them) is cached in bench/_data/. Under
``QT_QPA_PLATFORM=offscreen`` by default; with a display (e.g. ``xvfb-run -a``) pass
``--display`` to paint through the real window system. ``--append`` adds the figures to
bench/RESULTS.md under "## GUI (issue 4)".
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("QT_API", "pyside6")

from bench._corpus import DATA, sentences  # noqa: E402
from bench._results import publish  # noqa: E402

HEARTBEAT_MS = 5
STEP_MS = 16
STALL_MS = 50


def make_pack(path: Path, n: int) -> None:
    from engine.store import Pack

    texts = sentences()[:20_000]
    rng = random.Random(0)
    tmp = path.with_name(path.name + ".building")
    for suffix in ("", "-wal", "-shm"):
        Path(str(tmp) + suffix).unlink(missing_ok=True)
    t = time.perf_counter()
    with Pack.create(tmp, name=f"gui-{n}") as p:
        step = 20_000
        for lo in range(0, n, step):
            m = min(step, n - lo)
            recs = []
            for j in range(m):
                s = texts[rng.randrange(len(texts))]
                recs.append({"text": s, "title": " ".join(s.split()[:3]), "source": f"bench.txt:{lo + j + 1}",
                             "tags": ["bench", f"t{(lo + j) % 7}"]})
            p.add_many(recs, author="bench")
            print(f"\r  building the pack: {lo + m:,}/{n:,} ({time.perf_counter() - t:.0f} s)", end="", flush=True)
        # a few disabled entries, so that the status filter has something to do
        p.set_status(list(range(1, n + 1, 1000)), "disabled", author="bench")
    print()
    os.replace(tmp, path)


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def summary(gaps: list[float]) -> dict:
    return {"n": len(gaps), "p50": pct(gaps, 50), "p99": pct(gaps, 99), "max": max(gaps) if gaps else float("nan"),
            "over": sum(g > STALL_MS for g in gaps)}


class Heartbeat:
    """A precise 5 ms timer; every gap between its ticks is recorded while ``on``."""

    def __init__(self) -> None:
        from PySide6.QtCore import Qt, QTimer

        self.gaps: list[float] = []
        self.cpu: list[float] = []  # GUI-thread CPU time spent within each gap (ms)
        self.on = False
        self._last = None
        self._last_cpu = 0.0
        self.timer = QTimer()
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.setInterval(HEARTBEAT_MS)
        self.timer.timeout.connect(self._tick)

    def _tick(self) -> None:
        now, cpu = time.perf_counter(), time.thread_time()
        if self.on and self._last is not None:
            self.gaps.append((now - self._last) * 1000)
            self.cpu.append((cpu - self._last_cpu) * 1000)
        self._last, self._last_cpu = now, cpu

    def start(self) -> None:
        self._last = None
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()


def run_steps(app, steps, hb: Heartbeat) -> dict:
    """Run the driver steps at 60 Hz with the heartbeat on; returns the gap statistics."""
    from PySide6.QtCore import QTimer

    hb.gaps, hb.cpu = [], []
    it = iter(steps)
    done = [False]
    driver = QTimer()
    driver.setInterval(STEP_MS)

    def step():
        try:
            next(it)()
        except StopIteration:
            driver.stop()
            done[0] = True

    driver.timeout.connect(step)
    hb.on = True
    driver.start()
    while not done[0]:
        app.processEvents()
        time.sleep(0.0005)
    hb.on = False
    out = summary(hb.gaps)
    out["cpu_p50"], out["cpu_p99"], out["cpu_max"] = pct(hb.cpu, 50), pct(hb.cpu, 99), max(hb.cpu)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--display", action="store_true", help="use the real display (else offscreen)")
    ap.add_argument("--append", action="store_true", help="append the figures to bench/RESULTS.md")
    a = ap.parse_args()
    if not a.display:
        os.environ["QT_QPA_PLATFORM"] = "offscreen"

    DATA.mkdir(parents=True, exist_ok=True)
    path = DATA / f"gui_{a.n}.plugmem"
    if a.rebuild or not path.exists():
        make_pack(path, a.n)

    from PySide6.QtCore import QEvent, QObject
    from PySide6.QtWidgets import QApplication

    from app.models.entry_table import EntryTableModel
    from app.theme import apply_theme
    from app.views.browser import make_entry_view
    from engine.store import Pack

    app = QApplication.instance() or QApplication([sys.argv[0]])
    apply_theme(app)
    res: dict = {"n": a.n, "platform": app.platformName()}

    # ---------------------------------------------------------------- time to first rows
    class FirstPaint(QObject):
        def __init__(self, model) -> None:
            super().__init__()
            self.model, self.at = model, None

        def eventFilter(self, obj, ev):  # noqa: N802 - Qt API
            if self.at is None and ev.type() == QEvent.Type.Paint and self.model.rowCount() > 0:
                self.at = time.perf_counter()
            return False

    from app.reads import ReadService

    reads = ReadService()  # the app's background reads (id lists, full-text search, counts)

    def new_model(pack):
        model = EntryTableModel()
        model.loader = lambda fn, done: reads.submit(str(path), fn, done)
        return model

    opens = []
    for _ in range(3):
        t0 = time.perf_counter()
        pack = Pack.open(path, readonly=True)
        t_open = time.perf_counter()
        model = new_model(pack)
        view = make_entry_view(model)
        watch = FirstPaint(model)
        view.viewport().installEventFilter(watch)
        view.resize(1100, 700)
        model.set_pack(pack)
        t_ids = time.perf_counter()
        view.show()
        while (watch.at is None or model.loading) and time.perf_counter() - t0 < 60:
            app.processEvents()
            time.sleep(0.001)
        t_all = time.perf_counter()
        opens.append({"open": t_open - t0, "ids": t_ids - t_open, "paint": watch.at - t_ids, "total": watch.at - t0,
                      "rows_read": model.rows_fetched, "all_ids": t_all - t0, "rows": model.rowCount()})
        view.close()
        view.deleteLater()
        model.set_pack(None)
        pack.close()
        app.processEvents()
    res["first_rows"] = opens

    # ---------------------------------------------------------------- scrolling
    pack = Pack.open(path, readonly=True)
    model = new_model(pack)
    view = make_entry_view(model)
    view.resize(1100, 700)
    model.set_pack(pack)
    view.show()
    while model.loading:
        app.processEvents()
        time.sleep(0.001)
    sb = view.verticalScrollBar()
    rng = random.Random(1)
    hb = Heartbeat()
    hb.start()

    def scroll_steps(k: int):
        out = []
        out += [lambda: sb.setValue(sb.value() + 3)] * (k // 4)  # wheel-like steps
        out += [lambda: sb.triggerAction(sb.SliderAction.SliderPageStepAdd)] * (k // 4)
        out += [lambda: sb.setValue(rng.randrange(sb.maximum() + 1))] * (k // 4)  # random jumps
        out += [(lambda: sb.setValue(sb.maximum())) if i % 2 == 0 else (lambda: sb.setValue(0)) for i in range(k // 4)]
        return out

    res["scroll"] = run_steps(app, scroll_steps(1200), hb)
    res["scroll_rows_read"] = model.rows_fetched

    # the same with background reads going on: a full-text search and an id reload (status
    # filter flip) every second, as a user typing in the search box and filtering would cause
    queries = ["the", "return", "tensor", "value of the", "function"]
    bg = {"searches": 0, "reloads": 0}

    def with_reads(k: int):
        out = scroll_steps(k)
        for i in range(0, len(out), 60):
            q = queries[(i // 60) % len(queries)]
            out[i] = lambda q=q: (reads.submit(str(path), lambda p: p.fts(q, limit=200),
                                               lambda r: bg.__setitem__("searches", bg["searches"] + 1)), sb.setValue(0))
            if i + 30 < len(out):
                out[i + 30] = lambda i=i: (model.set_filter("disabled" if (i // 60) % 2 == 0 else None),
                                           bg.__setitem__("reloads", bg["reloads"] + 1))
        return out

    res["scroll_with_reads"] = run_steps(app, with_reads(1200), hb)
    res["background"] = dict(bg)
    model.set_filter(None)
    while model.loading or reads.pending:
        app.processEvents()
        time.sleep(0.001)

    # the same while a job runs in a child process, polled by the app's JobWatcher
    import tempfile

    from app.jobs import JobWatcher

    with tempfile.TemporaryDirectory() as tmp:
        jobs = JobWatcher(Path(tmp) / "jobs.sqlite")
        jid = jobs.start("count", "engine.jobs.demo:count_job", {"n": 100_000, "delay": 0.002}, title="bench job")
        seen = []
        jobs.progress.connect(lambda *x: seen.append(x[1]))
        t = time.perf_counter()
        while not seen and time.perf_counter() - t < 60:  # wait until the child reports
            app.processEvents()
            time.sleep(0.01)
        res["scroll_with_job"] = run_steps(app, scroll_steps(1200), hb)
        res["job_events"] = len(seen)
        jobs.cancel(jid)
        t = time.perf_counter()
        while jobs.is_running() and time.perf_counter() - t < 30:
            app.processEvents()
            time.sleep(0.01)
        jobs.close()
    hb.stop()

    # ---------------------------------------------------------------- other GUI-thread work
    def timed(fn, reps=5):
        xs = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            xs.append((time.perf_counter() - t) * 1000)
        return {"p50": statistics.median(xs), "max": max(xs)}

    def settle():
        while model.loading or reads.pending:
            app.processEvents()
            time.sleep(0.001)

    def filter_to(status):
        t = time.perf_counter()
        model.set_filter(status)
        gui = (time.perf_counter() - t) * 1000
        settle()
        return gui, (time.perf_counter() - t) * 1000

    for key, status in (("filter_disabled", "disabled"), ("filter_all", None)):
        runs = [filter_to(status) for _ in range(3)]
        res[key] = {"gui": statistics.median(g for g, _ in runs), "done": statistics.median(d for _, d in runs)}
    words = ["the", "return", "tensor", "value of", "function returns the"]
    res["fts_typing"] = {w: timed(lambda w=w: pack.fts(w, limit=200), 3)["p50"] for w in words}
    res["counts"] = timed(lambda: (pack.count("active"), pack.count("disabled")), 3)
    res["tags"] = timed(lambda: pack.tags(), 1)
    view.close()
    model.set_pack(None)
    pack.close()
    reads.close()

    report = render(res)
    publish(report, a.append)
    return 0


def render(r: dict) -> str:
    when = time.strftime("%Y-%m-%d %H:%M")
    fr = r["first_rows"]
    lines = [
        f"### gui_scroll.py — {when} ({r['n']:,} entries, Qt platform {r['platform']}, {platform.machine()}, "
        f"{os.cpu_count()} cores shared with other work)",
        "",
        "Time to first painted rows (open the pack read-only → first paint of the table with rows), three opens:",
        "",
        "| open | pack open ms | first page of ids ms | layout + paint ms | **first rows painted ms** | rows read | all ids loaded (background) ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, o in enumerate(fr, 1):
        lines.append(f"| {i} | {o['open'] * 1000:.0f} | {o['ids'] * 1000:.0f} | {o['paint'] * 1000:.0f} | "
                     f"**{o['total'] * 1000:.0f}** | {o['rows_read']} | {o['all_ids'] * 1000:.0f} ({o['rows']:,} rows) |")
    lines += [
        "",
        f"Event-loop gaps while scrolling (heartbeat every {HEARTBEAT_MS} ms; scroll steps at 60 Hz: "
        "line steps, page steps, random jumps, jumps to the ends; 1,200 steps per run):",
        "",
        f"| run | samples | gap p50 ms | gap p99 ms | gap max ms | gaps > {STALL_MS} ms | GUI-thread CPU per gap p50 / p99 / max ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, label in (("scroll", "scrolling"),
                       ("scroll_with_reads", "scrolling + a search and an id reload in the background every second"),
                       ("scroll_with_job", "scrolling while a job runs (JobWatcher polling)")):
        s = r[key]
        lines.append(f"| {label} | {s['n']:,} | {s['p50']:.1f} | {s['p99']:.1f} | {s['max']:.1f} | {s['over']} | "
                     f"{s['cpu_p50']:.1f} / {s['cpu_p99']:.1f} / {s['cpu_max']:.1f} |")
    lines += [
        "",
        f"Rows built from SQLite during the scroll run: {r['scroll_rows_read']:,} (blocks of 128 around what is painted). "
        f"Job progress events handled while scrolling: {r['job_events']}.",
        "",
        f"Background work done during that run: {r['background']['searches']} searches, {r['background']['reloads']} id reloads.",
        "",
        "Slow reads at this size — they run on the background read thread (app/reads.py), the GUI thread only "
        "starts them (ms, median of 3):",
        "",
        "| work | on the GUI thread | until done |",
        "|---|---|---|",
        f"| status filter → disabled (id reload) | {r['filter_disabled']['gui']:.0f} | {r['filter_disabled']['done']:.0f} |",
        f"| status filter → all (first page, then all ids) | {r['filter_all']['gui']:.0f} | {r['filter_all']['done']:.0f} |",
        f"| pack counts (active + disabled) | 0 | {r['counts']['p50']:.0f} |",
        f"| tag list (GROUP BY) | 0 | {r['tags']['p50']:.0f} |",
        "| full-text search, top 200 | 0 | " + " · ".join(f"“{w}” {ms:.0f}" for w, ms in r["fts_typing"].items()) + " |",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
