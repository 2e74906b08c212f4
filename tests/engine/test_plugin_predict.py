"""Knowledge plugins in prediction, evaluation, explanations and the CLI (tiny reader, real packs and encoder)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from engine.evaluate import Probe, evaluate_edits, evaluate_probes
from engine.evaluate.probes import answer_batch
from engine.explain import Explanation, PredictError, Predictor
from engine.memory import Memory
from engine.reader.tiny import make_tiny_reader
from engine.mechanisms.plugins.embeddings import EntityEmbeddings
from engine.mechanisms.plugins.entities import import_triples
from engine.mechanisms.plugins.attach import PluginInjector
from engine.mechanisms.plugins.io import default_plugin_dir
from engine.mechanisms.plugins.module import KnowledgePlugin
from engine.probe_files import Edit

from .test_dpm import copy_branch
from .test_evaluate import cli_models  # noqa: F401 - the fixture: a tiny reader folder and a copy branch for it
from .test_explain import run_cli
from .test_plugins_fixtures import make_pack, write_jsonl

ANIMALS = {"Zebra": "Rome", "Lion": "Paris", "Tiger": "Lima", "Camel": "Cairo", "Panda": "Tokyo"}
PROMPT = "Zebra facts:"
INJECTED_KEYS = {"plugin", "mention", "entity", "entity_id", "loo_delta"}


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_reader(seed=0)


@pytest.fixture(scope="module")
def branch(tiny):
    return copy_branch(tiny)


def fill_zoo(m: Memory, tmp_path) -> Memory:
    m.add_many([{"text": f"{a} facts: {w} {w} {w} {w} {w}", "title": a, "tags": ["word", "zoo"]}
                for a, w in ANIMALS.items()])
    import_triples(m.pack, [write_jsonl(tmp_path / "zoo-triples.jsonl", [
        {"head": a, "relation": "word", "tail": w} for a, w in ANIMALS.items()])])
    return m


@pytest.fixture
def zoo(tmp_path, encoder):
    m = fill_zoo(Memory.open(tmp_path / "zoo.plugmem", encoder, create=True, name="zoo"), tmp_path)
    yield m
    m.close()


def make_plugin(reader, pack, name: str = "zoo", seed: int = 0) -> KnowledgePlugin:
    """A plugin with random entity embeddings and a random (non-zero) mapping for ``pack``'s entities."""
    ents = pack.entities()
    vecs = np.random.default_rng(seed).normal(size=(len(ents), 8)).astype(np.float32)
    emb = EntityEmbeddings([e["id"] for e in ents], [e["name"] for e in ents], vecs, "imported")
    plugin = KnowledgePlugin.create(reader, emb, name=name, seed=seed)
    plugin.use_pack_aliases(pack)
    return plugin


def without_time(rec: Explanation) -> dict:
    d = rec.to_dict()
    d.pop("seconds")
    return d


# ----------------------------------------------------------------------------- predict


def test_predict_with_a_plugin_lists_the_injected_mention_and_its_effect(tiny, branch, zoo):
    plugin = make_plugin(tiny, zoo.pack)
    rec = Predictor(tiny, branch).predict(PROMPT, [zoo], mode="dpm", k=2, max_new_tokens=3, plugins=[plugin])
    assert rec.plugins == ["zoo"]
    [inj] = rec.injected
    assert (inj.plugin, inj.mention, inj.entity, inj.start, inj.end) == ("zoo", "Zebra", "Zebra", 0, 5)
    assert inj.entity_id == next(e["id"] for e in zoo.pack.entities() if e["name"] == "Zebra")
    # the answer (" Rome", one token since answers stop where they repeat) moves when the vector goes
    assert math.isfinite(inj.loo_delta) and abs(inj.loo_delta) > 1e-6
    assert all(math.isfinite(r.loo_delta) and r.weight is not None for r in rec.retrieved)
    d = json.loads(rec.to_json())
    assert {"plugins", "injected", "answer_without_plugins", "answer_without_memory", "retrieved", "packs"} <= set(d)
    assert INJECTED_KEYS <= set(d["injected"][0]) and d["plugins"] == ["zoo"]
    assert Explanation.from_dict(d).injected[0].mention == "Zebra"
    html = rec.to_html()
    assert "Knowledge plugins" in html and "Zebra" in html
    # no leave-one-out pass: the mention is still listed, without an effect
    quick = Predictor(tiny, branch).predict(PROMPT, [zoo], mode="dpm", k=2, max_new_tokens=3, plugins=[plugin],
                                            explain=False)
    assert [(i.mention, i.loo_delta) for i in quick.injected] == [("Zebra", None)] and quick.answer == rec.answer


