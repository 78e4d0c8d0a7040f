"""From task and eval-set definitions to lists of examples: train pools and (subsampled) eval sets."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from .schema import EvalSetDef, Example, TaskDef
from .sources import load_split, to_examples


def train_pool(task: TaskDef, data_dir: str | None = None, source: str = "auto") -> list[Example]:
    split = load_split(task.dataset, task.train_split, data_dir, source)
    return to_examples(split, task.dataset, task.labels)


def stratified_subsample(examples: list[Example], n: int | None, seed: int) -> list[Example]:
    """``n`` examples keeping the label proportions (largest-remainder quotas), in their original order.

    HANS has 30,000 rows; a CPU user evaluating on 500 of them still wants both labels as in the set.
    """
    if n is None or n >= len(examples):
        return examples
    by_label: dict[int, list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        by_label[ex.label].append(i)
    labels = sorted(by_label)
    exact = {lab: n * len(by_label[lab]) / len(examples) for lab in labels}
    quota = {lab: int(exact[lab]) for lab in labels}
    by_remainder = sorted(labels, key=lambda lab: (-(exact[lab] - quota[lab]), lab))
    for lab in by_remainder[: n - sum(quota.values())]:
        quota[lab] += 1
    rng = np.random.default_rng(seed)
    chosen = []
    for lab in labels:
        chosen += rng.choice(by_label[lab], size=quota[lab], replace=False).tolist()
    return [examples[i] for i in sorted(chosen)]


def eval_examples(eval_set: EvalSetDef, data_dir: str | None = None, source: str = "auto",
                  where: tuple[tuple[str, tuple[str, ...]], ...] | None = None,
                  max_examples: int | None = None, seed: int = 0) -> tuple[list[Example], str]:
    """The rows of an eval set, filtered (default: the set's default filter) and subsampled, and
    where they were read from."""
    split = load_split(eval_set.dataset, eval_set.split, data_dir, source)
    rows = to_examples(split, eval_set.dataset, eval_set.labels,
                       eval_set.default_filter if where is None else where)
    return stratified_subsample(rows, max_examples, seed), split.origin
