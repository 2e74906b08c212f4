"""The product-key memory layer on the tiny reader: exact product-key search, the reader
unchanged until trained and bit for bit after detaching, growing lowers the loss, resume
after cancel and kill -9, the usage figures, the artefact and every bad input of issue 19."""
from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch

from engine.mechanisms import registry
from engine.mechanisms.base import Mechanism, attached
from engine.mechanisms.pkm import io
from engine.mechanisms.pkm.attach import attach
from engine.mechanisms.pkm.config import PKMConfig, PKMError
from engine.mechanisms.pkm.corpus import CorpusTooSmall, load_corpus
from engine.mechanisms.pkm.mechanism import PKMMechanism
from engine.mechanisms.pkm.module import ProductKeyMemory
from engine.mechanisms.pkm.train import GrowConfig, heldout_nll, lower_states, run
from engine.mechanisms.pkm.corpus import windows
from engine.mechanisms.pkm.usage import UsageCounter, usage_of
from engine.progress import JobCancelled
from engine.reader.tiny import make_tiny_reader

SMALL = dict(slots=256, k=4, heads=2, key_dim=16)
PROMPTS = ["The chemical symbol of gold is", "Iron has the atomic number"]


@pytest.fixture
def tiny():
    return make_tiny_reader(seed=0)  # fresh: tests attach to it and check it comes back


def write_corpus(folder):
    """A small domain: 12 elements (documents), 3 facts each, as a JSONL corpus file in ``folder``."""
    rows = []
    for i, (name, sym) in enumerate([("Hydrogen", "H"), ("Helium", "He"), ("Lithium", "Li"), ("Carbon", "C"),
                                     ("Nitrogen", "N"), ("Oxygen", "O"), ("Neon", "Ne"), ("Sodium", "Na"),
                                     ("Iron", "Fe"), ("Gold", "Au"), ("Silver", "Ag"), ("Copper", "Cu")]):
        for text in (f"The chemical symbol of {name.lower()} is {sym}.", f"{name} has the atomic number {i + 1}.",
                     f"The element with the symbol {sym} is {name.lower()}."):
            rows.append(json.dumps({"text": text, "title": name}))
    p = folder / "elements.jsonl"
    p.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return p


@pytest.fixture
def corpus(tmp_path):
    return write_corpus(tmp_path)


def grow_cfg(tmp_path, corpus, **kw):
    d = dict(out=str(tmp_path / "pkm"), corpus=[str(corpus)], steps=12, batch=4, micro_batch=2, seq_len=32,
             value_lr=2e-2, lr=1e-3, heldout=0.25, checkpoint_every=4, **SMALL)
    d.update(kw)
    return d


def snapshot(reader):
    state = {k: v.detach().clone() for k, v in reader.model.state_dict().items()}
    batch = reader.encode_batch(PROMPTS)
    with torch.no_grad():
        logits = reader.model(**batch).logits.clone()
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in reader.model.modules())
    return state, logits, hooks, [id(b.mlp) for b in reader.layers]


def assert_same(reader, before):
    state, logits, hooks, mlps = before
    now = snapshot(reader)
    assert now[0].keys() == state.keys() and all(torch.equal(now[0][k], state[k]) for k in state)
    assert torch.equal(now[1], logits), "the reader's logits changed"
    assert now[2] == hooks and now[3] == mlps, "a hook or a swapped module was left on the reader"


# --------------------------------------------------------------------------- the layer


def test_product_keys_find_the_exact_top_k_over_all_slots():
    mem = ProductKeyMemory(PKMConfig(slots=1024, k=8, heads=3, key_dim=32, init="random"), 24, seed=1)
    x = torch.randn(50, 24)
    idx, w = mem.lookup(x)
    q = mem.query_norm(mem.query(x)).view(50, 3, 2, 16)
    s = torch.einsum("nhsd,hsmd->nhsm", q, mem.keys)  # [50, 3, 2, 32]
    full = (s[:, :, 0, :, None] + s[:, :, 1, None, :]).flatten(2)  # all 1,024 product keys
    assert torch.equal(full.topk(8, -1).indices.sort(-1).values, idx.sort(-1).values)
    assert torch.allclose(w.sum(-1), torch.ones(50, 3))
    # the output is the weighted sum of the chosen value rows, summed over heads
    manual = (mem.values.weight[idx] * w.unsqueeze(-1)).sum((1, 2))
    assert torch.allclose(mem(x), manual, atol=1e-5)


