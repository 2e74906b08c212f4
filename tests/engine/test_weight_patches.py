"""Weight patches (engine.mechanisms.weight_patches) on the tiny reader: made by projected
gradient descent, applied and removed bit for bit, stacked in order, saved and refused."""
from __future__ import annotations

import json
import math
import pickle
import shutil

import pytest
import torch

from engine.mechanisms.base import Mechanism, attached
from engine.mechanisms.weight_patches import (Fact, PatchConfig, PatchError, PatchStack, applied, load, make_patch,
                                              make_sequential, save)
from engine.mechanisms.weight_patches.mechanism import WeightPatchMechanism
from engine.progress import JobCancelled
from engine.reader.tiny import make_tiny_reader

# The tiny reader's answers are gibberish; these are not what it says.
FACT = Fact("Zebra facts: the capital of Zebraland is", "Porto-Novo", paraphrase="Zebraland's capital is")
OTHER = Fact("Lion facts: the colour of lions is", "violet")
# Big bound and lr: the tiny reader's weights are ~0.2 in size; few steps keep the test fast.
# No context prefixes (the default trains each fact 4 times): the tests that need them say so.
CFG = PatchConfig(layers=[0, 1], delta=0.05, lr=0.02, steps=12, stop_loss=0.05, context_prefixes=0)


@pytest.fixture(scope="module")
def base_reader():
    return make_tiny_reader(seed=0)


@pytest.fixture
def tiny(base_reader):
    yield base_reader
    # Every test must give the reader back unpatched.
    assert PatchStack.of(base_reader).names() == []


@pytest.fixture(scope="module")
def patch(base_reader):
    return make_patch(base_reader, [FACT], CFG, name="zebra")


@pytest.fixture(scope="module")
def saved(tmp_path_factory, patch):
    return save(patch, tmp_path_factory.mktemp("patches") / "zebra")


def state(reader):
    return {k: v.detach().clone() for k, v in reader.model.state_dict().items()}


def same(reader, before) -> bool:
    now = reader.model.state_dict()
    return now.keys() == before.keys() and all(torch.equal(now[k], before[k]) for k in before)


def copy_patch(saved, tmp_path, name="p"):
    dst = tmp_path / name
    shutil.copytree(saved, dst)
    return dst


def edit_config(folder, change):
    p = folder / "config.json"
    meta = json.loads(p.read_text())
    change(meta)
    p.write_text(json.dumps(meta))


# ----------------------------------------------------------------------------- making a patch

def test_a_patch_writes_the_fact_within_the_bound_and_leaves_the_reader_as_it_was(tiny, patch):
    before = state(tiny)
    assert not tiny.generate(FACT.prompt, 6).strip().startswith("Porto")
    assert patch.metrics["efficacy"] == 1.0  # measured when it was made
    assert patch.metrics["loss_last"] < patch.metrics["loss_first"]
    assert sorted(patch.deltas) == ["model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"]
    assert 0 < patch.max_abs() <= CFG.delta * (1 + 1e-6)  # the clamp held
    assert same(tiny, before)  # training gave the reader back
    assert not any(p.requires_grad for p in tiny.model.parameters())
    with applied(tiny, [patch]):
        assert tiny.generate(FACT.prompt, 6).strip().startswith("Porto-Novo")
    assert same(tiny, before)


def test_apply_and_remove_restore_every_tensor_bit_for_bit(tiny, patch):
    before = state(tiny)
    stack = PatchStack.of(tiny)
    for _ in range(3):
        stack.apply(patch)
        assert not same(tiny, before)
        stack.remove(patch)
        assert same(tiny, before)


def test_the_loss_is_on_the_answer_tokens_only(tiny):
    from engine.mechanisms.weight_patches.train import _batch

    b = _batch(tiny, [FACT, OTHER])
    n_answer = [len(tiny.tokenizer(f.target, add_special_tokens=False)["input_ids"]) for f in (FACT, OTHER)]
    assert [(row != -100).sum().item() for row in b["labels"]] == n_answer
    assert all((row[-n:] == ids[-n:]).all() for row, ids, n in zip(b["labels"], b["input_ids"], n_answer))


