"""Knowledge plugins in the desktop app: the plugin checkbox beside each pack (disabled until
a plugin is trained, saved with the workspace), the Entities tab (entities, their triples,
importing triples through the pack's writer), the map-tune dialog starting TransE then
map-tuning as jobs in the Jobs panel (progress, loss curve, cancel), and plugged plugins
reaching the prediction (injected entities and the answer without plugins shown)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from tests.engine.test_plugins_fixtures import make_pack, triples, write_jsonl

from .conftest import ask, open_on_explain, wait_ready


def make_plugin(pack: Path, reader, name: str = "geo") -> Path:
    """A tiny (untrained) knowledge plugin for the pack's entities, saved where the app looks."""
    from engine.mechanisms.plugins.embeddings import EntityEmbeddings
    from engine.mechanisms.plugins.io import default_plugin_dir
    from engine.mechanisms.plugins.module import KnowledgePlugin
    from engine.store import Pack

    with Pack.open(pack, readonly=True) as pk:
        ents = pk.entities()
    emb = EntityEmbeddings(np.array([e["id"] for e in ents]), [e["name"] for e in ents],
                           np.random.default_rng(0).normal(size=(len(ents), 8)).astype(np.float32), "transe")
    plugin = KnowledgePlugin.create(reader, emb, aliases={e["id"]: e["aliases"] for e in ents}, name=name)
    return plugin.save(default_plugin_dir(pack))


def add_triples(pack: Path, tmp_path: Path) -> None:
    from engine.mechanisms.plugins.entities import import_triples
    from engine.store import Pack

    with Pack.open(pack) as pk:
        import_triples(pk, [write_jsonl(tmp_path / "triples.jsonl", triples())])


def test_plugin_checkbox_follows_the_trained_plugin_and_is_saved(qtbot, make_ctx, tmp_path, tiny_reader):
    from app.views.workspace_panel import WorkspacePanel
    from app.workspace import Workspace

    pack = make_pack(tmp_path / "ws")
    path = str(pack.resolve())
    ctx = make_ctx([path])
    panel = WorkspacePanel(ctx)
    qtbot.addWidget(panel)
    box = panel.plugin_box(path)
    assert box is not None and not box.isEnabled() and not box.isChecked()
    assert "No knowledge plugin" in box.toolTip() and "geo.plugmem.plugin" in box.toolTip()

    make_plugin(pack, tiny_reader)
    panel.refresh_plugins()
    assert box.isEnabled() and not box.isChecked()
    assert "'geo'" in box.toolTip() and "10 entities" in box.toolTip() and "tiny-llama-seed0" in box.toolTip()

    with qtbot.waitSignal(panel.plugin_toggled) as sig:
        box.click()
    assert sig.args == [path, True]
    saved = json.loads((ctx.workspace.folder / "workspace.json").read_text())
    assert saved["packs"] == [{"path": path, "plugged": True, "plugin": True}]
    assert Workspace.load(ctx.workspace.folder).plugins() == [path]
    box.click()
    assert Workspace.load(ctx.workspace.folder).plugins() == []

    # a plugin that goes away disables the box again
    box.click()
    (Path(path + ".plugin") / "config.json").unlink()
    panel.refresh_plugins()
    assert not box.isEnabled() and not box.isChecked()


def test_workspace_file_of_version_2_migrates_with_plugins_off(tmp_path):
    from app.workspace import WORKSPACE_VERSION, Workspace, WorkspaceError

    (tmp_path / "workspace.json").write_text(json.dumps({"version": 2, "packs": [{"path": "/a.plugmem", "plugged": True}]}))
    ws = Workspace.load(tmp_path)
    assert ws.version == WORKSPACE_VERSION == 5 and ws.plugins() == [] and ws.patches == [] and ws.plugged() == ["/a.plugmem"]
    assert ws.pkm is None and ws.pkm_folders == []
    (tmp_path / "workspace.json").write_text(json.dumps({"version": 3, "packs": [{"path": "/a.plugmem", "plugin": "yes"}]}))
    with pytest.raises(WorkspaceError, match="plugin must be true or false"):
        Workspace.load(tmp_path)


