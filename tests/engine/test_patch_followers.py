"""What follows the weight-patch stack: the DPM fusion's cached entry and prompt states, the
on-disk entry states, the explanation record, and the app's patch job (engine.jobs.weight_patch)."""
from __future__ import annotations

import pytest
import torch

from engine.explain import Predictor
from engine.jobs import weight_patch
from engine.mechanisms.dpm.entry_store import EntryStateStore
from engine.mechanisms.dpm.fusion import DPMFusion
from engine.mechanisms.weight_patches import Fact, PatchConfig, PatchError, PatchStack, WeightPatch, applied, load, save
from engine.mechanisms.weight_patches.attach import without
from engine.mechanisms.weight_patches.module import tensor_sha256
from engine.progress import JobCancelled
from engine.reader.tiny import make_tiny_reader
from tests.engine.test_dpm import OSLO, PROMPT, ROME, copy_branch

CFG = PatchConfig(layers=[0], delta=0.05, lr=0.02, steps=4, stop_loss=0.0)
FACT = {"prompt": "Zebra facts: the capital of Zebraland is", "answer": "Porto-Novo"}


@pytest.fixture(scope="module")
def tiny():
    r = make_tiny_reader(seed=0)
    yield r
    assert PatchStack.of(r).names() == []


def shift(reader, name: str, scale: float = 0.05, seed: int = 1) -> WeightPatch:
    """A patch of block 0's down-projection by a fixed random delta (what training would store)."""
    n = "model.layers.0.mlp.down_proj.weight"
    p = dict(reader.model.named_parameters())[n]
    g = torch.Generator().manual_seed(seed)
    d = (torch.rand(p.shape, generator=g) * 2 - 1) * scale
    return WeightPatch(config=PatchConfig(layers=[0], delta=scale), deltas={n: d}, base={n: tensor_sha256(p)},
                       reader=reader.fingerprint, facts=[Fact("a", "b")], name=name)


def test_dpm_states_are_read_again_by_the_patched_weights_and_never_stored(tiny, tmp_path):
    branch = copy_branch(tiny, layers=1)  # branch on block 1: block 0's patch changes what it reads
    store = EntryStateStore.for_branch(tiny, branch, tmp_path)
    f = DPMFusion(tiny, branch, store=store)
    f.generate(PROMPT, [ROME], [0.9], 3)
    bare_states = f.read_entries([ROME])[ROME][0]
    assert len(f.cache) == 1 and len(f.prompts) == 1 and ROME in store.get_many([ROME])
    patch = shift(tiny, "p1")
    with applied(tiny, [patch]):
        got = f.generate(PROMPT, [OSLO], [0.9], 3)
        fresh = DPMFusion(tiny, branch).generate(PROMPT, [OSLO], [0.9], 3)  # nothing cached: the truth
        assert got == fresh
        patched_states = f.read_entries([ROME])[ROME][0]
        assert not all(torch.equal(patched_states[i], bare_states[i]) for i in bare_states)
        assert f.store is None and OSLO not in store.get_many([OSLO])  # the store holds the bare reader's only
    # patch removed: the bare states again (the cache was forgotten a second time), the store back in use
    assert f.store is store
    again = f.read_entries([ROME])[ROME][0]
    assert all(torch.equal(again[i], bare_states[i]) for i in bare_states)
    store.close()


