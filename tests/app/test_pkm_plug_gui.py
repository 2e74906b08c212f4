"""A grown product-key memory plugged into the app's reader (issue 19): the Product-key memory
panel lists the current pack's layer and added folders, a tick plugs it in through the
mechanism's attach (the reader's logits change), unticking restores the reader bit for bit,
the choice survives a restart, and another reader's or a damaged layer is refused with the
artefact's message, unticked, and kept in the list. All on the tiny reader."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from PySide6.QtCore import Qt


@pytest.fixture
def layer_dir(tmp_path_factory, tiny_reader):
    """A layer grown for 3 steps on the tiny reader (once per module: seconds), copied per test."""
    return _grown(tmp_path_factory, tiny_reader)


_CACHE: dict = {}


def _grown(tmp_path_factory, reader):
    from engine.mechanisms.pkm.train import run

    if "dir" not in _CACHE:
        base = tmp_path_factory.mktemp("pkm")
        corpus = base / "c.jsonl"
        corpus.write_text("\n".join(json.dumps({"text": f"Element {i} has the symbol X{i}.", "title": f"E{i}"})
                                    for i in range(10)) + "\n", encoding="utf-8")
        out = base / "grown.pkm"
        run({"out": str(out), "corpus": [str(corpus)], "steps": 3, "batch": 2, "seq_len": 16, "slots": 256, "k": 4,
             "heads": 2, "key_dim": 16, "value_lr": 5e-2}, reader=reader)
        _CACHE["dir"] = out
    return _CACHE["dir"]


@pytest.fixture
def unplugged(tiny_reader):
    """The session's tiny reader, given back with no layer attached whatever the test did."""
    from engine.mechanisms.pkm.attach import attachment

    yield tiny_reader
    if attachment(tiny_reader) is not None:
        attachment(tiny_reader).detach()


def logits(reader, text: str = "Element 3 has the symbol") -> torch.Tensor:
    ids = reader.tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return reader.model(input_ids=ids).logits.clone()


@pytest.fixture
def panel_of(qtbot, make_ctx, tiny_loader, unplugged, small_pack):
    from app.pkm_layers import PKMLayers
    from app.views.pkm import PKMPanel

    def make(folder=None):
        ctx = make_ctx([small_pack], folder=folder)
        ctx.model_loader = tiny_loader
        layers = PKMLayers(ctx)
        panel = PKMPanel(layers)
        qtbot.addWidget(panel)
        errors: list[str] = []
        ctx.notifier.error = lambda title, exc: errors.append(f"{title}: {exc}") or str(exc)
        return ctx, layers, panel, errors

    return make


def tick(qtbot, layers, panel, folder, on=True):
    it = panel.item_for(str(folder))
    assert it is not None, [panel.list.item(i).text() for i in range(panel.list.count())]
    with qtbot.waitSignal(layers.changed, timeout=30_000):
        it.setCheckState(Qt.CheckState.Checked if on else Qt.CheckState.Unchecked)


def test_the_current_packs_layer_is_listed_and_a_tick_plugs_it_then_unplugging_restores_the_reader(
        qtbot, panel_of, layer_dir, small_pack, unplugged):
    from engine.mechanisms.pkm.attach import attachment

    beside = small_pack.with_name("facts.pkm")
    shutil.copytree(layer_dir, beside)
    ctx, layers, panel, errors = panel_of()
    assert [panel.list.item(i).text() for i in range(panel.list.count())] == ["facts.pkm — 256 slots at layer 1"]
    before = logits(unplugged)
    state = {k: v.clone() for k, v in unplugged.model.state_dict().items()}

    tick(qtbot, layers, panel, beside.resolve())
    att = attachment(unplugged)
    assert att is not None and att.source == str(beside.resolve()) and not errors
    assert ctx.workspace.pkm == str(beside.resolve())
    assert "Plugged into the reader: facts.pkm" in panel.status.text()
    assert not torch.equal(logits(unplugged), before)  # the grown layer changes what the reader says

    tick(qtbot, layers, panel, beside.resolve(), on=False)
    assert attachment(unplugged) is None and ctx.workspace.pkm is None
    assert torch.equal(logits(unplugged), before)  # bit for bit
    assert all(torch.equal(v, state[k]) for k, v in unplugged.model.state_dict().items())


def test_the_plugged_layer_is_remembered_and_plugged_again_when_the_reader_loads(
        qtbot, panel_of, layer_dir, tmp_path, unplugged):
    from app.workspace import Workspace
    from engine.mechanisms.pkm.attach import attachment

    ctx, layers, panel, errors = panel_of()
    assert layers.add_folder(layer_dir)
    tick(qtbot, layers, panel, layer_dir.resolve())
    saved = json.loads(ctx.workspace.file.read_text())
    assert saved["version"] == 5 and saved["pkm"] == str(layer_dir.resolve())
    attachment(unplugged).detach()  # as a restart: a fresh reader

    ctx2, layers2, panel2, errors2 = panel_of(folder=tmp_path / "ws")
    assert Workspace.load(tmp_path / "ws").pkm == str(layer_dir.resolve())
    with qtbot.waitSignal(layers2.changed, timeout=30_000):
        ctx2.model.load()
    assert attachment(unplugged) is not None and not errors2
    assert panel2.item_for(str(layer_dir.resolve())).checkState() == Qt.CheckState.Checked


