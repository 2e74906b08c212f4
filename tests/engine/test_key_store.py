"""Keys kept on disk per encoder: exact, found by text, never another encoder's."""
from __future__ import annotations

import sqlite3
from dataclasses import replace

import numpy as np
import pytest

from engine.encode.key_store import KeyStore


def test_keys_round_trip_exactly_and_are_found_by_text(encoder, tmp_path):
    keys = encoder.encode(["The capital of Ghana", "Iron is"])
    with KeyStore.for_encoder(encoder.fingerprint, tmp_path) as store:
        store.put_many({"The capital of Ghana": keys[0], "Iron is": keys[1]})
        got = store.get_many(["Iron is", "Gold is"])
        assert list(got) == ["Iron is"]
        assert got["Iron is"].dtype == np.float32 and np.array_equal(got["Iron is"], keys[1])
        assert store.missing(["Gold is", "Iron is"]) == ["Gold is"]
        with pytest.raises(ValueError, match="a key of 3 dimensions, expected 384"):
            store.put_many({"x": np.zeros(3)})
    with KeyStore.for_encoder(encoder.fingerprint, tmp_path) as again:  # kept across sessions
        assert np.array_equal(again.get_many(["The capital of Ghana"])["The capital of Ghana"], keys[0])


def test_another_encoder_has_its_own_file_and_a_foreign_file_is_set_aside(encoder, tmp_path, caplog):
    other = replace(encoder.fingerprint, weights_sha256="0" * 64)
    with KeyStore.for_encoder(encoder.fingerprint, tmp_path) as mine, KeyStore.for_encoder(other, tmp_path) as theirs:
        assert mine.path != theirs.path
        mine.put_many({"Iron is": np.ones(384, dtype=np.float32)})
        assert theirs.missing(["Iron is"]) == ["Iron is"]
        path = mine.path
    con = sqlite3.connect(path)
    con.execute("UPDATE meta SET value='{\"encoder\": \"someone else\"}' WHERE key='identity'")
    con.commit()
    con.close()
    with KeyStore.for_encoder(encoder.fingerprint, tmp_path) as again:
        assert "another encoder" in caplog.text
        assert len(again) == 0 and list(tmp_path.glob("*.corrupt"))


def test_a_key_of_the_wrong_size_is_dropped(encoder, tmp_path, caplog):
    with KeyStore.for_encoder(encoder.fingerprint, tmp_path) as store:
        store.put_many({"Iron is": np.ones(384, dtype=np.float32)})
        store._con.execute("UPDATE states SET data = substr(data, 1, 10)")
        assert store.get_many(["Iron is"]) == {}
        assert "wrong size" in caplog.text and store.missing(["Iron is"]) == ["Iron is"]
