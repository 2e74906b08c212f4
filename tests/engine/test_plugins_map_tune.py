"""Map-tuning: the job learns, holds entities out, checkpoints, resumes; evaluation runs on held-out entities."""
from __future__ import annotations

import json

import pytest
import torch

from engine.mechanisms.plugins.errors import PluginError
from engine.mechanisms.plugins.map_tune import Example, batch_losses, make_examples, map_tune
from engine.mechanisms.plugins.attach import build_inputs_embeds
from engine.mechanisms.plugins.io import load_plugin
from engine.mechanisms.plugins.transe import train_transe
from engine.progress import JobCancelled
from engine.store import Pack
from tests.engine.test_plugins_fixtures import make_pack


@pytest.fixture(scope="module")
def reader():
    from engine.reader.tiny import make_tiny_reader

    return make_tiny_reader(0)


@pytest.fixture
def pack_path(tmp_path):
    path = make_pack(tmp_path)
    train_transe({"pack": str(path), "dim": 16, "epochs": 30, "batch": 8})
    return path


def _cfg(pack_path, **kw):
    return {"pack": str(pack_path), "holdout_entities": ["Kenya"], "val_fraction": 0.2, "batch": 8, "lr": 0.01,
            "max_steps": 12, "eval_every": 4, "patience": 10, "checkpoint_every": 2, "seed": 0, **kw}


def _full_losses(reader, plugin, batch, inject):
    """Reference: the whole sentences through the reader in one pass (no prefix cache)."""
    emb = reader.model.get_input_embeddings()
    ir = [i for i, e in enumerate(batch) for _ in e.ins_tok] if inject else []
    it = [t for e in batch for t in e.ins_tok] if inject else []
    ents = [x for e in batch for x in e.ins_ent] if inject else []
    vec = plugin.vectors(ents, reader.device) if ents else torch.zeros(0, reader.hidden_size)
    b = build_inputs_embeds(emb, [e.ids for e in batch], torch.tensor(ir, dtype=torch.long),
                            torch.tensor(it, dtype=torch.long), vec, 2)
    h = reader.model.model(**b.model_kwargs()).last_hidden_state
    out = []
    for attr in ("mention_tgt", "fact_tgt"):
        pairs = [(i, t) for i, e in enumerate(batch) for t in getattr(e, attr) if t >= 1]
        cols = [int(b.token_col[i, t]) - 1 for i, t in pairs]
        lg = reader.model.lm_head(h[[i for i, _ in pairs], cols])
        out.append(float(torch.nn.functional.cross_entropy(lg, torch.tensor([batch[i].ids[t] for i, t in pairs]))))
    return out


def test_examples_and_prefix_cached_losses_match_a_full_pass(reader, pack_path):
    from engine.mechanisms.plugins.embeddings import EntityEmbeddings
    from engine.mechanisms.plugins.entities import EntityLinker
    from engine.mechanisms.plugins.module import KnowledgePlugin

    with Pack.open(pack_path, readonly=True) as pack:
        linker = EntityLinker.from_pack(pack)
        emb = EntityEmbeddings.load(pack_path.with_name(pack_path.name + ".embeddings"))
    plugin = KnowledgePlugin.create(reader, emb)
    texts = ["Spain borders France.", "The capital of France is Paris.", "According to the atlas, Japan lies in Asia.",
             "Nothing here."]
    pairs = make_examples(reader.tokenizer, texts, linker, lambda e: True, max_tokens=48, with_facts=True)
    assert len(pairs) == 3  # the sentence without a mention gives no example
    ex = pairs[1][0]
    tok = reader.tokenizer.convert_ids_to_tokens(ex.ids)
    assert [tok[t] for t in ex.mention_tgt] == ["ĠFrance"] and tok[ex.ins_tok[0]] == "ĠFrance"
    assert "".join(tok[t] for t in ex.fact_tgt).replace("Ġ", " ") == " is Paris."
    short = make_examples(reader.tokenizer, texts, linker, lambda e: True, max_tokens=48, with_facts=False)
    assert short[1][0].ids == ex.ids[: ex.mention_tgt[-1] + 1] and short[1][0].fact_tgt == []
    batch = [p[0] for p in pairs]
    with torch.no_grad():
        for inject in (True, False):
            lm, lf, nm, nf = batch_losses(reader, plugin, batch, inject=inject, context_only=True)
            assert [float(lm), float(lf)] == pytest.approx(_full_losses(reader, plugin, batch, inject), abs=1e-4)
            assert nm == 3 and nf > 0  # "Spain" at position 0 has no left context: left out


def test_map_tuning_learns_and_saves_a_plugin(reader, pack_path):
    events = []
    res = map_tune(_cfg(pack_path, max_steps=40, epochs=40, eval_every=10, lr=0.02), reader=reader,
                   progress=lambda f, m="", **kw: events.append(kw))
    assert res["steps_done"] == 40 and res["entities"]["held_out"] == 1
    first, last = res["train_losses"][0][1], res["train_losses"][-1][1]
    assert last < first - 1.0, res["train_losses"]
    assert res["best_val_loss"] < res["val_losses"][0][1] or res["best_step"] == res["val_losses"][0][0]
    assert any("loss" in e for e in events) and any("val_loss" in e for e in events)
    out = pack_path.with_name(pack_path.name + ".plugin")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["training"]["best_step"] == res["best_step"]
    with Pack.open(pack_path, readonly=True) as pack:
        plugin = load_plugin(out, reader, pack)
        kenya = [e["id"] for e in pack.entities() if e["name"] == "Kenya"][0]
    assert plugin.has(kenya)  # held out from training, still injectable: its embedding came from TransE
    with pytest.raises(PluginError, match="already holds a trained plugin; not overwritten"):
        (out / "checkpoint.pt").unlink()
        map_tune(_cfg(pack_path), reader=reader)


