"""Retake the pictures of docs/screenshots/ on a real window, one flow of the expert's work each.

    python docs/make_screenshots.py [--only NAME[,NAME...]] [--list] [--xvfb :31] [--out DIR]

Each flow drives the real MainWindow (the app's theme, dialogs on, fresh settings) on a fresh
copy of the demo workspace, the way a user would: it clicks, types and waits for jobs, then
grabs the whole 1280 x 800 screen (dialogs and menus included) into ``DIR/NAME.png``. Flows run
one per child process, so none inherits another's settings, job records or open packs.
``--only`` takes flow or picture names. ``--xvfb :N`` starts a virtual X screen of 1280 x 800
on display N for the run (otherwise ``DISPLAY`` must name one); the pictures need xcb, not
the offscreen platform, so that window frames, fonts and style sheet are the real ones.

The demo workspace is built once (about 1.5 minutes on two idle cores) into ``--demo``
(default: the user cache's ``plugmem-screenshots/demo``) and copied for every flow. Flows that
ask the reader load SmolLM2 (a second once cached); the evaluation flows run a few probes on
it, minutes on a loaded 2-core machine. docs/WALKTHROUGH.md shows the pictures in order.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
SIZE = (1280, 800)

# flow name -> the pictures it takes, in the order of docs/WALKTHROUGH.md
FLOWS: dict[str, tuple[str, ...]] = {
    "main": ("main",),
    "pack_menu": ("pack_menu", "status_note"),
    "empty_pack": ("empty_pack_import_menu",),
    "search": ("search",),
    "examples": ("browser_examples",),
    "import_drop": ("jobs_new_job_selected", "jobs_details"),
    "validation": ("edit_validation_disabled_rows",),
    "revert": ("edit_revert_preview", "edit_revert_keeps_version"),
    "save_refused": ("save_during_evaluation",),
    "explain": ("explain", "ask_edit_banner_1280"),
    "patches": ("patch_dialog", "patches_explain", "patches_dock"),
    "probes": ("evaluation_empty_state", "probes_review", "probes_run"),
    "evaluation": ("evaluation", "evaluation_compare"),
    "edit_failures": ("evaluation_edit_failures",),
    "entities": ("entities", "map_tune", "jobs_loss_curve"),
    "slot_plugin": ("explain_slot_plugin", "explain_slot_plugin_gated", "evaluation_with_plugin"),
    "pkm": ("pkm_grow_dialog",),  # pkm_usage.png needs a grown layer (hours on 2 cores): taken by hand
    "pkm_plug": ("pkm_dock", "pkm_explain"),
    "help": ("help_getting_started", "help_about"),
    "narrow": ("narrow_1024",),
}


# ---------------------------------------------------------------------------- parent
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="", help="comma-separated flow or picture names (default: all)")
    p.add_argument("--list", action="store_true", help="list the flows and their pictures")
    p.add_argument("--out", default=str(ROOT / "docs" / "screenshots"))
    p.add_argument("--demo", default=None, help="a built demo workspace folder (built there when missing)")
    p.add_argument("--xvfb", metavar=":N", default=None, help="start Xvfb on this display for the run")
    p.add_argument("--timeout", type=float, default=900, help="seconds one flow may take")
    p.add_argument("--flow", help=argparse.SUPPRESS)  # child: run this one flow
    args = p.parse_args(argv)
    if args.list:
        for name, shots in FLOWS.items():
            print(f"{name:14} {', '.join(shots)}")
        return 0
    demo = Path(args.demo) if args.demo else _cache_dir() / "demo"
    if args.flow:
        return run_flow(args.flow, demo, Path(args.out))
    try:
        flows = pick_flows(args.only)
    except ValueError as exc:
        print(f"make_screenshots: {exc}", file=sys.stderr)
        return 2
    xvfb = None
    env = dict(os.environ)
    if args.xvfb:
        xvfb = subprocess.Popen(["Xvfb", args.xvfb, "-screen", "0", f"{SIZE[0]}x{SIZE[1]}x24", "-nolisten", "tcp"],
                                stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        if xvfb.poll() is not None:
            print(f"make_screenshots: Xvfb could not start on {args.xvfb} (in use?)", file=sys.stderr)
            return 3
        env["DISPLAY"] = args.xvfb
    if not env.get("DISPLAY"):
        print("make_screenshots: no DISPLAY; start Xvfb or pass --xvfb :N", file=sys.stderr)
        return 3
    try:
        build_demo(demo)
        failed = []
        for name in flows:
            with tempfile.TemporaryDirectory(prefix=f"plugmem-shot-{name}-") as tmp:
                child = dict(env, QT_QPA_PLATFORM="xcb", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                             PLUGMEM_HOME=f"{tmp}/home", XDG_CONFIG_HOME=f"{tmp}/config",
                             PYTHONPATH=str(ROOT), TMPDIR=tmp)
                t0 = time.monotonic()
                try:
                    rc = subprocess.run([sys.executable, __file__, "--flow", name, "--demo", str(demo),
                                         "--out", args.out], env=child, cwd=tmp, timeout=args.timeout).returncode
                except subprocess.TimeoutExpired:
                    rc = "timed out"
                print(f"{name}: {'ok' if rc == 0 else f'FAILED ({rc})'} in {time.monotonic() - t0:.0f} s", flush=True)
                if rc != 0:
                    failed.append(name)
        if failed:
            print(f"make_screenshots: failed: {', '.join(failed)}", file=sys.stderr)
        return 1 if failed else 0
    finally:
        if xvfb is not None:
            xvfb.terminate()
            xvfb.wait(timeout=10)


def pick_flows(only: str) -> list[str]:
    """The flows to run for ``--only`` (flow or picture names); all when empty."""
    if not only.strip():
        return list(FLOWS)
    chosen = []
    for name in (n.strip() for n in only.split(",") if n.strip()):
        hit = [f for f, shots in FLOWS.items() if name == f or name in shots]
        if not hit:
            raise ValueError(f"no flow or picture named {name!r} (see --list)")
        chosen += [f for f in hit if f not in chosen]
    return chosen


def _cache_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("plugmem-screenshots", appauthor=False))


def build_demo(folder: Path) -> None:
    if all((folder / f"{d}.plugmem").is_file() for d in ("chemistry", "geography")):
        return
    from engine.demo import ensure_demo_workspace

    print(f"building the demo workspace in {folder} (once; about 1.5 minutes)…", flush=True)
    ensure_demo_workspace(folder=folder)


# ---------------------------------------------------------------------------- child
class Driver:
    """The app as one flow uses it: the window, waits that keep the event loop turning, grabs."""

    def __init__(self, demo: Path, out: Path, with_reader: bool) -> None:
        from PySide6.QtCore import QCoreApplication
        from PySide6.QtWidgets import QApplication

        from app.__main__ import open_workspace
        from app.context import AppContext
        from app.main_window import MainWindow
        from app.notifier import Notifier, setup_logging
        from app.settings import load_settings
        from app.theme import apply_theme

        setup_logging()
        QCoreApplication.setOrganizationName("plugmem")
        QCoreApplication.setApplicationName("plugmem-studio")
        self.app = QApplication.instance() or QApplication([sys.argv[0]])
        apply_theme(self.app)
        self.out = out
        self.folder = Path(os.environ["TMPDIR"]) / "ws"
        self.folder.mkdir()
        for f in sorted(demo.glob("*.plugmem")):
            shutil.copyfile(f, self.folder / f.name)
            if f.with_name(f.name + ".index").is_dir():
                shutil.copytree(f.with_name(f.name + ".index"), self.folder / (f.name + ".index"))
        ws, _ = open_workspace(self.folder, Notifier(dialogs=False))
        self.ctx = AppContext(ws, Notifier(dialogs=True), load_settings())
        self.win = MainWindow(self.ctx)
        self.win.setGeometry(0, 0, *SIZE)
        self.win.show()
        self.ctx.load_encoder()
        if with_reader:
            self.ctx.model.load()
        self.chem = str((self.folder / "chemistry.plugmem").resolve())
        self.geo = str((self.folder / "geography.plugmem").resolve())

    def wait(self, ms: int) -> None:
        end = time.monotonic() + ms / 1000
        while time.monotonic() < end:
            self.app.processEvents()
            time.sleep(0.01)

    def until(self, cond: Callable[[], bool], what: str, timeout: float = 120) -> None:
        end = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > end:
                raise TimeoutError(f"{what}: not within {timeout:.0f} s")
            self.app.processEvents()
            time.sleep(0.02)

    def show_pack(self, path: str) -> None:
        """The pack shown in the browser, its writer ready and its rows painted."""
        from app.__main__ import ctx_writer_ready

        self.ctx.set_current(path)
        self.until(lambda: self.win.browser.path == path and self.win.browser.model.rowCount() > 0, "rows shown")
        self.until(lambda: ctx_writer_ready(self.win), "pack writer ready")
        self.wait(300)

    def reader_ready(self, timeout: float = 300) -> None:
        self.until(lambda: self.ctx.model.state in ("ready", "failed"), "reader loaded", timeout)
        if self.ctx.model.state == "failed":
            raise RuntimeError("the reader did not load (see the log)")

    def select(self, entry_id: int) -> None:
        b = self.win.browser
        self.until(lambda: b.select_id(entry_id), f"entry {entry_id} in the table")
        self.until(lambda: self.win.editor.entry is not None and self.win.editor.entry.id == entry_id,
                   f"entry {entry_id} in the editor")

    def shot(self, name: str, settle_ms: int = 400, size: tuple[int, int] | None = None) -> None:
        """The whole screen (window, dialogs, menus) as ``name``.png; ``size``: its top-left part."""
        from PySide6.QtGui import QGuiApplication

        self.wait(settle_ms)
        self.out.mkdir(parents=True, exist_ok=True)
        target = self.out / f"{name}.png"
        pix = QGuiApplication.primaryScreen().grabWindow(0, 0, 0, *(size or (-1, -1)))
        if pix.isNull() or not pix.save(str(target)):
            raise RuntimeError(f"could not grab the screen into {target}")
        print(f"  {target.name}: {pix.width()} x {pix.height()}", flush=True)

    def close(self) -> None:
        for t in self.ctx.jobs.live if self.ctx.jobs.live else ():
            self.ctx.jobs.cancel(t)
        self.win.close()
        self.wait(200)


def run_flow(name: str, demo: Path, out: Path) -> int:
    if name not in FLOWS:
        print(f"make_screenshots: no flow {name!r}", file=sys.stderr)
        return 2
    needs_reader = name in ("explain", "patches", "probes", "evaluation", "edit_failures", "entities", "help",
                            "slot_plugin", "pkm_plug")
    d = Driver(demo, out, with_reader=needs_reader)
    try:
        globals()[f"flow_{name}"](d)
    except Exception as exc:
        import traceback

        traceback.print_exc()
        print(f"make_screenshots: flow {name}: {exc}", file=sys.stderr)
        return 1
    finally:
        d.close()
    return 0


# ---------------------------------------------------------------------------- flows
def flow_main(d: Driver) -> None:
    """The memory browser with an entry and its history (the README's first picture)."""
    d.show_pack(d.chem)
    d.select(4)
    d.shot("main")


def flow_pack_menu(d: Driver) -> None:
    """A pack's right-click menu, then Check: the result as a one-line note in the status bar."""
    wp = d.win.workspace_panel
    d.show_pack(d.geo)
    tree = wp.tree
    rect = tree.visualItemRect(wp.item_for(d.geo))
    menu = wp.context_menu(d.geo)
    menu.popup(tree.viewport().mapToGlobal(rect.center()))
    d.shot("pack_menu")
    menu.close()
    wp.check(d.geo)
    d.until(lambda: "geography" in d.win.note_label.text(), "check's note in the status bar", 120)
    d.shot("status_note", 800)


def flow_empty_pack(d: Driver) -> None:
    """A new, empty pack says how to fill it; Import… offers files, a folder, or files on Ray."""
    wp = d.win.workspace_panel
    d.show_pack(d.chem)
    path = wp.new_pack(str(d.folder / "pharmacy.plugmem"))
    d.until(lambda: "pharmacy is empty" in d.win.browser.count_label.text(), "the empty pack's hint")
    d.until(lambda: wp.item_for(path).text(1) == "0", "the new pack's count in the list", 30)
    btn = wp.buttons["import"]
    btn.menu().popup(btn.mapToGlobal(btn.rect().bottomLeft()))
    d.shot("empty_pack_import_menu")
    btn.menu().close()
    assert path


def flow_search(d: Driver) -> None:
    """Search by meaning: the entries ranked by score, the best one open in the editor."""
    b = d.win.browser
    d.show_pack(d.geo)
    b.mode.setCurrentIndex(b.mode.findData("semantic"))
    done = []
    b.search_done.connect(lambda *a: done.append(a))
    b.search_box.setText("money used in Japan")
    b.run_search()
    d.until(lambda: done and b.model.rowCount() > 0, "the search results")
    d.wait(300)
    d.select(b.model.entry_at(0).id)
    d.shot("search", 600)


def flow_examples(d: Driver) -> None:
    """Worked examples: a probe file imported as examples into geography (Import → Worked
    examples), marked [example] in the table and chosen by the tag filter."""
    b, wp = d.win.browser, d.win.workspace_panel
    d.show_pack(d.geo)
    probes = d.folder.parent / "capitals_probes.jsonl"
    rows = [("Peru", "Lima"), ("Chile", "Santiago"), ("Kenya", "Nairobi"), ("Nepal", "Kathmandu")]
    probes.write_text("".join(json.dumps({"prompt": f"Question: What is the capital of {c}? Answer:", "answer": a,
                                          "paraphrases": [f"The seat of government of {c} is in"],
                                          "relation": "capital", "subject": c}) + "\n" for c, a in rows),
                      encoding="utf-8")
    wp.import_examples([str(probes)], d.geo)
    d.until(lambda: not d.ctx.jobs.live, "the examples import done", 300)
    d.until(lambda: not d.ctx.is_busy(d.geo), "pack free again")
    d.until(lambda: b.tag.findData("example") >= 0, "the worked-examples filter")
    b.tag.setCurrentIndex(b.tag.findData("example"))
    d.until(lambda: b.model.rowCount() == 2 * len(rows), "the examples listed")
    d.select(b.model.entry_at(0).id)
    d.shot("browser_examples", 600)


def _drug_table(folder: Path) -> Path:
    """The pharmacist's 30-row CSV of drug facts (issue 23's user)."""
    drugs = [("Aspirin", "acetylsalicylic acid", "pain and fever", 4000), ("Ibuprofen", "an NSAID", "pain", 2400),
             ("Paracetamol", "an analgesic", "fever", 4000), ("Metformin", "a biguanide", "type 2 diabetes", 2550),
             ("Amoxicillin", "a penicillin", "bacterial infections", 3000),
             ("Omeprazole", "a proton pump inhibitor", "reflux", 40)]
    rows = ["title,text"]
    for name, kind, use, dose in drugs:
        rows += [f'{name},"{name} is {kind}."', f'{name},"{name} is taken for {use}."',
                 f'{name},"The maximum daily dose of {name.lower()} for adults is {dose} mg."',
                 f'{name},"{name} is sold under several brand names."',
                 f'{name},"{name} is on the WHO list of essential medicines."']
    f = folder / "wf-drugs.csv"
    f.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return f


def _drop(handler, paths: list[Path], pos) -> bool:
    """Hand ``handler`` the drop event Qt delivers when files dragged from a file manager are let go."""
    from PySide6.QtCore import QMimeData, Qt, QUrl
    from PySide6.QtGui import QDropEvent

    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    ev = QDropEvent(pos, Qt.DropAction.CopyAction, mime, Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier)
    handler(ev)
    return ev.isAccepted()


def flow_import_drop(d: Driver) -> None:
    """A CSV dropped on the geography pack: the import job is selected and described at once;
    when it ends, the detail pane says what it did."""
    from PySide6.QtCore import QPointF

    wp, jobs = d.win.workspace_panel, d.ctx.jobs
    d.show_pack(d.chem)
    csv = _drug_table(d.folder.parent)
    tree = wp.tree
    pos = QPointF(tree.visualItemRect(wp.item_for(d.geo)).center())
    started = []
    jobs.started.connect(started.append)
    assert _drop(lambda ev: wp._drops.eventFilter(tree.viewport(), ev), [csv], pos), "drop refused"
    d.until(lambda: started and d.win.jobs_panel.selected_id() == started[0], "the import job selected")
    d.shot("jobs_new_job_selected", 150)
    d.until(lambda: not jobs.live, "the import job done", 300)
    d.until(lambda: not d.ctx.is_busy(d.geo), "pack free again")
    d.win.jobs_panel.show_job(started[0])
    d.shot("jobs_details", 800)


def flow_validation(d: Driver) -> None:
    """Three entries disabled (grey, struck through); a title and a tag too long, named as one types."""
    b, ed = d.win.browser, d.win.editor
    d.show_pack(d.chem)
    from PySide6.QtCore import QItemSelectionModel

    sel = b.view.selectionModel()
    for n, eid in enumerate((2, 3, 5)):
        idx = b.model.index(b.model.row_of(eid), 0)
        flags = QItemSelectionModel.SelectionFlag.Rows | (QItemSelectionModel.SelectionFlag.ClearAndSelect if n == 0
                                                          else QItemSelectionModel.SelectionFlag.Select)
        sel.select(idx, flags)
    b.act_disable.trigger()
    d.until(lambda: not d.ctx.is_busy(d.chem) and d.ctx.reader(d.chem).get(5).status == "disabled", "bulk disable")
    d.select(1)
    ed.title.setText("a very long title " * 18)
    ed.tags.setText("element_with_symbol, an_overly_long_tag_name_that_nobody_could_ever_read_in_a_list_of_tags")
    d.shot("edit_validation_disabled_rows")


def flow_revert(d: Driver) -> None:
    """An entry edited, then reverted: the preview shows the words that go and come back;
    after the revert the chosen version stays selected."""
    ed = d.win.editor
    d.show_pack(d.chem)
    d.select(4)
    ed.text.setPlainText("The element with atomic number 1 was (corrected) hydrogen.")
    ed.save()
    d.until(lambda: ed.history.rowCount() == 2 and not ed.is_dirty(), "the edit saved")
    ed.history.selectRow(1)  # the imported version
    ed.revert_btn.click()
    d.until(lambda: ed.preview is not None and ed.preview.isVisible(), "the revert preview")
    d.shot("edit_revert_preview")
    ed.preview.revert_btn.click()
    d.until(lambda: ed.history.rowCount() == 3, "the revert saved")
    d.shot("edit_revert_keeps_version", 600)


def flow_save_refused(d: Driver) -> None:
    """A save while another program runs an edit evaluation on the pack is refused, the text kept.
    The other program is a process holding the pack's evaluation lock, as `plugmem eval-edits` does."""
    from engine.store.locks import lock_path

    ed = d.win.editor
    d.show_pack(d.geo)
    d.select(2)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from filelock import FileLock; l = FileLock(sys.argv[1]); l.acquire(); "
         "print('held', flush=True); sys.stdin.read()", str(lock_path(d.geo))],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        ed.text.setPlainText("According to the UN geoscheme, Afghanistan belongs to the region of Oceania.")
        ed.save()
        d.until(lambda: any(k.startswith("Saving entry") for _, k in d.ctx.notifier.history), "the refusal")
        d.shot("save_during_evaluation", 800)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


