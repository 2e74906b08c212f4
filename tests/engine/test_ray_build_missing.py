"""Without the `scale` extra, `plugmem import --ray` says in one line how to get it (exit 2).

Runs whether or not Ray is installed: an entry of None in sys.modules makes `import ray`
fail exactly as it does where Ray is absent.
"""
from __future__ import annotations

import sys

from engine.cli import main


def test_import_with_ray_missing_says_how_to_install_it(tmp_path, facts_jsonl, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    pack = tmp_path / "d.plugmem"
    assert main(["import", str(pack), str(facts_jsonl), "--ray"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith("pip install plugmem-studio[scale]"), err
    assert not pack.exists()  # refused before anything was created


def test_ray_options_without_ray_are_refused(tmp_path, facts_jsonl, capsys):
    assert main(["import", str(tmp_path / "d.plugmem"), str(facts_jsonl), "--workers", "2"]) == 2
    assert "--workers and --shard-size go with --ray" in capsys.readouterr().err
