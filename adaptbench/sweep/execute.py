"""One run: data -> sample -> model -> method.fit -> predict per eval set -> record.

Every run ends in a record -- ok, skipped (with the reason) or failed (with the error) -- written
atomically into its own folder while its writer holds the run's claim; the sweep goes on after a failure.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import transformers

from .._util import distributed, owners
from .._util.progress import make_progress
from ..config.schema import RunSpec
from ..data.sampling import few_shot_sample
from ..errors import AdaptbenchError, RunSkipped
from ..measure.costs import CostTracker
from ..measure.environment import environment
from ..measure.metrics import eval_set_metrics
from ..methods import METHODS, RunContext
from ..scoring.interface import ScoringModel
from ..models.loading import pick_device
from ..models.pool import ModelPool
from ..scoring.scores import log_softmax
from ..store import records
from ..store.record import SCHEMA_VERSION
from ..training.checkpoint import remove_checkpoints, remove_resume_state
from ..training.precision import annotate_phases, training_model_spec, with_resolved_precision
from . import claims
from .inputs import RunInputs, load_inputs
from .plan import Plan, needs_run
from .tracking import RunTrackers


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _floats(row: np.ndarray) -> list[float] | None:
    return [round(float(x), 6) for x in row] if np.isfinite(row).all() else None


@dataclass
class RunOutcome:
    record: dict
    predictions: list[dict] = field(default_factory=list)


def execute(run: RunSpec, plan: Plan, models: ModelPool, inputs: RunInputs | None = None) -> RunOutcome:
    """Do one run and return its record; exceptions become ``failed``/``skipped`` records."""
    record: dict = {"schema_version": SCHEMA_VERSION, "run_id": run.run_id, "sweep": plan.sweep.name,
                    "status": "running", "spec": run.identity(), "started_at": _now(), "writer": owners.me()}
    out = RunOutcome(record)
    try:
        device = pick_device(run.model.device)
    except AdaptbenchError:  # e.g. cuda asked for on a machine without: loading the model says so, below
        device = torch.device("cpu")
    costs = CostTracker(device)
    trackers = (RunTrackers.open(plan.runtime.log_with, plan.sweep_dir, plan.sweep.name, run)
                if distributed.is_main() else RunTrackers())
    try:
        inputs = inputs or load_inputs(run, plan.runtime, plan.config_dir)
        _execute(run, plan, models, inputs, costs, out, trackers)
        record["status"] = "ok"
    except RunSkipped as e:
        record.update(status="skipped", reason=str(e))
    except AdaptbenchError as e:
        record.update(status="failed", reason=str(e))
    except (Exception, torch.cuda.OutOfMemoryError) as e:  # a run's crash must not end the sweep
        record.update(status="failed", reason=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
    if record["status"] == "failed" and distributed.active():
        stop_launch(plan, record, costs)
    record["costs"] = rank_costs(costs.to_dict())
    _precision(record)
    record["environment"] = environment(costs.device)
    record["finished_at"] = _now()
    trackers.finish(record)
    return out


FAILURE_NOTE = "-failure.json"  # rank<N>-failure.json: why rank N of a launch stopped


def _failure_notes(folder: str) -> list[str]:
    return [os.path.join(folder, n) for n in os.listdir(folder) if n.startswith("rank") and n.endswith(FAILURE_NOTE)]


def stop_launch(plan: Plan, record: dict, costs: CostTracker) -> None:
    """A run failed on this rank of a multi-process launch: write the record here and end the process.

    The other ranks may be waiting in a collective (a gradient all-reduce) that this rank will never join;
    going on would leave them hanging until the backend's timeout.  Exiting lets the launcher (torchrun,
    accelerate) stop them at once.  Each failing rank leaves a note; the record names every rank's reason,
    the first to fail first (a rank that fails because its peer vanished comes after the cause)."""
    rank, folder = distributed.rank(), records.run_dir(plan.sweep_dir, record["run_id"])
    records.atomic_write(os.path.join(folder, f"rank{rank}{FAILURE_NOTE}"),
                         records.dumps({"rank": rank, "reason": record["reason"], "at": time.time()}) + "\n")
    started = dt.datetime.fromisoformat(record["started_at"]).timestamp() - 1
    notes = []
    for path in _failure_notes(folder):
        with contextlib.suppress(OSError, ValueError), open(path, encoding="utf-8") as f:
            notes.append(json.load(f))
    notes = sorted((n for n in notes if n.get("at", 0) >= started), key=lambda n: n["at"])  # this execution's
    record.update(reason="; ".join(f"rank {n['rank']}: {n['reason']}" for n in notes)
                  + f" (multi-process launch of {distributed.world_size()} ranks: the launch was stopped)",
                  failed_rank=notes[0]["rank"], costs=costs.to_dict(), environment=environment(costs.device),
                  finished_at=_now())
    records.atomic_write(os.path.join(folder, records.RESULT), records.dumps(record) + "\n")
    records.add_to_index(plan.sweep_dir, record)
    print(f"error: run {record['run_id']} failed on rank {rank}: {record['reason']}; the record is in {folder}. "
          f"Run the same command again to go on with the next runs.", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(1)


def _precision(record: dict) -> None:
    """Weights and compute dtype of every phase, where the run got as far as loading its model."""
    if "model" not in record:
        return
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    train = record["spec"].get("train")
    mixed = train and train.get("mixed_precision")
    if mixed == "auto":
        mixed = (record["spec"].get("resolved") or {}).get("mixed_precision", "no")
    teacher = record.get("method_info", {}).get("teacher_dtype")
    annotate_phases(record["costs"], dtypes[record["model"]["dtype"]], mixed,
                    dtypes.get(teacher) if teacher else None)


def rank_costs(costs: dict) -> dict:
    """Rank 0's phases; under a multi-process launch each phase also gets every rank's peak memory
    (max and sum) and the slowest rank's seconds."""
    ranks = distributed.gather(costs)
    if len(ranks) == 1:
        return costs
    for name, phase in costs.items():
        peaks = [r[name]["peak_memory_bytes"] for r in ranks if name in r]
        phase["ranks"] = {"n": len(ranks), "peak_memory_bytes_max": max(peaks), "peak_memory_bytes_sum": sum(peaks),
                          "seconds_max": max(r[name]["seconds"] for r in ranks if name in r)}
    return costs


