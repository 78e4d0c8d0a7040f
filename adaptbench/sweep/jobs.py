"""``--executor slurm|local``: every pending run as a job through ``submitit``.

The same function runs a job on a Slurm node and in a local subprocess: execute the run, write its
record.  Results land in the sweep folder as always, so resuming is unchanged: submitting the same
command again submits only runs without a record -- and not those whose job is still queued or
running (its id is kept in ``runs/<id>/job.json``).
"""

from __future__ import annotations

import json
import os
import time

from .._util import owners
from ..errors import AdaptbenchError
from ..store import records


def run_job(plan, run, parent: dict | None = None) -> dict:
    """A job's body: one run, its record written.  Returns the record (kept by submitit too).  A local
    job ends itself when ``parent`` (the sweep that started it) dies, so no orphan races a rerun."""
    from ..models.pool import ModelPool
    from .execute import run_and_save

    if parent is not None:
        owners.exit_when_gone(parent)

    return run_and_save(run, plan, ModelPool())


def _marker(plan, run_id: str) -> str:
    return os.path.join(records.run_dir(plan.sweep_dir, run_id), "job.json")


def _in_flight(plan, run_id: str, folder: str) -> bool:
    """Whether a job submitted earlier for this run is still queued or running."""
    try:
        with open(_marker(plan, run_id)) as f:
            info = json.load(f)
    except (OSError, json.JSONDecodeError):
        return False
    if info.get("executor") == "slurm":
        import submitit

        state = submitit.SlurmJob(folder=folder, job_id=info["job_id"]).state
        return state in ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED")
    return False  # local jobs end with the command that started them


def make_executor(kind: str, folder: str, options: dict):
    try:
        import submitit
    except ImportError:
        raise AdaptbenchError("--executor needs the package submitit: pip install submitit") from None

    if kind == "local":
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=options.get("time_limit") or 60 * 24)
        return executor
    if kind == "slurm":
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        params = {"timeout_min": options.get("time_limit") or 60 * 24, "gpus_per_node": options.get("gpus", 1),
                  "tasks_per_node": 1, "nodes": 1, "name": "adaptbench",
                  "slurm_array_parallelism": options.get("array_parallelism") or 64}
        if options.get("partition"):
            params["slurm_partition"] = options["partition"]
        executor.update_parameters(**params)
        return executor
    raise AdaptbenchError(f"unknown executor {kind!r}: use local or slurm")


def submit(plan, todo: list, kind: str, options: dict, on_record=None) -> list[dict]:
    """Submit the runs as jobs.  Local jobs run ``options['jobs']`` at a time and are waited for;
    Slurm jobs are submitted as one array and waited for only with ``options['wait']``."""
    folder = os.path.join(plan.sweep_dir, "jobs")
    todo = [r for r in todo if not _in_flight(plan, r.run_id, folder)]
    if not todo:
        return []
    executor = make_executor(kind, folder, options)
    quiet = plan.quiet()
    if kind == "local":
        return _rolling(executor, quiet, todo, max(1, options.get("jobs", 1)), on_record)
    jobs = executor.map_array(run_job, [quiet] * len(todo), todo)
    for run, job in zip(todo, jobs):
        records.atomic_write(_marker(plan, run.run_id), json.dumps(
            {"executor": kind, "job_id": job.job_id, "submitted_at": time.time()}) + "\n")
    if not options.get("wait"):
        return []
    return _collect(jobs, on_record)


def visible_gpus() -> list[int]:
    """This process' GPUs as the machine numbers them (submitit sets CUDA_VISIBLE_DEVICES for a local
    job from these numbers; by default it would hide every GPU)."""
    import torch

    n = torch.cuda.device_count()
    shown = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if shown and all(d.isdigit() for d in shown):
        return [int(d) for d in shown][:n]
    return list(range(n))


def _rolling(executor, plan, todo: list, width: int, on_record) -> list[dict]:
    """Keep ``width`` local jobs running until every run is done; with GPUs, each job gets one GPU of its
    own while there are enough, all of them when one job runs at a time."""
    gpus, parent = visible_gpus(), owners.me()
    waiting, running, finished = list(todo), {}, []
    while waiting or running:
        while waiting and len(running) < width:
            free = [g for g in gpus if g not in running.values()]
            if width == 1 or not gpus:
                mine = gpus
            else:  # more jobs than GPUs: they share, round robin
                mine = [free[0] if free else gpus[len(running) % len(gpus)]]
            executor.update_parameters(gpus_per_node=len(mine), visible_gpus=tuple(mine))
            running[executor.submit(run_job, plan, waiting.pop(0), parent)] = mine[0] if len(mine) == 1 else None
        time.sleep(0.2)
        for job in [j for j in running if j.done()]:
            del running[job]
            finished += _collect([job], None)
            if on_record is not None:
                on_record(len(finished), len(todo), finished[-1])
    return finished


def _collect(jobs: list, on_record) -> list[dict]:
    out = []
    for job in jobs:
        try:
            out.append(job.result())
        except Exception as e:  # the job died (killed, node failure): its run has no record, a rerun redoes it
            raise AdaptbenchError(f"job {job.job_id} failed: {str(e).splitlines()[-1] if str(e) else e}; "
                                  f"its log is in {job.paths.stderr}. Run the same command again to redo it") from None
        if on_record is not None:
            on_record(len(out), len(jobs), out[-1])
    return out
