"""Metrics of an eval set, overall and per slice (label, HANS heuristic, ...)."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from sklearn.metrics import f1_score, matthews_corrcoef

from ..data.schema import EvalSetDef, Example


def compute(name: str, labels: np.ndarray, preds: np.ndarray) -> float:
    if name == "accuracy":
        return float((labels == preds).mean())
    if name == "mcc":  # CoLA's metric; 0 when one side is constant
        return float(matthews_corrcoef(labels, preds))
    if name == "f1":  # QQP/PAWS: F1 of the positive class (duplicate / paraphrase), as GLUE
        return float(f1_score(labels, preds, pos_label=1, zero_division=0.0))
    raise ValueError(f"unknown metric {name!r}")


def _block(labels: np.ndarray, preds: np.ndarray, metrics: tuple[str, ...]) -> dict:
    """Metrics of the scored examples; ``None`` when there are none (a mean over nothing is no number,
    NaN cannot be written as JSON, and sklearn raises on empty input)."""
    out = {"n": int(len(labels))}
    out.update({m: compute(m, labels, preds) if len(labels) else None for m in metrics})
    return out


def eval_set_metrics(eval_set: EvalSetDef, examples: list[Example], preds: np.ndarray) -> dict:
    """{"all": {...}, "label=<name>": {...}, "<field>=<value>": {...}, "<field>=<value>,label=<name>": ...}.

    ``preds`` holds -1 for examples that were not scored (e.g. longer than the model's window); they
    are left out and counted as ``n_unscored``.  Label slices carry accuracy only (the other metrics
    are degenerate with one gold label).  With no example scored, ``all`` has ``n`` 0 and ``None``
    metrics (the runner skips such a run).
    """
    labels = np.array([ex.label for ex in examples])
    scored = preds >= 0
    names = eval_set.labels.names
    result: dict = {"all": {**_block(labels[scored], preds[scored], eval_set.metrics),
                            "n_unscored": int((~scored).sum())}}
    if not scored.any():
        return result
    groups: dict[str, list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        if not scored[i]:
            continue
        groups[f"label={names[ex.label]}"].append(i)
        for key in eval_set.slice_by:
            value = ex.get(key)
            if value is not None:
                groups[f"{key}={value}"].append(i)
                groups[f"{key}={value},label={names[ex.label]}"].append(i)
    for key in sorted(groups):
        idx = np.array(groups[key])
        metrics = eval_set.metrics if "label=" not in key else ("accuracy",)
        result[key] = _block(labels[idx], preds[idx], metrics)
    return result
