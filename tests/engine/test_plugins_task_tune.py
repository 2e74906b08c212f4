"""Task-specific map-tuning: answer-only loss, learning, cancel/resume, artefact, bad input; and the probe scores."""
from __future__ import annotations

import json

import pytest
import torch

from engine.evaluate.plugin_scores import compare, score_answers, sign_test
from engine.mechanisms.plugins.errors import PluginError
from engine.mechanisms.plugins.attach import PluginInjector
from engine.mechanisms.plugins.io import load_plugin, read_plugin_config
from engine.mechanisms.plugins.module import KnowledgePlugin
from engine.mechanisms.plugins.task_tune import (TaskExample, answer_loss, build_examples, mean_answer_loss,
                                                 relation_templates, split_examples, task_tune)
from engine.mechanisms.plugins.transe import train_transe
from engine.progress import JobCancelled
from engine.store import Pack
from tests.engine.test_plugins_fixtures import COUNTRIES, make_pack, write_jsonl


@pytest.fixture(scope="module")
def reader():
    from engine.reader.tiny import make_tiny_reader

    return make_tiny_reader(0)


def _probes(tmp_path):
    recs = [{"prompt": "The capital of France is", "answer": "Paris", "relation": "capital", "subject": "France",
             "paraphrases": ["France's capital city is"]},
            {"prompt": "According to the atlas, Spain lies in", "answer": "Europe", "relation": "region",
             "subject": "Spain"}]
    return write_jsonl(tmp_path / "probes.jsonl", recs)


@pytest.fixture
def setup(tmp_path):
    path = make_pack(tmp_path, with_facts=False)
    train_transe({"pack": str(path), "dim": 16, "epochs": 5, "batch": 8})
    return path, _probes(tmp_path)


def _cfg(pack, probes, **kw):
    return {"pack": str(pack), "probes": [str(probes)], "start": "none", "holdout_entities": ["Kenya"],
            "val_fraction": 0.2, "fact_fraction": 0.2, "batch": 8, "lr": 0.02, "max_steps": 10, "eval_every": 5,
            "patience": 10, "checkpoint_every": 2, "seed": 0, "warmup_steps": 1} | kw


def test_templates_and_examples_come_from_probes_and_triples(setup):
    pack_path, probes = setup
    t = relation_templates([probes])
    assert t == {"capital": ["The capital of {subject} is"], "region": ["According to the atlas, {subject} lies in"]}
    assert relation_templates([probes], wordings="all")["capital"] == ["The capital of {subject} is",
                                                                         "{subject}'s capital city is"]
    with Pack.open(pack_path, readonly=True) as pack:
        exs, used, skipped = build_examples(pack, t)
        ids = {e["name"]: int(e["id"]) for e in pack.entities()}
    assert used == ["capital", "region"] and skipped == ["borders"]  # borders has no question template
    assert TaskExample("The capital of Japan is", "Tokyo", ids["Japan"], "capital") in exs
    train, val_e, val_f, val_ents = split_examples(exs, {ids["Kenya"]}, set(ids.values()), val_fraction=0.2,
                                                   fact_fraction=0.2, seed=0)
    assert not any(ex.entity_id == ids["Kenya"] for ex in train + val_e + val_f)  # held out: never a question
    assert {ex.entity_id for ex in val_e} == val_ents and not val_ents & {ex.entity_id for ex in train + val_f}
    assert val_f and not {(e.entity_id, e.relation) for e in val_f} & {(e.entity_id, e.relation) for e in train}


def test_the_loss_is_on_the_answer_tokens_only(reader, setup):
    pack_path, _ = setup
    from engine.mechanisms.plugins.embeddings import EntityEmbeddings

    emb = EntityEmbeddings.load(pack_path.with_name(pack_path.name + ".embeddings"))
    with Pack.open(pack_path, readonly=True) as pack:
        plugin = KnowledgePlugin.create(reader, emb, aliases={int(e["id"]): e["aliases"] for e in pack.entities()})
    inj = PluginInjector(reader, plugin)
    a = inj._answer_ids([" Paris"])
    loss, n = answer_loss(inj, ["The capital of France is"], a)
    assert n == len(a[0])
    # Reference: the whole row through the reader, cross-entropy on the answer positions only.
    b = inj.build(["The capital of France is"], a)
    logits = reader.model(**b.inputs.model_kwargs()).logits[0]
    cols = [int(b.inputs.token_col[0, b.prompt_lens[0] + j]) - 1 for j in range(n)]
    ref = torch.nn.functional.cross_entropy(logits[cols].float(), torch.tensor(a[0]))
    assert float(loss.detach()) == pytest.approx(float(ref.detach()), abs=1e-4)
    # Another prompt of the same answer changes the loss; another answer changes it: both are read, only one is scored.
    other = answer_loss(inj, ["The capital of France is"], inj._answer_ids([" Rome"]))[0].detach()
    assert float(other) != pytest.approx(float(loss.detach()))
    loss.backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in plugin.mapping.parameters())
    assert all(p.grad is None for p in reader.model.parameters())  # the reader is frozen