def _execute(run: RunSpec, plan: Plan, models: ModelPool, inputs: RunInputs, costs: CostTracker,
             out: RunOutcome, trackers: RunTrackers) -> None:
    record, task = out.record, inputs.task
    sample = few_shot_sample(inputs.pool, run.shots, run.data_seed, len(task.labels.names), run.balanced)
    record["task"] = {"name": task.name, "labels": list(task.labels.names), "label_space": task.labels.space}
    record["sample"] = {"shots": run.shots, "data_seed": run.data_seed, "idx": [ex.idx for ex in sample],
                        "label_counts": {name: sum(ex.label == i for ex in sample)
                                         for i, name in enumerate(task.labels.names)}}
    method = METHODS[run.method]()
    with costs.phase("load_model") as phase:
        # training keeps float32 master weights (model.dtype auto); compute precision is train.mixed_precision
        loaded, reused = models.get(training_model_spec(run.model) if method.trains else run.model,
                                    fresh=method.trains)
        phase.extra["reused"] = reused
    costs.device = loaded.device
    encoder = ScoringModel(loaded, plan.runtime).encoder(inputs.prompt, task.labels.names)
    p = inputs.prompt
    record["prompt"] = {"pattern": p.pattern, "target_prefix": p.target_prefix, "separator": p.separator,
                        "verbalizer": list(p.verbalizer), "instruction": p.instruction,
                        "label_token_ids": encoder.label_token_ids, "label_tokens": encoder.label_tokens}
    record["model"] = {"name": run.model.name, "source": loaded.source, "dtype": str(loaded.dtype).replace("torch.", ""),
                       "device": str(loaded.device), "window": loaded.window, "n_params": loaded.n_params,
                       "pad_token_from": loaded.pad_token_from, **loaded.info}
    transformers.set_seed(run.train_seed)
    ctx = RunContext(with_resolved_precision(run, loaded.device.type), task, loaded, encoder, sample, inputs.pool,
                     costs, plan.runtime,
                     make_progress(plan.runtime.progress and distributed.is_main()),
                     evals=[(req.name, req.eval_set, examples) for req, examples, _ in inputs.evals],
                     out_dir=records.run_dir(plan.sweep_dir, run.run_id), config_dir=plan.config_dir,
                     load_model=models.load, on_step=trackers.step)
    record["method_info"] = ctx.info
    predictor = method.fit(ctx)
    record["metrics"], record["eval_sets"] = {}, {}
    for req, examples, origin in inputs.evals:
        with costs.phase(f"predict:{req.name}") as phase:
            pred = predictor.predict(examples, req.name)
            phase.tokens, phase.padded_tokens = pred.tokens, pred.padded_tokens
            if pred.compute_dtype:
                phase.extra["observed_compute_dtype"] = pred.compute_dtype
        labels = pred.labels
        if not (labels >= 0).any():
            raise _nothing_scored(req.name, len(examples), record)
        record["metrics"][req.name] = eval_set_metrics(req.eval_set, examples, labels)
        record["eval_sets"][req.name] = {
            "in_domain": req.name == task.name, "origin": origin, "n": len(examples),
            "n_unscored": int((labels < 0).sum()), "max_examples": req.max_examples,
            "where": {k: list(v) for k, v in (req.where if req.where is not None else req.eval_set.default_filter)}}
        with np.errstate(invalid="ignore"):  # unscored rows are NaN and stay so
            lp = log_softmax(pred.logits)
        for i, ex in enumerate(examples):
            out.predictions.append({
                "eval_set": req.name, "idx": ex.idx, "label": ex.label,
                "pred": int(labels[i]) if labels[i] >= 0 else None,
                "label_logprobs": _floats(lp[i]),
                "vocab_logprobs": _floats(pred.logits[i] - pred.log_norm[i]) if pred.log_norm is not None else None,
            })
    if inputs.unavailable:
        record["eval_sets_unavailable"] = inputs.unavailable