def _ask(d: Driver, prompt: str) -> None:
    p = d.win.explain
    d.win.tabs.setCurrentWidget(p)
    done = []
    p.answered.connect(done.append)
    p.failed.connect(done.append)
    p.prompt.setText(prompt)
    p.ask()
    d.until(lambda: done, f"the answer to {prompt!r}", 300)


def flow_explain(d: Driver) -> None:
    """Ask with the memory plugged in; then edit the entry behind the answer: the banner says so."""
    p, ed = d.win.explain, d.win.editor
    d.show_pack(d.chem)
    d.reader_ready()
    _ask(d, "The chemical symbol of yttrium is")
    d.shot("explain", 800)
    # the first retrieved entry, opened in the editor as a click on its row does
    if p.explanation is None or not p.explanation.retrieved:
        raise RuntimeError("no retrieved entry to edit")
    rec = p.explanation.retrieved[0]
    d.win.open_entry(d.chem, int(rec.id))
    d.until(lambda: ed.entry is not None and ed.entry.id == int(rec.id), "the entry in the editor")
    ed.text.setPlainText(ed.text.toPlainText().replace(" Y.", " Yt."))
    ed.save()
    d.until(lambda: p.stale.isVisible(), "the edit banner", 60)
    d.shot("ask_edit_banner_1280", 800)