@pytest.mark.parametrize("mode", ["dpm", "context", "none"])
def test_without_plugins_the_record_is_the_memory_only_one(tiny, branch, zoo, mode):
    before = Predictor(tiny, branch).predict(PROMPT, [zoo], mode=mode, k=2, max_new_tokens=3)
    empty = Predictor(tiny, branch).predict(PROMPT, [zoo], mode=mode, k=2, max_new_tokens=3, plugins=())
    assert without_time(empty) == without_time(before)
    assert empty.plugins == [] and empty.injected == [] and empty.answer_without_plugins is None
    plugged = Predictor(tiny, branch).predict(PROMPT, [zoo], mode=mode, k=2, max_new_tokens=3,
                                              plugins=[make_plugin(tiny, zoo.pack)])
    assert plugged.answer_without_plugins == before.answer  # the memory alone
    assert plugged.answer_without_memory == before.answer_without_memory == tiny.generate(PROMPT, max_new_tokens=3)
    assert [(r.pack, r.id) for r in plugged.retrieved] == [(r.pack, r.id) for r in before.retrieved]


@pytest.mark.parametrize("mode", ["dpm", "context"])
def test_plugin_and_memory_act_together(tiny, zoo, mode):
    """The answer's log-prob with plugin + memory differs from memory alone by exactly the vector's
    leave-one-out effect (checked against the memory-only path), and from the plugin alone."""
    plugin = make_plugin(tiny, zoo.pack)
    # a gentler copy branch: at scale 50 it drowns every other input, a plugin vector included
    p = Predictor(tiny, copy_branch(tiny, scale=2.0))
    rec = p.predict(PROMPT, [zoo], mode=mode, k=2, max_new_tokens=3, plugins=[plugin])
    assert rec.answer.strip()
    # context mode: the entries also say "Zebra", but only the prompt's mention is injected
    assert [i.mention for i in rec.injected] == ["Zebra"]
    answer_ids = tiny.tokenizer(rec.answer, add_special_tokens=False)["input_ids"]
    texts = [r.text for r in rec.retrieved]
    scores = [r.score for r in rec.retrieved]
    memory_only = p.fusion(mode).leave_one_out(PROMPT, texts, scores, answer_ids).logp_all
    delta = rec.injected[0].loo_delta
    assert abs(delta) > 1e-2  # a non-zero mapping changes what the reader does with the memory
    assert rec.answer_logprob - memory_only == pytest.approx(delta, abs=2e-3)
    plugin_only = float(PluginInjector(tiny, plugin).answer_logprob([PROMPT], [rec.answer])[0])
    assert abs(rec.answer_logprob - plugin_only) > 1e-2  # and the memory acts too
    if mode == "dpm":
        assert rec.answer.startswith(" Rome")  # the copy branch still reads its memory through the injected input
    assert all(math.isfinite(r.loo_delta) for r in rec.retrieved)
    assert rec.retrieved[0].weight is not None