@pytest.mark.parametrize("placement", ["beside", "replace"])
def test_detaching_restores_the_reader_bit_for_bit(tiny, placement):
    before = snapshot(tiny)
    mem = ProductKeyMemory(PKMConfig(placement=placement, init="random", **SMALL), tiny.hidden_size, seed=0)
    with attach(tiny, mem, 1, placement):
        with torch.no_grad():
            changed = tiny.model(**tiny.encode_batch(PROMPTS)).logits
        assert not torch.equal(changed, before[1])
        with pytest.raises(PKMError, match="already attached"):
            attach(tiny, mem, 0)
    assert_same(tiny, before)


def test_an_untrained_layer_leaves_the_logits_unchanged_and_composes(tiny):
    before = snapshot(tiny)
    mech = PKMMechanism(ProductKeyMemory(PKMConfig(**SMALL), tiny.hidden_size, seed=0), 1)
    assert isinstance(mech, Mechanism) and (mech.name, mech.kind) == ("pkm", "added layer")
    assert registry.mechanism("pkm").kind == "added layer" and "pkm" not in registry.MODES
    with attached(tiny, [mech]) as handles:
        assert handles["pkm"].attached
        with torch.no_grad():
            logits = tiny.model(**tiny.encode_batch(PROMPTS)).logits
        assert torch.equal(logits, before[1]), "a zero-started layer must add exactly nothing"
    assert_same(tiny, before)


def test_attach_refuses_a_layer_out_of_range_and_another_width(tiny):
    mem = ProductKeyMemory(PKMConfig(**SMALL), tiny.hidden_size)
    with pytest.raises(PKMError, match="layer 2 is out of range: the reader has layers 0 to 1"):
        attach(tiny, mem, 2)
    with pytest.raises(PKMError, match="96-wide, the reader's hidden size is 64"):
        attach(tiny, ProductKeyMemory(PKMConfig(**SMALL), 96), 1)


# --------------------------------------------------------------------------- usage


def test_usage_figures_on_known_distributions():
    n = 16
    even = usage_of(np.ones(n), np.ones(n, dtype=int))
    assert (even.used, even.kl_weights, even.gini, even.slots_50, even.slots_99) == (1.0, 0.0, 0.0, 8, 16)
    one = usage_of(np.eye(n)[3], np.eye(n, dtype=int)[3])
    assert one.used == 1 / n and one.slots_50 == one.slots_99 == 1
    assert math.isclose(one.kl_weights, math.log(n)) and math.isclose(one.gini, (n - 1) / n)
    half = usage_of(np.r_[np.ones(8), np.zeros(8)], np.r_[np.full(8, 3), np.zeros(8, dtype=int)])
    assert half.used == 0.5 and math.isclose(half.kl_counts, math.log(2)) and half.slots_90 == 8
    # the counter: two tokens, one head, k = 2
    c = UsageCounter(4)
    c.add(torch.tensor([[[0, 1]], [[1, 2]]]), torch.tensor([[[0.75, 0.25]], [[0.5, 0.5]]]))
    assert c.weights.tolist() == [0.75, 0.75, 0.5, 0.0] and c.counts.tolist() == [1, 2, 1, 0]
    r = c.report()
    assert r.used == 0.75 and r.tokens == 2 and r.top1_used == 0.5  # slot 0 and slot 1 (a tie, first wins)


# --------------------------------------------------------------------------- growing