def test_a_fact_the_reader_already_answers_makes_no_patch(tiny):
    said = tiny.generate(FACT.prompt, 3).strip().split()[0]
    with pytest.raises(PatchError, match="already answers .* no patch made"):
        make_patch(tiny, [Fact(FACT.prompt, said)], CFG)
    # In a batch it refuses the whole batch, or leaves that fact out when asked to.
    with pytest.raises(PatchError, match="already answers"):
        make_patch(tiny, [OTHER, Fact(FACT.prompt, said)], CFG)


@pytest.mark.parametrize("fact, message", [
    (Fact("", "Paris"), "field 'prompt' must be a non-empty string"),
    (Fact("  ", "Paris"), "field 'prompt' must be a non-empty string"),
    (Fact("The capital is", ""), "field 'answer' must be a non-empty string"),
])
def test_empty_prompts_and_answers_are_refused(tiny, fact, message):
    with pytest.raises(PatchError, match=message):
        make_patch(tiny, [fact], CFG)
    with pytest.raises(PatchError, match="no facts"):
        make_patch(tiny, [], CFG)


@pytest.mark.parametrize("change, message", [
    ({"delta": 0.0}, "'delta' must be a number in \\(0, 0.1\\]"),
    ({"delta": -1e-3}, "'delta' must be a number"),
    ({"delta": 5.0}, "'delta' must be a number"),
    ({"delta": math.nan}, "'delta' must be a number"),
    ({"steps": 0}, "'steps' must be a whole number"),
    ({"lr": 0}, "'lr' must be a number"),
    ({"layers": []}, "'layers' must be a non-empty list"),
    ({"layers": [0, 0]}, "names a block twice"),
    ({"targets": ["mlp.nonsense"]}, "unknown tensor 'mlp.nonsense'"),
    ({"context_prefixes": -1}, "'context_prefixes' must be a whole number from 0 to 10"),
    ({"context_prefixes": 11}, "'context_prefixes' must be a whole number from 0 to 10"),
    ({"context_prefixes": 2.5}, "'context_prefixes' must be a whole number"),
    ({"optimizer": "rmsprop"}, "'optimizer' must be one of adam, gd, got 'rmsprop'"),
    ({"neurons": -1}, "'neurons' must be a whole number from 0 \\(every neuron\\) to 65,536, got -1"),
    ({"neurons": 2.5}, "'neurons' must be a whole number"),
    ({"neurons": True}, "'neurons' must be a whole number"),
    ({"neurons": 10**6}, "'neurons' must be a whole number"),
    ({"preserve": -0.1}, "'preserve' must be a number in \\[0, 0.9999\\], got -0.1"),
    ({"preserve": 1.0}, "'preserve' must be a number in \\[0, 0.9999\\]"),
    ({"preserve": "most"}, "'preserve' must be a number"),
    ({"preserve": 0.9, "targets": ["mlp.up_proj"]}, "'preserve' \\(0.9\\) acts on mlp.down_proj only"),
    ({"neurons": 8, "targets": ["mlp.down_proj", "self_attn.o_proj"]}, "'neurons' \\(8\\) selects MLP neurons.*o_proj"),
])
def test_bad_configs_are_refused_naming_the_field(change, message):
    cfg = PatchConfig(**{**CFG.__dict__, **change})
    with pytest.raises(PatchError, match=message):
        cfg.validate()


