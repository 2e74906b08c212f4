"""`plugmem pkm grow | usage | eval` and `--pkm DIR` on predict, on the tiny reader: human output,
--json, and bad input as one line with status 2."""
from __future__ import annotations

import json

import pytest

from engine.cli import main
from engine.reader.tiny import make_tiny_reader

from .test_pkm import write_corpus

SMALL = ["--slots", "256", "--heads", "2", "-k", "4", "--key-dim", "16", "--seq-len", "32", "--batch", "2",
         "--device", "cpu"]


def run(capsys, *args):
    code = main([str(a) for a in args])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


@pytest.fixture(scope="module")
def reader_dir(tmp_path_factory):
    return make_tiny_reader(seed=0).save(tmp_path_factory.mktemp("tiny") / "reader")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def other_dir(tmp_path_factory):
    return make_tiny_reader(seed=1).save(tmp_path_factory.mktemp("other") / "reader")


@pytest.fixture(scope="module")
def grown(corpus, reader_dir, tmp_path_factory):
    """One layer grown through the CLI for the module (its human output kept)."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("grown") / "layer"
    buf, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(err):
        code = main([str(a) for a in ("pkm", "grow", corpus, "--out", out, "--reader", reader_dir, "--steps", "3", *SMALL)])
    assert code == 0, err.getvalue()
    return out, buf.getvalue()


def test_grow_usage_and_eval_speak_plain_words(capsys, grown, corpus, reader_dir):
    out, text = grown
    assert text.startswith("grew 3 steps in ") and "256 slots at layer 1" in text
    assert "held-out perplexity: " in text and "without the layer" in text and "of slots used" in text
    assert "Traceback" not in text and (out / "model.safetensors").is_file()

    code, text, err = run(capsys, "pkm", "usage", out, "--text", corpus, "--reader", reader_dir, "--seq-len", "32")
    assert code == 0, err
    assert text.startswith(f"memory usage of {out} (256 slots, layer 1) over ") and "KL to uniform" in text
    assert "slots holding 50 / 90 / 99 %" in text
    code, text, err = run(capsys, "pkm", "usage", out, "--text", corpus, "--reader", reader_dir, "--json")
    d = json.loads(text)
    assert code == 0 and 0 < d["usage"]["used"] <= 1 and d["documents"] == 12

    code, text, err = run(capsys, "pkm", "eval", out, "--text", corpus, "--reader", reader_dir, "--heldout")
    assert code == 0, err
    assert text.startswith("perplexity over ") and "of 2 held-out documents: " in text and "with it (" in text
    code, text, _ = run(capsys, "pkm", "eval", out, "--text", corpus, "--reader", reader_dir, "--json")
    d = json.loads(text)
    assert d["documents"] == 12 and d["perplexity_with"] > 0 and d["perplexity_without"] > 0


def test_predict_with_pkm_says_the_layer_was_active(capsys, grown, reader_dir):
    out, _ = grown
    code, text, err = run(capsys, "predict", "The chemical symbol of gold is", "--mode", "none", "--reader", reader_dir,
                          "--max-new-tokens", "2", "--pkm", out, "--json")
    assert code == 0, err
    d = json.loads(text)
    assert d["mechanisms"][0] == "pkm" and d["pkm"] == str(out)
    assert d["pkm_layer"] == {"folder": str(out), "layer": 1, "slots": 256, "placement": "beside"}
    # the slots it read most for the answer, heaviest first, each with 5 top tokens
    slots = d["pkm_slots"]
    assert slots and all(len(s["tokens"]) == 5 and 0 <= s["slot"] < 256 for s in slots)
    assert [s["weight"] for s in slots] == sorted((s["weight"] for s in slots), reverse=True)
    plain = json.loads(run(capsys, "predict", "The chemical symbol of gold is", "--mode", "none", "--reader", reader_dir,
                           "--max-new-tokens", "2", "--json")[1])
    assert d["answers_without_pkm"]["answer"] == plain["answer"] and plain["pkm_layer"] is None
    code, text, err = run(capsys, "predict", "The chemical symbol of gold is", "--mode", "none", "--reader", reader_dir,
                          "--max-new-tokens", "2", "--pkm", out)
    assert code == 0 and f"product-key memory: {out} (layer 1, 256 slots)" in text
    assert "without the product-key memory:" in text and "slots it read most" in text


@pytest.mark.parametrize("args, match", [
    (["pkm", "grow", "{corpus}", "--out", "{tmp}/x", "--slots", "1000"], "slots must be a square number"),
    (["pkm", "grow", "{one}", "--out", "{tmp}/x", "--reader", "{reader}"], "too few to split"),
    (["pkm", "grow", "{tmp}/nowhere.txt", "--out", "{tmp}/x", "--reader", "{reader}"], "nowhere.txt: no such file"),
    (["pkm", "grow", "{corpus}", "--out", "{tmp}/x", "--layer", "9", "--reader", "{reader}"],
     "layer 9 is out of range: the reader has layers 0 to 1"),
    (["pkm", "usage", "{tmp}", "--text", "{corpus}", "--reader", "{reader}"], "is not a product-key memory folder"),
    (["pkm", "eval", "{layer}", "--text", "{corpus}", "--reader", "{other}"], "trained for the reader"),
    (["predict", "Gold is", "--mode", "none", "--reader", "{reader}", "--pkm", "{tmp}/none"], "folder not found"),
])
def test_bad_input_is_one_line_and_status_2(capsys, grown, corpus, reader_dir, other_dir, tmp_path, args, match):
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"text": "Gold is Au.", "title": "Gold"}) + "\n", encoding="utf-8")
    subs = {"{corpus}": corpus, "{one}": one, "{tmp}": tmp_path, "{reader}": reader_dir, "{other}": other_dir,
            "{layer}": grown[0]}
    filled = []
    for arg in args:
        for k, v in subs.items():
            arg = arg.replace(k, str(v))
        filled.append(arg)
    code, text, err = run(capsys, *filled)
    errors = [line for line in err.splitlines() if line.startswith("plugmem: error:")]
    # progress lines may come first (stderr is not a terminal here); the error is one line, the last
    assert code == 2 and len(errors) == 1 and match in errors[0] and err.strip().endswith(errors[0]), err
    assert "Traceback" not in err


def test_eval_with_pkm_names_the_layer(capsys, grown, reader_dir, tmp_path):
    probes = tmp_path / "probes.jsonl"
    probes.write_text(json.dumps({"prompt": "The chemical symbol of gold is", "answer": "Au", "relation": "symbol"})
                      + "\n", encoding="utf-8")
    out, _ = grown
    code, text, err = run(capsys, "eval", probes, "--mode", "none", "--reader", reader_dir, "--pkm", out,
                          "--no-paraphrases")
    assert code == 0, err
    assert f"product-key memory: {out} (part of the reader for every answer)" in text and "accuracy" in text
    code, text, err = run(capsys, "eval", probes, "--mode", "none", "--reader", reader_dir, "--pkm", out,
                          "--no-paraphrases", "--json")
    assert code == 0 and json.loads(text)["pkm"] == str(out)
