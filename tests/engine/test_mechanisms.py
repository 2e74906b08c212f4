"""The mechanism interface (engine.mechanisms.base), its three implementations, their
composition, the session that assembles them, and the names kept for old records."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine.explain import Explanation, Predictor
from engine.mechanisms import registry
from engine.mechanisms.base import (COMPOSITION_ORDER, Mechanism, MechanismError, active_names, attached,
                                    composition_order)
from engine.mechanisms.context import ContextFusion
from engine.mechanisms.context.mechanism import ContextMechanism
from engine.mechanisms.dpm import DPMError, DPMFusion
from engine.mechanisms.dpm.mechanism import DPMMechanism
from engine.mechanisms.plugins.embeddings import EntityEmbeddings
from engine.mechanisms.plugins.module import KnowledgePlugin
from engine.mechanisms.plugins.mechanism import PluginMechanism
from engine.reader.tiny import make_tiny_reader
from engine.session import Session, open_session

from .test_dpm import copy_branch

PROMPT = "Zebra facts:"
TEXTS = ["Zebra facts: Rome Rome Rome Rome Rome", "Lion facts: Paris Paris Paris Paris Paris"]
SCORES = [0.9, 0.1]


@pytest.fixture
def tiny():
    # A fresh reader per test: these tests attach things to it and check it comes back.
    return make_tiny_reader(seed=0)


def plugin_for(reader, name: str = "zoo") -> KnowledgePlugin:
    vecs = np.random.default_rng(0).normal(size=(2, 8)).astype(np.float32)
    emb = EntityEmbeddings([1, 2], ["Zebra", "Lion"], vecs, "imported")
    return KnowledgePlugin.create(reader, emb, name=name, seed=0)


def snapshot(reader):
    """Every parameter and buffer (cloned), the logits of a fixed batch, and the hook count."""
    state = {k: v.detach().clone() for k, v in reader.model.state_dict().items()}
    batch = reader.encode_batch([PROMPT, "Lion facts: Paris"])
    with torch.no_grad():
        logits = reader.model(**batch).logits.clone()
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in reader.model.modules())
    return state, logits, hooks


def assert_same(reader, before) -> None:
    state, logits, hooks = before
    now_state, now_logits, now_hooks = snapshot(reader)
    assert now_state.keys() == state.keys()
    assert all(torch.equal(now_state[k], state[k]) for k in state), "a parameter changed"
    assert torch.equal(now_logits, logits), "the reader's logits changed"
    assert now_hooks == hooks, "a hook was left on the reader"


def test_each_mechanism_implements_the_interface_with_its_registry_name_and_kind(tiny):
    mechs = [DPMMechanism(copy_branch(tiny)), ContextMechanism(), PluginMechanism(plugin_for(tiny))]
    for m in mechs:
        assert isinstance(m, Mechanism)
        spec = registry.mechanism(m.name)
        assert (m.name, m.kind) == (spec.name, spec.kind)
    assert [m.name for m in mechs] == ["dpm", "context", "plugins"]
    assert set(COMPOSITION_ORDER) == set(registry.KINDS)


def test_detaching_the_branch_restores_the_reader_bit_for_bit(tiny):
    branch = copy_branch(tiny)
    before = snapshot(tiny)
    mech = DPMMechanism(branch)
    with mech.attach(tiny) as fusion:
        assert isinstance(fusion, DPMFusion)
        mem = fusion.memory_for([TEXTS, TEXTS])
        batch = tiny.encode_batch([PROMPT, "Lion facts: Paris"])
        with branch.memory(mem, torch.tensor([SCORES, SCORES])), torch.no_grad():
            attached_logits = tiny.model(**batch).logits
        # the branch really was in the forward: its memory moved the logits
        assert not torch.allclose(attached_logits, before[1])
    assert_same(tiny, before)


def test_attached_composes_in_the_documented_order_and_leaves_in_reverse(tiny):
    before = snapshot(tiny)
    plug, br = PluginMechanism(plugin_for(tiny)), DPMMechanism(copy_branch(tiny))
    assert [m.name for m in composition_order([plug, br])] == ["dpm", "plugins"]
    with attached(tiny, [plug, br]) as handles:
        assert list(handles) == ["dpm", "plugins"]
        assert [len(tiny.layers[i].mlp._forward_hooks) for i in br.branch.layer_ids] == [1, 1]
        with_vec = handles["plugins"].generate([PROMPT], max_new_tokens=2)
        assert with_vec == handles["plugins"].generate([PROMPT], max_new_tokens=2)
    assert_same(tiny, before)
    # an error while attached still detaches everything
    with pytest.raises(RuntimeError, match="boom"):
        with attached(tiny, [br, plug]):
            raise RuntimeError("boom")
    assert_same(tiny, before)


def test_two_answer_modes_at_once_are_refused(tiny):
    with pytest.raises(MechanismError, match="one answer mode at a time"):
        composition_order([DPMMechanism(copy_branch(tiny)), ContextMechanism()])


def test_leave_one_out_through_the_interface_matches_each_fusion(tiny):
    branch = copy_branch(tiny)
    answer = " Rome"
    ids = tiny.tokenizer(answer, add_special_tokens=False)["input_ids"]
    got = DPMMechanism(branch).leave_one_out(tiny, PROMPT, answer, texts=TEXTS, scores=SCORES)
    want = DPMFusion(tiny, branch).leave_one_out(PROMPT, TEXTS, SCORES, ids)
    assert got.logp_all == pytest.approx(want.logp_all, abs=1e-5) and len(got.logp_without) == 2
    assert got.logp_without == pytest.approx(want.logp_without, abs=1e-5)
    ctx = ContextMechanism().leave_one_out(tiny, PROMPT, answer, texts=TEXTS, scores=SCORES)
    assert ctx.logp_all == pytest.approx(ContextFusion(tiny).leave_one_out(PROMPT, TEXTS, SCORES, ids).logp_all)
    # a plugin's parts are the entities the prompt mentions
    plug = PluginMechanism(plugin_for(tiny)).leave_one_out(tiny, "Zebra and Lion facts:", answer)
    assert plug.parts == ["Zebra", "Lion"] and len(plug.logp_without) == 2
    assert all(np.isfinite(plug.logp_without)) and plug.logp_without != [plug.logp_all] * 2


def test_save_and_load_through_the_interface(tiny, tmp_path):
    branch = copy_branch(tiny)
    DPMMechanism(branch).save(tmp_path / "branch")
    back = DPMMechanism.load(tmp_path / "branch", tiny)
    assert all(torch.equal(a, b) for a, b in zip(branch.state_dict().values(), back.branch.state_dict().values()))
    with pytest.raises(DPMError, match="trained for the reader"):
        DPMMechanism.load(tmp_path / "branch", make_tiny_reader(seed=3))

    assert ContextMechanism.load(ContextMechanism("plain").save(tmp_path / "ctx")).style == "plain"
    (tmp_path / "ctx" / "config.json").write_text(json.dumps({"format": "plugmem-dpm"}), encoding="utf-8")
    with pytest.raises(MechanismError, match=r"ctx[/\\]config.json does not describe a context layout"):
        ContextMechanism.load(tmp_path / "ctx")

    plugin = plugin_for(tiny)
    PluginMechanism(plugin).save(tmp_path / "plugin")
    assert PluginMechanism.load(tmp_path / "plugin", tiny).plugins[0].name == "zoo"
    with pytest.raises(MechanismError, match="save each plugin"):
        PluginMechanism([plugin, plugin_for(tiny, "geo")]).save(tmp_path / "two")
    with pytest.raises(MechanismError, match="both named 'zoo'"):
        PluginMechanism([plugin, plugin_for(tiny)])


def test_the_explanation_record_lists_the_active_mechanisms_and_old_records_still_load():
    old = {"prompt": "p", "answer": "a", "answer_without_memory": "b", "mode": "dpm", "plugins": ["zoo"]}
    rec = Explanation.from_dict(old)  # saved before the field existed
    assert rec.mechanisms == ["dpm", "plugins"]
    assert Explanation.from_dict(rec.to_dict()).mechanisms == ["dpm", "plugins"]
    assert Explanation("p", "a", "a", "none").mechanisms == []
    assert Explanation("p", "a", "a", "none", plugins=["zoo"]).mechanisms == ["plugins"]
    assert active_names("context") == ["context"]
    kept = Explanation.from_dict(old | {"mechanisms": ["context"]})
    assert kept.mechanisms == ["context"]


def test_saved_job_records_of_moved_functions_still_resolve():
    from engine.jobs.worker import resolve
    from engine.mechanisms.dpm.train_branch import train_memory_reader
    from engine.mechanisms.plugins.map_tune import map_tune
    from engine.mechanisms.plugins.transe import train_transe

    assert resolve("engine.jobs.train_memory_reader:train_memory_reader") is train_memory_reader
    assert resolve("engine.plugins.transe:train_transe") is train_transe
    assert resolve("engine.plugins.map_tune:map_tune") is map_tune
    assert resolve("engine.mechanisms.plugins.map_tune:map_tune") is map_tune


def test_train_branch_is_the_command_and_train_memory_reader_its_alias():
    from engine.cli import build_parser

    p = build_parser()
    new = p.parse_args(["train-branch", "--data", "d.jsonl", "--out", "o"])
    old = p.parse_args(["train-memory-reader", "--data", "d.jsonl", "--out", "o"])
    assert new.fn is old.fn and new.fn.__name__ == "cmd_train_memory_reader"


def test_a_session_assembles_reader_branch_store_and_plugins_once(tiny, tmp_path):
    DPMMechanism(copy_branch(tiny)).save(tmp_path / "branch")
    with open_session(tiny, branch=tmp_path / "branch", entry_states=True, cache_dir=tmp_path / "cache") as s:
        assert s.reader is tiny and s.branch is not None and s.entry_store is not None and s.note == ""
        s.add_plugin(PluginMechanism(plugin_for(tiny)).save(tmp_path / "plugin"))
        assert [m.name for m in s.mechanisms()] == ["dpm", "plugins"]
        pred = Predictor.from_session(s)
        assert pred.branch is s.branch and pred.fusion("dpm").store is s.entry_store
    assert s.entry_store is None  # closed with the session

    with pytest.raises(DPMError, match="not found"):
        open_session(tiny, branch=tmp_path / "missing")
    soft = open_session(tiny, branch=tmp_path / "missing", need_branch=False)
    assert soft.branch is None and "mode 'dpm' is off" in soft.note and soft.mechanisms() == []
    assert isinstance(Session(tiny), Session) and Session(tiny).mechanisms() == []