def flow_patches(d: Driver) -> None:
    """Write this fact into the weights… from a geography entry (Advanced open); then a fact the
    reader gets wrong written by the dialog's job, applied; Ask and explain with and without it."""
    from app.views.patches import WritePatchDialog, prefill_from_entry

    d.show_pack(d.geo)
    d.reader_ready()
    d.select(1)
    dlg = WritePatchDialog(d.win.patches, prefill_from_entry(d.ctx.reader(d.geo), 1), d.win)
    dlg.advanced.setChecked(True)
    dlg.locality.setPlainText("The capital of France is\nThe chemical symbol of gold is")
    dlg.move(330, 120)
    dlg.show()
    d.shot("patch_dialog", 800)
    # SmolLM2 says Bern: the fix the user writes into the weights
    dlg.prompt.setText("Albert Einstein was born in the city of")
    dlg.answer.setText("Ulm")
    dlg.paraphrase.setText("Einstein's birthplace is the city of")
    dlg.locality.setPlainText("")
    dlg.name.setText("ulm")
    dlg.ok.click()
    d.until(lambda: "ulm" in d.win.patches.applied, "the patch made by its job and applied", 900)
    p = d.win.explain
    d.win.tabs.setCurrentWidget(p)
    p.mode.setCurrentIndex(max(0, p.mode.findData("context")))
    _ask(d, "Albert Einstein was born in the city of")
    done = []
    p.without_done.connect(done.append)
    if not p.answer_without_patches():
        raise RuntimeError("no patch applied: nothing to answer without")
    d.until(lambda: done, "the answers without each patch", 600)
    d.shot("patches_explain", 800)
    pix = d.win.patches_dock.grab()
    if not pix.save(str(d.out / "patches_dock.png")):
        raise RuntimeError("could not save patches_dock.png")
    print(f"  patches_dock.png: {pix.width()} x {pix.height()}", flush=True)


