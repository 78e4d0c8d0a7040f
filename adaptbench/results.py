"""Reading a results folder back: records, robust to a killed sweep or stray files, and a DataFrame.

``adaptbench.load_results(dir)`` is the notebook entry point: one row per run x eval set x slice.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import pandas as pd

from .records import FINISHED, INDEX, RESULT, index_order, run_totals

KNOWN = {INDEX, "sweep.json", ".lock", "runs", "report", "jobs", "trackers"}  # what a sweep folder may hold


@dataclass
class Results:
    records: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # what was skipped and why, for the user


def _sweep_dirs(path: str) -> list[str]:
    """``path`` itself if it is a sweep folder, else the sweep folders inside it (results/)."""
    if os.path.isfile(os.path.join(path, INDEX)) or os.path.isdir(os.path.join(path, "runs")):
        return [path]
    return sorted(os.path.join(path, d) for d in os.listdir(path)
                  if os.path.isfile(os.path.join(path, d, INDEX)) or os.path.isdir(os.path.join(path, d, "runs")))


def _read_index(sweep: str, out: Results) -> dict[str, dict]:
    found: dict[str, dict] = {}
    path = os.path.join(sweep, INDEX)
    if not os.path.isfile(path):
        return found
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                out.problems.append(f"{path}: line {n} is not a complete JSON record (truncated?); skipped")
                continue
            if not isinstance(rec, dict) or "run_id" not in rec or rec.get("status") not in FINISHED:
                out.problems.append(f"{path}: line {n} is not a result record; skipped")
                continue
            if rec["run_id"] in found:
                out.problems.append(f"{path}: run {rec['run_id']} appears twice; the later line is used")
            found[rec["run_id"]] = rec
    return found


def _read_runs(sweep: str, found: dict[str, dict], out: Results) -> None:
    runs = os.path.join(sweep, "runs")
    if not os.path.isdir(runs):
        return
    for name in sorted(os.listdir(runs)):
        folder = os.path.join(runs, name)
        if name in found:
            continue
        if not os.path.isdir(folder):
            out.problems.append(f"{folder}: not a run folder; ignored")
            continue
        path = os.path.join(folder, RESULT)
        try:
            with open(path, encoding="utf-8") as f:
                rec = json.load(f)
        except FileNotFoundError:
            out.problems.append(f"{folder}: no {RESULT} (a run that did not finish); ignored")
            continue
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            out.problems.append(f"{path}: unreadable ({type(e).__name__}); ignored")
            continue
        if not isinstance(rec, dict):
            out.problems.append(f"{path}: not a result record (a JSON {type(rec).__name__}); ignored")
            continue
        if rec.get("status") in FINISHED and rec.get("run_id") == name:
            found[name] = rec  # finished but missing from the index (killed before the rebuild)


def read_results(path: str) -> Results:
    """Every finished record under ``path`` (a sweep folder, or a folder of sweep folders)."""
    out = Results()
    if not os.path.isdir(path):
        out.problems.append(f"{path}: no such folder")
        return out
    sweeps = _sweep_dirs(path)
    if not sweeps:
        out.problems.append(f"{path}: no results.jsonl or runs/ here or one level down")
    for sweep in sweeps:
        for name in sorted(os.listdir(sweep)):
            if name not in KNOWN and not name.startswith(".tmp-"):
                out.problems.append(f"{os.path.join(sweep, name)}: not part of a results folder; ignored")
        found = _read_index(sweep, out)
        _read_runs(sweep, found, out)
        out.records += sorted(found.values(), key=index_order)
    return out


def flatten(spec: dict, prefix: str = "") -> dict:
    """{"train": {"lr": 1e-5}} -> {"train.lr": 1e-5}; lists become strings (hashable for grouping)."""
    out = {}
    for key, value in spec.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = json.dumps(value) if isinstance(value, list) else value
    return out


ADAPT_PHASES = ("encode_context", "load_teacher", "teacher", "setup", "train")
EVAL_POINTS = "eval_points"  # evaluation during training: counted as evaluation, not as adaptation


def _is_eval(phase: str) -> bool:
    return phase.startswith("predict:") or phase == EVAL_POINTS


def run_row(rec: dict) -> dict:
    """The per-run columns: identity, status and costs."""
    spec = rec["spec"]
    costs = rec.get("costs", {})
    info = rec.get("method_info", {})
    task = spec["task"] if isinstance(spec["task"], str) else spec["task"]["name"]
    return {
        "run_id": rec["run_id"], "sweep": rec.get("sweep"), "status": rec["status"], "reason": rec.get("reason"),
        "model": spec["model"]["name"], "task": task, "method": spec["method"],
        "trainable": spec.get("trainable"), "shots": spec["shots"], "data_seed": spec["data_seed"],
        "train_seed": spec.get("train_seed", 0),
        "adapt_seconds": sum(p["seconds"] for n, p in costs.items() if n in ADAPT_PHASES),
        "eval_seconds": sum(p["seconds"] for n, p in costs.items() if _is_eval(n)),
        "total_seconds": run_totals(costs)[0],
        "run_seconds": sum(p["seconds"] for n, p in costs.items() if n in ADAPT_PHASES or _is_eval(n)),
        "peak_memory_gib": run_totals(costs)[1] / 2**30,
        "trainable_params": info.get("trainable_params"), "total_params": info.get("total_params"),
        **distilled_context(info),
        **{f"spec.{k}": v for k, v in flatten(spec).items()},
    }


#: What a sequence-distillation run measured on its held-out inputs (``method_info.heldout``), as columns.
DISTILLED = ("context_tokens", "recovered", "kl_student", "kl_base", "top1_agreement")


def distilled_context(info: dict) -> dict:
    """The context length and held-out measures of a ``cd.target: sequence`` run; {} for other runs."""
    if info.get("target") != "sequence":
        return {}
    held = info.get("heldout") or {}
    return {"context_tokens": info.get("context_tokens"), "recovered": held.get("recovered"),
            "kl_student": held.get("kl_student"), "kl_base": held.get("kl_base"),
            "top1_agreement": held.get("top1_agreement_student")}


def to_frame(records: list[dict]) -> pd.DataFrame:
    rows = []
    for rec in records:
        base = run_row(rec)
        eval_sets = rec.get("eval_sets", {})
        if not rec.get("metrics"):
            rows.append({**base, "eval_set": None, "slice": None})
            continue
        for name, slices in rec["metrics"].items():
            for slice_name, values in slices.items():
                rows.append({**base, "eval_set": name, "in_domain": eval_sets.get(name, {}).get("in_domain"),
                             "slice": slice_name, **values})
    return pd.DataFrame(rows)


def load_results(path: str) -> pd.DataFrame:
    """All records under ``path`` as a DataFrame: one row per run x eval set x slice.

    Columns: run_id, sweep, status, model, task, method, trainable, shots, data_seed, train_seed, costs
    (adapt_seconds, eval_seconds -- evaluation points during training included --, run_seconds = their
    sum, total_seconds = with model loading,
    peak_memory_gib, trainable_params, total_params), for sequence distillation runs context_tokens and
    the held-out measures (recovered, kl_student, kl_base, top1_agreement), the flattened spec (``spec.train.lr``, ...), eval_set, in_domain, slice, n, n_unscored (``all`` slice:
    examples left out of its metrics because they did not fit the window), accuracy, mcc, f1, ...
    Failed and skipped runs have one row with no eval set.
    """
    return to_frame(read_results(path).records)