def test_the_record_names_the_patches_and_the_answer_without_each(tiny):
    pred = Predictor(tiny)
    bare = pred.predict(PROMPT, [], mode="none", max_new_tokens=4)
    assert bare.weight_patches == []
    p1, p2 = shift(tiny, "p1", 0.08, 1), shift(tiny, "p2", 0.08, 2)
    with applied(tiny, [p1]):
        only_p1 = pred.predict(PROMPT, [], mode="none", max_new_tokens=4).answer
    before = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    with applied(tiny, [p1]) as stack:
        p2.base = {n: tensor_sha256(dict(tiny.model.named_parameters())[n]) for n in p2.deltas}  # made on top of p1
        stack.apply(p2)
        patched_state = {k: v.clone() for k, v in tiny.model.state_dict().items()}
        expl = pred.predict(PROMPT, [], mode="none", max_new_tokens=4)
        assert expl.weight_patches == ["p1", "p2"] and expl.to_dict()["weight_patches"] == ["p1", "p2"]
        assert expl.answer != bare.answer  # the patched weights answer (the cache follows the stack)
        left = pred.answers_without_patches(PROMPT, [], mode="none", max_new_tokens=4)
        # without p1, p2 (made on top of it) no longer fits: the bare reader answers
        assert left == {"p1": {"answer": bare.answer, "answer_without_memory": bare.answer},
                        "p2": {"answer": only_p1, "answer_without_memory": only_p1}}
        assert stack.names() == ["p1", "p2"]  # put back in its order, bit for bit
        assert all(torch.equal(v, patched_state[k]) for k, v in tiny.model.state_dict().items())
        stack.remove(p2)
    assert all(torch.equal(v, before[k]) for k, v in tiny.model.state_dict().items())
    assert "<b>Weight patches:</b> p1, p2" in expl.to_html()


def test_without_puts_a_stack_back_even_when_the_with_fails(tiny):
    p1 = shift(tiny, "p1")
    with applied(tiny, [p1]) as stack:
        state = {k: v.clone() for k, v in tiny.model.state_dict().items()}
        with pytest.raises(RuntimeError), without(tiny, p1):
            assert stack.names() == []
            raise RuntimeError("boom")
        assert stack.names() == ["p1"]
        assert all(torch.equal(v, state[k]) for k, v in tiny.model.state_dict().items())


def test_the_job_makes_the_patch_on_top_of_the_active_ones(tiny, tmp_path):
    below = save(shift(tiny, "below", 0.01), tmp_path / "below")
    cfg = {"facts": [FACT], "out": str(tmp_path / "new"), "patch": {"layers": [0], "delta": 0.05, "lr": 0.02,
                                                                   "steps": 4, "stop_loss": 0.0}, "on_top_of": [str(below)]}
    seen = []
    res = weight_patch.run(cfg, progress=lambda f, m="", **kw: seen.append((f, kw.get("loss"))), reader=tiny)
    made = load(res["out"], tiny)
    assert made.on_top_of == ["below"] and res["name"] == "new" and res["bytes"] == made.size_bytes
    assert [loss for _, loss in seen if loss is not None] and seen[-1][0] == 1.0
    with pytest.raises(PatchError, match="does not match"):  # it fits only on top of 'below'
        PatchStack.of(tiny).check(made)
    with applied(tiny, [load(below, tiny), made]) as stack:
        assert stack.names() == ["below", "new"]


def test_a_cancelled_job_leaves_no_patch_and_an_existing_folder_is_kept(tiny, tmp_path):
    out = tmp_path / "p"
    cfg = {"facts": [FACT], "out": str(out), "patch": {"layers": [0], "delta": 0.05, "steps": 4}}
    with pytest.raises(JobCancelled):
        weight_patch.run(cfg, should_stop=lambda: True, reader=tiny)
    assert not out.exists()
    out.mkdir()
    with pytest.raises(PatchError, match="field 'out'.*exists already"):
        weight_patch.check_config(cfg)


@pytest.mark.parametrize("bad, field", [
    ({"patch": {"delta": 0}}, "'delta'"), ({"patch": {"delta": 5}}, "'delta'"),
    ({"patch": {"targets": ["mlp.nope"]}}, "'targets'"), ({"facts": [{"prompt": "x", "answer": " "}]}, "'answer'"),
    ({"facts": []}, "'facts'"), ({"locality": ["ok", ""]}, "'locality'"),
])
def test_bad_fields_are_refused_naming_them(tmp_path, bad, field):
    cfg = {"facts": [FACT], "out": str(tmp_path / "p")} | bad
    with pytest.raises(PatchError, match=field):
        weight_patch.check_config(cfg)


def test_a_block_the_reader_lacks_is_refused_naming_the_field(tiny, tmp_path):
    cfg = {"facts": [FACT], "out": str(tmp_path / "p"), "patch": {"layers": [99]}}
    with pytest.raises(PatchError, match="field 'layers' names block 99"):
        weight_patch.run(cfg, reader=tiny)
    assert not (tmp_path / "p").exists()