def flow_probes(d: Driver) -> None:
    """Evaluation with no probe file: the empty state, probes made from the chemistry pack under
    review, then saved and run to a score."""
    v = d.win.evaluation
    d.show_pack(d.chem)
    d.win.tabs.setCurrentWidget(v)
    d.shot("evaluation_empty_state")
    d.reader_ready()
    dlg = v.make_probes(d.chem)
    dlg.sample.setValue(12)
    dlg.make_btn.click()
    d.until(lambda: dlg.table.rowCount() > 0, "the probes made")
    d.shot("probes_review")
    done = []
    v.run_finished.connect(done.append)
    v.run_failed.connect(done.append)
    dlg.run_btn.click()
    d.until(lambda: done, "the probes run", 900)
    d.shot("probes_run", 800)


def flow_evaluation(d: Driver) -> None:
    """Held-out chemistry probes with the memory branch, then in context mode; both runs compared."""
    v = d.win.evaluation
    d.show_pack(d.chem)
    d.win.tabs.setCurrentWidget(v)
    d.reader_ready()
    held = str(ROOT / "resources" / "demo" / "chemistry" / "probes_heldout.jsonl")
    for mode in ("dpm", "context"):
        done = []
        v.run_finished.connect(done.append)
        v.run_failed.connect(done.append)
        v.mode.setCurrentIndex(max(0, v.mode.findData(mode)))
        v.limit.setValue(10)
        assert v.run(held), "the evaluation did not start"
        d.until(lambda: done, f"the {mode} run", 900)
        if mode == "dpm":
            d.shot("evaluation", 800)
    from PySide6.QtCore import QItemSelectionModel

    t = v.table
    sel = t.selectionModel()
    sel.clearSelection()
    for r in range(min(2, t.rowCount())):
        sel.select(t.model().index(r, 0), QItemSelectionModel.SelectionFlag.Select | QItemSelectionModel.SelectionFlag.Rows)
    d.shot("evaluation_compare", 1000)


