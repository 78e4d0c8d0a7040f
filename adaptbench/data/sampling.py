"""Seeded few-shot samples from a train pool.

The sample of a data seed is what ICL puts in its context and what fine-tuning trains on, so every
method of a run sees the same examples.  Balanced by default (k / n_labels per label, the remainder
given to labels drawn at random), then shuffled, so the context does not list one label after the
other.  The generator is seeded by the data seed alone: a different seed is a different sample
(earlier attempts at this study silently reused one sample for every seed).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import numpy as np

from ..errors import DataError
from .schema import Example


def few_shot_sample(pool: list[Example], k: int, seed: int, n_labels: int, balanced: bool = True) -> list[Example]:
    if k < 0:
        raise DataError(f"shots must be >= 0, got {k}")
    if k == 0:
        return []
    if k > len(pool):
        raise DataError(f"shots={k} but the train pool has only {len(pool)} examples")
    rng = np.random.default_rng(seed)
    if not balanced:
        chosen = rng.choice(len(pool), size=k, replace=False).tolist()
    else:
        by_label: dict[int, list[int]] = defaultdict(list)
        for i, ex in enumerate(pool):
            by_label[ex.label].append(i)
        per_label = {lab: k // n_labels for lab in range(n_labels)}
        for lab in rng.choice(n_labels, size=k % n_labels, replace=False).tolist():
            per_label[lab] += 1
        chosen = []
        for lab in range(n_labels):
            have = len(by_label[lab])
            if have < per_label[lab]:
                raise DataError(f"a balanced sample of {k} needs {per_label[lab]} examples of label {lab}, "
                                f"the train pool has {have}")
            chosen += rng.choice(by_label[lab], size=per_label[lab], replace=False).tolist()
        rng.shuffle(chosen)
    return [pool[i] for i in chosen]


def unlabeled_sample(pool: list[Example], n: int, seed: int, exclude: list[Example]) -> list[Example]:
    """``n`` further inputs from the pool, none of them in ``exclude`` (e.g. the context examples)."""
    taken = {ex.idx for ex in exclude}
    rest = [ex for ex in pool if ex.idx not in taken]
    if n > len(rest):
        raise DataError(f"asked for {n} unlabelled inputs, the pool has {len(rest)} left")
    rng = np.random.default_rng([seed, 1])  # a stream of its own, independent of the labelled sample
    return [rest[i] for i in sorted(rng.choice(len(rest), size=n, replace=False).tolist())]


def largest_fitting_sample(pool: list[Example], seed: int, n_labels: int, fits: Callable[[list[Example]], bool],
                           step: int = 2) -> list[Example]:
    """The largest balanced sample (k = step, 2 step, ...) of which ``fits(sample)`` holds -- e.g. the most
    demonstrations whose context fits a token budget (the benches' contexts); [] where not even ``step`` fit."""
    best, k = [], step
    while k <= len(pool):
        sample = few_shot_sample(pool, k, seed, n_labels)
        if not fits(sample):
            break
        best, k = sample, k + step
    return best