def test_entities_tab_imports_triples_and_shows_an_entitys_triples(qtbot, make_ctx, small_pack, tmp_path):
    from app.views.entities import EntitiesView
    from engine.store import Pack

    path = str(small_pack.resolve())
    ctx = make_ctx([path])
    view = EntitiesView(ctx)
    qtbot.addWidget(view)
    wait_ready(qtbot, ctx, path)
    qtbot.waitUntil(lambda: "no entities yet" in view.status.text(), timeout=10_000)

    bad = write_jsonl(tmp_path / "bad.jsonl", [{"head": "Chile", "relation": "capital", "tail": "Santiago"},
                                               {"head": "Peru", "relation": "capital"}])
    with qtbot.waitSignal(view.import_failed, timeout=20_000) as sig:
        assert view.import_triples([str(bad)])
    assert "bad.jsonl:2" in sig.args[1] and "tail" in sig.args[1]
    assert view.status.property("error") and "Nothing was imported" in view.status.text()
    with Pack.open(path, readonly=True) as pk:
        assert pk.entities() == []  # the good first line was not imported either

    good = write_jsonl(tmp_path / "t.jsonl", triples())
    with qtbot.waitSignals([view.import_done, view.entities_loaded], timeout=20_000):
        assert view.import_triples([str(good)])
    assert view.model.rowCount() == 10 and view.count.text() == "10 entities"
    assert view.row_names()[:3] == ["China", "France", "Germany"]  # sorted by name
    assert "Imported t.jsonl" in view.status.text() and not view.status.property("error")

    view.filter_box.setText("nip")  # an alias of Japan
    assert view.row_names() == ["Japan"] and view.count.text() == "1 of 10 entities"
    with qtbot.waitSignal(view.triples_shown, timeout=10_000) as sig:
        view.table.setCurrentIndex(view.proxy.index(0, 0))
    assert sig.args[1] == 2
    assert view.triple_rows() == [("capital", "Tokyo"), ("region", "Asia")]
    assert "Japan — also Nippon: 2 triple(s)" == view.entity_label.text()
    view.filter_box.clear()
    aliases = view.proxy.index(view.row_names().index("France"), 1).data()
    triples_col = view.proxy.index(view.row_names().index("France"), 2).data()
    assert aliases == "French Republic" and triples_col.startswith("4")  # capital, region, 2 borders


@pytest.fixture
def plugin_window(qtbot, make_ctx, small_pack, tmp_path, tiny_loader, tiny_reader):
    add_triples(small_pack, tmp_path)
    make_plugin(small_pack, tiny_reader, name="facts")
    path = str(small_pack.resolve())
    ctx = make_ctx([path])
    ctx.model_loader = tiny_loader
    win = open_on_explain(qtbot, ctx, path)
    yield win, path
    win.close()


def test_toggling_the_plugin_changes_what_the_prediction_receives(qtbot, plugin_window):
    win, path = plugin_window
    p = win.explain
    p.mode.setCurrentIndex(p.mode.findData("context"))
    e = ask(qtbot, p, "The currency of Japan is")
    assert e.plugins == [] and e.injected == [] and not p.plugin_box.isVisibleTo(p)

    box = win.workspace_panel.plugin_box(path)
    assert box.isEnabled()
    with qtbot.waitSignal(win.ctx.model.plugins_loaded, timeout=30_000) as sig:
        box.click()  # loads the plugin on the model thread
    assert sig.args == [{path: "facts"}, []]
    assert "plugins: facts" in win.plugged_label.text()
    assert p.stale.isVisibleTo(p) and "knowledge plugins changed" in p.stale.text()

    e = ask(qtbot, p, "The currency of Japan is")
    assert e.plugins == ["facts"]
    assert [(i.mention, i.entity) for i in e.injected] == [("Japan", "Japan")]
    assert e.injected[0].loo_delta is not None and e.answer_without_plugins is not None
    assert p.plugin_box.isVisibleTo(p) and p.injected.rowCount() == 1
    assert p.injected.item(0, 1).text() == "Japan → Japan" and p.injected.item(0, 0).text() == "facts"
    assert p.injected.item(0, 2).text() == f"{e.injected[0].loo_delta:+.3f}"
    assert p.without_plugins_text.text().startswith("Answer without plugins: ")

    box.click()  # unplug: the next answer has no plugin
    e = ask(qtbot, p, "The currency of Japan is")
    assert e.plugins == [] and not p.plugin_box.isVisibleTo(p)


