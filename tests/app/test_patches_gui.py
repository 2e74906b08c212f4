"""Weight patches in the app (issue 18): *Write this fact into the weights…* from an entry, a
wrong answer and a wrong probe; the job (live loss, cancel leaves no patch, refusals naming
the field); the Patches panel (apply/remove in order, refusals naming both, undoable delete,
remembered across restarts); Ask and explain following the stack. All on the tiny reader."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PySide6.QtCore import Qt

from tests.app.conftest import ask, open_window

FACT = {"prompt": "Zebra facts: the capital of Zebraland is", "answer": "Porto-Novo"}
FAST = {"layers": [0], "delta": 0.05, "lr": 0.02, "steps": 3}


@pytest.fixture
def unpatched(tiny_reader):
    """The session's tiny reader, given back with no patch applied whatever the test did."""
    from engine.mechanisms.weight_patches import PatchStack

    yield tiny_reader
    PatchStack.of(tiny_reader).clear()


def make(folder: Path, reader, name: str, on_top_of=(), scale: float = 0.0, **fact) -> Path:
    """A real patch folder made by the engine's job function on ``reader`` (``scale`` > 0: its
    delta is then set to a fixed random change of that size, so that it surely moves the answer)."""
    from engine.jobs.weight_patch import run
    from engine.mechanisms.weight_patches import load, save

    out = folder / name
    run({"facts": [FACT | fact], "out": str(out), "patch": FAST, "on_top_of": [str(p) for p in on_top_of]},
        reader=reader)
    if scale:
        p = load(out, reader)
        g = torch.Generator().manual_seed(len(name))
        p.deltas = {n: (torch.rand(d.shape, generator=g) * 2 - 1) * scale for n, d in p.deltas.items()}
        p.config.delta = scale
        import shutil

        shutil.rmtree(out)
        save(p, out)
    return out


@pytest.fixture
def lib_ctx(make_ctx, tiny_loader, unpatched):
    from app.patches import PatchLibrary

    ctx = make_ctx()
    ctx.model_loader = tiny_loader
    lib = PatchLibrary(ctx)
    return ctx, lib


@pytest.fixture
def loaded(qtbot, lib_ctx):
    """``lib_ctx`` with the reader loaded (and its saved patches, none, applied)."""
    ctx, lib = lib_ctx
    with qtbot.waitSignal(lib.changed, timeout=30_000):
        ctx.model.load()
    return ctx, lib


def panel_of(qtbot, lib):
    from app.views.patches import PatchesPanel

    panel = PatchesPanel(lib)
    qtbot.addWidget(panel)
    return panel


def tick(qtbot, panel, name: str, on: bool = True) -> None:
    with qtbot.waitSignal(panel.lib.changed, timeout=20_000):
        panel.item(name).setCheckState(Qt.CheckState.Checked if on else Qt.CheckState.Unchecked)


# ---------------------------------------------------------------------- the dialog and its job
def test_from_an_entry_the_dialog_holds_the_probe_makers_cut(qtbot, make_ctx, small_pack, tiny_loader, monkeypatch):
    from app.views.patches import WritePatchDialog

    ctx = make_ctx([small_pack])
    ctx.model_loader = tiny_loader
    win = open_window(qtbot, ctx, str(small_pack))
    shown = []
    monkeypatch.setattr(WritePatchDialog, "exec", lambda self: shown.append(self) or 0)  # not modal in a test
    tokyo = next(r for r in range(win.browser.model.rowCount())
                 if "Tokyo" in win.browser.model.index(r, win.browser.model.columns().index("text")).data())
    win.browser.view.selectRow(tokyo)
    win.browser.act_write_patch.trigger()
    dlg = shown[-1]
    assert dlg.prompt.text() == "Tokyo is the capital of" and dlg.answer.text() == "Japan"
    assert dlg.source.startswith("facts.plugmem:")
    assert win.editor.patch_btn.isEnabled()
    win.editor.patch_btn.click()
    assert shown[-1].prompt.text() == "Tokyo is the capital of"
    assert not dlg.delta.isVisible() and dlg.config()["patch"] == {}  # Advanced closed: the engine's defaults