def test_task_tuning_lowers_the_answer_loss_and_saves_a_loadable_plugin(reader, setup):
    pack_path, probes = setup
    res = task_tune(_cfg(pack_path, probes), reader=reader)
    assert res["relations"] == ["capital", "region"] and res["skipped_relations"] == ["borders"]
    assert res["examples"]["train"] > 0 and res["examples"]["subject_not_linked"] == 0
    first, last = res["train_losses"][0][1], res["train_losses"][-1][1]
    assert last < first  # held-in loss goes down
    out = pack_path.with_name(pack_path.name + ".task-plugin")
    meta = read_plugin_config(out)
    assert meta["format_version"] == 1 and meta["training"]["objective"] == "task"
    with Pack.open(pack_path, readonly=True) as pack:
        plugin = load_plugin(out, reader, pack)  # the ordinary plugin loader reads it
    inj = PluginInjector(reader, plugin)
    held_in = [TaskExample(f"The capital of {n} is", c, 0, "capital") for n, (_, c, _, _) in COUNTRIES.items()
               if n != "Kenya"]
    assert mean_answer_loss(inj, held_in) < res["val_loss_without_plugin"] + 10  # finite, computed
    again = task_tune(_cfg(pack_path, probes), reader=reader)  # the finished run's checkpoint: nothing to redo
    assert again["resumed_from"] == res["steps_done"] and again["best_val_loss"] == res["best_val_loss"]
    (out / "checkpoint.pt").unlink()
    with pytest.raises(PluginError, match="already holds a trained plugin"):
        task_tune(_cfg(pack_path, probes), reader=reader)


def test_task_tuning_cancels_and_resumes_to_the_same_result(reader, setup, tmp_path):
    pack_path, probes = setup
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] > 4

    a = tmp_path / "a.plugin"
    with pytest.raises(JobCancelled, match="resume"):
        task_tune(_cfg(pack_path, probes, out=str(a)), should_stop=stop, reader=reader)
    assert (a / "checkpoint.pt").is_file() and not (a / "config.json").exists()
    resumed = task_tune(_cfg(pack_path, probes, out=str(a)), reader=reader)
    assert resumed["resumed_from"] == 4
    whole = task_tune(_cfg(pack_path, probes, out=str(tmp_path / "b.plugin")), reader=reader)
    assert resumed["best_val_loss"] == pytest.approx(whole["best_val_loss"], abs=1e-5)
    c = tmp_path / "c.plugin"
    with pytest.raises(JobCancelled):
        task_tune(_cfg(pack_path, probes, out=str(c)), should_stop=lambda: True, reader=reader)
    with pytest.raises(PluginError, match="checkpoint of another task-tuning run"):
        task_tune(_cfg(pack_path, probes, out=str(c), lr=0.5), reader=reader)


def test_task_tuning_starts_from_a_general_plugin(reader, tmp_path):
    from engine.mechanisms.plugins.map_tune import map_tune

    pack_path, probes = make_pack(tmp_path), _probes(tmp_path)
    train_transe({"pack": str(pack_path), "dim": 16, "epochs": 20, "batch": 8})
    map_tune({"pack": str(pack_path), "holdout_entities": ["Kenya"], "val_fraction": 0.2, "batch": 4,
              "max_steps": 2, "eval_every": 2}, reader=reader)
    res = task_tune(_cfg(pack_path, probes, start=None, max_steps=4), reader=reader)
    assert res["started_from"].endswith(".plugin") and res["val_loss_start"] is not None
    meta = read_plugin_config(pack_path.with_name(pack_path.name + ".task-plugin"))
    assert meta["training"]["general"]["config"]["pack"] == str(pack_path)  # what it started from is recorded