def test_context_prefixes_train_the_answer_after_contexts_the_reader_wrote(tiny):
    from engine.mechanisms.weight_patches.train import context_prefixes

    ctx = context_prefixes(tiny, 3)
    assert ctx == context_prefixes(tiny, 3)  # greedy: the same contexts each time
    assert all(c.startswith(s) and c.endswith(". ") for c, s in zip(ctx, ["The", "Therefore", "However"]))
    from engine.mechanisms.weight_patches.train import _answer_loss, _batch

    cfg = PatchConfig(**{**CFG.__dict__, "stop_loss": 0.0, "steps": 12})
    plain = make_patch(tiny, [FACT], cfg, measure=False)
    ctx_p = make_patch(tiny, [FACT], PatchConfig(**{**cfg.__dict__, "context_prefixes": 3}), measure=False)
    assert [f.prompt for f in ctx_p.facts] == [FACT.prompt]  # the patch lists the user's fact only
    unseen = _batch(tiny, [Fact(c + FACT.prompt, FACT.answer) for c in ("It was late. ", "Note: ", "Zebras run. ")])

    def loss(p):  # the answer's cross-entropy after contexts neither patch was trained on
        with applied(tiny, [p]), torch.no_grad():
            return float(_answer_loss(tiny, unseen))

    assert loss(ctx_p) < loss(plain)


def test_gradient_steps_write_the_fact_with_fewer_weights_at_the_bound_than_adam(tiny):
    def at_bound(p):
        d = torch.cat([x.flatten() for x in p.deltas.values()])
        return float((d.abs() >= 0.99 * CFG.delta).float().mean())

    gd = make_patch(tiny, [FACT], PatchConfig(**{**CFG.__dict__, "optimizer": "gd"}))
    adam = make_patch(tiny, [FACT], CFG, measure=False)
    assert gd.metrics["efficacy"] == 1.0
    assert 0 < gd.max_abs() <= CFG.delta * (1 + 1e-6)
    assert at_bound(gd) < 0.5 * at_bound(adam)


def test_the_fingerprint_names_the_weights_as_loaded_not_as_patched(tiny, patch):
    # A fresh reader whose fingerprint nobody read yet, patched first: its fingerprint must
    # still be the unpatched weights' (else artefacts made now would be refused later).
    fresh = make_tiny_reader(seed=0)
    with torch.no_grad():
        next(fresh.model.parameters()).add_(1.0)  # any in-place write to the weights
    assert fresh.fingerprint == tiny.fingerprint
    fresh = make_tiny_reader(seed=0)
    with applied(fresh, [patch]):
        assert fresh.fingerprint == tiny.fingerprint
    assert make_tiny_reader(seed=1).fingerprint["weights_sha256"] != tiny.fingerprint["weights_sha256"]


def test_a_block_the_reader_does_not_have_is_refused(tiny):
    with pytest.raises(PatchError, match="field 'layers' names block 7, but the reader has blocks 0 to 1"):
        make_patch(tiny, [FACT], PatchConfig(layers=[7]))
    with pytest.raises(PatchError, match="field 'layers' names block -3, but the reader has blocks 0 to 1 "
                                         "\\(or -1 to -2 from the last\\)"):
        make_patch(tiny, [FACT], PatchConfig(layers=[-3]))
    with pytest.raises(PatchError, match="names a block twice: \\[1, -1\\] \\(blocks \\[1, 1\\]\\)"):
        make_patch(tiny, [FACT], PatchConfig(layers=[1, -1]))


def test_cancel_stops_within_a_step_and_leaves_no_patch(tiny):
    before = state(tiny)
    seen = []
    with pytest.raises(JobCancelled, match="no patch made"):
        make_patch(tiny, [FACT], PatchConfig(**{**CFG.__dict__, "steps": 500, "stop_loss": 0.0}),
                   progress=lambda f, m="", **k: seen.append(k.get("step")), should_stop=lambda: len(seen) >= 2)
    assert len(seen) == 2  # stopped at the next step
    assert same(tiny, before)
    assert not any(p.requires_grad for p in tiny.model.parameters())


