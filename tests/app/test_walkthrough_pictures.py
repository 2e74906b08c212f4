"""docs/WALKTHROUGH.md and docs/make_screenshots.py agree: every picture the walk-through shows
exists and is retaken by a flow of the script (one by hand), and ``--only`` picks flows by
flow or picture name, refusing an unknown one by name."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BY_HAND = {"pkm_usage"}  # needs a grown product-key layer: hours of training on two cores


def _script():
    spec = importlib.util.spec_from_file_location("make_screenshots", ROOT / "docs" / "make_screenshots.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_picture_is_shown_exists_and_has_a_flow():
    flows = _script().FLOWS
    taken = {shot for shots in flows.values() for shot in shots}
    shown = re.findall(r"\(screenshots/([a-z0-9_]+)\.png\)", (ROOT / "docs" / "WALKTHROUGH.md").read_text())
    on_disk = {p.stem for p in (ROOT / "docs" / "screenshots").glob("*.png")}
    assert len(shown) == len(set(shown))  # each once
    assert set(shown) == on_disk  # the walk-through shows every picture in docs/screenshots
    assert on_disk - taken == BY_HAND and taken <= on_disk


def test_only_picks_flows_by_flow_or_picture_name():
    pick = _script().pick_flows
    assert pick("") == list(_script().FLOWS)
    assert pick("revert") == ["revert"]
    assert pick("probes_run, main,edit_revert_preview") == ["probes", "main", "revert"]
    with pytest.raises(ValueError, match="'nope'"):
        pick("main,nope")
