"""KeyEncoder on the real shipped all-MiniLM-L6-v2 (loaded once for this module)."""
from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from engine.encode import EncoderError, KeyEncoder, default_model_path  # noqa: E402
from engine.encode.weights_hash import cached_sha256  # noqa: E402

pytestmark = pytest.mark.slow

TEXTS = [
    "Paris is the capital of France.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen in the chloroplasts of plant cells.",
    "Hi.",
    "The mitochondrion is the powerhouse of the cell.",
    "Tokyo is the capital of Japan, and its metropolitan area is the most populous in the world.",
    "Gold has the chemical symbol Au.",
    "",
]


@pytest.fixture(scope="module")
def encoder() -> KeyEncoder:
    return KeyEncoder(device="cpu")


def test_shapes_dtype_and_unit_norm(encoder):
    v = encoder.encode(TEXTS)
    assert v.shape == (len(TEXTS), 384) and v.dtype == np.float32 and encoder.dim == 384
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert encoder.encode([]).shape == (0, 384)


def test_order_preserved_and_batching_does_not_change_vectors(encoder):
    calls = []
    together = encoder.encode(TEXTS, batch_size=3, progress=lambda d, t: calls.append((d, t)))
    one_by_one = np.stack([encoder.encode([t])[0] for t in TEXTS])
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)
    assert calls[-1] == (len(TEXTS), len(TEXTS)) and len(calls) == 3
    # reversed input -> reversed output, although batches are sorted by length inside
    np.testing.assert_allclose(encoder.encode(TEXTS[::-1]), together[::-1], atol=1e-5)


def test_semantic_sanity(encoder):
    docs = ["Paris is the capital of France.", "Bananas are rich in potassium.",
            "The stock market fell sharply on Monday.", "Berlin has many bicycle lanes."]
    q = encoder.encode(["capital of France"])[0]
    scores = encoder.encode(docs) @ q
    assert int(np.argmax(scores)) == 0 and scores[0] > scores[1:].max() + 0.2


def test_long_text_is_truncated_not_refused(encoder):
    long = "word " * 2000
    v = encoder.encode([long, "short"])
    assert v.shape == (2, 384) and np.isfinite(v).all()


def test_bad_input_names_the_problem(encoder):
    with pytest.raises(TypeError, match="text #1 is int"):
        encoder.encode(["fine", 3])
    with pytest.raises(TypeError, match="not one string"):
        encoder.encode("a single string")


def test_fingerprint(encoder, tmp_path):
    fp = encoder.fingerprint
    assert fp.name == "sentence-transformers/all-MiniLM-L6-v2" and fp.dim == 384 and fp.pooling == "mean+l2"
    weights = default_model_path() / "model.safetensors"
    assert fp.weights_sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()


def test_weights_hash_cache_follows_file_changes(tmp_path):
    f = tmp_path / "model.safetensors"
    cache = tmp_path / "cache" / "hashes.json"
    f.write_bytes(b"one")
    assert cached_sha256(f, cache) == hashlib.sha256(b"one").hexdigest()
    assert cache.is_file()
    f.write_bytes(b"two!")  # different size -> recomputed, not served stale
    assert cached_sha256(f, cache) == hashlib.sha256(b"two!").hexdigest()
    cache.write_text("{broken", encoding="utf-8")  # a damaged cache only costs a re-hash
    assert cached_sha256(f, cache) == hashlib.sha256(b"two!").hexdigest()


def test_missing_or_non_model_folder(tmp_path):
    with pytest.raises(EncoderError, match="not found"):
        KeyEncoder(model_path=tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EncoderError, match="missing config.json, model.safetensors"):
        KeyEncoder(model_path=tmp_path / "empty")


def test_local_folder_gives_its_name(tmp_path):
    link = tmp_path / "my-encoder"
    link.symlink_to(default_model_path(), target_is_directory=True)
    enc = KeyEncoder(model_path=link, device="cpu")
    assert enc.fingerprint.name == "my-encoder"