def test_a_version_4_workspace_file_reads_with_no_layer_plugged(tmp_path):
    from app.workspace import Workspace

    (tmp_path / "workspace.json").write_text(json.dumps({"version": 4, "packs": [], "patches": ["a"]}))
    ws = Workspace.load(tmp_path)
    assert ws.version == 5 and ws.pkm is None and ws.pkm_folders == [] and ws.patches == ["a"]
    (tmp_path / "workspace.json").write_text(json.dumps({"version": 5, "packs": [], "pkm_folders": "x"}))
    from app.workspace import WorkspaceError

    with pytest.raises(WorkspaceError, match="pkm_folders must be a list of folder paths"):
        Workspace.load(tmp_path)
    assert (tmp_path / "workspace.json.bad").exists()  # kept aside, not lost


@pytest.mark.parametrize("damage", ["another reader", "damaged weights"])
def test_another_readers_or_a_damaged_layer_is_refused_named_unticked_and_kept(
        qtbot, panel_of, layer_dir, tmp_path, unplugged, damage):
    from engine.mechanisms.pkm.attach import attachment

    bad = tmp_path / "bad.pkm"
    shutil.copytree(layer_dir, bad)
    if damage == "another reader":
        meta = json.loads((bad / "config.json").read_text())
        meta["reader"]["weights_sha256"] = "0" * 64
        meta["reader"]["name"] = "some-other-reader"
        (bad / "config.json").write_text(json.dumps(meta))
        want = "not the loaded reader"
    else:
        (bad / "model.safetensors").write_bytes(b"\x80\x04 not safetensors at all")
        want = "model.safetensors"
    ctx, layers, panel, errors = panel_of()
    assert layers.add_folder(bad)
    with qtbot.waitSignal(layers.refused, timeout=30_000) as sig:
        panel.item_for(str(bad.resolve())).setCheckState(Qt.CheckState.Checked)
    assert want in sig.args[1] and want in errors[0] and "bad.pkm" in errors[0]
    qtbot.waitUntil(lambda: panel.item_for(str(bad.resolve())) is not None
                    and panel.item_for(str(bad.resolve())).checkState() == Qt.CheckState.Unchecked)
    assert attachment(unplugged) is None and ctx.workspace.pkm is None
    assert str(bad.resolve()) in ctx.workspace.pkm_folders  # still listed: nothing lost
    assert want in panel.status.text()


def test_a_folder_that_is_no_layer_is_said_and_not_listed(qtbot, panel_of, tmp_path):
    ctx, layers, panel, errors = panel_of()
    (tmp_path / "empty").mkdir()
    assert not layers.add_folder(tmp_path / "empty")
    assert "product-key memory" in errors[0] and "empty" in errors[0] and panel.list.count() == 0


def test_ask_and_explain_says_the_layer_was_active_its_slots_and_the_answer_without_it(
        qtbot, panel_of, layer_dir, unplugged):
    from app.views.explain import ExplainPanel, first_line
    from tests.app.conftest import ask

    ctx, layers, panel, errors = panel_of()
    explain = ExplainPanel(ctx)
    qtbot.addWidget(explain)
    explain.mode.setCurrentIndex(explain.mode.findData("none"))
    bare = ask(qtbot, explain, "Element 3 has the symbol")
    assert bare.pkm_layer is None and not explain.pkm_box.isVisibleTo(explain)

    assert layers.add_folder(layer_dir)
    layers.changed.connect(lambda: explain.pkm_changed(layers.plugged))
    tick(qtbot, layers, panel, layer_dir.resolve())
    assert "product-key memory changed" in explain.stale.text()
    expl = ask(qtbot, explain, again=True)
    assert expl.pkm_layer["folder"] == str(layer_dir.resolve()) and expl.mechanisms[0] == "pkm"
    assert explain.pkm_box.isVisibleTo(explain) and "grown.pkm" in explain.pkm_label.text()
    assert "layer 1, 256 slots" in explain.pkm_label.text()
    rows = explain.pkm_slots.rowCount()
    assert rows == len(expl.pkm_slots) > 0
    assert int(explain.pkm_slots.item(0, 0).text()) == expl.pkm_slots[0].slot
    assert explain.pkm_slots.item(0, 2).text().count("·") == 4  # five top tokens

    with qtbot.waitSignal(explain.without_pkm_done, timeout=30_000):
        explain.without_pkm_btn.click()
    assert expl.answers_without_pkm["answer"] == bare.answer  # the reader alone, as before plugging
    assert f"Without the product-key memory: {first_line(bare.answer) or '(empty answer)'}" in explain.without_pkm_text.text()
    from engine.mechanisms.pkm.attach import attachment

    assert attachment(unplugged) is not None  # plugged again after


def test_an_evaluation_with_the_layer_plugged_says_so_in_its_row(qtbot, panel_of, layer_dir, tmp_path, unplugged):
    from app.evaluations import EvalStore
    from app.views.evaluation import EvaluationView

    ctx, layers, panel, errors = panel_of()
    assert layers.add_folder(layer_dir)
    tick(qtbot, layers, panel, layer_dir.resolve())
    probes = tmp_path / "probes.jsonl"
    probes.write_text(json.dumps({"prompt": "The chemical symbol of gold is", "answer": "Au", "relation": "chemistry",
                                  "subject": "Gold"}) + "\n", encoding="utf-8")
    v = EvaluationView(ctx)
    qtbot.addWidget(v)
    v.mode.setCurrentIndex(v.mode.findData("none"))
    with qtbot.waitSignal(v.run_finished, timeout=120_000) as sig:
        assert v.run(str(probes))
    run = sig.args[0]
    assert run.pkm == str(layer_dir.resolve())
    assert "+ pkm grown.pkm" in run.label and run.short_label.endswith("+pkm")
    shown = [v.table.item(0, j).text() for j in range(v.table.columnCount())]
    assert any("+ pkm grown.pkm" in c for c in shown)
    assert EvalStore(ctx.workspace.folder).load()[0].pkm == str(layer_dir.resolve())  # kept with the run
    v.cancel()
