"""Run a sweep: each run goes data -> sample -> model -> method.fit -> predict per eval set -> record.

Every run ends in a record -- ok, skipped (with the reason) or failed (with the error) -- written
atomically into its own folder; the sweep goes on after a failure.  Re-running a sweep skips runs
that have a record (``force`` reruns them, ``retry_failed`` reruns failures) and redoes runs whose
process died before writing one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import gc
import hashlib
import json
import os
import sys
import time
import traceback
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import transformers

from . import claims, distributed, owners, records
from .api_runs import ApiPromptEncoder, check_endpoints, is_api, load_api_model
from .api_runs import client as api_client
from .config import RunSpec, RuntimeOptions, SweepConfig, expand, load_raw
from .settings import ModelSpec
from .costs import CostTracker
from .environment import environment
from .fingerprint import resolve_run
from .errors import AdaptbenchError, Notice, PromptError, ResultsWriteError, RunSkipped
from .methods import METHODS, RunContext
from .metrics import eval_set_metrics
from .models import GGUFSnapshots, LoadedModel, check_findable, load_tokenizer, pick_device
from .precision import annotate_phases, training_model_spec
from .progress import make_progress
from .prompts import PromptEncoder
from .resolve import RunInputs, load_inputs
from .sampling import few_shot_sample
from .scoring import log_softmax
from .tracking import RunTrackers, check_trackers


@dataclass
class Plan:
    sweep: SweepConfig
    runs: list[RunSpec]
    config_dir: str
    runtime: RuntimeOptions
    raw: dict = field(default_factory=dict)  # the config as read, overrides applied
    force: bool = False  # rerun runs that have a record
    retry_failed: bool = False  # rerun runs recorded as failed

    @property
    def sweep_dir(self) -> str:
        return os.path.join(self.sweep.output_dir, self.sweep.name)

    def quiet(self) -> Plan:
        """This plan without progress bars (for worker processes and jobs, whose output interleaves)."""
        return dataclasses.replace(self, runtime=self.runtime.model_copy(update={"progress": False}))


def make_plan(config: str, overrides: list[str] = (), output_dir: str | None = None,
              data_dir: str | None = None, batch_size: int | None = None, log_with: list[str] | None = None,
              device: str | None = None) -> Plan:
    """Load and expand a config; command-line options override the file's ``runtime``/``output_dir``.
    ``device`` (cpu or cuda) is where the runs will execute, for what ``dtype: auto`` resolves to (default:
    this machine's; Slurm jobs with GPUs submitted from a login node pass cuda)."""
    extra = list(overrides)
    # paths as JSON strings: overrides are YAML, where `results #2` would lose its comment and `2024` be a number
    if output_dir is not None:
        extra.append(f"output_dir={json.dumps(output_dir)}")
    if data_dir is not None:
        extra.append(f"runtime.data_dir={json.dumps(os.path.abspath(data_dir))}")
    if batch_size is not None:
        extra.append(f"runtime.batch_size={batch_size}")
    if log_with is not None:
        extra.append(f"runtime.log_with={json.dumps(log_with)}")
    raw = load_raw(config, extra)
    sweep, runs = expand(raw, config)
    config_dir = os.path.dirname(os.path.abspath(config))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    runs = [resolve_run(r, config_dir, device if r.model.device == "auto" else r.model.device.split(":")[0])
            for r in runs]
    return Plan(sweep, runs, config_dir, sweep.runtime, raw)


class ModelPool:
    """Holds at most one model, so every run's memory is that of one model plus what the run needs.

    Methods that only read the model (ICL) reuse the loaded model across runs.  A method that trains
    gets a model loaded for it alone (the held one is freed first): keeping a clean copy beside it
    would add a model's size to the training runs' measured peak memory.  A model read from a GGUF
    file is dequantized once and snapshotted as safetensors in a temporary folder, so reloading it is
    quick.
    """

    def __init__(self):
        self.spec: ModelSpec | None = None
        self.held: LoadedModel | None = None
        self.snapshots = GGUFSnapshots()

    def get(self, spec: ModelSpec, fresh: bool) -> tuple[LoadedModel, bool]:
        """(model, reused).  ``fresh``: the caller will change the weights, so it gets its own."""
        if not fresh and self.spec == spec and self.held is not None:
            return self.held, True
        self.spec = self.held = None  # free the held model before loading another
        gc.collect()
        loaded = self.load(spec)
        if not fresh:
            self.spec, self.held = spec, loaded
        return loaded, False

    def load(self, spec: ModelSpec) -> LoadedModel:
        """A model of its own (not held): local weights, or the client of an api model."""
        return load_api_model(spec) if spec.api is not None else self.snapshots.load(spec)


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
    record: dict = {"run_id": run.run_id, "sweep": plan.sweep.name, "status": "running", "spec": run.identity(),
                    "started_at": _now(), "writer": owners.me()}
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


def stop_launch(plan: Plan, record: dict, costs: CostTracker) -> None:
    """A run failed on this rank of a multi-process launch: write the record here and end the process.

    The other ranks may be waiting in a collective (a gradient all-reduce) that this rank will never join;
    going on would leave them hanging until the backend's timeout.  Exiting lets the launcher (torchrun,
    accelerate) stop them at once.  Each failing rank leaves a note; the record names every rank's reason,
    the first to fail first (a rank that fails because its peer vanished comes after the cause)."""
    rank, folder = distributed.rank(), records.run_dir(plan.sweep_dir, record["run_id"])
    records.atomic_write(os.path.join(folder, f"rank{rank}-failure.json"),
                         records.dumps({"rank": rank, "reason": record["reason"], "at": time.time()}) + "\n")
    started = dt.datetime.fromisoformat(record["started_at"]).timestamp() - 1
    notes = []
    for name in os.listdir(folder):
        if name.startswith("rank") and name.endswith("-failure.json"):
            with contextlib.suppress(OSError, ValueError), open(os.path.join(folder, name), encoding="utf-8") as f:
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
    teacher = record.get("method_info", {}).get("teacher_dtype")
    annotate_phases(record["costs"], dtypes[record["model"]["dtype"]], train and train.get("mixed_precision"),
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
    encoder = (ApiPromptEncoder(api_client(run.model, plan.runtime), inputs.prompt, task.labels.names)
               if is_api(loaded) else PromptEncoder(loaded.tokenizer, inputs.prompt, task.labels.names))
    p = inputs.prompt
    record["prompt"] = {"pattern": p.pattern, "target_prefix": p.target_prefix, "separator": p.separator,
                        "verbalizer": list(p.verbalizer), "instruction": p.instruction,
                        "label_token_ids": encoder.label_token_ids, "label_tokens": encoder.label_tokens}
    record["model"] = {"name": run.model.name, "source": loaded.source, "dtype": str(loaded.dtype).replace("torch.", ""),
                       "device": str(loaded.device), "window": loaded.window, "n_params": loaded.n_params,
                       "pad_token_from": loaded.pad_token_from, **loaded.info}
    transformers.set_seed(run.train_seed)
    ctx = RunContext(run, task, loaded, encoder, sample, inputs.pool, costs, plan.runtime,
                     make_progress(plan.runtime.progress and distributed.is_main()),
                     evals=[(req.name, req.eval_set, examples) for req, examples, _ in inputs.evals],
                     out_dir=records.run_dir(plan.sweep_dir, run.run_id), config_dir=plan.config_dir,
                     load_model=models.load, tracker=trackers)
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
    record names the predictions file's rows and SHA-256, so a reader can tell they belong together."""
    if not distributed.is_main():
        return
    folder = records.run_dir(plan.sweep_dir, outcome.record["run_id"])
    text = "".join(records.dumps(row) + "\n" for row in outcome.predictions)
    outcome.record["predictions"] = {"rows": len(outcome.predictions),
                                     "sha256": hashlib.sha256(text.encode()).hexdigest()}
    records.atomic_write(os.path.join(folder, records.PREDICTIONS), text)
    records.atomic_write(os.path.join(folder, records.RESULT), records.dumps(outcome.record) + "\n")
    records.add_to_index(plan.sweep_dir, outcome.record)


def needs_run(rec: dict | None, retry_failed: bool) -> bool:
    return rec is None or (retry_failed and rec["status"] == "failed")


def pending(plan: Plan, force: bool = False, retry_failed: bool = False) -> tuple[list[RunSpec], list[dict]]:
    """Runs still to do, and the records of those already done."""
    todo, done = [], []
    for run in plan.runs:
        rec = None if force else records.read_record(plan.sweep_dir, run.run_id)
        if needs_run(rec, retry_failed):
            todo.append(run)
        else:
            done.append(rec)
    return todo, done


def _inputs_key(run: RunSpec) -> str:
    """Runs with equal task, prompt and eval settings read the same data."""
    return records.dumps(run.model_dump(mode="json", include={"task", "prompt", "eval"}))


def run_inputs(plan: Plan, runs: list[RunSpec]) -> dict[str, RunInputs]:
    """Each run's data, read once per distinct task/prompt/eval settings."""
    by_key: dict[str, RunInputs] = {}
    out = {}
    for run in runs:
        key = _inputs_key(run)
        if key not in by_key:
            by_key[key] = load_inputs(run, plan.runtime, plan.config_dir)
        out[run.run_id] = by_key[key]
    return out


def preflight(plan: Plan, runs: list[RunSpec]) -> dict[str, RunInputs]:
    """Load and validate every run's data before any model is loaded (bad input fails the sweep now)."""
    for run in runs:
        METHODS[run.method].preflight(run, plan.config_dir)
    out = run_inputs(plan, runs)
    check_models(runs)
    check_verbalizers(runs, out)
    check_endpoints(runs, out, plan.runtime)
    return out


def check_models(runs: list[RunSpec]) -> None:
    """Every model (and teacher) can be found -- a typo stops the sweep once, with a suggestion, instead of
    failing every run after a minute of hub retries each; a model given trust_remote_code is named."""
    seen = set()
    for run in runs:
        teacher = run.cd.teacher if run.cd is not None else None
        for spec in (s for s in (run.model, teacher) if s is not None and s not in seen):
            seen.add(spec)
            check_findable(spec)
            if spec.trust_remote_code:
                warnings.warn(f"model {spec.name!r} has trust_remote_code: true -- Python code from its folder or hub "
                              f"repository will run on this machine with your permissions; set it only for code "
                              f"you trust", Notice, stacklevel=1)


def check_verbalizers(runs: list[RunSpec], inputs: dict[str, RunInputs]) -> None:
    """Each verbalizer word one token of its model's tokenizer, no two words one token: checked with the
    tokenizers alone, so a bad verbalizer stops the sweep before any model loads (a tokenizer that cannot
    be loaded is left to the run, which fails with the reason)."""
    tokenizers: dict = {}
    for run in runs:
        prompt, labels = inputs[run.run_id].prompt, inputs[run.run_id].task.labels.names
        teacher = run.cd.teacher if run.cd is not None else None
        for spec in [s for s in (run.model, teacher) if s is not None and s.api is None]:
            key = (spec.name, spec.gguf_file, spec.tokenizer, spec.revision)
            if key not in tokenizers:
                try:
                    tokenizers[key] = load_tokenizer(spec)
                except AdaptbenchError:
                    tokenizers[key] = None
            if tokenizers[key] is not None:
                try:
                    PromptEncoder(tokenizers[key], prompt, labels)
                except PromptError as e:
                    raise PromptError(f"prompt.verbalizer for model {spec.name!r}: {e}") from None


def api_requests(plan: Plan, runs: list[RunSpec]) -> list[tuple[RunSpec, dict]]:
    """For ``--dry-run``: per run that calls an api model, the requests it would send (those not in the
    response cache) and about how many prompt tokens -- nothing is sent."""
    from .api_runs import api_specs, planned_requests

    calling = [run for run in runs if api_specs(run)]
    inputs = run_inputs(plan, calling)
    return [(run, planned_requests(run, inputs[run.run_id], plan.runtime)) for run in calling]


def run_sweep(plan: Plan, force: bool = False, retry_failed: bool = False, on_record=None,
              jobs: int = 1, executor: str | None = None, executor_options: dict | None = None) -> list[dict]:
    """Execute the pending runs of a plan -- here (``jobs`` processes) or as submitit jobs (``executor``:
    local or slurm); returns the records of its runs that are done, in plan order (not those that another
    writer is running: their records appear in the folder when it finishes them)."""
    plan = dataclasses.replace(plan, force=force, retry_failed=retry_failed)
    todo, done = pending(plan, force, retry_failed)
    if distributed.active():  # every rank must walk the same runs: rank 0 decides which
        todo_ids = distributed.broadcast([r.run_id for r in todo])
        todo = [r for r in plan.runs if r.run_id in set(todo_ids)]
        if jobs > 1:
            raise AdaptbenchError("--jobs and a multi-process launch do not mix: use one or the other")
    check_trackers(plan.runtime.log_with)
    inputs = preflight(plan, todo)
    if distributed.is_main():
        try:
            os.makedirs(plan.sweep_dir, exist_ok=True)
            records.remove_stale_temp_files(plan.sweep_dir)
            records.rebuild_index(plan.sweep_dir)
        except OSError as e:  # read-only, a file in the way, no space: before any run, naming the folder
            raise ResultsWriteError(f"cannot write the results folder {plan.sweep_dir}: {e.strerror or e} "
                                    f"(set output_dir, or --output-dir, to a folder you can write)") from None
        records.atomic_write(os.path.join(plan.sweep_dir, "sweep.json"),
                             records.dumps({"config": plan.raw, "runs": [r.run_id for r in plan.runs]}) + "\n")
    if executor is not None:
        from .jobs import submit

        fresh = submit(plan, todo, executor, {"jobs": jobs, **(executor_options or {})}, on_record)
    elif jobs > 1 and len(todo) > 1:
        from .parallel import run_parallel

        fresh = run_parallel(plan, todo, jobs, on_record)
    else:
        models = ModelPool()
        fresh = []
        for i, run in enumerate(todo):
            fresh.append(run_and_save(run, plan, models, inputs[run.run_id]))
            distributed.barrier()  # the record is written before any rank moves on
            if on_record is not None:
                on_record(i + 1, len(todo), fresh[-1])
    by_id = {r["run_id"]: r for r in done + fresh if r["status"] in records.FINISHED}
    for run in plan.runs:  # runs another writer did meanwhile
        if run.run_id not in by_id and (rec := records.read_record(plan.sweep_dir, run.run_id)) is not None:
            by_id[run.run_id] = rec
    return [by_id[run.run_id] for run in plan.runs if run.run_id in by_id]
