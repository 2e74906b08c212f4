"""The DPM memory branch on the tiny reader: unchanged until trained, follows its memory, saves/loads, refuses misfits."""
from __future__ import annotations

import json

import pytest
import torch

from engine.mechanisms import dpm
from engine.mechanisms.dpm import DPMConfig, DPMError, DPMFusion, MemoryBranch
from engine.reader.tiny import make_tiny_reader

PROMPT = "Zebra facts:"
ROME = "Zebra facts: Rome Rome Rome Rome Rome"
OSLO = "Zebra facts: Oslo Oslo Oslo Oslo Oslo"
PARIS = "Lion facts: Paris Paris Paris Paris Paris"


@pytest.fixture(scope="session")
def tiny():
    return make_tiny_reader(seed=0)


def copy_branch(reader, scale: float = 50.0, layers: int = 2, value_space: str = "embedding") -> MemoryBranch:
    """A real branch with hand-set weights: uniform attention within the best-scored entry
    (temperature ~0, retrieval-score weight large), no null slot, output = scale * mean of
    the value embeddings. With tied embeddings the reader then says the entry's most
    frequent token: a branch that visibly follows its memory, for testing the plumbing."""
    b = MemoryBranch(DPMConfig(layers=layers, value_space=value_space), reader)
    with torch.no_grad():
        b.match.log_tau.fill_(-20.0)
        b.match.beta.fill_(50.0)
        b.match.null_logit.fill_(-1e4)
        for blk in b.blocks.values():
            blk.o.weight.copy_(torch.eye(reader.hidden_size) * scale)
    return b


def random_branch(reader, seed: int = 0, **cfg) -> MemoryBranch:
    cfg = {"layers": 2, "heads": 2, "head_dim": 8} | cfg
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        b = MemoryBranch(DPMConfig(**cfg), reader)
        for blk in b.blocks.values():
            torch.nn.init.normal_(blk.o.weight, std=0.3)
    return b


def calibrated(branch: MemoryBranch, reader, folder, **config) -> MemoryBranch:
    """``branch`` saved, its config.json changed as a calibration writes it, and loaded again."""
    dpm.save(branch, folder)
    meta = json.loads((folder / "config.json").read_text())
    meta["config"].update(config)
    (folder / "config.json").write_text(json.dumps(meta))
    return dpm.load(folder, reader)


def logits(reader, prompt: str) -> torch.Tensor:
    with torch.inference_mode():
        return reader.model(**reader.encode_batch([prompt])).logits


def test_untrained_branch_leaves_the_reader_exactly_unchanged(tiny):
    b = MemoryBranch(DPMConfig(layers=2, heads=2, head_dim=8), tiny)
    mem = b.encode_values(tiny, [[ROME, PARIS]])
    base = logits(tiny, PROMPT)
    with dpm.attach(tiny, b), b.memory(mem, torch.tensor([[0.9, 0.3]])):
        plugged = logits(tiny, PROMPT)
    assert torch.equal(base, plugged)
    assert DPMFusion(tiny, b).generate(PROMPT, [ROME, PARIS], [0.9, 0.3], 6) == (tiny.generate(PROMPT, 6),) * 2


@pytest.mark.parametrize("match", ["cosine", "learned"])
def test_unplugged_or_fully_masked_memory_gives_exactly_the_base_reader(tiny, match):
    b = random_branch(tiny, match=match)
    base = logits(tiny, PROMPT)
    mem = b.encode_values(tiny, [[ROME, PARIS]])
    with dpm.attach(tiny, b):
        assert torch.equal(logits(tiny, PROMPT), base)  # attached, no memory set
        with b.memory(mem.with_mask(torch.zeros_like(mem.mask)), torch.tensor([[0.9, 0.3]])):
            assert torch.equal(logits(tiny, PROMPT), base)  # every entry left out
        with b.memory(mem, torch.tensor([[0.9, 0.3]])):
            assert not torch.allclose(logits(tiny, PROMPT), base)  # a trained branch does read its memory
    assert torch.equal(logits(tiny, PROMPT), base)  # detached: hooks gone
    assert getattr(tiny, "_dpm_attachment", None) is None