def test_bad_input_is_refused_with_a_clear_message(reader, setup, tmp_path):
    pack_path, probes = setup
    with pytest.raises(PluginError, match="relation 'borders' has no probe"):
        task_tune(_cfg(pack_path, probes, relations=["borders"]), reader=reader)
    with pytest.raises(PluginError, match="relation 'population' has no triples"):
        task_tune(_cfg(pack_path, probes, relations=["population"]), reader=reader)
    with pytest.raises(PluginError, match="no probe files"):
        task_tune(_cfg(pack_path, probes) | {"probes": []}, reader=reader)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "The capital of France is", "answer": "Paris"}\n', encoding="utf-8")
    with pytest.raises(PluginError, match=r"bad\.jsonl:1"):
        task_tune(_cfg(pack_path, probes) | {"probes": [str(bad)]}, reader=reader)
    with pytest.raises(PluginError, match="no general plugin to start from"):
        task_tune(_cfg(pack_path, probes, start=str(tmp_path / "missing.plugin")), reader=reader)
    other = write_jsonl(tmp_path / "other.jsonl", [{"prompt": "Gold has the symbol", "answer": "Au",
                                                   "relation": "symbol", "subject": "Gold"}])
    with pytest.raises(PluginError, match="none of the relations"):
        task_tune(_cfg(pack_path, probes) | {"probes": [str(other)]}, reader=reader)
    empty = tmp_path / "empty.plugmem"
    Pack.create(empty).close()
    with pytest.raises(PluginError, match="no triples to build questions from"):
        task_tune(_cfg(empty, probes), reader=reader)
    with pytest.raises(PluginError, match="fact_fraction"):
        task_tune(_cfg(pack_path, probes, fact_fraction=0.7), reader=reader)


def test_an_empty_triples_file_is_refused_by_the_import(tmp_path):
    from engine.mechanisms.plugins.entities import import_triples

    empty = tmp_path / "triples.jsonl"
    empty.write_text("", encoding="utf-8")
    with Pack.create(tmp_path / "p.plugmem") as pack:
        with pytest.raises(Exception, match="triples.jsonl"):
            import_triples(pack, [empty])


def test_scores_match_the_injector_and_the_sign_test(reader, setup):
    pack_path, _ = setup
    from engine.mechanisms.plugins.embeddings import EntityEmbeddings

    emb = EntityEmbeddings.load(pack_path.with_name(pack_path.name + ".embeddings"))
    with Pack.open(pack_path, readonly=True) as pack:
        plugin = KnowledgePlugin.create(reader, emb, aliases={int(e["id"]): e["aliases"] for e in pack.entities()})
    inj = PluginInjector(reader, plugin)
    prompts = ["The capital of France is", "The capital of Japan is", "Spain lies in"]
    answers = ["Paris", "Tokyo", "Europe"]
    for enabled in (True, False):
        sc = score_answers(inj, prompts, answers, enabled=enabled, batch_size=2)
        lp = inj.answer_logprob(prompts, [" " + a for a in answers], enabled=enabled)
        assert [s.logp for s in sc] == pytest.approx(lp.tolist(), abs=1e-4)
        # greedy == generating the answer's tokens exactly; rank 0 == the first token is the top one
        gen = inj.generate(prompts, max_new_tokens=4, enabled=enabled)
        for s, g, a in zip(sc, gen, answers):
            assert s.rank >= 0 and (s.rank == 0) == (s.top1 == inj._answer_ids([" " + a])[0][0])
            if s.greedy:
                assert g.startswith(" " + a)
    assert sign_test(0, 0) == 1.0 and sign_test(5, 5) == 1.0
    assert sign_test(10, 0) == pytest.approx(2 / 2 ** 10)
    c = compare(score_answers(inj, prompts, answers, enabled=False), score_answers(inj, prompts, answers))
    assert c["n"] == 3 and 0 <= c["p_logp"] <= 1 and c["logp_up"] + c["logp_down"] <= 3


# --------------------------------------------------------------------------- the answer slot
def _slot_plugin(reader, pack_path):
    from engine.mechanisms.plugins.answer_slot import SlotPlugin
    from engine.mechanisms.plugins.embeddings import EntityEmbeddings

    emb = EntityEmbeddings.load(pack_path.with_name(pack_path.name + ".embeddings"))
    with Pack.open(pack_path, readonly=True) as pack:
        base = KnowledgePlugin.create(reader, emb, aliases={int(e["id"]): e["aliases"] for e in pack.entities()})
    sp = SlotPlugin.from_plugin(base)
    with torch.no_grad():
        for p in sp.slot_mapping.parameters():
            p.add_(torch.randn_like(p) * 0.5)  # a slot mapping unlike the mention one
    return sp


