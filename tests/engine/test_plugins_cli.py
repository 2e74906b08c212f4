"""The knowledge-plugin commands: triples import, entities, embeddings import, train-transe, map-tune."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from engine.cli import main
from tests.engine.test_plugins_fixtures import triples, write_jsonl


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def pack(tmp_path, capsys):
    from engine.store import Pack

    p = tmp_path / "geo.plugmem"
    with Pack.create(p) as pk:
        pk.add_many([{"text": "The capital of France is Paris."}, {"text": "Spain borders France."},
                     {"text": "The capital of Japan is Tokyo."}, {"text": "China borders India."},
                     {"text": "Kenya is a country in Africa."}, {"text": "The capital of Spain is Madrid."}])
    code, out, _ = _run(capsys, "triples", "import", p, write_jsonl(tmp_path / "t.jsonl", triples()), "--json")
    assert code == 0 and json.loads(out)["entities_added"] == 10
    return p


def test_triples_import_list_and_entities(pack, tmp_path, capsys):
    code, out, _ = _run(capsys, "triples", "import", pack, tmp_path / "t.jsonl")
    assert code == 0 and "added 0 triples" in out and "duplicates skipped" in out
    code, out, _ = _run(capsys, "triples", "list", pack, "--entity", "Nippon")
    assert code == 0 and "Japan  --capital-->  Tokyo" in out
    code, out, _ = _run(capsys, "entities", pack, "--json")
    names = [e["name"] for e in json.loads(out)["entities"]]
    assert names == sorted(names) and "Nigeria" in names
    code, out, _ = _run(capsys, "entities", pack, "France")
    assert "aliases: French Republic" in out and "borders: Spain" in out and "<- Spain borders" in out


def test_bad_input_exits_2_with_one_line(pack, tmp_path, capsys):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"head": "A", "relation": "r", "tail": "x", "head_aliases": ["Spain"]}])
    code, out, err = _run(capsys, "triples", "import", pack, bad)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "bad.jsonl:1: duplicate name 'Spain'" in err
    code, _, err = _run(capsys, "entities", pack, "Atlantis")
    assert code == 2 and "no entity named 'Atlantis'" in err
    code, _, err = _run(capsys, "map-tune", pack)
    assert code == 2 and "no entity embeddings here" in err


def test_embeddings_import_and_wrong_dimension(pack, tmp_path, capsys):
    from engine.store import Pack

    with Pack.open(pack, readonly=True) as pk:
        names = [e["name"] for e in pk.entities()]
    np.save(tmp_path / "e.npy", np.ones((len(names), 6), dtype=np.float32))
    (tmp_path / "ids.txt").write_text("\n".join(names), encoding="utf-8")
    code, _, err = _run(capsys, "embeddings", "import", pack, tmp_path / "e.npy", "--ids", tmp_path / "ids.txt",
                        "--dim", "64")
    assert code == 2 and "dimension 6, expected 64" in err
    code, out, _ = _run(capsys, "embeddings", "import", pack, tmp_path / "e.npy", "--ids", tmp_path / "ids.txt", "--json")
    assert code == 0 and json.loads(out)["dim"] == 6
    code, _, err = _run(capsys, "embeddings", "import", pack, tmp_path / "e.npy", "--ids", tmp_path / "ids.txt")
    assert code == 2 and "not overwritten" in err


def test_train_transe_then_map_tune_then_eval_plugin(pack, tmp_path, capsys):
    from engine.reader.tiny import make_tiny_reader

    code, out, _ = _run(capsys, "train-transe", pack, "--dim", "8", "--epochs", "5", "--json")
    res = json.loads(out)
    assert code == 0 and res["epochs_done"] == 5 and len(res["losses"]) == 5
    reader_dir = make_tiny_reader(0).save(tmp_path / "tiny-reader")
    code, out, err = _run(capsys, "map-tune", pack, "--reader", reader_dir, "--max-steps", "2", "--batch", "2",
                          "--holdout-entities", "Kenya", "--val-fraction", "0.3", "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["steps_done"] == 2 and res["entities"]["held_out"] == 1
    assert (pack.parent / "geo.plugmem.plugin" / "model.safetensors").is_file()
    # `plugmem eval-plugin` (was `python -m engine.plugins.evaluate`) on the held-out entity
    probes = write_jsonl(tmp_path / "probes.jsonl", [
        {"prompt": "The capital of Kenya is", "answer": "Nairobi", "relation": "capital", "subject": "Kenya",
         "split": "heldout_entity"},
        {"prompt": "The capital of France is", "answer": "Paris", "relation": "capital", "subject": "France",
         "split": "heldout_relation"}])
    code, out, err = _run(capsys, "eval-plugin", pack, "--probes", probes, "--reader", reader_dir,
                          "--report", tmp_path / "report.json")
    assert code == 0, err
    assert "| capital | 1 | 1.00 |" in out and "held-out mention loss: plugin" in out, out
    report = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    assert [p["subject"] for p in report["probes"]] == ["Kenya"] and report["mention_loss"]["sentences"] == 1
    code, out, _ = _run(capsys, "eval-plugin", pack, "--probes", probes, "--reader", reader_dir,
                        "--mention-sentences", "0", "--json")
    assert code == 0 and json.loads(out)["overall"]["n"] == 1 and json.loads(out)["mention_loss"] == {}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "The capital of Kenya is"}\n', encoding="utf-8")
    code, out, err = _run(capsys, "eval-plugin", pack, "--probes", bad, "--reader", reader_dir)
    assert code == 2 and out == "" and err.count("\n") == 1 and "bad.jsonl:1" in err, err
    code, _, err = _run(capsys, "eval-plugin", tmp_path / "none.plugmem", "--probes", probes)
    assert code == 2 and err.strip() == f"plugmem: error: {tmp_path / 'none.plugmem'}: no such pack", err
    code, _, err = _run(capsys, "eval-plugin", pack, "--probes", probes, "--plugin", tmp_path)
    assert code == 2 and err.count("\n") == 1 and str(tmp_path) in err, err


def test_add_parsers_adds_the_commands_to_a_parser_with_common_options():
    from engine.cli.plugins import add_parsers

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true")
    common.add_argument("-q", "--quiet", action="store_true")
    p = argparse.ArgumentParser(prog="plugmem")
    sub = p.add_subparsers(dest="cmd", required=True)
    add_parsers(sub, common)
    a = p.parse_args(["triples", "import", "x.plugmem", "t.jsonl", "--json"])
    assert a.json and a.files == ["t.jsonl"] and callable(a.fn)
    a = p.parse_args(["map-tune", "x.plugmem", "--fact-weight", "0.5", "--holdout-probes", "p.jsonl"])
    assert a.fact_weight == 0.5 and a.holdout_probes == ["p.jsonl"]
    for cmd in (["train-transe", "x"], ["entities", "x"], ["embeddings", "import", "x", "e.npy"], ["triples", "list", "x"]):
        assert callable(p.parse_args(cmd).fn)

