"""The product-key memory in the app: the grow dialog (preset, estimate, the job's config), a bad
option said before any job starts, and the usage view drawn from a layer grown on the tiny reader."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest


@pytest.fixture
def grown(tmp_path, tiny_reader):
    """``facts.pkm/`` beside a pack path, grown for 3 steps on the tiny reader."""
    from engine.mechanisms.pkm.train import run

    corpus = tmp_path / "c.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": f"Element {i} has the symbol X{i}.", "title": f"E{i}"})
                                for i in range(10)) + "\n", encoding="utf-8")
    pack = tmp_path / "ws" / "facts.plugmem"
    out = tmp_path / "ws" / "facts.pkm"
    res = run({"out": str(out), "corpus": [str(corpus)], "steps": 3, "batch": 2, "seq_len": 16, "slots": 256, "k": 4,
               "heads": 2, "key_dim": 16, "value_lr": 1e-2}, reader=tiny_reader)
    return pack, out, res


def test_the_grow_dialog_gives_the_jobs_config_and_its_estimate(qtbot, make_ctx, small_pack):
    from app.views.pkm import GrowPKMDialog

    ctx = make_ctx([small_pack])
    dlg = GrowPKMDialog(ctx, str(small_pack))
    qtbot.addWidget(dlg)
    assert dlg.preset.currentData() == "standard" and "7.0 h on a 2-core CPU" in dlg.estimate.text()
    dlg.preset.setCurrentIndex(2)
    assert "for a GPU" in dlg.estimate.text()
    dlg.preset.setCurrentIndex(0)
    dlg.steps.setValue(50)
    dlg.layer.setValue(3)
    cfg = dlg.config()
    assert cfg["slots"] == 16_384 and cfg["steps"] == 50 and cfg["layer"] == 3 and cfg["corpus"] == [str(small_pack)]
    assert cfg["out"].endswith("facts.pkm")


def test_a_bad_option_is_said_before_a_job_starts(qtbot, make_ctx, small_pack):
    from app.views.pkm import PKMGrower

    ctx = make_ctx([small_pack])
    errors = []
    ctx.notifier.error = lambda title, exc: errors.append(f"{title}: {exc}")
    grower = PKMGrower(ctx)
    assert grower.start(str(small_pack), {"out": "x", "corpus": [str(small_pack)], "slots": 1000, "steps": 5}) is None
    assert "slots must be a square number" in errors[0] and not grower.running


def test_the_usage_view_draws_the_figures_the_histogram_and_the_grid(qtbot, grown):
    from app.views.pkm import PKMUsageWindow

    _, out, res = grown
    win = PKMUsageWindow(out)
    qtbot.addWidget(win)
    view = win.view
    assert math.isclose(view.usage.used, res["usage"]["used"])
    assert f"slots used <b>{res['usage']['used']:.1%}</b>" in view.figures.text() and "256 slots" in view.figures.text()
    assert view.image.image.shape == (16, 16) and np.isfinite(view.image.image).all()
    assert view.hist.getPlotItem().listDataItems()


def test_usage_of_a_pack_without_a_layer_is_an_error_not_a_crash(qtbot, make_ctx, small_pack):
    from app.views.pkm import show_usage

    ctx = make_ctx([small_pack])
    errors = []
    ctx.notifier.error = lambda title, exc: errors.append(str(exc))
    assert show_usage(ctx, str(small_pack)) is None
    assert "product-key memory folder not found" in errors[0]