def test_the_answer_slot_vector_goes_right_after_the_prompt(reader, setup):
    from engine.mechanisms.plugins.answer_slot import AnswerSlotInjector
    from engine.mechanisms.plugins.attach import build_inputs_embeds, mention_tokens, tokens_with_offsets

    pack_path, _ = setup
    sp = _slot_plugin(reader, pack_path)
    inj = AnswerSlotInjector(reader, sp)
    prompts = ["The capital of France is", "Nothing to link here, is it", "Where does Japan lie? In"]
    ans = inj._answer_ids([" Paris", " no", " Asia"])
    got = inj.build(prompts, ans)
    # Reference: the per-row insertions written out, through the plain vectorised builder.
    ids, ends = tokens_with_offsets(reader.tokenizer, prompts)
    ir, it, vecs = [], [], []
    for i, p in enumerate(prompts):
        links = [x for x in inj.link(p) if x.kind == "mention"]
        for x in links:
            ir.append(i)
            it.append(int(mention_tokens(ends[i], [x.start])[0]))
            vecs.append(sp.vectors([x.entity_id], reader.device)[0])
        if links:
            ir.append(i)
            it.append(len(ids[i]))  # before the first answer token
            vecs.append(sp.slot_vectors([links[-1].entity_id], reader.device)[0])
    ref = build_inputs_embeds(reader.model.get_input_embeddings(), [r + a for r, a in zip(ids, ans)],
                              torch.tensor(ir), torch.tensor(it), torch.stack(vecs), int(reader.tokenizer.pad_token_id))
    m = ref.attention_mask.bool()
    W = ref.inputs_embeds.shape[1]
    assert torch.equal(got.inputs.attention_mask[:, -W:], ref.attention_mask)
    assert not got.inputs.attention_mask[:, :-W].any()  # only padding before
    assert torch.allclose(got.inputs.inputs_embeds[:, -W:][m], ref.inputs_embeds[m], atol=1e-6)
    assert torch.equal(got.inputs.position_ids[:, -W:][m], ref.position_ids[m])
    valid = ref.token_col >= 0
    off = got.inputs.inputs_embeds.shape[1] - W
    assert torch.equal(got.inputs.token_col[valid], ref.token_col[valid] + off)
    lp = inj.logprob_rows(got, ans).detach()
    ref_lp = []
    with torch.no_grad():
        h = reader.model(**ref.model_kwargs()).logits.float().log_softmax(-1)
    for i, (row, a) in enumerate(zip(ids, ans)):
        ref_lp.append(sum(float(h[i, int(ref.token_col[i, len(row) + j]) - 1, t]) for j, t in enumerate(a)))
    assert lp.tolist() == pytest.approx(ref_lp, abs=1e-4)
    plain = PluginInjector(reader, sp, slots=False).build(prompts, ans)
    assert not torch.allclose(inj.logprob_rows(plain, ans)[[0, 2]], lp[[0, 2]])  # the slot changes linked rows
    assert float(inj.logprob_rows(plain, ans)[1]) == pytest.approx(float(lp[1]), abs=1e-4)  # and no other


def _save_plain(sp, folder):
    KnowledgePlugin.save(sp, folder)  # a plain (version-1) plugin
    return folder


def test_slot_plugins_round_trip_as_version_2_and_old_plugins_still_load(reader, setup, tmp_path):
    from engine.mechanisms.plugins.answer_slot import load_slot_plugin

    pack_path, _ = setup
    sp = _slot_plugin(reader, pack_path)
    sp.save(tmp_path / "slot.plugin")
    from engine.mechanisms.plugins.answer_slot import SlotPlugin, SlotPluginFiles
    from engine.mechanisms.plugins.io import PluginFiles

    with pytest.raises(PluginError, match="newer than this program reads"):
        PluginFiles.read_config(tmp_path / "slot.plugin")  # a version-1 reader never drops the slot silently
    back = load_plugin(tmp_path / "slot.plugin", reader)  # the one loader: a slot folder gives a SlotPlugin
    assert isinstance(back, SlotPlugin) and SlotPluginFiles.read_config(tmp_path / "slot.plugin")["answer_slot"]
    assert not isinstance(load_plugin(_save_plain(sp, tmp_path / "v1.plugin"), reader), SlotPlugin)
    e = [int(sp.embeddings.entity_ids[0])]
    assert torch.allclose(back.slot_vectors(e, reader.device), sp.slot_vectors(e, reader.device))
    assert torch.allclose(back.vectors(e, reader.device), sp.vectors(e, reader.device))
    old = load_slot_plugin(tmp_path / "v1.plugin", reader)
    assert torch.allclose(old.slot_vectors(e, reader.device), old.vectors(e, reader.device))
    (tmp_path / "slot.plugin" / "config.json").write_text(
        (tmp_path / "slot.plugin" / "config.json").read_text().replace('"format_version": 2', '"format_version": 3'))
    with pytest.raises(PluginError, match="version 3 is newer"):
        load_slot_plugin(tmp_path / "slot.plugin", reader)