@pytest.mark.parametrize("value_space", ["embedding", "unembedding"])
def test_the_answer_follows_the_memory(tiny, value_space):
    f = DPMFusion(tiny, copy_branch(tiny, value_space=value_space))
    with_rome, without = f.generate(PROMPT, [ROME], [0.9], 3)
    assert with_rome.startswith(" Rome") and without == tiny.generate(PROMPT, 3)
    assert f.generate(PROMPT, [OSLO], [0.9], 3)[0].startswith(" Oslo")
    # Several entries: the best-scored one wins (the branch biases attention by score).
    assert f.generate(PROMPT, [PARIS, OSLO], [0.9, 0.4], 3)[0].startswith(" Paris")
    assert f.generate(PROMPT, [PARIS, OSLO], [0.4, 0.9], 3)[0].startswith(" Oslo")
    # Per-row memories in one batch give the same answers as one at a time.
    many = f.generate_many([PROMPT, PROMPT], [[ROME], [PARIS, OSLO]], [[0.9], [0.4, 0.9]], 3)
    assert many[0].startswith(" Rome") and many[1].startswith(" Oslo")


def test_entry_states_are_cached_by_text_so_an_edit_is_read_afresh(tiny):
    f = DPMFusion(tiny, copy_branch(tiny))
    f.generate(PROMPT, [ROME], [0.9], 2)
    assert len(f.cache) == 1
    assert f.generate(PROMPT, [OSLO], [0.9], 2)[0].startswith(" Oslo")  # new text: new states, no stale reuse
    assert len(f.cache) == 2
    assert f.prompts is None  # a branch on every layer: no layer below it to skip


def test_a_prompt_asked_again_reuses_its_states_below_the_branch_and_follows_the_new_memory(tiny):
    f = DPMFusion(tiny, copy_branch(tiny, layers=1))  # the branch on layer 1: layer 0 never sees memory
    assert f.prompts.first == 1
    assert f.generate(PROMPT, [ROME], [0.9], 3)[0].startswith(" Rome")
    assert len(f.prompts) == 1
    again = f.generate(PROMPT, [OSLO], [0.9], 3)
    fresh = DPMFusion(tiny, copy_branch(tiny, layers=1)).generate(PROMPT, [OSLO], [0.9], 3)
    assert again == fresh and again[0].startswith(" Oslo") and len(f.prompts) == 1


@pytest.mark.parametrize("match", ["cosine", "learned"])
def test_leave_one_out_is_one_forward_and_equals_separate_runs(tiny, match):
    b = random_branch(tiny, match=match, layers=1)  # layer 0 below the branch, layer 1 with it
    f = DPMFusion(tiny, b)
    texts, scores = [ROME, PARIS, OSLO], [0.9, 0.6, 0.3]
    answer = tiny.tokenizer(" Rome Rome", add_special_tokens=False)["input_ids"]
    f.memory_for([texts])  # read the entries first: the count below is the leave-one-out pass alone
    calls = {"bottom": [], "top": []}  # batch sizes seen by the first and the last decoder layer
    def counter(name):
        def hook(module, args, kwargs, output):  # runs only when the layer really computed
            calls[name].append((args[0] if args else kwargs["hidden_states"]).shape[0])
        return hook

    hooks = [tiny.layers[0].register_forward_hook(counter("bottom"), with_kwargs=True),
             tiny.layers[-1].register_forward_hook(counter("top"), with_kwargs=True)]
    try:
        loo = f.leave_one_out(PROMPT, texts, scores, answer)
    finally:
        for h in hooks:
            h.remove()
    # Below the branch the k+1 variants are identical: one row, once; the branch layer runs once for all k+1.
    assert calls == {"bottom": [1], "top": [4]}
    assert len(loo.logp_without) == 3 and len(loo.weights) == 3
    assert all(0.0 <= w <= 1.0 for w in loo.weights) and sum(loo.weights) <= 1.0 + 1e-5
    for i in range(3):
        alone = f.leave_one_out(PROMPT, texts[:i] + texts[i + 1:], scores[:i] + scores[i + 1:], answer).logp_all
        assert loo.logp_without[i] == pytest.approx(alone, abs=1e-4)


def test_pooled_values_have_one_slot_per_entry(tiny):
    b = random_branch(tiny, value_mode="pooled")
    mem = b.encode_values(tiny, [[ROME, PARIS, OSLO]])
    assert tuple(mem.mask.shape) == (1, 3, 1) and bool(mem.mask.all())
    base = logits(tiny, PROMPT)
    with dpm.attach(tiny, b), b.memory(mem, torch.tensor([[0.9, 0.5, 0.1]])):
        assert not torch.allclose(logits(tiny, PROMPT), base)
        assert tuple(b.last_weights.shape) == (1, 3)


