"""``--jobs N``: independent runs in N worker processes on one machine.

Each worker has its own model pool and, where several GPUs exist, its own GPU (worker i sees GPU
i mod n); on CPU the cores are shared out between workers.  Workers write their records themselves
(atomically, the index under a file lock, each run claimed first), so a killed sweep resumes the same way
as a sequential one; workers end themselves within a second of the sweep's death.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool

import torch

from .._util import owners
from ..errors import AdaptbenchError

_POOL = None  # the worker's ModelPool


def _init_worker(counter, gpus: int, threads: int, parent: dict) -> None:
    global _POOL
    owners.exit_when_gone(parent)  # a killed sweep leaves no worker behind to race its rerun
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    if gpus > 1:  # before anything touches CUDA in this process
        os.environ["CUDA_VISIBLE_DEVICES"] = str(index % gpus)
    torch.set_num_threads(threads)
    from ..models.pool import ModelPool

    _POOL = ModelPool()


def _run_one(plan, run) -> dict:
    from .execute import run_and_save

    return run_and_save(run, plan, _POOL)


def run_parallel(plan, todo: list, jobs: int, on_record=None) -> list[dict]:
    """Execute ``todo`` in ``jobs`` processes; returns the new records in the order they finished."""
    quiet = plan.quiet()
    gpus = torch.cuda.device_count()
    threads = torch.get_num_threads() if gpus else max(1, (os.cpu_count() or 1) // jobs)
    ctx = mp.get_context("spawn")  # fresh interpreters: no CUDA or thread-pool state inherited
    counter = ctx.Value("i", 0)
    finished = []
    try:
        with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker,
                                 initargs=(counter, gpus, threads, owners.me())) as pool:
            futures = [pool.submit(_run_one, quiet, run) for run in todo]
            for i, future in enumerate(as_completed(futures)):
                finished.append(future.result())
                if on_record is not None:
                    on_record(i + 1, len(todo), finished[-1])
    except BrokenProcessPool as e:
        raise AdaptbenchError(f"a worker process died ({e}); {len(finished)} of {len(todo)} runs finished and "
                              f"are kept: run the same command again to do the rest") from None
    return finished