def test_plugin_for_another_reader_is_left_out_with_a_message(qtbot, plugin_window):
    from engine.reader.tiny import make_tiny_reader

    win, path = plugin_window
    make_plugin(Path(path), make_tiny_reader(1), name="facts")  # trained for another reader
    p = win.explain
    p.mode.setCurrentIndex(p.mode.findData("context"))
    win.workspace_panel.plugin_box(path).click()
    e = ask(qtbot, p, "The currency of Japan is")
    assert e.plugins == []
    assert "Knowledge plugins left out" in p.status.text() and "tiny-llama-seed1" in p.status.text()


@pytest.fixture
def jobs_window(qtbot, make_ctx, tmp_path):
    """Workspace panel + Jobs panel + the plugin trainer over a pack with triples and facts (no window)."""
    from app.views.jobs_panel import JobsPanel
    from app.views.map_tune import PluginTrainer
    from app.views.workspace_panel import WorkspacePanel

    pack = make_pack(tmp_path / "ws")
    path = str(pack.resolve())
    ctx = make_ctx([path])
    panel, jobs = WorkspacePanel(ctx), JobsPanel(ctx)
    qtbot.addWidget(panel)
    qtbot.addWidget(jobs)
    trainer = PluginTrainer(ctx)
    yield ctx, path, panel, jobs, trainer


def test_map_tune_dialog_starts_transe_whose_progress_reaches_the_jobs_panel_and_can_be_cancelled(qtbot, jobs_window):
    from app.views.map_tune import MapTuneDialog

    ctx, path, panel, jobs, trainer = jobs_window
    dlg = MapTuneDialog(ctx, path)
    qtbot.addWidget(dlg)
    assert dlg.train_radio.isChecked() and not dlg.use_radio.isEnabled()  # no embeddings beside the pack yet
    dlg.probes.setText(str(Path(path).parent / "missing.jsonl"))
    dlg._accept()
    assert dlg.error.isVisibleTo(dlg) and "missing.jsonl: no such file" in dlg.error.text()
    assert dlg.result() == 0  # not accepted
    dlg.probes.clear()
    dlg.dim.setValue(8)
    dlg.transe_epochs.setValue(100_000)  # long enough to be cancelled
    dlg._accept()
    assert dlg.result() == 1

    with qtbot.waitSignal(trainer.job_started) as sig:
        jid = trainer.start(path, dlg.options())
    assert sig.args == [path, jid, "train_transe"] and trainer.is_running(path)
    qtbot.waitUntil(lambda: jid in jobs._rows and jobs.table.cellWidget(jobs._rows.index(jid), 2).value() > 0,
                    timeout=60_000)
    row = jobs._rows.index(jid)
    assert "TransE embeddings for geo" in jobs.table.item(row, 0).text()
    assert "epoch" in jobs.table.item(row, 4).text() and "loss" in jobs.table.item(row, 4).text()
    qtbot.waitUntil(lambda: len(ctx.jobs.live[jid].losses) >= 2, timeout=30_000)  # the loss curve's points

    jobs.table.selectRow(row)
    assert jobs.cancel_btn.isEnabled()
    with qtbot.waitSignal(trainer.stopped, timeout=30_000) as sig:
        jobs.cancel_selected()
    assert sig.args == [path, "cancelled"]
    assert not trainer.is_running(path) and list(ctx.jobs.live) == []  # the chain stopped: no map-tuning
    assert not panel.plugin_box(path).isEnabled()
    assert "cancelled" in ctx.notifier.history[-1][1]


def test_map_tune_jobs_run_to_the_end_and_enable_the_plugin_checkbox(qtbot, jobs_window, tmp_path, tiny_reader):
    from app.views.map_tune import MapTuneOptions

    ctx, path, panel, jobs, trainer = jobs_window
    ctx.workspace.reader = str(tiny_reader.save(tmp_path / "tiny-reader"))  # the job loads it in its process
    kinds = []
    trainer.job_started.connect(lambda p, jid, kind: kinds.append(kind))
    trainer.plugin_ready.connect(lambda p: panel.refresh_plugins())
    opts = MapTuneOptions(transe_dim=8, transe_epochs=3, batch=4, max_steps=2)
    with qtbot.waitSignal(trainer.plugin_ready, timeout=240_000) as sig:
        trainer.start(path, opts)
    assert sig.args == [path] and kinds == ["train_transe", "map_tune"]
    box = panel.plugin_box(path)
    assert box.isEnabled() and "2 training steps" in box.toolTip()
    assert (Path(path + ".embeddings") / "config.json").is_file()

    # map-tuning again (on the embeddings now beside the pack) replaces the plugin, never refuses
    from app.views.map_tune import MapTuneDialog

    dlg = MapTuneDialog(ctx, path)
    qtbot.addWidget(dlg)
    assert dlg.use_radio.isEnabled() and "transe embeddings" in dlg.use_radio.text() and "A new run replaces it" in dlg.info.text()
    dlg.use_radio.setChecked(True)
    dlg.batch.setValue(4)
    dlg.max_steps.setValue(1)
    with qtbot.waitSignal(trainer.plugin_ready, timeout=240_000):
        trainer.start(path, dlg.options())
    assert kinds == ["train_transe", "map_tune", "map_tune"]
    assert "1 training step," in box.toolTip() or box.toolTip().endswith("1 training step")


