"""A packaged install loads the default reader from its bundled copy, not from the GGUF."""
from __future__ import annotations

import json

import pytest

from engine.reader import ReaderError, load_reader
from engine.reader.tiny import make_tiny_reader
from engine.reader.reader import BUNDLE_INFO, ENV_BUNDLED_READER, default_tokenizer


def test_bundled_reader_is_used_with_its_recorded_digest(tmp_path, monkeypatch):
    tiny = make_tiny_reader(seed=3)
    folder = tiny.save(tmp_path / "reader")
    (folder / BUNDLE_INFO).write_text(json.dumps({"name": "SmolLM2-135M-Instruct", "weights_sha256": "ab" * 32}))
    monkeypatch.setenv(ENV_BUNDLED_READER, str(folder))
    reader = load_reader()
    assert reader.fingerprint["weights_sha256"] == "ab" * 32
    assert reader.fingerprint["name"] == "SmolLM2-135M-Instruct"
    assert default_tokenizer().vocab_size == tiny.tokenizer.vocab_size


def test_broken_bundle_description_is_reported(tmp_path, monkeypatch):
    folder = tmp_path / "reader"
    folder.mkdir()
    (folder / BUNDLE_INFO).write_text("{not json")
    monkeypatch.setenv(ENV_BUNDLED_READER, str(folder))
    with pytest.raises(ReaderError, match="bundled reader"):
        load_reader()