def _nothing_scored(name: str, n: int, record: dict) -> RunSkipped:
    """A run with an eval set of which no example was scored has no result for it -- a skip with the
    reason, not a NaN accuracy (which the record writer refuses) or a crash on every resume."""
    if not n:
        return RunSkipped(f"eval set {name!r} has no example to score")
    window = record.get("model", {}).get("window")
    context = record.get("method_info", {}).get("context_tokens")
    after = f" after the context of {context} tokens" if context else ""
    return RunSkipped(f"no example of eval set {name!r} fits the model's window of {window} tokens{after} "
                      f"(0 of {n} scored; no truncation is done)")


def run_and_save(run: RunSpec, plan: Plan, models: ModelPool, inputs: RunInputs | None = None) -> dict:
    """Execute one run and write its record while holding the run's claim: the unit of every executor
    (here, workers, jobs).  A run that another live writer holds is left to it (an unwritten record with
    status ``elsewhere`` says who); one that another writer finished since the sweep looked is not redone."""
    with _claimed(plan, run.run_id) as other:
        if other is not None:
            return _elsewhere(run, f"being run by another writer ({claims.describe(other)})")
        if not plan.force:
            rec = distributed.broadcast(records.read_record(plan.sweep_dir, run.run_id))
            if rec is not None and not needs_run(rec, plan.retry_failed):
                return _elsewhere(run, f"done by another writer meanwhile ({rec['status']})")
        outcome = execute(run, plan, models, inputs)
        save(plan, outcome)
        return outcome.record


def _elsewhere(run: RunSpec, reason: str) -> dict:
    """The console's note for a run this process did not execute (never written: the run's own record is
    the other writer's)."""
    return {"run_id": run.run_id, "status": "elsewhere", "spec": run.identity(), "costs": {}, "reason": reason}


@contextmanager
def _claimed(plan: Plan, run_id: str):
    """Rank 0 claims the run for all ranks of a launch; every rank gets the same answer."""
    if not distributed.is_main():
        yield distributed.broadcast(None)
        return
    with claims.holding(plan.sweep_dir, run_id) as other:
        yield distributed.broadcast(other)


def save(plan: Plan, outcome: RunOutcome) -> None:
    """Write the run's files (rank 0 only: under a launch the other ranks hold the same record).  The
    record names the predictions file's rows and SHA-256, so a reader can tell they belong together.  A
    finished run's training checkpoints go then (``--keep-checkpoints`` keeps them), and the failure notes of a
    launch that failed before."""
    if not distributed.is_main():
        return
    folder = records.run_dir(plan.sweep_dir, outcome.record["run_id"])
    text = "".join(records.dumps(row) + "\n" for row in outcome.predictions)
    outcome.record["predictions"] = {"rows": len(outcome.predictions),
                                     "sha256": hashlib.sha256(text.encode()).hexdigest()}
    records.atomic_write(os.path.join(folder, records.PREDICTIONS), text)
    records.atomic_write(os.path.join(folder, records.RESULT), records.dumps(outcome.record) + "\n")
    records.add_to_index(plan.sweep_dir, outcome.record)
    if outcome.record.get("status") == "ok":  # an earlier attempt's leftovers: its failure notes, checkpoints
        for path in _failure_notes(folder):
            with contextlib.suppress(OSError):
                os.unlink(path)
        remove_resume_state(folder)
        if not plan.runtime.keep_checkpoints:
            remove_checkpoints(folder)  # the record is written: a rerun has nothing to resume