def test_an_alias_imported_after_the_plugin_loaded_is_linked_at_the_next_question(qtbot, plugin_window, tmp_path):
    """The plugin links mentions with the pack's aliases; a triples import that adds one
    (here through the Entities tab, while the plugin is plugged) reaches the next answer
    without reloading anything by hand."""
    from engine.store import Pack

    win, path = plugin_window
    p = win.explain
    p.mode.setCurrentIndex(p.mode.findData("context"))
    box = win.workspace_panel.plugin_box(path)
    with qtbot.waitSignal(win.ctx.model.plugins_loaded, timeout=30_000):
        box.click()
    e = ask(qtbot, p, "The currency of Yamato is")
    assert e.plugins == ["facts"] and e.injected == []  # not an alias of anything yet
    with Pack.open(path, readonly=True) as pk:
        before = pk.entities_version
    extra = write_jsonl(tmp_path / "alias.jsonl", [{"head": "Japan", "relation": "capital", "tail": "Tokyo",
                                                    "head_aliases": ["Yamato"]}])
    view = win.entities
    with qtbot.waitSignal(view.import_done, timeout=20_000):
        assert view.import_triples([str(extra)])
    with Pack.open(path, readonly=True) as pk:
        assert pk.entities_version == before + 1
    e = ask(qtbot, p, "The currency of Yamato is")
    assert [(i.mention, i.entity) for i in e.injected] == [("Yamato", "Japan")]


def test_a_task_plugin_with_an_answer_slot_is_plugged_shown_and_gated(qtbot, make_ctx, small_pack, tmp_path,
                                                                     tiny_loader, tiny_reader):
    """<pack>.task-plugin wins over <pack>.plugin (one plugin per domain); its slot is listed as an injected
    item, and a question of no relation it was trained for gets no vector, the panel saying why."""
    import torch

    from engine.mechanisms.plugins.answer_slot import SlotPlugin
    from engine.mechanisms.plugins.gate import write_gate
    from engine.mechanisms.plugins.io import default_plugin_dir, default_task_plugin_dir, load_plugin

    add_triples(small_pack, tmp_path)
    make_plugin(small_pack, tiny_reader, name="facts")
    sp = SlotPlugin.from_plugin(load_plugin(default_plugin_dir(small_pack), tiny_reader))
    with torch.no_grad():
        for prm in sp.slot_mapping.parameters():
            prm.add_(torch.randn_like(prm))
    sp.name = "facts-task"
    sp.training = {"objective": "task", "relations": ["currency", "capital"]}
    folder = sp.save(default_task_plugin_dir(small_pack))
    write_gate(folder, {"threshold": 0.8}, {"currency": ["The currency of {subject} is"],
                                            "capital": ["The capital of {subject} is"]})
    path = str(small_pack.resolve())
    ctx = make_ctx([path])
    ctx.model_loader = tiny_loader
    win = open_on_explain(qtbot, ctx, path)
    try:
        p = win.explain
        p.mode.setCurrentIndex(p.mode.findData("context"))
        with qtbot.waitSignal(win.ctx.model.plugins_loaded, timeout=30_000) as sig:
            win.workspace_panel.plugin_box(path).click()
        assert sig.args == [{path: "facts-task"}, []]
        e = ask(qtbot, p, "The currency of Japan is")
        assert [(i.kind, i.entity) for i in e.injected] == [("mention", "Japan"), ("slot", "Japan")]
        assert p.injected.rowCount() == 2 and p.injected.item(1, 1).text() == "answer slot → Japan"
        assert p.injected.item(1, 2).text() == f"{e.injected[1].loo_delta:+.3f}"
        assert "plugin facts-task applied" in p.without_plugins_text.text()
        e = ask(qtbot, p, "How many people speak Japanese in Japan?")
        assert e.injected == [] and p.injected.rowCount() == 0
        assert "plugin facts-task not applied: the question matches no relation it was trained for (best: " \
            in p.without_plugins_text.text()
    finally:
        win.close()