def test_the_locality_term_keeps_unrelated_prompts_closer(tiny):
    from engine.mechanisms.weight_patches.train import _last_logp

    unrelated = ["Lion facts: the colour of lions is", "Water boils at", "The Nile is the longest river in"]
    cfg = PatchConfig(**{**CFG.__dict__, "steps": 8, "stop_loss": 0.0})
    batch = tiny.encode_batch(unrelated)
    with torch.no_grad():
        ref = _last_logp(tiny, batch)

    def drift(p):
        with applied(tiny, [p]), torch.no_grad():
            return float(torch.nn.functional.kl_div(_last_logp(tiny, batch), ref, log_target=True, reduction="batchmean"))

    free = make_patch(tiny, [FACT], cfg, measure=False)
    kept = make_patch(tiny, [FACT], PatchConfig(**{**cfg.__dict__, "locality_weight": 10.0}), locality=unrelated,
                      measure=False)
    assert drift(kept) < drift(free)


# ----------------------------------------------------------------------------- several patches

def test_sequential_patches_stack_in_order_and_removing_one_rechecks_the_rest(tiny):
    before = state(tiny)
    p1, p2 = make_sequential(tiny, [FACT, OTHER], CFG, prefix="seq")
    assert (p1.on_top_of, p2.on_top_of) == ([], ["seq-1"])
    assert same(tiny, before)
    stack = PatchStack.of(tiny)
    with pytest.raises(PatchError, match="base of .* does not match.*made on top of seq-1.*no patch is applied"):
        stack.apply(p2)  # its base is the reader with seq-1
    assert same(tiny, before)  # nothing applied partially
    stack.apply(p1)
    stack.apply(p2)
    assert tiny.generate(FACT.prompt, 6).strip().startswith("Porto")
    dropped = stack.remove("seq-1")
    assert [n for n, _ in dropped] == ["seq-2"]  # re-checked: it no longer fits
    assert stack.names() == [] and same(tiny, before)


def test_independent_patches_come_off_in_any_order(tiny, patch):
    before = state(tiny)
    other = make_patch(tiny, [OTHER], PatchConfig(**{**CFG.__dict__, "layers": [1]}), name="lion", measure=False)
    stack = PatchStack.of(tiny)
    stack.apply(patch)
    with pytest.raises(PatchError, match="base of model.layers.1.mlp.down_proj.weight does not match"):
        stack.apply(other)  # zebra changed block 1 too
    stack.remove(patch)
    stack.apply(other)
    with_other = state(tiny)
    assert stack.remove("lion") == []
    assert same(tiny, before)
    assert not same(tiny, with_other)
    with pytest.raises(PatchError, match="'lion' is not applied"):
        stack.remove("lion")


def test_the_mechanism_composes_and_detaches_exactly(tiny, patch):
    mech = WeightPatchMechanism([patch])
    assert isinstance(mech, Mechanism) and mech.kind == "weight change"
    before = state(tiny)
    with attached(tiny, [mech]) as handles:
        assert handles["weight_patches"].names() == ["zebra"]
        assert tiny.generate(FACT.prompt, 6).strip().startswith("Porto-Novo")
    assert same(tiny, before)
    loo = mech.leave_one_out(tiny, FACT.prompt, FACT.target)
    assert loo.parts == ["zebra"] and loo.logp_all > loo.logp_without[0]
    assert same(tiny, before)


def test_a_refused_patch_in_a_list_applies_none_of_them(tiny, patch):
    before = state(tiny)
    bad = make_patch(tiny, [OTHER], CFG, name="lion", measure=False)  # same tensors, same base: fits alone only
    with pytest.raises(PatchError, match="'lion'.*base"):
        with applied(tiny, [patch, bad]):
            pass
    assert same(tiny, before)


# ----------------------------------------------------------------------------- the folder

def test_save_and_load_round_trip(tiny, patch, saved):
    files = sorted(p.name for p in saved.iterdir())
    assert files == ["config.json", "delta.safetensors"]
    meta = json.loads((saved / "config.json").read_text())
    assert meta["format"] == "plugmem-weight-patch" and meta["format_version"] == 1
    assert meta["reader"]["weights_sha256"] == tiny.fingerprint["weights_sha256"]
    assert set(meta["tensors"]) == set(patch.deltas) and meta["facts"][0]["prompt"] == FACT.prompt
    assert meta["who"] is not None and meta["when"] and meta["metrics"]["efficacy"] == 1.0
    back = load(saved, tiny)
    assert all(torch.equal(back.deltas[n], patch.deltas[n]) for n in patch.deltas)
    assert back.base == patch.base and back.facts == patch.facts
    m = WeightPatchMechanism.load(saved, tiny)
    assert m.patches[0].name == "zebra"