def test_plugins_alone_and_bad_plugin_arguments(tiny, branch, zoo):
    plugin = make_plugin(tiny, zoo.pack)
    p = Predictor(tiny, branch)
    rec = p.predict(PROMPT, [], mode="dpm", k=2, max_new_tokens=3, plugins=[plugin])
    bare = tiny.generate(PROMPT, max_new_tokens=3)
    assert rec.answer_without_memory == bare and rec.answer_without_plugins == bare and rec.retrieved == []
    assert rec.answer == PluginInjector(tiny, plugin).generate(PROMPT, max_new_tokens=3)
    expect = rec.answer_logprob - float(tiny.answer_logprob(PROMPT, rec.answer))
    assert rec.injected[0].loo_delta == pytest.approx(expect, abs=2e-3)
    with pytest.raises(PredictError, match="not a KnowledgePlugin"):
        p.predict(PROMPT, [zoo], mode="context", plugins=["zoo.plugin"])
    with pytest.raises(PredictError, match="both named 'zoo'"):
        p.predict(PROMPT, [zoo], mode="context", plugins=[plugin, make_plugin(tiny, zoo.pack, seed=1)])
    with pytest.raises(PredictError, match="trained for the reader"):
        p.predict(PROMPT, [zoo], mode="context", plugins=[make_plugin(make_tiny_reader(seed=1), zoo.pack)])


# ----------------------------------------------------------------------------- evaluation


def test_batched_answers_with_plugins_equal_one_at_a_time(tiny, branch, zoo):
    plugin = make_plugin(tiny, zoo.pack)
    p = Predictor(tiny, branch)
    prompts = ["Zebra facts:", "Some facts about the Lion and the Tiger:", "Facts:"]
    for mode in ("dpm", "context"):
        got, _ = answer_batch(p, prompts, [zoo], mode, k=2, max_new_tokens=3, plugins=[plugin])
        one = [p.predict(q, [zoo], mode=mode, k=2, max_new_tokens=3, plugins=[plugin], explain=False).answer
               for q in prompts]
        assert got == one, mode


def test_probe_and_edit_reports_name_the_plugins(tiny, branch, zoo):
    plugin = make_plugin(tiny, zoo.pack)
    p = Predictor(tiny, branch)
    probes = [Probe(f"{a} facts:", w, relation="word", subject=a) for a, w in ANIMALS.items()]
    res = evaluate_probes(p, [zoo], probes, "dpm", k=1, paraphrases=False, plugins=[plugin])
    plain = evaluate_probes(p, [zoo], probes, "dpm", k=1, paraphrases=False)
    assert res["plugins"] == ["zoo"] and plain["plugins"] == [] and plain["accuracy_without_plugins"] is None
    assert res["accuracy_without_plugins"] == plain["accuracy"] == 1.0  # the memory alone
    assert res["accuracy_without_memory"] == plain["accuracy_without_memory"]  # the bare reader
    assert res["by_relation"]["word"]["accuracy_without_plugins"] == 1.0
    answers = [p.predict(q.prompt, [zoo], mode="dpm", k=1, max_new_tokens=3, plugins=[plugin], explain=False).answer
               for q in probes]
    assert res["accuracy"] == sum(a.strip().lower().startswith(q.answer.lower()) for a, q in zip(answers, probes)) / 5
    edit = Edit(old_text="Zebra facts: Rome Rome Rome Rome Rome", new_text="Zebra facts: Oslo Oslo Oslo Oslo Oslo",
                prompt="Zebra facts:", new="Oslo", old="Rome", subject="Zebra")
    rep = evaluate_edits(p, [zoo], [edit], [], "dpm", k=1, plugins=[plugin])
    assert rep["plugins"] == ["zoo"] and rep["restored"] is True and rep["n"] == 1


# ----------------------------------------------------------------------------- CLI