def test_the_evaluation_tab_runs_with_the_plugged_plugin_and_shows_each_relation_without_it(
        qtbot, plugin_window, tmp_path):
    from tests.app.test_evaluation import PROBES
    from tests.app.test_evaluation import write_jsonl as write_probes

    win, path = plugin_window
    v = win.evaluation
    f = write_probes(tmp_path / "probes.jsonl", PROBES)
    v.mode.setCurrentIndex(v.mode.findData("context"))
    with qtbot.waitSignal(v.run_finished, timeout=120_000) as sig:
        assert v.run(str(f))
    r = sig.args[0].result
    assert r["plugins"] == [] and r["accuracy_without_plugins"] is None  # no plugin ticked: as before
    assert v.detail.columnCount() == 5

    with qtbot.waitSignal(win.ctx.model.plugins_loaded, timeout=30_000):
        win.workspace_panel.plugin_box(path).click()
    with qtbot.waitSignal(v.run_finished, timeout=120_000) as sig:
        assert v.run(str(f))
    r = sig.args[0].result
    assert r["plugins"] == ["facts"] and r["accuracy_without_plugins"] is not None
    heads = [v.detail.horizontalHeaderItem(j).text() for j in range(v.detail.columnCount())]
    assert heads == ["relation", "n", "with memory + plugins", "without plugins", "without", "hit@k"]
    rows = {v.detail.item(i, 0).text(): [v.detail.item(i, j).text() for j in range(6)]
            for i in range(v.detail.rowCount())}
    for name, fig in r["by_relation"].items():  # per relation, with and without the plugin
        assert rows[name][3] == f"{100 * fig['accuracy_without_plugins']:.1f}%"
        assert rows[name][2] == f"{100 * fig['accuracy']:.1f}%"


def _task_probes(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "probes_train.jsonl", [
        {"prompt": "The capital of France is", "answer": "Paris", "relation": "capital", "subject": "France"},
        {"prompt": "According to the atlas, Spain lies in", "answer": "Europe", "relation": "region",
         "subject": "Spain"}])


def test_presets_fill_the_fields_and_the_estimate_follows_the_preset_kind_and_pack(qtbot, jobs_window, tmp_path):
    from app.views.map_tune import PRESETS, STEP_TIMES, MapTuneDialog, estimate, planned_steps

    ctx, path, panel, jobs, trainer = jobs_window
    dlg = MapTuneDialog(ctx, path)
    qtbot.addWidget(dlg)
    dlg.show()
    assert dlg.preset() == "quick" and dlg.kind() == "general"
    assert not dlg.advanced.isVisible() and not dlg.task_fields.isVisible()
    q = PRESETS[("general", "quick")]
    assert (dlg.lr.value(), dlg.batch.value(), dlg.epochs.value(), dlg.max_steps.value()) == \
        (q["lr"], q["batch"], q["epochs"], q["max_steps"])
    quick_general = dlg.estimates["quick"].text()
    assert ("GPU is faster" if dlg.gpu else "on this computer") in quick_general
    assert "bench/RESULTS.md" in dlg.estimates["quick"].toolTip()
    assert f"{STEP_TIMES['general'].seconds_per_example:.2f} s per example" in dlg.estimates["quick"].toolTip()

    dlg.preset_radios["custom"].setChecked(True)  # custom shows the ML fields, keeping the values
    assert dlg.advanced.isVisible() and dlg.batch.value() == q["batch"]
    dlg.max_steps.setValue(5000)
    dlg.epochs.setValue(50)
    assert dlg.estimates["custom"].text() != quick_general  # the custom estimate follows the fields

    dlg.kind_radios["task"].setChecked(True)  # the task plugin: its own figures, the answer slot on
    dlg.preset_radios["standard"].setChecked(True)
    s = PRESETS[("task", "standard")]
    assert dlg.task_fields.isVisible() and dlg.answer_slot.isChecked() and not dlg.advanced.isVisible()
    assert (dlg.lr.value(), dlg.batch.value(), dlg.max_steps.value()) == (s["lr"], s["batch"], 0)
    assert "45 steps of batch 32 in 470 s" in dlg.estimates["standard"].toolTip()

    small_standard = dlg.estimates["standard"].text()
    assert dlg.estimates["quick"].text() == small_standard  # a tiny pack: 45 steps or one epoch, both one step

    # a pack with 3,000 more triples: the same presets take longer, and quick (45 steps) is shorter than an epoch
    from engine.mechanisms.plugins.entities import import_triples
    from engine.store import Pack

    with Pack.open(path) as pk:
        import_triples(pk, [write_jsonl(tmp_path / "more.jsonl", [
            {"head": f"Place {i}", "relation": "capital", "tail": f"Town {i}"} for i in range(3000)])])
    big = MapTuneDialog(ctx, path)
    qtbot.addWidget(big)
    big.kind_radios["task"].setChecked(True)
    minutes = {k: int(re.search(r"(\d+) minutes", big.estimates[k].text()).group(1)) for k in ("quick", "standard")}
    assert minutes["quick"] < minutes["standard"] and big.estimates["standard"].text() != small_standard
    steps = planned_steps("task", 3030, 32, 1, 0)
    assert f"{steps} steps of 32" in big.estimates["standard"].toolTip() and "3,030 triples" in big.estimates["standard"].toolTip()
    assert minutes["standard"] == round(steps * 32 * STEP_TIMES["task"].seconds_per_example / 60)
    text, _ = estimate("task", 3030, 32, 1, 0, gpu=True)  # on a GPU the CPU figure is only a bound, said so
    assert text == f"at most {minutes['standard']} minutes (measured on a CPU; this computer's GPU is faster)"