def test_a_bad_bound_is_said_in_the_dialog_naming_the_field_and_starts_nothing(qtbot, lib_ctx):
    from app.views.patches import WritePatchDialog

    ctx, lib = lib_ctx
    dlg = WritePatchDialog(lib, FACT)
    qtbot.addWidget(dlg)
    dlg.advanced.setChecked(True)
    dlg.delta.setValue(0.0)
    dlg.start()
    assert "field 'delta' must be a number in (0, 0.1]" in dlg.error.text() and dlg.error.isVisibleTo(dlg)
    dlg.delta.setValue(0.005)
    dlg.layers.setText("three")
    dlg.start()
    assert "field 'layers'" in dlg.error.text()
    dlg.layers.setText("0")
    dlg.neurons.setValue(70_000)
    dlg.start()
    assert "field 'neurons' must be a whole number from 0 (every neuron) to 65,536" in dlg.error.text()
    dlg.neurons.setValue(16)
    assert dlg.config()["patch"]["neurons"] == 16
    dlg.preserve.setValue(1.0)
    dlg.start()
    assert "field 'preserve' must be a number in [0, 0.9999]" in dlg.error.text()
    dlg.preserve.setValue(0.99)
    assert dlg.config()["patch"]["preserve"] == 0.99
    dlg.answer.setText(" ")
    dlg.start()
    assert "field 'answer' must be a non-empty string" in dlg.error.text()
    assert dlg.jid is None and dlg.result() == 0 and not ctx.jobs.live


def run_dialog_job(qtbot, ctx, lib, tmp_path, tiny_reader, prefill, **advanced):
    from app.views.patches import WritePatchDialog

    from app.model_host import LoadedModel
    from engine.reader import load_reader

    # the job loads this folder in its process; the app holds the same reader, loaded from it
    folder = tiny_reader.save(tmp_path / "tiny-reader")
    ctx.workspace.reader = str(folder)
    ctx.model.set_loader(lambda: LoadedModel(load_reader(folder), None, ""))
    dlg = WritePatchDialog(lib, prefill)
    qtbot.addWidget(dlg)
    dlg.advanced.setChecked(True)
    dlg.layers.setText(advanced.get("layers", "0"))
    dlg.steps.setValue(advanced.get("steps", 3))
    dlg.delta.setValue(advanced.get("delta", 0.05))
    dlg.lr.setValue(advanced.get("lr", 0.02))
    dlg.start()
    assert dlg.jid is not None, dlg.error.text()
    return dlg.jid, Path(dlg.config()["out"]).with_name(Path(dlg.config()["out"]).name)


def test_the_job_makes_the_patch_in_the_workspace_and_applies_it(qtbot, lib_ctx, tmp_path, unpatched):
    from engine.mechanisms.weight_patches import PatchStack

    ctx, lib = lib_ctx
    panel = panel_of(qtbot, lib)
    losses = []
    ctx.jobs.progress.connect(lambda j, f, m, eta, metrics: "loss" in metrics and losses.append(metrics["loss"]))
    jid, _ = run_dialog_job(qtbot, ctx, lib, tmp_path, unpatched, FACT | {"name": "Zebra fact"}, steps=6)
    with qtbot.waitSignal(lib.made, timeout=120_000) as sig:
        pass
    assert sig.args == ["zebra-fact"] and losses  # the Jobs panel's loss curve got its points
    assert (ctx.workspace.folder / "patches" / "zebra-fact" / "delta.safetensors").is_file()
    qtbot.waitUntil(lambda: ctx.model.model is not None
                    and PatchStack.of(ctx.model.model.reader).names() == ["zebra-fact"], timeout=20_000)
    qtbot.waitUntil(lambda: panel.checked() == ["zebra-fact"], timeout=5_000)
    assert json.loads(ctx.workspace.file.read_text())["patches"] == ["zebra-fact"]
    text = panel.detail.toPlainText()
    assert "Zebraland is → Porto-Novo" in text and "δ 0.05 on block(s) 0" in text and "efficacy" in text
    assert "KiB" in text and panel.list.item(0).text().startswith("1. zebra-fact — 1 fact")


def test_cancel_during_training_leaves_no_patch(qtbot, lib_ctx, tmp_path, unpatched):
    ctx, lib = lib_ctx
    jid, _ = run_dialog_job(qtbot, ctx, lib, tmp_path, unpatched, FACT, steps=5000, delta=0.0001, lr=0.0001)
    qtbot.waitUntil(lambda: jid in ctx.jobs.live and len(ctx.jobs.live[jid].losses) >= 2, timeout=120_000)
    with qtbot.waitSignal(ctx.jobs.failed, timeout=30_000) as sig:
        ctx.jobs.cancel(jid)
    assert sig.args[1].startswith("cancelled")
    assert not (ctx.workspace.folder / "patches" / "porto-novo").exists() and lib.infos() == []


