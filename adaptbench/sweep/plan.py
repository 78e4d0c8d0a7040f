"""A sweep's plan: its config, loaded and expanded into runs with their resolved identity, and which of
them still have to run (a run with a record is done; ``force`` reruns it, ``retry_failed`` reruns failures).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

import torch

from .. import methods  # noqa: F401  (registers the methods, policies and settings blocks config reads)
from ..config.expand import expand
from ..config.reading import load_raw
from ..config.schema import RunSpec, RuntimeOptions, SweepConfig
from ..store import records
from .identity import resolve_run


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