def test_another_readers_patch_is_refused_naming_both(saved):
    other = make_tiny_reader(seed=1)
    with pytest.raises(PatchError, match="trained for the reader 'tiny-llama-seed0', not the loaded reader 'tiny-llama-seed1'"):
        load(saved, other)


def _delta_file(folder, tensors):
    from safetensors.torch import save_file

    save_file(tensors, str(folder / "delta.safetensors"))


@pytest.mark.parametrize("case, message", [
    ("missing", "missing \\['model.layers.1.mlp.down_proj.weight'\\]"),
    ("extra", "unexpected \\['model.layers.0.mlp.up_proj.weight'\\]"),
    ("shape", "wrong shape: model.layers.0.mlp.down_proj.weight \\[64, 64\\]"),
    ("nan", "non-finite values in"),
    ("inf", "non-finite values in"),
    ("beyond", "changes a weight by 0.5, beyond the bound delta 0.05"),
    ("float64", "is torch.float64"),
])
def test_bad_delta_files_are_refused_naming_the_file(tiny, saved, tmp_path, case, message):
    from safetensors.torch import load_file

    folder = copy_patch(saved, tmp_path)
    t = load_file(str(folder / "delta.safetensors"))
    n0, n1 = "model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"
    if case == "missing":
        del t[n1]
    elif case == "extra":
        t["model.layers.0.mlp.up_proj.weight"] = torch.zeros(128, 64)
    elif case == "shape":
        t[n0] = torch.zeros(64, 64)
    elif case in ("nan", "inf"):
        t[n0][3, 5] = math.nan if case == "nan" else math.inf
    elif case == "beyond":
        t[n0][0, 0] = 0.5
    elif case == "float64":
        t[n0] = t[n0].double()
    _delta_file(folder, t)
    before = state(tiny)
    with pytest.raises(PatchError, match=message) as err:
        load(folder, tiny)
    assert "delta.safetensors" in str(err.value)
    assert same(tiny, before)


def test_a_pickle_in_place_of_safetensors_is_refused_without_running_it(saved, tmp_path, tiny):
    folder = copy_patch(saved, tmp_path)
    ran = tmp_path / "ran"

    class Boom:
        def __reduce__(self):
            return (ran.touch, ())

    (folder / "delta.safetensors").write_bytes(pickle.dumps({"w": Boom()}))
    with pytest.raises(PatchError, match="delta.safetensors is unreadable"):
        load(folder, tiny)
    (folder / "delta.safetensors").unlink()
    torch.save({"w": torch.zeros(1)}, folder / "delta.pt")
    with pytest.raises(PatchError, match="only pickle files \\(delta.pt\\), which can run code"):
        load(folder, tiny)
    assert not ran.exists()