def test_task_tuning_with_the_answer_slot_learns_and_saves(reader, setup):
    from engine.mechanisms.plugins.answer_slot import load_slot_plugin

    pack_path, probes = setup
    res = task_tune(_cfg(pack_path, probes, answer_slot=True), reader=reader)
    assert res["train_losses"][-1][1] < res["train_losses"][0][1]
    out = pack_path.with_name(pack_path.name + ".task-plugin")
    assert json.loads((out / "config.json").read_text())["format_version"] == 2
    back = load_slot_plugin(out, reader)
    assert back.training["objective"] == "task" and set(back.training["templates"]) == {"capital", "region"}
    gate = res["gate"]  # calibrated on the training probes' other wording, relation against relation
    assert gate == back.training["gate"] and gate["n_same"] == 1 and back.gate.threshold == gate["threshold"]
    # the same question passes; one of no trained relation is not injected into, and the record says why
    inj = PluginInjector(reader, back)
    assert [x.kind for x in inj.link("The capital of Japan is")] == ["mention", "slot"]
    assert inj.link("Japan's population in millions is") == []
    d = inj.gate_decisions("Japan's population in millions is")[0]
    assert not d.applied and "not applied: the question matches no relation it was trained for (best: " in d.message


# --------------------------------------------------------------------------- the command
def test_the_task_tune_command_prints_what_it_did_and_refuses_bad_input(setup, tmp_path, capsys):
    from engine.cli import main
    from engine.reader.tiny import make_tiny_reader

    pack_path, probes = setup
    reader_dir = make_tiny_reader(0).save(tmp_path / "tiny-reader")
    args = ["task-tune", str(pack_path), "--probes", str(probes), "--start", "none", "--reader", str(reader_dir),
            "--holdout-entities", "Kenya", "--val-fraction", "0.2", "--max-steps", "2", "--batch", "4", "-q"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("task-tuned 2 steps on ") and "questions of 2 relations" in out
    assert "skipped (no probe asks them): borders" in out and "geo.plugmem.task-plugin" in out, out
    assert main(args + ["--out", str(tmp_path / "j.plugin"), "--json", "--max-val", "1"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["steps_done"] == 2 and res["examples"]["validation_entities"] == 1  # a sample of one per split
    assert json.loads((tmp_path / "j.plugin" / "config.json").read_text())["training"]["config"]["max_val"] == 1
    # plugin-gate: off, then calibrated again; a map-tuned plugin has no relations to gate on
    folder = str(tmp_path / "j.plugin")
    assert main(["plugin-gate", folder, "--off"]) == 0 and "relation gate removed" in capsys.readouterr().out
    assert "gate" not in json.loads((tmp_path / "j.plugin" / "config.json").read_text())["training"]
    assert main(["plugin-gate", folder, "--probes", str(probes)]) == 0
    assert "relation gate at similarity" in capsys.readouterr().out
    assert main(["plugin-gate", folder, "--probes", str(probes), "--refuse", "1.5"]) == 2
    assert "--refuse must be in (0, 1]" in capsys.readouterr().err
    cfg = json.loads((tmp_path / "j.plugin" / "config.json").read_text())
    cfg["training"]["objective"] = "mention"
    (tmp_path / "j.plugin" / "config.json").write_text(json.dumps(cfg))
    assert main(["plugin-gate", folder, "--probes", str(probes)]) == 2
    assert "not a task-tuned plugin" in capsys.readouterr().err
    assert main(["plugin-gate", str(tmp_path / "nowhere")]) == 2
    assert "no such plugin folder" in capsys.readouterr().err
    assert main(args + ["--relations", "borders", "--out", str(tmp_path / "x.plugin")]) == 2
    err = capsys.readouterr().err
    assert "relation 'borders' has no probe" in err and len(err.strip().splitlines()) == 1, err
