"""Shared engine fixtures: the real key encoder (loaded once), an isolated user folder."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

FACTS = [
    ("Paris is the capital of France.", "France", "geography"),
    ("Tokyo is the capital of Japan.", "Japan", "geography"),
    ("Canberra is the capital of Australia.", "Australia", "geography"),
    ("The chemical symbol of gold is Au.", "Gold", "chemistry"),
    ("Iron has the atomic number 26.", "Iron", "chemistry"),
    ("Water boils at 100 degrees Celsius at sea level.", "Water", "physics"),
    ("The Nile is the longest river in Africa.", "Nile", "geography"),
    ("Mount Everest is the highest mountain on Earth.", "Everest", "geography"),
    ("Helium is a noble gas with atomic number 2.", "Helium", "chemistry"),
    ("The currency of Japan is the yen.", "Japan", "economy"),
]


@pytest.fixture(scope="session")
def encoder():
    from engine.encode import get_default_encoder

    return get_default_encoder()


@pytest.fixture(autouse=True)
def plugmem_home(tmp_path, monkeypatch) -> Path:
    """Each test gets its own user data folder, so nothing touches the real one."""
    home = tmp_path / "home"
    monkeypatch.setenv("PLUGMEM_HOME", str(home))
    return home


@pytest.fixture
def facts_jsonl(tmp_path) -> Path:
    p = tmp_path / "facts.jsonl"
    p.write_text(
        "\n".join(json.dumps({"text": t, "title": title, "tags": [tag]}) for t, title, tag in FACTS) + "\n",
        encoding="utf-8",
    )
    return p


@pytest.fixture
def fill_disk_after(monkeypatch):
    """``fill_disk_after(pages)``: every pack opened from then on may grow by only ``pages``
    pages, so its writes fail with SQLite's own SQLITE_FULL, as on a disk that fills up."""
    from engine.store import Pack

    real = Pack._connect.__func__

    def connect(cls, path, **kw):
        pack = real(cls, path, **kw)
        size = pack.conn.execute("PRAGMA page_count").fetchone()[0]
        pack.conn.execute(f"PRAGMA max_page_count = {size + budget[0]}")
        return pack

    budget = [0]

    def fill(pages: int) -> None:
        budget[0] = pages
        monkeypatch.setattr(Pack, "_connect", classmethod(connect))

    return fill
