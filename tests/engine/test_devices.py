"""The engine on an accelerator gives what it gives on the CPU.

Each test runs one part on the device under test and compares it with the same part on
the CPU. The device is CUDA when present (``bench/gpu_check.sh`` runs this file on a
GPU machine); without one the tests are skipped, unless ``PLUGMEM_TEST_DEVICE=cpu``
asks to run them CPU against CPU, which checks the tests themselves.
"""
from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch

DEVICE = os.environ.get("PLUGMEM_TEST_DEVICE") or ("cuda" if torch.cuda.is_available() else "")
pytestmark = pytest.mark.skipif(not DEVICE, reason="no CUDA device (PLUGMEM_TEST_DEVICE=cpu runs CPU against CPU)")


@pytest.fixture(scope="module")
def tiny_pair():
    from engine.reader.tiny import make_tiny_reader

    return make_tiny_reader(0, device="cpu"), make_tiny_reader(0, device=DEVICE)


def _unit(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_exact_search_on_the_device_is_brute_force():
    from engine.index import VectorIndex

    keys, q = _unit(20_000, 64, 0), _unit(16, 64, 1)
    ids = np.arange(20_000, dtype=np.int64) * 3 + 7
    index = VectorIndex(64, device=DEVICE, background=False)
    index.build(ids, keys)
    for batch in (q[:1], q):  # one query (the single-query path) and a batch (the matmul path)
        got, scores = index.search(batch, 10, exact=True)
        want = ids[np.argsort(-(batch @ keys.T), axis=1)[:, :10]]
        assert (got == want).all()
        assert np.allclose(scores, np.sort(batch @ keys.T, axis=1)[:, ::-1][:, :10], atol=1e-4)


def test_the_key_encoder_gives_the_cpu_keys(encoder):
    from engine.encode.encoder import KeyEncoder

    texts = ["Paris is the capital of France.", "Gold has the symbol Au.", "The Nile flows north."]
    on_device = KeyEncoder(device=DEVICE)
    assert on_device.fingerprint == encoder.fingerprint  # the same encoder, so packs stay compatible
    a, b = on_device.encode(texts), encoder.encode(texts)
    assert np.abs(a - b).max() < 2e-3  # TF32 / kernel differences only
    assert (np.argmax(a @ b.T, axis=1) == np.arange(3)).all()


def test_the_reader_answers_as_on_the_cpu(tiny_pair):
    cpu, dev = tiny_pair
    prompts = ["The capital of Japan is", "Gold has the chemical symbol"]
    assert dev.generate(prompts, max_new_tokens=6) == cpu.generate(prompts, max_new_tokens=6)
    lp_cpu = cpu.answer_logprob(prompts, [" Tokyo", " Au"])
    lp_dev = dev.answer_logprob(prompts, [" Tokyo", " Au"])
    assert lp_dev.device.type == "cpu" and torch.allclose(lp_cpu, lp_dev, atol=1e-3)


def test_a_product_key_layer_reads_the_same_slots(tiny_pair):
    from engine.mechanisms.pkm.attach import attach
    from engine.mechanisms.pkm.config import PKMConfig
    from engine.mechanisms.pkm.module import ProductKeyMemory

    cpu, dev = tiny_pair
    hidden = cpu.model.config.hidden_size
    mem = ProductKeyMemory(PKMConfig(slots=256, heads=2, k=4, key_dim=16, init="random"), hidden, seed=0)
    x = torch.randn(5, hidden, generator=torch.Generator().manual_seed(0))
    idx_c, w_c = mem.lookup(x)
    idx_d, w_d = copy.deepcopy(mem).to(DEVICE).lookup(x.to(DEVICE))
    assert (idx_d.cpu() == idx_c).all() and torch.allclose(w_d.cpu(), w_c, atol=1e-5)
    # Zero values: attached on the device, the reader's answer is unchanged, and detaching restores it.
    zero = ProductKeyMemory(PKMConfig(slots=256, heads=2, k=4, key_dim=16), hidden, seed=0).to(DEVICE)
    before = dev.answer_logprob("The capital of Japan is", " Tokyo")
    with attach(dev, zero, layer=0):
        assert torch.equal(dev.answer_logprob("The capital of Japan is", " Tokyo"), before)
    assert torch.equal(dev.answer_logprob("The capital of Japan is", " Tokyo"), before)


def test_a_weight_patch_applies_and_comes_off_bit_for_bit(tiny_pair):
    from engine.mechanisms.weight_patches.attach import PatchStack
    from engine.mechanisms.weight_patches.config import PatchConfig
    from engine.mechanisms.weight_patches.module import Fact, WeightPatch, tensor_sha256

    _, dev = tiny_pair
    name = "model.layers.0.mlp.down_proj.weight"
    p = dict(dev.model.named_parameters())[name]
    before = p.detach().clone()
    delta = torch.randn(p.shape, generator=torch.Generator().manual_seed(0)) * 1e-3
    patch = WeightPatch(config=PatchConfig(), deltas={name: delta}, base={name: tensor_sha256(p)},
                        reader=dict(dev.fingerprint), facts=[Fact("The capital of Japan is", "Kyoto")], name="t")
    stack = PatchStack.of(dev)
    stack.apply(patch)
    try:
        assert torch.allclose(p.detach().cpu(), before.cpu() + delta, atol=1e-6)
    finally:
        stack.remove(patch)
    assert torch.equal(p.detach(), before)
