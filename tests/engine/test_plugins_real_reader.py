"""The knowledge plugin on the real SmolLM2 reader (slow: loads the shipped model)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow


def test_plugin_injection_on_smollm2(tmp_path):
    from engine.reader import load_reader
    from engine.mechanisms.plugins.embeddings import EntityEmbeddings
    from engine.mechanisms.plugins.attach import PluginInjector
    from engine.mechanisms.plugins.module import KnowledgePlugin
    from engine.store import Pack
    from tests.engine.test_plugins_fixtures import make_pack

    reader = load_reader()
    path = make_pack(tmp_path, with_facts=False)
    with Pack.open(path, readonly=True) as pack:
        ents = pack.entities()
        emb = EntityEmbeddings([e["id"] for e in ents], [e["name"] for e in ents],
                               np.random.default_rng(0).normal(size=(len(ents), 16)).astype(np.float32))
        plugin = KnowledgePlugin.create(reader, emb)
        plugin.use_pack_aliases(pack)
    inj = PluginInjector(reader, plugin)
    prompt = "The capital of Japan is"
    assert inj.generate(prompt, max_new_tokens=3, enabled=False) == reader.generate(prompt, max_new_tokens=3)
    assert inj.generate(prompt, max_new_tokens=3, enabled=False).strip().startswith("Tokyo")
    batch = inj.build([prompt])
    (only,) = batch.injected[0]
    assert only.entity == "Japan" and reader.tokenizer.convert_ids_to_tokens(
        reader.tokenizer(prompt)["input_ids"])[only.token] == "ĠJapan"
    assert batch.inputs.inputs_embeds.shape[1] == len(reader.tokenizer(prompt)["input_ids"]) + 1
    loo = inj.leave_one_out(prompt, " Tokyo")
    assert loo.logp_none == pytest.approx(float(reader.answer_logprob(prompt, " Tokyo")), abs=1e-3)
    assert loo.injected[0].loo_delta == pytest.approx(loo.logp_all - loo.logp_none, abs=1e-4)
    assert torch.isfinite(torch.tensor(loo.logp_all))