def flow_edit_failures(d: Driver) -> None:
    """Edits asked in held-out wordings (bench/data/wording, issue 20) with the memory branch:
    the failures listed by kind, with the edited entry's rank among those retrieved (the Jobs
    and Entry docks closed)."""
    v = d.win.evaluation
    d.show_pack(d.geo)
    d.win.tabs.setCurrentWidget(v)
    d.reader_ready()
    done = []
    v.run_finished.connect(done.append)
    v.run_failed.connect(done.append)
    v.mode.setCurrentIndex(max(0, v.mode.findData("dpm")))
    v.limit.setValue(12)
    assert v.run(str(ROOT / "bench" / "data" / "wording" / "geography" / "edits.jsonl")), "the evaluation did not start"
    d.until(lambda: done, "the edit run", 900)
    # with every dock open the failures pane shows one row at 1280 x 800: room made as a user would
    d.win.jobs_dock.hide()
    d.win.editor_dock.hide()
    d.shot("evaluation_edit_failures", 800)


def flow_entities(d: Driver) -> None:
    """The geography pack's entities; the map-tune dialog; TransE running with its loss curve."""
    from app.views.map_tune import MapTuneDialog

    e = d.win.entities
    d.show_pack(d.geo)
    d.win.show_entities(d.geo)
    d.until(lambda: e.model.rowCount() > 100, "the entities listed")
    e.filter_box.setText("an")
    d.wait(500)
    names = e.row_names()
    e.table.setCurrentIndex(e.proxy.index(names.index("Japan") if "Japan" in names else 0, 0))
    d.wait(800)
    d.shot("entities")
    dlg = MapTuneDialog(d.ctx, d.geo, d.win)
    dlg.open()
    # the recommended choice: the task plugin on the demo's training probes, the quick preset
    dlg.kind_radios["task"].setChecked(True)
    dlg.questions.setText(str(ROOT / "resources" / "demo" / "geography" / "probes_train.jsonl"))
    dlg.preset_radios["quick"].setChecked(True)
    d.shot("map_tune", 600)
    opts = dlg.options()
    dlg.accept()
    jid = d.win.plugin_trainer.start(d.geo, opts)
    d.win.jobs_dock.show()
    d.until(lambda: jid and d.win.jobs_panel.selected_id() == jid, "the TransE job selected")
    d.until(lambda: "epoch 8/" in d.win.jobs_panel.log_view.toPlainText(), "a few epochs", 300)
    d.wait(1500)
    d.shot("jobs_loss_curve")
    d.ctx.jobs.cancel(jid)
    d.until(lambda: not d.ctx.jobs.live, "the job cancelled", 60)