@pytest.mark.parametrize("change, message", [
    (lambda m: m.update(format="plugmem-dpm"), "does not describe a weight patch"),
    (lambda m: m.update(format_version=9), "format version 9 is newer than this program reads"),
    (lambda m: m.update(format_version="one"), "format_version 'one' is not a number"),
    (lambda m: m["config"].update(delta="0.05"), "field 'config': field 'delta' must be a number, got a string"),
    (lambda m: m["config"].update(delta=-1), "'delta' must be a number in \\(0"),
    (lambda m: m["config"].update(steps=2.5), "field 'steps' must be a whole number"),
    (lambda m: m["config"].update(layers=[0, 9]), "field 'tensors' names .* but the config's layers"),
    (lambda m: m["config"].update(speed=3), "unknown field\\(s\\) speed"),
    (lambda m: m.update(reader="tiny"), "field 'reader' must be an object"),
    (lambda m: m.update(facts=[]), "field 'facts' is empty"),
    (lambda m: m.update(facts=[{"prompt": "Q", "answer": 3}]), "'facts'\\[0\\]: field 'answer' must be a string"),
    (lambda m: m.update(facts=[{"prompt": "", "answer": "A"}]), "'facts'\\[0\\]: field 'prompt' must be a non-empty"),
    (lambda m: next(iter(m["tensors"].values())).update(base_sha256="zz"), "'base_sha256' must be 64 hexadecimal"),
    (lambda m: next(iter(m["tensors"].values())).update(shape=[64, -1]), "'shape' must be a list of positive"),
    (lambda m: m.pop("tensors"), "missing field\\(s\\) 'tensors'"),
])
def test_bad_configs_on_disk_are_refused_naming_file_and_field(tiny, saved, tmp_path, change, message):
    folder = copy_patch(saved, tmp_path)
    edit_config(folder, change)
    with pytest.raises(PatchError, match=message) as err:
        load(folder, tiny)
    assert "config.json" in str(err.value)


def test_unknown_tensors_and_a_changed_base_are_refused(tiny, patch, saved, tmp_path):
    # a tensor name the reader lacks (a config of another architecture that slipped through)
    folder = copy_patch(saved, tmp_path)
    bogus = WeightPatchMechanism([patch]).patches[0]
    renamed = type(bogus)(config=bogus.config, deltas={"model.layers.0.mlp.w9.weight": bogus.deltas[
        "model.layers.0.mlp.down_proj.weight"]}, base={"model.layers.0.mlp.w9.weight": "0" * 64},
        reader=bogus.reader, facts=bogus.facts, name="bogus")
    with pytest.raises(PatchError, match="the reader has no tensor 'model.layers.0.mlp.w9.weight'"):
        PatchStack.of(tiny).apply(renamed)
    # the base tensors changed under the patch (another patch, or another fine-tune)
    edit_config(folder, lambda m: next(iter(m["tensors"].values())).update(base_sha256="a" * 64))
    changed = load(folder, tiny)
    with pytest.raises(PatchError, match="does not match: the patch expects sha256 aaaaaaaaaaaa…, the reader has"):
        PatchStack.of(tiny).apply(changed)


def test_missing_folder_and_files(tmp_path, tiny, saved):
    with pytest.raises(PatchError, match="weight patch folder not found"):
        load(tmp_path / "nope", tiny)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PatchError, match="not a weight patch folder: no config.json"):
        load(tmp_path / "empty", tiny)
    folder = copy_patch(saved, tmp_path)
    (folder / "delta.safetensors").unlink()
    with pytest.raises(PatchError, match="no delta.safetensors"):
        load(folder, tiny)


def test_training_from_the_frozen_blocks_states_gives_the_full_loss(tiny):
    from engine.mechanisms.weight_patches.train import _answer_loss, _batch, _frozen_prefix

    b = _batch(tiny, [FACT, OTHER])
    cached = dict(b)
    _frozen_prefix(tiny, cached, 1)  # block 0 is not trained: its output is computed once
    with torch.no_grad():
        assert torch.allclose(_answer_loss(tiny, b), _answer_loss(tiny, cached), atol=1e-5)



def test_the_default_block_is_the_last_of_whatever_reader(tiny):
    """-1 (the calibrated default: SmolLM2's block 29) fits a reader of any depth, and the patch
    records the block it resolved to, so its folder names real tensors."""
    assert PatchConfig().layers == [-1]
    patch = make_patch(tiny, [FACT], PatchConfig(**{**CFG.__dict__, "layers": [-1]}), measure=False)
    assert sorted(patch.deltas) == ["model.layers.1.mlp.down_proj.weight"] and patch.config.layers == [1]


