"""Run a sweep: each run goes data -> sample -> model -> method.fit -> predict per eval set -> record.

Every run ends in a record -- ok, skipped (with the reason) or failed (with the error) -- written
atomically into its own folder; the sweep goes on after a failure.  Re-running a sweep skips runs
that have a record (``force`` reruns them, ``retry_failed`` reruns failures) and redoes runs whose
process died before writing one.
"""

from __future__ import annotations

import dataclasses
import os

from .._util import distributed
from ..errors import AdaptbenchError, ResultsWriteError
from ..models.pool import ModelPool
from ..store import records
from . import claims
from .execute import run_and_save
from .plan import Plan, pending
from .preflight import preflight
from .tracking import check_trackers


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
            claims.remove_stale_claims(plan.sweep_dir, [r["run_id"] for r in done])
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