def test_unembedding_values_raise_their_own_token_above_every_other(tiny):
    b = MemoryBranch(DPMConfig(layers=2, value_space="unembedding"), tiny)
    ids = tiny.tokenizer([" Rome Oslo BSD Tokyo noble gases atmophile"], add_special_tokens=False)["input_ids"][0]
    vals = b.entry_embeddings(tiny, [ids])[0]  # [n, d]
    assert vals.shape == (len(ids), tiny.hidden_size)
    g = dpm.final_norm_weight(tiny).float()
    head = tiny.model.get_output_embeddings().weight.float()  # [V, d]
    for t, v in zip(ids, vals):
        change = head @ (g * v)  # what adding v before the final norm does to every logit
        assert int(change.argmax()) == t
    # The same vectors whichever way the entry is read (with its states, or alone).
    _, again = b.entry_states(tiny, [ids])
    assert torch.allclose(again[0], vals)


@pytest.mark.parametrize("value_space", ["embedding", "unembedding"])
def test_save_and_load_give_the_same_branch(tiny, tmp_path, value_space):
    b = random_branch(tiny, value_space=value_space)
    dpm.save(b, tmp_path / "br", extra={"steps": 3})
    meta = json.loads((tmp_path / "br" / "config.json").read_text())
    assert meta["format"] == "plugmem-dpm" and meta["reader"]["weights_sha256"] == tiny.fingerprint["weights_sha256"]
    assert meta["training"] == {"steps": 3}
    again = dpm.load(tmp_path / "br", tiny)
    f1, f2 = DPMFusion(tiny, b), DPMFusion(tiny, again)
    ans = tiny.tokenizer(" Rome", add_special_tokens=False)["input_ids"]
    assert f1.leave_one_out(PROMPT, [ROME, PARIS], [0.9, 0.2], ans) == f2.leave_one_out(PROMPT, [ROME, PARIS], [0.9, 0.2], ans)
    assert again.config.value_space == value_space


def test_a_branch_saved_before_value_spaces_existed_reads_input_embeddings(tiny, tmp_path):
    b = random_branch(tiny)
    dpm.save(b, tmp_path / "old")
    meta = json.loads((tmp_path / "old" / "config.json").read_text())
    del meta["config"]["value_space"]
    (tmp_path / "old" / "config.json").write_text(json.dumps(meta))
    old = dpm.load(tmp_path / "old", tiny)
    assert old.config.value_space == "embedding"
    ids = torch.tensor(tiny.tokenizer([ROME], add_special_tokens=False)["input_ids"][0])
    assert torch.equal(old.value_vectors(tiny, ids), tiny.model.get_input_embeddings()(ids).float())


def test_a_branch_for_another_reader_is_refused(tiny, tmp_path):
    dpm.save(random_branch(tiny), tmp_path / "br")
    other = make_tiny_reader(seed=1)
    with pytest.raises(DPMError, match="trained for the reader .*weights_sha256"):
        dpm.load(tmp_path / "br", other)
    with pytest.raises(DPMError, match="trained for the reader"):
        dpm.attach(other, random_branch(tiny))
    with pytest.raises(DPMError, match="trained for the reader"):
        DPMFusion(other, random_branch(tiny))


def test_the_shipped_branch_is_for_the_default_reader_and_refused_by_others(tiny):
    folder = dpm.default_branch_path()
    if not (folder / "config.json").exists():
        pytest.skip(f"no trained branch shipped yet in {folder} (issue 3 open)")
    meta = dpm.read_config(folder)
    assert meta["reader"]["name"] == "SmolLM2-135M-Instruct"
    assert (folder / "model.safetensors").stat().st_size < 20 * 2**20
    with pytest.raises(DPMError, match="SmolLM2-135M-Instruct"):
        dpm.load_default_branch(tiny)