def test_a_patch_from_before_context_prefixes_reads_as_made_without_them(tiny, tmp_path):
    """Its config.json has no 'context_prefixes' / 'optimizer': it was made with none and Adam,
    whatever today's defaults are; a new patch that uses them says so in its file."""
    import json

    from engine.mechanisms.weight_patches import load, save

    patch = make_patch(tiny, [FACT], PatchConfig(**{**CFG.__dict__, "context_prefixes": 2, "optimizer": "gd"}),
                       measure=False)
    save(patch, tmp_path / "new")
    cfg = json.loads((tmp_path / "new" / "config.json").read_text())["config"]
    assert cfg["context_prefixes"] == 2 and cfg["optimizer"] == "gd"
    for k in ("context_prefixes", "optimizer"):
        del cfg[k]
    meta = json.loads((tmp_path / "new" / "config.json").read_text())
    meta["config"] = cfg
    (tmp_path / "new" / "config.json").write_text(json.dumps(meta))
    old = load(tmp_path / "new", tiny)
    assert old.config.context_prefixes == 0 and old.config.optimizer == "adam"
    assert PatchConfig().context_prefixes != 0  # the default moved on; the old patch did not


def _unrelated_shift(tiny, patch, prompts=("Lion facts: the colour of lions is", "The weather today is")):
    """How far a patch moves the last-position logits of prompts it was not made for."""
    with torch.no_grad():
        before = [tiny.model(**tiny.encode_batch([p]), use_cache=False).logits[0, -1] for p in prompts]
        with applied(tiny, [patch]):
            after = [tiny.model(**tiny.encode_batch([p]), use_cache=False).logits[0, -1] for p in prompts]
    return sum(float((a - b).abs().max()) for a, b in zip(after, before))


def test_a_neuron_mask_changes_only_the_chosen_columns_and_moves_unrelated_prompts_less(tiny):
    cfg = PatchConfig(**{**CFG.__dict__, "stop_loss": 0.0})
    dense = make_patch(tiny, [FACT], cfg, measure=False)
    masked = make_patch(tiny, [FACT], PatchConfig(**{**cfg.__dict__, "neurons": 4}), measure=False)
    for n, d in masked.deltas.items():
        cols = (d != 0).any(0)  # down_proj [hidden, intermediate]: one column per neuron
        assert 0 < int(cols.sum()) <= 4 and bool((d[:, ~cols] == 0).all()), n
        assert masked.metrics["neurons_trained"][n] == 4
        assert int((dense.deltas[n] != 0).any(0).sum()) > 4 * 10
    assert masked.max_abs() <= cfg.delta * (1 + 1e-6)
    assert masked.metrics["loss_last"] < masked.metrics["loss_first"]  # it still learns the answer
    assert _unrelated_shift(tiny, masked) < _unrelated_shift(tiny, dense)


def test_each_fact_of_a_batch_gets_its_own_neurons(tiny):
    from engine.mechanisms.weight_patches.train import _batch, neuron_masks

    cfg = PatchConfig(**{**CFG.__dict__, "neurons": 3}).for_reader(tiny.num_layers)
    generic = ["The weather is fine today.", "I went to the market."]
    one = {f.prompt: neuron_masks(tiny, cfg, _batch(tiny, [f]), 1, generic) for f in (FACT, OTHER)}
    both = neuron_masks(tiny, cfg, _batch(tiny, [FACT, OTHER]), 2, generic)
    for n, m in both.items():
        a, b = one[FACT.prompt][n], one[OTHER.prompt][n]
        assert not torch.equal(a, b)  # another prompt drives other neurons
        assert torch.equal(m, a | b) and 3 < int(m.sum()) <= 6


@pytest.mark.parametrize("targets", [["mlp.up_proj"], ["mlp.gate_proj", "mlp.down_proj"]])
def test_a_neuron_mask_on_up_and_gate_projections_selects_rows(tiny, targets):
    cfg = PatchConfig(**{**CFG.__dict__, "layers": [1], "targets": targets, "neurons": 2, "steps": 3})
    patch = make_patch(tiny, [FACT], cfg, measure=False)
    for n, d in patch.deltas.items():
        changed = (d != 0).any(0) if n.endswith("down_proj.weight") else (d != 0).any(1)
        assert 0 < int(changed.sum()) <= 2, n


