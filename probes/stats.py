"""Intervals over items: the percentile bootstrap of a mean and of a difference of two means (seeded,
vectorised)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from probes.results import Result


@dataclass(frozen=True)
class Interval(Result):
    """The mean of ``n`` per-item values and its bootstrap interval ``[lo, hi]`` at ``level``."""

    mean: float
    lo: float
    hi: float
    n: int
    level: float = 0.95

    def __str__(self) -> str:
        return f"{self.mean:.2f} [{self.lo:.2f}, {self.hi:.2f}]"

    def above(self, other: Interval) -> bool:
        """Separated from ``other`` upwards: this interval starts above where ``other`` ends."""
        return self.lo > other.hi

    def within_or_below(self, other: Interval) -> bool:
        """This mean is no higher than the top of ``other``'s interval."""
        return self.mean <= other.hi


def bootstrap_mean(
    values: Sequence[float] | np.ndarray, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> Interval:
    """Percentile bootstrap interval of the mean of ``values`` (resampling items with replacement,
    ``n_boot`` times, from ``numpy.random.default_rng(seed)``). One value, or values that are all equal,
    give a zero-width interval; no value raises."""
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("bootstrap_mean of no values: measure at least one item")
    if not np.isfinite(x).all():
        raise ValueError(f"bootstrap_mean of non-finite values ({int((~np.isfinite(x)).sum())} of {x.size})")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    mean = float(x.mean())
    # rounding in the resampled means can put a constant sample's bounds a hair off its mean
    return Interval(mean, float(min(lo, mean)), float(max(hi, mean)), int(x.size), level)


def bootstrap_difference(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap interval of ``mean(a) - mean(b)`` for two independent samples (each resampled
    with replacement from its own items, ``n_boot`` times). Tighter than asking whether the two intervals
    overlap, and not fooled by a sample whose own interval has zero width (all 0: ``[0, 0]``, although 0 of
    40 is compatible with a rate of a few percent). ``n`` is ``len(a)``."""
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.size == 0 or y.size == 0:
        raise ValueError("bootstrap_difference of no values: measure at least one item on each side")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("bootstrap_difference of non-finite values")
    rng = np.random.default_rng(seed)
    mx = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    my = y[rng.integers(0, y.size, size=(n_boot, y.size))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(mx - my, [tail, 1.0 - tail])
    d = float(x.mean() - y.mean())
    return Interval(d, float(min(lo, d)), float(max(hi, d)), int(x.size), level)