def test_bad_branch_folders_are_reported_and_left_alone(tiny, tmp_path):
    with pytest.raises(DPMError, match="not found"):
        dpm.load(tmp_path / "nowhere", tiny)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DPMError, match="no config.json"):
        dpm.load(tmp_path / "empty", tiny)
    folder = dpm.save(random_branch(tiny), tmp_path / "br")
    weights = folder / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(DPMError, match="unreadable"):
        dpm.load(folder, tiny)
    assert weights.read_bytes() == b"\x00garbage" * 10  # nothing overwritten
    weights.write_bytes(good)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["config"]["layers"] = 1
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(DPMError, match="does not match its config.json"):
        dpm.load(folder, tiny)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(DPMError, match="unreadable"):
        dpm.load(folder, tiny)
    (folder / "config.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(DPMError, match="does not describe a DPM branch"):
        dpm.load(folder, tiny)


@pytest.mark.parametrize(
    "bad, match",
    [({"layers": 0}, "layers"), ({"value_mode": "mean"}, "value_mode"), ({"value_space": "logits"}, "value_space"), ({"heads": "4"}, "heads"), ({"colour": 1}, "unknown"),
     ({"match": "exact"}, "match"), ({"output_scale": 0}, "output_scale"), ({"output_scale": "2"}, "output_scale"),
     ({"score_scale": -1}, "score_scale"), ({"score_scale": True}, "score_scale")],
)
def test_bad_configs_are_named(bad, match):
    with pytest.raises(DPMError, match=match):
        DPMConfig.from_dict(bad)


def test_output_scale_multiplies_what_the_branch_adds_and_is_saved(tiny, tmp_path):
    b = random_branch(tiny)
    mem = b.encode_values(tiny, [[ROME, PARIS]])
    sc = torch.tensor([[0.9, 0.3]])
    base = logits(tiny, PROMPT)

    def added(branch):
        with dpm.attach(tiny, branch), branch.memory(mem, sc):
            return logits(tiny, PROMPT) - base

    one = added(b)
    scaled = calibrated(b, tiny, tmp_path / "br", output_scale=2.0)
    assert scaled.config.output_scale == 2.0
    two = added(scaled)
    assert one.abs().max() > 1e-3
    assert not torch.allclose(one, two, atol=1e-4)  # a stronger push on the reader
    with dpm.attach(tiny, scaled), scaled.memory(mem.with_mask(torch.zeros_like(mem.mask)), sc):
        assert torch.equal(logits(tiny, PROMPT), base)  # nothing plugged: still exactly the reader


@pytest.mark.parametrize("match", ["cosine", "learned"])
def test_score_scale_sharpens_the_attention_on_the_best_scored_entry_and_is_saved(tiny, tmp_path, match):
    b = random_branch(tiny, match=match)
    mem = b.encode_values(tiny, [[ROME, PARIS]])
    sc = torch.tensor([[0.9, 0.3]])

    def weights(branch):
        with dpm.attach(tiny, branch), branch.memory(mem, sc):
            logits(tiny, PROMPT)
            return branch.last_weights[0]

    one = weights(b)
    sharp = calibrated(b, tiny, tmp_path / "br", score_scale=3.0)
    assert sharp.config.score_scale == 3.0
    three = weights(sharp)
    assert three[0] / three[1] > one[0] / one[1]  # more of the attention on the better-scored entry
    base = logits(tiny, PROMPT)
    with dpm.attach(tiny, sharp), sharp.memory(mem.with_mask(torch.zeros_like(mem.mask)), sc):
        assert torch.equal(logits(tiny, PROMPT), base)  # nothing plugged: still exactly the reader


def test_the_shipped_branch_carries_its_calibration():
    meta = json.loads((dpm.default_branch_path() / "config.json").read_text())
    assert meta["config"]["output_scale"] == meta["calibration"]["output_scale"] > 0
    assert meta["config"]["score_scale"] == meta["calibration"]["score_scale"] > 0


def test_more_layers_than_the_reader_has_is_refused(tiny):
    with pytest.raises(DPMError, match="only 2 layers"):
        MemoryBranch(DPMConfig(layers=5), tiny)


def test_a_second_branch_cannot_be_attached_on_top(tiny):
    a, b = random_branch(tiny), random_branch(tiny, seed=1)
    with dpm.attach(tiny, a):
        with dpm.attach(tiny, a):  # re-attaching the same branch is a no-op
            pass
        assert tiny._dpm_attachment is not None
        with pytest.raises(DPMError, match="already attached"):
            dpm.attach(tiny, b)
    assert tiny._dpm_attachment is None