def test_held_out_entities_are_never_trained_on(reader, pack_path):
    seen = []
    import engine.mechanisms.plugins.map_tune as mt

    real = mt.batch_losses

    def spy(reader_, plugin, batch, **kw):
        if kw.get("inject", True):
            seen.extend(e for ex in batch for e in ex.ins_ent)
        return real(reader_, plugin, batch, **kw)

    mt.batch_losses = spy
    try:
        res = map_tune(_cfg(pack_path, holdout_entities=["Kenya", "Japan"], max_steps=6), reader=reader)
    finally:
        mt.batch_losses = real
    with Pack.open(pack_path, readonly=True) as pack:
        held = {e["id"] for e in pack.entities() if e["name"] in ("Kenya", "Japan")}
    assert seen and not held & set(seen)
    assert res["entities"]["held_out"] == 2


def test_cancel_and_resume(reader, pack_path):
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] > 5

    with pytest.raises(JobCancelled, match="map-tune cancelled at step 5/12"):
        map_tune(_cfg(pack_path), reader=reader, should_stop=stop)
    res = map_tune(_cfg(pack_path), reader=reader)
    assert res["resumed_from"] == 5 and res["steps_done"] == 12
    uninterrupted = map_tune(_cfg(pack_path, out=str(pack_path.parent / "u")), reader=reader)
    assert [v for _, v in res["val_losses"]] == pytest.approx([v for _, v in uninterrupted["val_losses"]], abs=1e-4)
    with pytest.raises(PluginError, match="checkpoint of another map-tuning run"):
        (pack_path.parent / "u" / "config.json").unlink()
        map_tune(_cfg(pack_path, out=str(pack_path.parent / "u"), lr=0.5), reader=reader)


def test_bad_configs(reader, pack_path, tmp_path):
    with pytest.raises(PluginError, match="held-out entity 'Atlantis' is not an entity"):
        map_tune(_cfg(pack_path, holdout_entities=["Atlantis"]), reader=reader)
    with pytest.raises(PluginError, match="unknown field"):
        map_tune({"pack": str(pack_path), "epochz": 3}, reader=reader)
    with pytest.raises(PluginError, match="no entity embeddings here"):
        map_tune(_cfg(pack_path, embeddings=str(tmp_path / "none")), reader=reader)
    probes = tmp_path / "p.jsonl"
    probes.write_text(json.dumps({"prompt": "x", "answer": "y", "relation": "r", "subject": "Mars",
                                  "split": "heldout_entity"}) + "\n")
    with pytest.raises(PluginError, match=r"p\.jsonl:1: held-out entity 'Mars'"):
        map_tune(_cfg(pack_path, holdout_entities=[], holdout_probes=[str(probes)]), reader=reader)


def test_evaluation_on_held_out_entities(reader, pack_path, tmp_path):
    from engine.evaluate.plugins import evaluate_probes, format_table, heldout_mention_loss, load_probes
    from engine.mechanisms.plugins.attach import PluginInjector

    map_tune(_cfg(pack_path, max_steps=4), reader=reader)
    probes = tmp_path / "probes.jsonl"
    probes.write_text("".join(json.dumps(r) + "\n" for r in [
        {"prompt": "The capital of Kenya is", "answer": "Nairobi", "relation": "capital", "subject": "Kenya",
         "split": "heldout_entity", "paraphrases": ["Kenya's capital city is"]},
        {"prompt": "Kenya is a country in", "answer": "Africa", "relation": "region", "subject": "Kenya",
         "split": "heldout_entity"},
        {"prompt": "The capital of France is", "answer": "Paris", "relation": "capital", "subject": "France",
         "split": "heldout_relation"},
    ]))
    ps = load_probes(probes, ["heldout_entity"], paraphrases=True)
    assert len(ps) == 3 and ps[1]["paraphrase"]
    with Pack.open(pack_path, readonly=True) as pack:
        plugin = load_plugin(pack_path.with_name(pack_path.name + ".plugin"), reader, pack)
        kenya = {e["id"] for e in pack.entities() if e["name"] == "Kenya"}
        ml = heldout_mention_loss(reader, plugin, pack, kenya)
    assert ml["sentences"] == 3 and ml["mention_loss_plugin"] > 0 and ml["mention_loss_reader"] > 0
    report = evaluate_probes(PluginInjector(reader, plugin), ps)
    assert report["per_relation"]["capital"]["n"] == 2 and report["per_relation"]["capital"]["linked"] == 1.0
    row = report["probes"][0]
    assert row["answer_reader"] == reader.generate(row["prompt"], max_new_tokens=len(
        reader.tokenizer(" Nairobi", add_special_tokens=False)["input_ids"]) + 1)
    assert row["correct_reader"] is False  # a random tiny reader does not know Nairobi
    assert "| capital | 2 | 1.00 |" in format_table(report)


def test_a_checkpoint_of_an_earlier_version_is_refused_not_misread(reader, pack_path):
    out = pack_path.parent / "old.plugin"
    out.mkdir()
    torch.save({"mapping": {}, "step": 3, "bad_evals": 0}, str(out / "checkpoint.pt"))  # the pre-loop layout
    with pytest.raises(PluginError, match=r"checkpoint\.pt was written by an earlier version of map-tuning.*--force"):
        map_tune(_cfg(pack_path, out=str(out)), reader=reader)
    res = map_tune(_cfg(pack_path, out=str(out), force=True, max_steps=2), reader=reader)
    assert res["steps_done"] == 2 and res["resumed_from"] == 0
