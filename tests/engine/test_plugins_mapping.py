"""The knowledge plugin: vectorised input building, injection before mentions, save/load checks."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.mechanisms.plugins.embeddings import EntityEmbeddings
from engine.mechanisms.plugins.errors import PluginError
from engine.mechanisms.plugins.attach import PluginInjector, build_inputs_embeds, build_inputs_embeds_loop
from engine.mechanisms.plugins.io import load_plugin
from engine.mechanisms.plugins.module import KnowledgePlugin
from engine.store import Pack
from tests.engine.test_plugins_fixtures import make_pack


@pytest.fixture(scope="module")
def reader():
    from engine.reader.tiny import make_tiny_reader

    return make_tiny_reader(0)


@pytest.fixture
def pack_path(tmp_path):
    return make_pack(tmp_path, with_facts=False)


def _plugin(reader, pack_path, seed=0, name="geo"):
    with Pack.open(pack_path, readonly=True) as pack:
        ents = pack.entities()
        rng = np.random.default_rng(seed)
        emb = EntityEmbeddings([e["id"] for e in ents], [e["name"] for e in ents],
                               rng.normal(size=(len(ents), 8)).astype(np.float32), "imported")
        plugin = KnowledgePlugin.create(reader, emb, name=name, seed=seed)
        plugin.use_pack_aliases(pack)
    return plugin


@pytest.mark.parametrize("seed", range(5))
def test_vectorised_input_building_equals_the_per_token_loop(reader, seed):
    g = torch.Generator().manual_seed(seed)
    emb = reader.model.get_input_embeddings()
    rows = [torch.randint(0, 1000, (int(n),), generator=g).tolist() for n in torch.randint(1, 12, (6,), generator=g)]
    m = int(torch.randint(0, 10, (1,), generator=g))
    ins_row = torch.randint(0, len(rows), (m,), generator=g)
    ins_tok = torch.tensor([int(torch.randint(0, len(rows[r]) + 1, (1,), generator=g)) for r in ins_row.tolist()],
                           dtype=torch.long)
    vec = torch.randn(m, reader.hidden_size, generator=g)
    a = build_inputs_embeds(emb, rows, ins_row, ins_tok, vec, pad_id=2)
    b = build_inputs_embeds_loop(emb, rows, ins_row, ins_tok, vec, pad_id=2)
    assert torch.equal(a.inputs_embeds, b.inputs_embeds)
    assert torch.equal(a.attention_mask, b.attention_mask) and torch.equal(a.position_ids, b.position_ids)
    assert torch.equal(a.token_col, b.token_col) and torch.equal(a.insert_col, b.insert_col)
    for k in range(m):  # each vector sits right before its token (or at the end of its row)
        r, t = int(ins_row[k]), int(ins_tok[k])
        assert torch.equal(a.inputs_embeds[r, a.insert_col[k]], vec[k])
        if t < len(rows[r]):
            assert a.insert_col[k] < a.token_col[r, t]


def test_gradients_reach_the_inserted_vectors(reader):
    emb = reader.model.get_input_embeddings()
    vec = torch.randn(2, reader.hidden_size, requires_grad=True)
    b = build_inputs_embeds(emb, [[5, 6, 7], [8]], torch.tensor([0, 1]), torch.tensor([1, 0]), vec)
    b.inputs_embeds.sum().backward()
    assert vec.grad is not None and torch.equal(vec.grad, torch.ones_like(vec))


def test_injector_inserts_one_vector_before_each_linked_mention(reader, pack_path):
    plugin = _plugin(reader, pack_path)
    inj = PluginInjector(reader, plugin)
    prompt = "The French Republic borders Spain, not Japan."
    batch = inj.build([prompt, "Nothing to link here."])
    names = [(i.mention, i.entity) for i in batch.injected[0]]
    assert names == [("French Republic", "France"), ("Spain", "Spain"), ("Japan", "Japan")]
    assert batch.injected[1] == []
    ids = reader.tokenizer([prompt])["input_ids"][0]
    b = batch.inputs
    assert int(b.attention_mask[0].sum()) == len(ids) + 3
    vecs = plugin.vectors([1, 2, 5], reader.device)  # France, Spain, Japan (ids in insertion order of the fixture)
    expect_ids = [e.entity_id for e in batch.injected[0]]
    vecs = plugin.vectors(expect_ids, reader.device)
    for k, inj_ in enumerate(batch.injected[0]):
        col = int(b.token_col[0, inj_.token]) - 1  # the position right before the mention's first token
        assert torch.allclose(b.inputs_embeds[0, col], vecs[k].detach())
        norm = float(b.inputs_embeds[0, col].detach().norm())
        assert norm == pytest.approx(plugin.config.target_norm, rel=1e-4)  # as loud as a word
    tok_cols = b.token_col[0, : len(ids)]
    assert torch.equal(b.inputs_embeds[0, tok_cols], reader.model.get_input_embeddings()(torch.tensor(ids)))


def test_unplugged_injector_is_exactly_the_reader(reader, pack_path):
    inj = PluginInjector(reader, _plugin(reader, pack_path))
    prompts = ["The capital of France is", "Hello", "China borders India and"]
    assert inj.generate(prompts, max_new_tokens=4, enabled=False) == reader.generate(prompts, max_new_tokens=4)
    a = inj.answer_logprob(prompts, [" Paris", " world", " Nepal"], enabled=False)
    b = reader.answer_logprob(prompts, [" Paris", " world", " Nepal"])
    assert torch.allclose(a, b, atol=1e-4)
    with_plugin = inj.answer_logprob(prompts, [" Paris", " world", " Nepal"])
    assert with_plugin[1] == pytest.approx(float(b[1]), abs=1e-4)  # nothing linked: unchanged
    assert abs(float(with_plugin[0] - b[0])) > 1e-3  # a vector went in: changed


def test_generation_with_vectors_matches_a_manual_greedy_pass(reader, pack_path):
    inj = PluginInjector(reader, _plugin(reader, pack_path))
    prompt = "The capital of France is"
    answer = inj.generate(prompt, max_new_tokens=1)
    with torch.no_grad():
        b = inj.build([prompt]).inputs
        logits = reader.model(**b.model_kwargs()).logits[0, -1]
    assert answer == reader.tokenizer.decode([int(logits.argmax())])


def test_leave_one_out_matches_separate_passes(reader, pack_path):
    inj = PluginInjector(reader, _plugin(reader, pack_path))
    prompt, answer = "Nigeria borders Niger and China borders", " India"
    loo = inj.leave_one_out(prompt, answer)
    assert [i.entity for i in loo.injected] == ["Nigeria", "Niger", "China"]
    a = inj._answer_ids([answer])
    with torch.no_grad():
        full = float(inj.logprob_rows(inj.build([prompt], a), a)[0])
        no_china = float(inj.logprob_rows(inj.build([prompt], a, drop=[{2}]), a)[0])
    assert loo.logp_all == pytest.approx(full, abs=1e-4)
    assert loo.injected[2].loo_delta == pytest.approx(full - no_china, abs=1e-4)
    assert loo.logp_none == pytest.approx(float(reader.answer_logprob(prompt, answer)), abs=1e-4)
    rec = inj.explain(prompt, max_new_tokens=3)
    assert rec["answer_without_plugin"] == reader.generate(prompt, max_new_tokens=3)
    assert [i["entity"] for i in rec["injected"]] == ["Nigeria", "Niger", "China"]
    assert all(isinstance(i["loo_delta"], float) for i in rec["injected"])


def test_two_plugins_longest_mention_wins(reader, tmp_path, pack_path):
    from engine.mechanisms.plugins.entities import import_triples
    from tests.engine.test_plugins_fixtures import write_jsonl

    other = tmp_path / "other"
    other.mkdir()
    with Pack.create(other / "o.plugmem") as pack:
        import_triples(pack, [write_jsonl(other / "t.jsonl", [
            {"head": "Spain Square", "relation": "r", "tail": "x"},  # longer than geo's "Spain"
            {"head": "Rice", "relation": "r", "tail": "y"}])])
    geo = _plugin(reader, pack_path, name="geo")
    food = _plugin(reader, other / "o.plugmem", seed=1, name="food")
    inj = PluginInjector(reader, [geo, food])
    got = [(i.mention, i.plugin) for i in inj.link("Rice is sold on Spain Square and in China.")]
    assert got == [("Rice", "food"), ("Spain Square", "food"), ("China", "geo")]


def test_save_load_roundtrip_and_refusals(reader, tmp_path, pack_path):
    from engine.reader.tiny import make_tiny_reader

    plugin = _plugin(reader, pack_path)
    folder = plugin.save(tmp_path / "plug")
    assert {p.name for p in folder.iterdir()} == {"config.json", "model.safetensors", "entities.json"}
    with Pack.open(pack_path, readonly=True) as pack:
        again = load_plugin(folder, reader, pack)
    ids = plugin.embeddings.entity_ids.tolist()
    assert torch.allclose(again.vectors(ids, reader.device), plugin.vectors(ids, reader.device))
    assert again.linker().link("Nippon")[0].entity_id == plugin.linker().link("Japan")[0].entity_id
    with pytest.raises(PluginError, match="was trained for the reader 'tiny-llama-seed0', not the loaded reader 'tiny-llama-seed1'"):
        load_plugin(folder, make_tiny_reader(1))
    from engine.mechanisms.plugins.entities import import_triples
    from tests.engine.test_plugins_fixtures import write_jsonl

    with Pack.create(tmp_path / "x.plugmem") as other:
        import_triples(other, [write_jsonl(tmp_path / "x.jsonl", [{"head": "Mars", "relation": "r", "tail": "x"}])])
        with pytest.raises(PluginError, match="made for another entity set"):
            load_plugin(folder, reader, other)
    import json

    good = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    for version, message in (("two", "format_version 'two' is not a number"), (None, "format_version None is not a number"),
                             (99, "format version 99 is newer than this program")):
        (folder / "config.json").write_text(json.dumps({**good, "format_version": version}), encoding="utf-8")
        with pytest.raises(PluginError, match=message):  # a PluginError with the file, not a ValueError
            load_plugin(folder, reader)
    (folder / "config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(PluginError, match="does not describe a knowledge plugin"):
        load_plugin(folder, reader)
    with pytest.raises(PluginError, match="no config.json"):
        load_plugin(tmp_path / "nowhere", reader)


def test_embedding_dimension_must_fit_the_mapping(reader, pack_path):
    plugin = _plugin(reader, pack_path)
    wrong = EntityEmbeddings(plugin.embeddings.entity_ids, plugin.embeddings.names,
                             np.zeros((len(plugin.embeddings), 5), np.float32))
    with pytest.raises(PluginError, match="dimension 5, the mapping expects 8"):
        KnowledgePlugin(plugin.mapping, wrong, reader_fingerprint=reader.fingerprint)
