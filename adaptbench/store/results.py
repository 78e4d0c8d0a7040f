"""Reading a results folder back: records, robust to a killed sweep or stray files, and a DataFrame.

``adaptbench.load_results(dir)`` is the notebook entry point: one row per run x eval set x slice.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field

import pandas as pd

from ..methods.cd.judge import ALL_CHECKS, MODELS
from .record import RunRecord, load_record
from .records import FINISHED, INDEX, PREDICTIONS, RESULT, index_order

# what a sweep folder may hold ("shared": teacher-side work of a sweep's students, methods/cd/shared.py)
KNOWN = {INDEX, "sweep.json", ".lock", "runs", "report", "jobs", "trackers", "shared"}


@dataclass
class Results:
    records: list[RunRecord] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # what was skipped and why, for the user
    found_in: dict[str, list[str]] = field(default_factory=dict)  # run id -> the sweep folders holding it


def sweep_dirs(path: str) -> list[str]:
    """``path`` itself if it is a sweep folder, else the sweep folders inside it (results/)."""
    if os.path.isfile(os.path.join(path, INDEX)) or os.path.isdir(os.path.join(path, "runs")):
        return [path]
    return sorted(os.path.join(path, d) for d in os.listdir(path)
                  if os.path.isfile(os.path.join(path, d, INDEX)) or os.path.isdir(os.path.join(path, d, "runs")))


def _index_ids(sweep: str, out: Results) -> set[str]:
    """The run ids ``results.jsonl`` lists (it is only an index: the run folders are what counts)."""
    ids: set[str] = set()
    path = os.path.join(sweep, INDEX)
    if not os.path.isfile(path):
        return ids
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                out.problems.append(f"{path}: line {n} is not a complete JSON record (truncated?); the run folders "
                                    f"were read instead")
                continue
            if isinstance(rec, dict) and isinstance(rec.get("run_id"), str):
                ids.add(rec["run_id"])
    return ids


def _read_run(folder: str, name: str, out: Results) -> dict | None:
    """A run folder's finished record, or None with the reason noted; its predictions are checked against the
    rows and SHA-256 the record carries."""
    path = os.path.join(folder, RESULT)
    try:
        with open(path, encoding="utf-8") as f:
            rec = json.load(f)
    except FileNotFoundError:
        out.problems.append(f"{folder}: no {RESULT} (a run that did not finish); ignored")
        return None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        out.problems.append(f"{path}: unreadable ({type(e).__name__}: truncated or edited?); not counted")
        return None
    if not isinstance(rec, dict):
        out.problems.append(f"{path}: not a result record (a JSON {type(rec).__name__}); not counted")
        return None
    if rec.get("status") not in FINISHED or rec.get("run_id") != name:
        out.problems.append(f"{path}: not the finished record of run {name}; not counted")
        return None
    _check_predictions(folder, rec, out)
    return rec


def _check_predictions(folder: str, rec: dict, out: Results) -> None:
    expected = rec.get("predictions")
    if not isinstance(expected, dict) or "sha256" not in expected:
        return
    path = os.path.join(folder, PREDICTIONS)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        out.problems.append(f"{path}: missing; run {rec['run_id']}'s record says it has {expected.get('rows')} rows "
                            f"(its metrics are counted, its predictions cannot be checked)")
        return
    if hashlib.sha256(data).hexdigest() != expected["sha256"]:
        out.problems.append(f"{path}: does not match run {rec['run_id']}'s record (SHA-256 differs: edited or "
                            f"truncated); its metrics are counted from the record")


def _read_sweep(sweep: str, out: Results) -> list[dict]:
    """Every finished run folder of a sweep; index lines without one are noted, never counted."""
    indexed = _index_ids(sweep, out)
    runs = os.path.join(sweep, "runs")
    found = []
    for name in sorted(os.listdir(runs)) if os.path.isdir(runs) else []:
        folder = os.path.join(runs, name)
        if not os.path.isdir(folder):
            out.problems.append(f"{folder}: not a run folder; ignored")
            continue
        rec = _read_run(folder, name, out)
        if rec is not None:
            found.append(rec)
    for run_id in sorted(indexed - {r["run_id"] for r in found}):
        if not os.path.isdir(os.path.join(runs, run_id)):
            out.problems.append(f"{os.path.join(sweep, INDEX)}: lists run {run_id}, whose folder has no record "
                                f"(deleted?); not counted")
    return found


def _same_result(a: dict, b: dict) -> bool:
    return a.get("status") == b.get("status") and a.get("metrics") == b.get("metrics")


def read_results(path: str) -> Results:
    """Every finished record under ``path`` (a sweep folder, or a folder of sweep folders), read from the run
    folders.  A run is one record wherever it is found: two sweeps that share a run (same settings, same id)
    count it once, and copies that disagree are noted (the first sweep's, in name order, is used)."""
    out = Results()
    if not os.path.isdir(path):
        out.problems.append(f"{path}: no such folder")
        return out
    sweeps = sweep_dirs(path)
    if not sweeps:
        out.problems.append(f"{path}: no results.jsonl or runs/ here or one level down")
    by_id: dict[str, dict] = {}
    for sweep in sweeps:
        for name in sorted(os.listdir(sweep)):
            if name not in KNOWN and not name.startswith(".tmp-"):
                out.problems.append(f"{os.path.join(sweep, name)}: not part of a results folder; ignored")
        for rec in _read_sweep(sweep, out):
            out.found_in.setdefault(rec["run_id"], []).append(sweep)
            first = by_id.setdefault(rec["run_id"], rec)
            if first is not rec and not _same_result(first, rec):
                out.problems.append(f"run {rec['run_id']} is in {out.found_in[rec['run_id']][0]} and in {sweep} with "
                                    f"different results ({first['status']} vs {rec['status']}); the first is used")
    out.records = [load_record(r) for r in sorted(by_id.values(), key=index_order)]
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


def run_row(rec: RunRecord) -> dict:
    """The per-run columns: identity, status and costs."""
    spec, costs, info = rec.spec, rec.costs, rec.method_info
    return {
        "run_id": rec.run_id, "sweep": rec.sweep, "status": rec.status, "reason": rec.reason,
        "model": spec["model"]["name"], "task": rec.task_name, "method": spec["method"],
        "trainable": spec.get("trainable"), "shots": spec["shots"], "data_seed": spec["data_seed"],
        "train_seed": spec.get("train_seed", 0),
        "adapt_seconds": sum(p.seconds for n, p in costs.items() if n in ADAPT_PHASES),
        "eval_seconds": sum(p.seconds for n, p in costs.items() if _is_eval(n)),
        "total_seconds": rec.total_seconds,
        "run_seconds": sum(p.seconds for n, p in costs.items() if n in ADAPT_PHASES or _is_eval(n)),
        "peak_memory_gib": rec.peak_memory_bytes / 2**30,
        "trainable_params": getattr(info, "trainable_params", None), "total_params": getattr(info, "total_params", None),
        "train_dropped": getattr(info, "train_dropped_too_long", None),
        **distilled_context(info),
        **{f"spec.{k}": v for k, v in flatten(spec).items()},
    }


#: What a sequence-distillation run measured on its held-out inputs (``method_info.heldout``), as columns.
JUDGED = tuple(f"{measure}_{model}" for measure in ("checks", "exact_match", "f1", "edit_similarity") for model in MODELS)
DISTILLED = ("context_tokens", "recovered", "kl_student", "kl_base", "top1_agreement", "judged_n") + JUDGED


def distilled_context(info) -> dict:
    """The context length and held-out measures of a ``cd.target: sequence`` run; {} for other runs."""
    if getattr(info, "target", None) != "sequence":
        return {}
    held = info.heldout
    return {"context_tokens": info.context_tokens, "recovered": held and held.recovered,
            "kl_student": held and held.kl_student, "kl_base": held and held.kl_base,
            "top1_agreement": held and held.top1_agreement_student, **judged_columns(info.judged)}


def judged_columns(judged) -> dict:
    """``checks_<model>`` (the share of replies passing every check), ``exact_match_<model>``, ``f1_<model>``
    (questions), ``edit_similarity_<model>`` (code) and ``judged_n`` of a run that judged its held-out replies;
    {} otherwise."""
    if judged is None:
        return {}
    out = {"judged_n": judged.n}
    answers = judged.answers or {}
    for measure, block in (("checks", (judged.checks or {}).get(ALL_CHECKS)), *((m, answers.get(m)) for m in (
            "exact_match", "f1", "edit_similarity"))):
        out.update({f"{measure}_{m}": block[m].value for m in MODELS if block and m in block})
    return out


def to_frame(records: list[RunRecord]) -> pd.DataFrame:
    rows = []
    for rec in records:
        base = run_row(rec)
        if not rec.metrics:
            rows.append({**base, "eval_set": None, "slice": None})
            continue
        for name, slices in rec.metrics.items():
            in_domain = rec.eval_sets[name].in_domain if name in rec.eval_sets else None
            for slice_name, values in slices.items():
                rows.append({**base, "eval_set": name, "in_domain": in_domain, "slice": slice_name,
                             **values.model_dump(exclude_none=True)})
    return pd.DataFrame(rows)


def load_results(path: str) -> pd.DataFrame:
    """All records under ``path`` as a DataFrame: one row per run x eval set x slice.

    Columns: run_id, sweep, status, model, task, method, trainable, shots, data_seed, train_seed, costs
    (adapt_seconds, eval_seconds -- evaluation points during training included --, run_seconds = their
    sum, total_seconds = with model loading,
    peak_memory_gib, trainable_params, total_params), for sequence distillation runs context_tokens and
    the held-out measures (recovered, kl_student, kl_base, top1_agreement; judged replies: judged_n,
    checks_<model>, exact_match_<model>, f1_<model>, edit_similarity_<model> for base, teacher, student), the flattened spec (``spec.train.lr``, ...), eval_set, in_domain, slice, n, n_unscored (``all`` slice:
    examples left out of its metrics because they did not fit the window), accuracy, mcc, f1, ...
    Failed and skipped runs have one row with no eval set.
    """
    return to_frame(read_results(path).records)