def test_growing_lowers_the_loss_and_the_artefact_round_trips(tiny, corpus, tmp_path):
    seen = []
    res = run(grow_cfg(tmp_path, corpus), lambda f, m, **kw: seen.append(kw), reader=tiny)
    assert res["steps_done"] == 12 and res["layer"] == 1 and res["heldout_documents"] == 3
    assert res["losses"][-1] < res["losses"][0]
    assert any("loss" in kw for kw in seen) and any("eta" in kw for kw in seen)
    assert 0 < res["usage"]["used"] <= 1 and res["usage"]["tokens"] == res["heldout_tokens"]
    meta = json.loads((tmp_path / "pkm" / "config.json").read_text())
    assert meta["format"] == "plugmem-pkm" and meta["reader"] == tiny.fingerprint and meta["layer"] == 1
    assert meta["corpus"]["documents"] == 12 and len(meta["corpus"]["sha256"]) == 64
    assert meta["training"]["heldout_ppl_with"] == res["heldout_ppl_with"]
    weights, counts = io.load_usage(tmp_path / "pkm", 256)  # what the usage view draws
    assert math.isclose(float((weights > 0).mean()), res["usage"]["used"]) and counts.sum() > 0

    mech = PKMMechanism.load(tmp_path / "pkm", tiny)
    assert mech.memory.values.weight.abs().sum() > 0
    # the training-set loss is lower with the grown layer than without (the reader alone)
    c = load_corpus([corpus])
    train_names, _ = c.split(0.25)
    w = windows(tiny.tokenizer, c, train_names, 32)
    h = lower_states(tiny, 1, w.ids)
    alone = heldout_nll(tiny, 1, h, w)
    with mech.attach(tiny):
        grown = heldout_nll(tiny, 1, h, w)
    assert grown < alone
    loo = mech.leave_one_out(tiny, "The chemical symbol of gold is", " Au")
    assert len(loo.logp_without) == len(loo.parts) > 0 and loo.parts[0].startswith("slot ")
    top = mech.top_slots(tiny, "The chemical symbol of gold is", " Au")
    words = mech.slot_tokens(tiny, top[0][0], n=3)
    assert len(words) == 3 and all(isinstance(w, str) for w in words)
    mech.save(tmp_path / "copy")
    again = PKMMechanism.load(tmp_path / "copy", tiny)
    assert torch.equal(again.memory.values.weight, mech.memory.values.weight)


def test_cancel_is_heard_within_a_second_and_a_new_run_resumes(tiny, corpus, tmp_path):
    cfg = grow_cfg(tmp_path, corpus, steps=8, checkpoint_every=2)
    asked: list[float] = []

    def progress(f, m, **kw):
        if kw.get("step") == 3 and not asked:
            asked.append(time.monotonic())

    with pytest.raises(JobCancelled, match="run it again with the same output folder"):
        run(cfg, progress, lambda: bool(asked), reader=tiny)
    assert time.monotonic() - asked[0] < 1.0
    assert (tmp_path / "pkm" / "checkpoint.pt").is_file() and not (tmp_path / "pkm" / "config.json").exists()
    stale = tmp_path / "pkm" / "checkpoint.pt.k9x1.tmp"  # what a kill in the middle of a save leaves
    stale.write_bytes(b"half a checkpoint")
    res = run(cfg, reader=tiny)
    assert res["resumed_from"] == 3 and res["steps_done"] == 8 and not stale.exists()
    with pytest.raises(PKMError, match="checkpoint of another run .*slots"):
        run(dict(cfg, slots=20 * 20, steps=9), reader=tiny)


def test_a_killed_job_resumes_from_its_last_checkpoint(corpus, tmp_path):
    from engine.jobs.runner import JobRunner
    from tests.engine._kill import start_and_kill

    reader_dir = make_tiny_reader(seed=0).save(tmp_path / "tiny-reader")
    cfg = grow_cfg(tmp_path, corpus, steps=10, checkpoint_every=1, reader=str(reader_dir), device="cpu")
    start_and_kill(JobRunner(tmp_path / "jobs.sqlite"), "pkm_grow", "engine.mechanisms.pkm.train:grow", cfg,
                   past=0.35, timeout=240)
    ck = torch.load(tmp_path / "pkm" / "checkpoint.pt", weights_only=True)
    assert ck["step"] >= 2
    # What a kill inside torch.save leaves (the kill above lands there only sometimes).
    (tmp_path / "pkm" / "checkpoint.pt.k1ll3d.tmp").write_bytes(b"\x00" * 10)
    res = run(cfg)
    assert res["resumed_from"] == ck["step"] and res["steps_done"] == 10
    assert not list((tmp_path / "pkm").glob("*.tmp"))


# --------------------------------------------------------------------------- bad input