@pytest.fixture
def cli_zoo(cli_models, tmp_path, encoder):
    """A closed zoo pack with its plugin beside it (PACK.plugin), plus a plugin of another reader and one of
    another entity set."""
    from engine.reader import load_reader

    reader = load_reader(cli_models[0])  # the reader the CLI will load
    path = tmp_path / "zoo.plugmem"
    with fill_zoo(Memory.open(path, encoder, create=True, name="zoo"), tmp_path) as m:
        make_plugin(reader, m.pack).save(default_plugin_dir(path))
        make_plugin(make_tiny_reader(seed=1), m.pack).save(tmp_path / "other-reader.plugin")
    from engine.store import Pack

    (tmp_path / "geo").mkdir()
    geo = make_pack(tmp_path / "geo", with_facts=False)  # another domain's entities
    with Pack.open(geo, readonly=True) as pack:
        make_plugin(reader, pack, name="geo").save(tmp_path / "geo.plugin")
    return {"pack": str(path), "plugin": str(default_plugin_dir(path)), "other": str(tmp_path / "other-reader.plugin"),
            "geo": str(tmp_path / "geo.plugin"), "missing": str(tmp_path / "nowhere.plugin")}


def test_cli_predict_with_plugins(cli_models, cli_zoo, capsys):
    reader, branch = cli_models
    base = ["predict", PROMPT, "--memory", cli_zoo["pack"], "-k", "2", "--max-new-tokens", "3", "--reader", reader,
            "--branch", branch]
    code, out, err = run_cli(capsys, *base, "--plugin", "auto", "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["plugins"] == ["zoo"] and d["injected"][0]["mention"] == "Zebra"
    assert math.isfinite(d["injected"][0]["loo_delta"]) and d["answer_without_plugins"] is not None
    code, out2, err = run_cli(capsys, *base, "--plugin", cli_zoo["plugin"], "--json")
    assert code == 0, err
    d2 = json.loads(out2)
    assert d2["injected"] == d["injected"] and d2["answer"] == d["answer"]
    code, out, err = run_cli(capsys, *base, "--plugin", "auto", "--mode", "context")
    assert code == 0, err
    assert "plugins: zoo" in out and "injected (1)" in out and "'Zebra' -> Zebra" in out
    code, out, err = run_cli(capsys, *base, "--json")
    assert code == 0 and json.loads(out)["plugins"] == []


def test_cli_eval_and_eval_edits_report_the_plugin(cli_models, cli_zoo, tmp_path, capsys):
    reader, branch = cli_models
    probes = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": f"{a} facts:", "answer": w, "relation": "word", "subject": a} for a, w in ANIMALS.items()])
    code, out, err = run_cli(capsys, "eval", str(probes), "--memory", cli_zoo["pack"], "-k", "1", "--reader", reader,
                             "--branch", branch, "--plugin", cli_zoo["plugin"], "--mode", "dpm,context", "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["plugins"] == ["zoo"] and d["by_mode"]["context"]["plugins"] == ["zoo"]
    assert d["accuracy_without_plugins"] == 1.0
    code, out, err = run_cli(capsys, "eval", str(probes), "--memory", cli_zoo["pack"], "-k", "1", "--limit", "2",
                             "--reader", reader, "--branch", branch, "--plugin", "auto")
    assert code == 0, err
    assert "knowledge plugins: zoo" in out and "accuracy without plugins" in out
    edits = write_jsonl(tmp_path / "e.jsonl", [
        {"old_text": "Zebra facts: Rome Rome Rome Rome Rome", "new_text": "Zebra facts: Oslo Oslo Oslo Oslo Oslo",
         "prompt": "Zebra facts:", "new": "Oslo", "subject": "Zebra"}])
    code, out, err = run_cli(capsys, "eval-edits", str(edits), "--memory", cli_zoo["pack"], "-k", "1", "--reader",
                             reader, "--branch", branch, "--plugin", "auto", "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["plugins"] == ["zoo"] and d["restored"] is True


@pytest.mark.parametrize(
    "cmd, plugin, match",
    [
        ("predict", "{missing}", "no such plugin folder"),
        ("predict", "{other}", "trained for the reader"),
        ("predict", "{geo}", "another entity set"),
        ("eval", "{missing}", "no such plugin folder"),
        ("eval-edits", "{other}", "trained for the reader"),
        ("predict-no-memory", "auto", "--plugin auto"),
    ],
)
def test_cli_plugin_errors_are_one_line_and_status_2(cli_models, cli_zoo, tmp_path, capsys, cmd, plugin, match):
    reader, branch = cli_models
    data = write_jsonl(tmp_path / "data.jsonl", [{"prompt": PROMPT, "answer": "Rome", "old_text": "x",
                                                  "new_text": "y", "new": "y"}])
    model = ["--reader", reader, "--branch", branch, "--plugin", plugin.format(**cli_zoo)]
    argv = {
        "predict": ["predict", PROMPT, "--memory", cli_zoo["pack"]],
        "predict-no-memory": ["predict", PROMPT],
        "eval": ["eval", str(data), "--memory", cli_zoo["pack"]],
        "eval-edits": ["eval-edits", str(data), "--memory", cli_zoo["pack"]],
    }[cmd]
    code, out, err = run_cli(capsys, *argv, *model)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and match in err


# ----------------------------------------------------------------------------- answer-slot plugins (issue 21)
def make_slot_plugin(reader, pack, name: str = "zoo", seed: int = 0):
    """``make_plugin`` with a slot mapping unlike its mention mapping (as task-tune --answer-slot writes)."""
    import torch

    from engine.mechanisms.plugins.answer_slot import SlotPlugin

    sp = SlotPlugin.from_plugin(make_plugin(reader, pack, name, seed))
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 7)
        for p in sp.slot_mapping.parameters():
            p.add_(torch.randn_like(p) * 2.0)
    return sp


@pytest.fixture
def cli_slot_zoo(cli_models, cli_zoo, tmp_path):
    from engine.reader import load_reader
    from engine.store import Pack

    reader = load_reader(cli_models[0])
    with Pack.open(cli_zoo["pack"], readonly=True) as pack:
        make_slot_plugin(reader, pack).save(tmp_path / "slot.plugin")
        make_slot_plugin(make_tiny_reader(seed=1), pack).save(tmp_path / "other-slot.plugin")
    return {**cli_zoo, "slot": str(tmp_path / "slot.plugin"), "other_slot": str(tmp_path / "other-slot.plugin")}


def test_cli_predict_with_a_slot_plugin_folder_injects_and_explains_the_slot(cli_models, cli_slot_zoo, capsys):
    reader, branch = cli_models
    base = ["predict", PROMPT, "--max-new-tokens", "4", "--reader", reader, "--branch", branch]
    code, out, err = run_cli(capsys, *base, "--plugin", cli_slot_zoo["slot"], "--json")
    assert code == 0, err
    d = json.loads(out)
    kinds = [(i["kind"], i["entity"]) for i in d["injected"]]
    assert kinds == [("mention", "Zebra"), ("slot", "Zebra")]  # the slot: the subject, where the answer begins
    slot = d["injected"][1]
    assert slot["mention"] == "" and slot["start"] == slot["end"] == len(PROMPT)
    assert math.isfinite(slot["loo_delta"]) and abs(slot["loo_delta"]) > 1e-4  # its own leave-one-out
    assert d["answer"] != d["answer_without_plugins"]  # the slot plugin changes the answer
    code, out, err = run_cli(capsys, *base, "--plugin", cli_slot_zoo["plugin"], "--json")  # the plain plugin
    assert code == 0, err
    plain = json.loads(out)
    assert [i["kind"] for i in plain["injected"]] == ["mention"] and plain["answer"] != d["answer"]
    code, out, err = run_cli(capsys, *base, "--plugin", cli_slot_zoo["slot"])
    assert code == 0, err
    assert "injected (2)" in out and "(answer slot) -> Zebra" in out


@pytest.mark.parametrize("damage, match", [
    ("other", "trained for the reader"),
    ("tensor", "slot_mapping"),
    ("config", "config.json"),
])
def test_cli_refuses_a_bad_slot_plugin_folder_naming_it(cli_models, cli_slot_zoo, capsys, damage, match):
    from safetensors.torch import load_file, save_file

    reader, branch = cli_models
    folder = cli_slot_zoo["other_slot" if damage == "other" else "slot"]
    weights = f"{folder}/model.safetensors"
    if damage == "tensor":  # a slot mapping of another shape
        state = load_file(weights)
        key = next(k for k in state if k.startswith("slot_mapping.") and state[k].ndim == 2)
        state[key] = state[key][:, :-1].contiguous()
        save_file(state, weights)
    elif damage == "config":
        with open(f"{folder}/config.json", "w", encoding="utf-8") as f:
            f.write('{"format": "plugmem-knowledge-plugin", "format_version": 2, "answer_slot": "yes"')
    code, out, err = run_cli(capsys, "predict", PROMPT, "--reader", reader, "--branch", branch, "--plugin", folder)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and match in err and folder in err


def test_a_gated_slot_plugin_is_applied_only_to_the_relations_it_was_trained_for(tiny, zoo, encoder, tmp_path):
    from engine.mechanisms.plugins.gate import calibrate, write_gate
    from engine.mechanisms.plugins.io import load_plugin

    sp = make_slot_plugin(tiny, zoo.pack)
    sp.training = {"objective": "task", "relations": ["word", "home"]}
    sp.save(tmp_path / "slot.plugin")
    templates = {"word": ["{subject} facts:"], "home": ["The home city of {subject} is"]}
    probes = write_jsonl(tmp_path / "train.jsonl", [
        {"prompt": f"{a} facts:", "answer": w, "relation": "word", "subject": a,
         "paraphrases": [f"Facts about {a}:"]} for a, w in ANIMALS.items()] + [
        {"prompt": f"The home city of {a} is", "answer": w, "relation": "home", "subject": a,
         "paraphrases": [f"{a} lives in the city of"]} for a, w in ANIMALS.items()])
    gate = calibrate(templates, [probes], encoder)
    assert 0 < gate["threshold"] <= 1 and gate["n_same"] == 2 and gate["n_other"] == 4  # distinct wordings, subject masked
    write_gate(tmp_path / "slot.plugin", gate, templates)
    plugin = load_plugin(tmp_path / "slot.plugin", tiny, zoo.pack)
    assert plugin.gate is not None and plugin.gate.threshold == gate["threshold"]
    p = Predictor(tiny)
    asked = p.predict("Zebra facts:", [zoo], mode="context", k=1, max_new_tokens=3, plugins=[plugin])
    assert [i.kind for i in asked.injected] == ["mention", "slot"]
    assert asked.plugin_gates[0]["applied"] and asked.plugin_gates[0]["relation"] == "word"
    other = p.predict("The weight of a grown Zebra in kilograms is", [zoo], mode="context", k=1,
                      max_new_tokens=3, plugins=[plugin])
    g = other.plugin_gates[0]
    assert other.injected == [] and not g["applied"] and g["score"] < g["threshold"]
    assert g["message"].startswith("plugin zoo not applied: the question matches no relation it was trained for "
                                   f"(best: {g['relation']}, ")
    assert other.answer == other.answer_without_plugins  # nothing injected: the memory's own answer
    assert Explanation.from_dict(other.to_dict()).plugin_gates == other.plugin_gates
    with pytest.raises(Exception, match="one relation"):
        calibrate({"word": templates["word"]}, [probes], encoder)


def test_a_general_and_a_slot_plugin_of_one_domain_are_one_plugin_too_many(cli_models, cli_slot_zoo, capsys):
    reader, branch = cli_models
    code, out, err = run_cli(capsys, "predict", PROMPT, "--reader", reader, "--branch", branch,
                             "--plugin", cli_slot_zoo["plugin"], "--plugin", cli_slot_zoo["slot"])
    assert code == 2 and out == "" and "plug one plugin per domain" in err
