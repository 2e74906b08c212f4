"""Progress helpers: sub-ranges, ETA, cancellation checks (no child processes)."""
from __future__ import annotations

import pytest

from engine.progress import EtaEstimator, JobCancelled, check, wrap_progress


def test_wrap_progress_maps_sub_steps_onto_their_slice_and_passes_metrics():
    seen = []

    def outer(fraction, message="", **metrics):
        seen.append((round(fraction, 6), message, metrics))

    first, second = wrap_progress(outer, 0.0, 0.25), wrap_progress(outer, 0.25, 1.0)
    first(0.0, "a")
    first(1.0, "b")
    second(0.5, "c", loss=0.3, step=10)
    second(2.0, "clamped")
    assert seen == [(0.0, "a", {}), (0.25, "b", {}), (0.625, "c", {"loss": 0.3, "step": 10}), (1.0, "clamped", {})]


def test_wrap_progress_drops_metrics_for_callbacks_without_kwargs_and_nests():
    seen = []
    inner = wrap_progress(wrap_progress(lambda f, m="": seen.append((round(f, 6), m)), 0.5, 1.0), 0.0, 0.5)
    inner(0.5, "half of half", loss=1.0)
    assert seen == [(0.625, "half of half")]
    wrap_progress(None, 0, 1)(0.5, "ignored")  # None is a no-op callback
    with pytest.raises(ValueError):
        wrap_progress(seen.append, 0.8, 0.2)


def test_eta_follows_a_steady_rate_and_smooths_a_single_stall():
    eta = EtaEstimator(smoothing=0.3, min_interval=0.5)
    assert eta.update(0.0, now=0.0) is None  # nothing to go on yet
    for t in range(1, 11):  # 1 % a second → 100 s for the whole job
        left = eta.update(t / 100, now=float(t))
    assert left == pytest.approx(90.0, rel=0.01)
    left = eta.update(0.10, now=14.0)  # four seconds without progress
    assert 90.0 < left < 200.0  # longer, but not infinite: one stall does not dominate
    assert eta.update(1.0, now=20.0) == 0.0


def test_eta_restarts_when_a_job_goes_back_to_a_new_phase():
    eta = EtaEstimator(min_interval=0.1)
    eta.update(0.0, now=0.0)
    eta.update(0.9, now=9.0)
    assert eta.update(0.2, now=10.0) is None


def test_check_raises_job_cancelled_only_when_asked():
    check(lambda: False)
    check(None)
    with pytest.raises(JobCancelled, match="stopped at 7"):
        check(lambda: True, "stopped at 7")