def test_a_task_plugin_without_a_probe_file_is_refused_naming_the_field(qtbot, jobs_window, tmp_path):
    from app.views.map_tune import MapTuneDialog, MapTuneOptions

    ctx, path, panel, jobs, trainer = jobs_window
    dlg = MapTuneDialog(ctx, path)
    qtbot.addWidget(dlg)
    dlg.kind_radios["task"].setChecked(True)
    dlg._accept()
    assert dlg.result() == 0 and dlg.error.isVisibleTo(dlg)
    assert dlg.error.text().startswith("Questions file: a task plugin needs a probe file")
    dlg.questions.setText(str(tmp_path / "nowhere.jsonl"))
    dlg._accept()
    assert dlg.result() == 0 and "Questions file" in dlg.error.text() and "nowhere.jsonl: no such file" in dlg.error.text()
    # the trainer refuses it too (a caller without the dialog), and starts nothing
    assert trainer.start(path, MapTuneOptions(kind="task")) is None
    assert "questions file" in str(ctx.notifier.history[-1]) and ctx.jobs.live == {}


def test_the_task_plugin_job_gets_the_presets_config_and_its_plugin_becomes_plugged(qtbot, jobs_window, tmp_path,
                                                                                   tiny_reader):
    from app.views.map_tune import PRESETS, MapTuneDialog
    from engine.mechanisms.plugins.io import read_plugin_config

    ctx, path, panel, jobs, trainer = jobs_window
    ctx.workspace.reader = str(tiny_reader.save(tmp_path / "tiny-reader"))
    probes = _task_probes(tmp_path)
    dlg = MapTuneDialog(ctx, path)
    qtbot.addWidget(dlg)
    dlg.kind_radios["task"].setChecked(True)
    dlg.preset_radios["quick"].setChecked(True)
    dlg.questions.setText(str(probes))
    dlg.dim.setValue(8)
    dlg.transe_epochs.setValue(3)
    dlg._accept()
    assert dlg.result() == 1
    started = []
    trainer.job_started.connect(lambda p, jid, kind: started.append((jid, kind)))
    trainer.plugin_ready.connect(lambda p: panel.refresh_plugins())
    with qtbot.waitSignal(trainer.plugin_ready, timeout=240_000):
        trainer.start(path, dlg.options())
    assert [k for _, k in started] == ["train_transe", "task_tune"]
    cfg = ctx.jobs.record(started[1][0]).config
    q = PRESETS[("task", "quick")]
    assert {k: cfg[k] for k in ("lr", "batch", "epochs", "max_steps")} == q
    assert cfg["probes"] == [str(probes)] and cfg["answer_slot"] is True and cfg["start"] == "none"
    from app.views.job_details import what_it_does

    assert what_it_does("task_tune", "", cfg) == ("Trains the task plugin of geo to answer the questions of "
                                                  "probes_train.jsonl, the reader frozen.")
    meta = read_plugin_config(Path(path + ".task-plugin"))
    assert meta["training"]["objective"] == "task"
    assert panel.plugin_box(path).isEnabled()