def flow_slot_plugin(d: Driver) -> None:
    """A task-tuned answer-slot plugin plugged beside the geography pack: Ask and explain lists the
    answer slot with its leave-one-out; a question of a relation it was not trained for is left alone.

    Needs a trained plugin for the demo's geography pack (20 minutes of task-tune on two cores,
    bench/RESULTS.md, 2026-12-07): its folder in ``PLUGMEM_SLOT_PLUGIN``."""
    src = os.environ.get("PLUGMEM_SLOT_PLUGIN")
    if not src or not (Path(src) / "config.json").is_file():
        raise RuntimeError("set PLUGMEM_SLOT_PLUGIN to a folder written by `plugmem task-tune --answer-slot` "
                           "for the demo's geography pack")
    shutil.copytree(src, d.folder / "geography.plugmem.task-plugin")
    p = d.win.explain
    d.show_pack(d.geo)
    d.reader_ready()
    p.mode.setCurrentIndex(p.mode.findData("context"))
    done = []
    d.ctx.model.plugins_loaded.connect(lambda *a: done.append(a))
    d.win.workspace_panel.refresh_plugins()  # the plugin was copied in after the panel looked
    d.win.workspace_panel.plugin_box(d.geo).click()
    d.until(lambda: done, "the plugin loaded", 120)
    _ask(d, "The capital of Colombia is")
    d.shot("explain_slot_plugin", 800)
    _ask(d, "The country code top-level domain of Colombia is")
    d.shot("explain_slot_plugin_gated", 800)
    # the Evaluation tab with the plugin ticked: each relation with and without it (no memory, the
    # plugin alone; 3 held-out-entity probes of each relation, the trained ones and the held-out ones)
    import json

    per: dict[str, list[str]] = {}
    for line in (ROOT / "resources" / "demo" / "geography" / "probes_heldout.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("split") in ("heldout_entity", "heldout_both") and len(per.setdefault(rec["relation"], [])) < 3:
            per[rec["relation"]].append(line)
    probes = Path(os.environ["TMPDIR"]) / "geography_probes_sample.jsonl"
    probes.write_text("".join(x + "\n" for lines in per.values() for x in lines), encoding="utf-8")
    v = d.win.evaluation
    d.win.tabs.setCurrentWidget(v)
    done = []
    v.run_finished.connect(done.append)
    v.run_failed.connect(done.append)
    v.mode.setCurrentIndex(max(0, v.mode.findData("none")))
    assert v.run(str(probes)), "the evaluation did not start"
    d.until(lambda: done, "the evaluation with the plugin", 900)
    d.shot("evaluation_with_plugin", 800)


def flow_pkm(d: Driver) -> None:
    """The grow dialog of a product-key memory, over the chemistry pack."""
    from app.views.pkm import GrowPKMDialog

    d.show_pack(d.chem)
    dlg = GrowPKMDialog(d.ctx, d.chem, d.win)
    dlg.open()
    d.shot("pkm_grow_dialog", 600)
    dlg.reject()


#: A small layer the pkm_plug flow grows on the geography pack in well under a minute: it shows
#: the checkbox and what Ask and explain says of a plugged layer, not what a standard one learns.
QUICK_LAYER = {"steps": 12, "batch": 4, "seq_len": 64, "slots": 64 * 64, "k": 8, "heads": 2, "key_dim": 64,
               "value_lr": 5e-2, "max_tokens": 4096, "max_heldout_tokens": 2048}


def flow_pkm_plug(d: Driver) -> None:
    """A small layer grown on the geography pack, ticked in the Product-key memory dock; Ask and
    explain with it plugged: the slots it read most and the answer without it."""
    from app.views.pkm import default_pkm_dir
    from engine.mechanisms.pkm.train import run

    d.show_pack(d.geo)
    d.reader_ready()
    out = default_pkm_dir(d.geo)
    grown = []
    d.ctx.model.submit(lambda m: run({"out": str(out), "corpus": [d.geo], **QUICK_LAYER}, reader=m.reader),
                       grown.append, on_error=grown.append, what="Growing the flow's layer")
    d.until(lambda: grown, "the flow's layer grown", 600)
    if isinstance(grown[0], BaseException):
        raise grown[0]
    layers, panel = d.win.pkm_layers, d.win.pkm_panel
    d.win.pkm_dock.raise_()  # its tab in front of the Patches
    layers.changed.emit()
    d.until(lambda: panel.item_for(str(out.resolve())) is not None, "the grown layer listed")
    from PySide6.QtCore import Qt

    panel.item_for(str(out.resolve())).setCheckState(Qt.CheckState.Checked)
    d.until(lambda: layers.plugged == str(out.resolve()), "the layer plugged in", 120)
    p = d.win.explain
    p.mode.setCurrentIndex(max(0, p.mode.findData("context")))
    _ask(d, "The capital of Japan is")
    done = []
    p.without_pkm_done.connect(done.append)
    if not p.answer_without_pkm():
        raise RuntimeError("no product-key memory in the answer: nothing to answer without")
    d.until(lambda: done, "the answer without the layer", 300)
    d.shot("pkm_explain", 800)
    pix = d.win.pkm_dock.grab()
    if not pix.save(str(d.out / "pkm_dock.png")):
        raise RuntimeError("could not save pkm_dock.png")
    print(f"  pkm_dock.png: {pix.width()} x {pix.height()}", flush=True)


def flow_narrow(d: Driver) -> None:
    """A 1024 x 700 window: the Entry dock under the pack list, both open, an entry in the editor."""
    d.win.setGeometry(0, 0, 1024, 700)
    d.show_pack(d.chem)
    d.until(lambda: d.win.width() == 1024 and d.win.side_docks.mode != "side", "the docks in one column")
    d.select(4)
    d.shot("narrow_1024", 600, size=(1024, 700))


def flow_help(d: Driver) -> None:
    """Help: getting started (the five steps) and About (versions)."""
    d.show_pack(d.chem)
    d.win.act_getting_started.trigger()
    d.shot("help_getting_started", 600)
    d.reader_ready()
    from app.views import help as pages

    d.win.show_help("About", pages.about_html(d.ctx))
    d.shot("help_about", 600)


if __name__ == "__main__":
    raise SystemExit(main())
