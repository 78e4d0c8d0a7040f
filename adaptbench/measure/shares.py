"""Shares and means with their n and a 95 % interval, as every reported share must carry.

A pass rate or an exact-match rate is a binomial share: its interval is Wilson's score interval (Wilson,
1927), computed by SciPy's ``binomtest(...).proportion_ci(method="wilson")``.  A mean of per-item scores
in [0, 1] (token F1) has no closed form: its interval is the percentile bootstrap (Efron, 1979) over the
items, seeded so a report is reproducible.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.stats import binomtest

BOOTSTRAP_RESAMPLES = 2000


def wilson_interval(k: int, n: int) -> tuple[float, float] | None:
    """Wilson's 95 % score interval of k successes in n trials; None for n = 0."""
    if n <= 0:
        return None
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return float(ci.low), float(ci.high)


def share(flags: Sequence[bool]) -> dict:
    """``{"value", "n", "k", "ci95", "interval"}`` of a list of pass/fail flags (value None when empty)."""
    n, k = len(flags), int(sum(bool(f) for f in flags))
    ci = wilson_interval(k, n)
    return {"value": k / n if n else None, "n": n, "k": k, "ci95": list(ci) if ci else None, "interval": "wilson"}


def bootstrap_interval(values: Sequence[float], seed: int = 0) -> tuple[float, float] | None:
    """Percentile-bootstrap 95 % interval of the mean of ``values``; None when empty."""
    x = np.asarray(values, dtype=float)
    if not len(x):
        return None
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(BOOTSTRAP_RESAMPLES, len(x)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def mean(values: Sequence[float], seed: int = 0) -> dict:
    """``{"value", "n", "ci95", "interval"}`` of a mean of per-item scores, with a bootstrap interval."""
    ci = bootstrap_interval(values, seed)
    return {"value": float(np.mean(values)) if len(values) else None, "n": len(values), "ci95": list(ci) if ci else None,
            "interval": "bootstrap"}