@pytest.mark.parametrize("case", ["layer", "known"])
def test_engine_refusals_reach_the_user_naming_what_is_wrong(qtbot, lib_ctx, tmp_path, unpatched, case):
    ctx, lib = lib_ctx
    errors = []
    ctx.notifier.error = lambda title, exc: errors.append(f"{title}: {exc}")
    if case == "layer":
        prefill, adv, want = FACT, {"layers": "99"}, "field 'layers' names block 99, but the reader has blocks 0 to"
    else:  # the reader's own answer: nothing to write
        said = unpatched.generate(FACT["prompt"], max_new_tokens=2).split()[0]
        prefill, adv, want = {"prompt": FACT["prompt"], "answer": said}, {}, "the reader already answers"
    jid, _ = run_dialog_job(qtbot, ctx, lib, tmp_path, unpatched, prefill, **adv)
    with qtbot.waitSignal(ctx.jobs.failed, timeout=120_000):
        pass
    assert any(want in e for e in errors), errors
    assert lib.infos() == []


# ---------------------------------------------------------------------- the Patches panel
def test_ticks_apply_in_order_and_refusals_name_both(qtbot, loaded, unpatched):
    from engine.mechanisms.weight_patches import PatchStack
    from engine.reader.tiny import make_tiny_reader

    ctx, lib = loaded
    folder = ctx.workspace.patches_folder
    a = make(folder, unpatched, "a")
    make(folder, unpatched, "b", on_top_of=[a], answer="Lagos")
    make(folder, make_tiny_reader(1), "other")  # a patch of another reader
    bare = {k: v.clone() for k, v in unpatched.model.state_dict().items()}
    panel = panel_of(qtbot, lib)
    refused = []
    lib.refused.connect(lambda n, why: refused.append((n, why)))
    ctx.notifier.error = lambda title, exc: None
    tick(qtbot, panel, "b")  # made on top of a: refused while a is not applied
    assert refused[-1][0] == "b" and "was made on top of a" in refused[-1][1] and panel.checked() == []
    tick(qtbot, panel, "a")
    tick(qtbot, panel, "b")
    assert PatchStack.of(unpatched).names() == lib.applied == ["a", "b"] == panel.checked()
    assert [panel.list.item(i).text()[:4] for i in range(2)] == ["1. a", "2. b"]
    tick(qtbot, panel, "other")
    assert refused[-1][0] == "other" and "tiny" in refused[-1][1].lower() and panel.checked() == ["a", "b"]
    tick(qtbot, panel, "a", on=False)  # b fits only on top of a: taken off with it, and said so
    assert "taken off after 'a' was removed" in refused[-1][1] and panel.checked() == [] == lib.applied
    assert all(torch.equal(v, bare[k]) for k, v in unpatched.model.state_dict().items())


def test_delete_is_undoable_and_an_applied_patch_comes_back_applied(qtbot, loaded, unpatched):
    from engine.mechanisms.weight_patches import PatchStack

    ctx, lib = loaded
    make(ctx.workspace.patches_folder, unpatched, "a")
    panel = panel_of(qtbot, lib)
    tick(qtbot, panel, "a")
    panel.list.setCurrentRow(0)
    with qtbot.waitSignal(lib.changed, timeout=20_000):
        panel.delete_selected()
    qtbot.waitUntil(lambda: panel.names() == [] and PatchStack.of(unpatched).names() == [], timeout=20_000)
    assert not (ctx.workspace.patches_folder / "a").exists() and lib.applied == []
    assert panel.undo_btn.defaultAction().text() == "Undo Delete weight patch 'a'"
    panel.undo_btn.defaultAction().trigger()
    qtbot.waitUntil(lambda: panel.checked() == ["a"] and PatchStack.of(unpatched).names() == ["a"], timeout=20_000)
    panel.redo_btn.defaultAction().trigger()
    qtbot.waitUntil(lambda: panel.names() == [], timeout=20_000)


def test_applied_patches_are_remembered_and_rechecked_when_the_reader_loads(qtbot, make_ctx, tiny_loader, unpatched):
    from app.patches import PatchLibrary
    from engine.mechanisms.weight_patches import PatchStack

    ctx = make_ctx()
    folder = ctx.workspace.patches_folder
    a = make(folder, unpatched, "a")
    make(folder, unpatched, "b", on_top_of=[a], answer="Lagos")
    ctx.workspace.patches = ["b", "a"]  # as a restart finds them, b's base now wrong (a is below it)
    ctx.workspace.save()
    ctx.close()
    ctx2 = make_ctx()  # "after a restart": the same workspace folder
    ctx2.model_loader = tiny_loader
    errors = []
    ctx2.notifier.error = lambda title, exc: errors.append(str(exc))
    lib = PatchLibrary(ctx2)
    assert lib.applied == ["b", "a"]
    with qtbot.waitSignal(lib.changed, timeout=20_000):
        ctx2.model.load()
    assert lib.applied == ["a"] == PatchStack.of(unpatched).names()
    assert any("patch 'b': the base of" in e for e in errors)
    assert json.loads(ctx2.workspace.file.read_text())["patches"] == ["a"]


