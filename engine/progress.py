"""Progress reporting for jobs: the callback protocol, sub-ranges, ETA, cancellation.

A job reports with ``progress(fraction, message='', **metrics)``: ``fraction`` in
[0, 1], a short human message, and optional numeric metrics (``loss=0.3, step=10``)
that a front end can plot live. A job checks ``should_stop()`` at safe points and
raises :class:`JobCancelled` (``check(should_stop)`` does both) after committing or
discarding its partial work.

It sits below every layer (not in ``engine/jobs``): the mechanisms' training jobs and the
evaluations report through it too, and they must not import the job runner's package.
"""
from __future__ import annotations

import inspect
import logging
import math
import time
from typing import Any, Callable, Protocol

log = logging.getLogger(__name__)


class Progress(Protocol):
    """What a job calls to report progress."""

    def __call__(self, fraction: float, message: str = "", **metrics: Any) -> None: ...


class JobCancelled(Exception):
    """Raised by a job that stopped because ``should_stop()`` said so.

    Its message tells the user where the job stopped and how to continue.
    """


def check(should_stop: Callable[[], bool] | None, message: str = "cancelled") -> None:
    """Raise :class:`JobCancelled` when ``should_stop()`` is true (None never stops)."""
    if should_stop is not None and should_stop():
        raise JobCancelled(message)


def clamp_fraction(fraction: float) -> float:
    """``fraction`` forced into [0, 1]; NaN becomes 0."""
    try:
        f = float(fraction)
    except (TypeError, ValueError):
        return 0.0
    if math.isnan(f):
        return 0.0
    return min(1.0, max(0.0, f))


def accepts_metrics(cb: Callable[..., Any]) -> bool:
    """Whether ``cb`` takes ``**metrics`` (older callbacks take only fraction and message)."""
    try:
        params = inspect.signature(cb).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.kind == p.VAR_KEYWORD for p in params)


def wrap_progress(cb: Callable[..., Any] | None, start: float, end: float) -> Progress:
    """A progress callback mapping [0, 1] onto [start, end] of ``cb`` (Orange3 style).

    Sub-steps of a job each get their slice: ``wrap_progress(progress, 0.2, 0.9)``.
    Metrics are passed through when ``cb`` accepts them and dropped otherwise, so a
    plain ``lambda f, m='': ...`` works as the outer callback.
    """
    if not 0.0 <= start <= end <= 1.0:
        raise ValueError(f"wrap_progress: need 0 <= start <= end <= 1, got {start}, {end}")
    if cb is None:
        return lambda fraction, message="", **metrics: None
    with_metrics = accepts_metrics(cb)

    def sub(fraction: float, message: str = "", **metrics: Any) -> None:
        f = start + (end - start) * clamp_fraction(fraction)
        if metrics and with_metrics:
            cb(f, message, **metrics)
        else:
            cb(f, message)

    return sub


class EtaEstimator:
    """Seconds left from a stream of fractions, using a smoothed rate.

    The rate (fraction per second) is measured over windows of at least
    ``min_interval`` seconds and smoothed exponentially, so one slow or fast step does
    not make the estimate jump. Before the first full window the average rate since
    the first update is used; ``None`` means "no estimate yet".
    """

    def __init__(self, smoothing: float = 0.3, min_interval: float = 0.5, clock: Callable[[], float] = time.monotonic) -> None:
        if not 0.0 < smoothing <= 1.0:
            raise ValueError("smoothing must be in (0, 1]")
        self.smoothing = smoothing
        self.min_interval = min_interval
        self.clock = clock
        self.reset()

    def reset(self) -> None:
        self._start: tuple[float, float] | None = None  # (time, fraction) of the first update
        self._anchor: tuple[float, float] | None = None  # start of the current window
        self._rate: float | None = None
        self.seconds_left: float | None = None

    def update(self, fraction: float, now: float | None = None) -> float | None:
        """Record ``fraction`` at ``now``; return the estimated seconds left (or None)."""
        now = self.clock() if now is None else now
        f = clamp_fraction(fraction)
        if self._start is None or (self._anchor is not None and f < self._anchor[1]):
            # first call, or the job went backwards (a new phase): start again
            self._start = self._anchor = (now, f)
            self._rate = None
            self.seconds_left = None if f < 1.0 else 0.0
            return self.seconds_left
        if f >= 1.0:
            self.seconds_left = 0.0
            return 0.0
        at, af = self._anchor
        dt, df = now - at, f - af
        if dt >= self.min_interval:
            rate = df / dt
            self._rate = rate if self._rate is None else self.smoothing * rate + (1 - self.smoothing) * self._rate
            self._anchor = (now, f)
        rate = self._rate
        if rate is None:
            st, sf = self._start
            rate = (f - sf) / (now - st) if now > st and f > sf else None
        self.seconds_left = (1.0 - f) / rate if rate and rate > 0 else None
        return self.seconds_left