def test_corpus_too_small_or_without_text_says_what_is_needed(tmp_path):
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"text": "Gold is Au.", "title": "Gold"}) + "\n" +
                   json.dumps({"text": "Gold is a metal.", "title": "Gold"}) + "\n", encoding="utf-8")
    with pytest.raises(CorpusTooSmall, match=r"one.jsonl: the corpus has 1 document, too few .* at least 2 documents"):
        load_corpus([one]).split(0.2)
    empty = tmp_path / "empty.md"
    empty.write_text("# Title only\n\n", encoding="utf-8")
    with pytest.raises(PKMError, match="empty.md: no text to grow a memory on"):
        load_corpus([empty])
    with pytest.raises(PKMError, match="nowhere.txt: no such file"):
        load_corpus([tmp_path / "nowhere.txt"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok", "title": "A"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(PKMError, match="bad.jsonl:2"):
        load_corpus([bad])


def test_a_pack_is_a_corpus_of_its_active_entries(tmp_path, corpus):
    from engine.store import Pack

    with Pack.create(tmp_path / "p.plugmem") as pack:
        pack.import_file(corpus)
        pack.set_status([1, 2, 3], "disabled")
    c = load_corpus([tmp_path / "p.plugmem"])
    assert len(c.documents) == 11 and "p.plugmem:Hydrogen" not in c.documents


@pytest.mark.parametrize("change, match", [
    ({"slots": 1000}, r"slots must be a square number .* got 1,000; the nearest are 961 and 1,024"),
    ({"layer": 7}, "layer 7 is out of range: the reader has layers 0 to 1"),
    ({"k": 40}, "k must be a whole number from 1 to 16"),
    ({"key_dim": 15}, "key_dim must be even"),
    ({"query_norm": "group"}, "query_norm must be one of layer, batch, rms, none"),
    ({"micro_batch": 0}, "micro_batch must be a positive whole number"),
    ({"heldout": 1.5}, r"heldout must be a share in \(0, 1\)"),
    ({"colour": "red"}, "unknown field"),
])
def test_bad_grow_configs_are_refused_naming_the_field(tiny, corpus, tmp_path, change, match):
    with pytest.raises(PKMError, match=match):
        run(grow_cfg(tmp_path, corpus, **change), reader=tiny)
    assert not (tmp_path / "pkm" / "config.json").exists()


@pytest.fixture
def saved(tiny, tmp_path):
    mem = ProductKeyMemory(PKMConfig(init="random", **SMALL), tiny.hidden_size, seed=0)
    return io.save(mem, tmp_path / "saved", reader_fingerprint=tiny.fingerprint, layer=1)


def test_another_readers_layer_is_refused(saved):
    with pytest.raises(PKMError, match="trained for the reader .*weights_sha256.*grow one for this reader"):
        io.load(saved, make_tiny_reader(seed=1))


def test_wrong_shapes_a_pickle_and_mixed_files_are_refused(tiny, saved):
    cfg = json.loads((saved / "config.json").read_text())
    good = (saved / "model.safetensors").read_bytes()
    (saved / "config.json").write_text(json.dumps(dict(cfg, config=dict(cfg["config"], slots=400))))
    with pytest.raises(PKMError, match=r"model.safetensors does not match its config.json: wrong shape: keys"):
        io.load(saved, tiny)
    (saved / "config.json").write_text(json.dumps(cfg))
    torch.save({"values.weight": torch.zeros(3)}, saved / "model.safetensors")  # a pickle
    with pytest.raises(PKMError, match="model.safetensors is unreadable"):
        io.load(saved, tiny)
    (saved / "model.safetensors").write_bytes(good)
    other = ProductKeyMemory(PKMConfig(init="random", **SMALL), tiny.hidden_size, seed=5)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(saved / "model.safetensors"))
    with pytest.raises(PKMError, match="not the file .*config.json was written with"):
        io.load(saved, tiny)
    (saved / "config.json").write_text(json.dumps(dict(cfg, layer="top")))
    with pytest.raises(PKMError, match=r"config.json: field 'layer' must be a whole number"):
        io.load(saved, tiny)


def test_a_save_killed_midway_leaves_the_old_artefact_whole(tiny, saved, monkeypatch):
    before = {p.name: p.read_bytes() for p in saved.iterdir()}
    import safetensors.torch as st

    def dies(state, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"\x00" * 100)  # half a file, then the process is gone
        raise KeyboardInterrupt

    monkeypatch.setattr(st, "save_file", dies)
    mem = ProductKeyMemory(PKMConfig(init="random", **SMALL), tiny.hidden_size, seed=9)
    with pytest.raises(KeyboardInterrupt):
        io.save(mem, saved, reader_fingerprint=tiny.fingerprint, layer=1)
    assert {p.name: p.read_bytes() for p in saved.iterdir()} == before
    io.load(saved, tiny)