# ---------------------------------------------------------------------- Ask and explain, Evaluation
def test_ask_follows_the_stack_and_shows_the_answer_without_each_patch(qtbot, lib_ctx, unpatched, monkeypatch):
    from app.views.explain import ExplainPanel, first_line
    from app.views.patches import WritePatchDialog

    ctx, lib = lib_ctx
    make(ctx.workspace.patches_folder, unpatched, "big", scale=0.1)
    panel = ExplainPanel(ctx)
    qtbot.addWidget(panel)
    panel.mode.setCurrentIndex(panel.mode.findData("none"))
    lib.changed.connect(lambda: panel.patches_changed(lib.applied))
    bare = ask(qtbot, panel, FACT["prompt"])
    assert bare.weight_patches == [] and panel.patches_label.text() == "Weight patches: none applied"
    with qtbot.waitSignal(lib.changed, timeout=20_000):
        lib.set_applied("big", True)
    assert panel.stale.isVisibleTo(panel) and "weight patches changed" in panel.stale.text()
    patched = ask(qtbot, panel, again=True)
    assert patched.answer != bare.answer  # the cached bare answer was not reused
    assert patched.weight_patches == ["big"] and "Weight patches: big" in panel.patches_label.text()
    with qtbot.waitSignal(panel.without_done, timeout=20_000):
        assert panel.answer_without_patches()
    assert patched.answers_without_patch == {"big": {"answer": bare.answer, "answer_without_memory": bare.answer}}
    assert f"without big: {first_line(bare.answer)}" in panel.without_patches_text.text()
    shown = []
    monkeypatch.setattr(WritePatchDialog, "exec", lambda self: shown.append(self) or 0)
    panel.write_patch_requested.connect(lambda fact: shown.append(WritePatchDialog(lib, fact)))
    panel.write_patch_btn.click()
    assert shown[-1].prompt.text() == FACT["prompt"] and shown[-1].old.text() == first_line(patched.answer).strip(" .")


def test_a_wrong_probe_offers_to_write_its_fact(qtbot, make_ctx):
    from app.evaluations import EvalRun
    from app.views.evaluation import EvaluationView

    ctx = make_ctx()
    view = EvaluationView(ctx)
    qtbot.addWidget(view)
    run = EvalRun("probes", "p.jsonl", "context", 5, [], "tiny", {"n": 2, "accuracy": 0.5, "failures": [
        {"prompt": "The capital of Japan is", "answer": "Tokyo", "got": " Kyoto.\nNext"}]})
    view._fill_failures(run)
    got = []
    view.write_patch_requested.connect(got.append)
    assert view.failure_menu(1) is None  # no such row
    [act] = view.failure_menu(0).actions()
    assert act.text() == "Write this fact into the weights…"
    act.trigger()
    assert got == [{"prompt": "The capital of Japan is", "answer": "Tokyo", "old": "Kyoto"}]


def test_a_failed_edit_offers_to_write_its_new_answer(qtbot, make_ctx):
    """An edit run's failures table (kind, prompt, expected, answer, rank) offers the same menu,
    with the answer the edit asked for."""
    from app.evaluations import EvalRun
    from app.views.evaluation import EvaluationView

    ctx = make_ctx()
    view = EvaluationView(ctx)
    qtbot.addWidget(view)
    run = EvalRun("edits", "e.jsonl", "dpm", 5, [], "tiny", {"n": 1, "efficacy": 0.0, "n_failures": {"paraphrase": 1},
                  "failures": [{"kind": "paraphrase", "prompt": "Japan's capital city is", "expected": "Osaka",
                                "got": " Tokyo.", "edited_rank": 2, "retrieved": []}]})
    view._fill_failures(run)
    assert view.failures.columnCount() == 5 and view.failures.item(0, 0).text() == "paraphrase"
    got = []
    view.write_patch_requested.connect(got.append)
    view.failure_menu(0).actions()[0].trigger()
    assert got == [{"prompt": "Japan's capital city is", "answer": "Osaka", "old": "Tokyo"}]