def test_a_patch_from_before_neuron_masks_reads_as_made_without_one(tiny, tmp_path):
    """'neurons' is written only when a patch uses a mask; a file without it (every patch
    made before) reads as 0, every weight trained, and a masked one round-trips."""
    save(make_patch(tiny, [FACT], CFG, measure=False), tmp_path / "plain")
    assert "neurons" not in json.loads((tmp_path / "plain" / "config.json").read_text())["config"]
    assert load(tmp_path / "plain", tiny).config.neurons == 0
    masked = make_patch(tiny, [FACT], PatchConfig(**{**CFG.__dict__, "neurons": 4}), measure=False)
    save(masked, tmp_path / "masked")
    assert json.loads((tmp_path / "masked" / "config.json").read_text())["config"]["neurons"] == 4
    back = load(tmp_path / "masked", tiny)
    assert back.config.neurons == 4 and all(torch.equal(back.deltas[n], d) for n, d in masked.deltas.items())
    cfg = json.loads((tmp_path / "masked" / "config.json").read_text())
    cfg["config"]["neurons"] = "many"
    (tmp_path / "masked" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PatchError, match=r"masked.config.json: field 'config'.*'neurons'"):
        load(tmp_path / "masked", tiny)


@pytest.mark.parametrize("optimizer", ["adam", "gd"])
def test_preserve_keeps_the_change_off_what_generic_text_activates(tiny, optimizer):
    """With 'preserve' the change D of down_proj gives D @ a ~ 0 for the activations a of
    generic text (the reader's own texts): those prompts are, to first order, not moved."""
    from engine.mechanisms.weight_patches.train import generic_texts

    texts = generic_texts(tiny)
    assert len(texts) == 10 and texts == generic_texts(tiny)  # greedy, kept on the reader
    acts = []
    hook = tiny.model.model.layers[1].mlp.down_proj.register_forward_pre_hook(
        lambda _m, inp: acts.append(inp[0].detach()))
    try:
        with torch.no_grad():
            enc = tiny.encode_batch(texts)
            tiny.model(**enc, use_cache=False)
    finally:
        hook.remove()
    a = acts[0][enc["attention_mask"].bool()]  # [tokens, intermediate]
    cfg = PatchConfig(**{**CFG.__dict__, "layers": [1], "stop_loss": 0.0, "optimizer": optimizer})

    def moved(p):  # how far the change moves down_proj's output on generic text, relative
        d = p.deltas["model.layers.1.mlp.down_proj.weight"]
        return float((a @ d.T).norm() / a.norm())

    dense = make_patch(tiny, [FACT], cfg, measure=False)
    kept = make_patch(tiny, [FACT], PatchConfig(**{**cfg.__dict__, "preserve": 0.99}), measure=False)
    assert kept.max_abs() <= cfg.delta * (1 + 1e-6) and kept.max_abs() > 0
    assert moved(kept) < 0.2 * moved(dense)
    assert kept.metrics["loss_last"] < kept.metrics["loss_first"]


def test_a_patch_from_before_preserve_reads_as_made_without_it(tiny, tmp_path):
    save(make_patch(tiny, [FACT], CFG, measure=False), tmp_path / "plain")
    assert "preserve" not in json.loads((tmp_path / "plain" / "config.json").read_text())["config"]
    assert load(tmp_path / "plain", tiny).config.preserve == 0.0
    kept = make_patch(tiny, [FACT], PatchConfig(**{**CFG.__dict__, "layers": [1], "preserve": 0.9}), measure=False)
    save(kept, tmp_path / "kept")
    back = load(tmp_path / "kept", tiny)
    assert back.config.preserve == 0.9 and all(torch.equal(back.deltas[n], d) for n, d in kept.deltas.items())
