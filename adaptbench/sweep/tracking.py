"""``--log-with tensorboard|mlflow|wandb|...``: one experiment-tracker run per adaptbench run.

People who fine-tune models watch their runs in TensorBoard, MLflow or W&B.  The trackers are
accelerate's (``accelerate.tracking``), so every tracker accelerate supports works, configured as its
users know it (``MLFLOW_TRACKING_URI``, ``WANDB_MODE=offline``, ...).  Each adaptbench run becomes one
tracker run, named ``<run id> <method> <trainable> k=<shots> seed=<seed>``, with the run's settings as
its parameters, per optimizer step ``train/loss`` and ``train/lr``, per evaluation point
``eval/<eval set>/<metric>``, and at the end the record's metrics (``final/<eval set>/<metric>``), costs
(``cost/<phase>/seconds`` and ``cost/<phase>/peak_memory_gib``) and status.

Where the files go, unless the tracker's own settings say otherwise: TensorBoard event files in
``<sweep>/trackers/tensorboard/<run name>/``; MLflow into ``sqlite:///<sweep>/trackers/mlflow.db``
(experiment = the sweep's name) when ``MLFLOW_TRACKING_URI`` is unset.  A tracker that fails while a
run is going (a server gone away) is dropped with a warning: it never fails the run.
"""

from __future__ import annotations

import os
import warnings

from .._util.secrets import redact
from ..errors import ConfigError
from ..store.record import load_record

#: Where each tracker package comes from, for the message when it is missing.
INSTALL = {"tensorboard": "tensorboard", "mlflow": "mlflow-skinny sqlalchemy alembic", "wandb": "wandb",
           "comet_ml": "comet-ml", "aim": "aim", "clearml": "clearml", "dvclive": "dvclive", "swanlab": "swanlab",
           "trackio": "trackio"}


def check_trackers(names: list[str]) -> None:
    """Every name is a tracker accelerate knows and whose package is installed (before any model loads)."""
    if not names:
        return
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, _available_trackers

    available = {str(t) for t in _available_trackers}
    for name in names:
        if name not in LOGGER_TYPE_TO_CLASS:
            raise ConfigError(f"--log-with {name}: unknown tracker; accelerate's trackers are "
                              f"{', '.join(sorted(LOGGER_TYPE_TO_CLASS))}")
        if name not in available:
            raise ConfigError(f"--log-with {name}: its package is not installed (pip install {INSTALL.get(name, name)},"
                              f" or pip install 'adaptbench[trackers]' for TensorBoard and MLflow)")


def run_name(run) -> str:
    """The tracker run's name: the run id and the settings a reader tells runs apart by."""
    parts = [run.run_id[:8], run.method, run.trainable or "", f"k={run.shots}", f"seed={run.data_seed}"]
    return " ".join(p for p in parts if p)


def _flat(values: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        elif isinstance(value, (bool, int, float, str)) or value is None:
            out[f"{prefix}{key}"] = "" if value is None else value
        else:
            out[f"{prefix}{key}"] = str(value)
    return out


class RunTrackers:
    """The tracker runs of one adaptbench run (none when no tracker is asked for: every call is a no-op)."""

    def __init__(self, trackers: list | None = None):
        self.trackers = list(trackers or [])

    @classmethod
    def open(cls, names: list[str], sweep_dir: str, sweep_name: str, run) -> RunTrackers:
        if not names:
            return cls()
        from accelerate.state import PartialState

        PartialState()  # accelerate's trackers log through its logger, which needs the state (ICL runs train nothing)
        name, folder = run_name(run), os.path.join(sweep_dir, "trackers")
        os.makedirs(folder, exist_ok=True)
        out = cls()
        for kind in names:
            try:
                out.trackers.append(_make(kind, sweep_name, name, folder, run.run_id))
            except Exception as e:  # e.g. a tracking server that cannot be reached
                warnings.warn(f"tracker {kind}: not logging this run ({type(e).__name__}: {e})")
        for tracker in list(out.trackers):
            out._call(tracker, "start")
        config = {"run_id": run.run_id, **{k: redact(v) if isinstance(v, str) else v
                                           for k, v in _flat(run.identity()).items()}}
        for tracker in list(out.trackers):
            out._call(tracker, "store_init_configuration", config)
        return out

    def step(self, step: int, values: dict) -> None:
        """Per optimizer step / evaluation point: numbers only (nested dicts become ``a/b`` names)."""
        flat = {k.replace(".", "/"): v for k, v in _flat(values).items() if isinstance(v, (int, float))
                and not isinstance(v, bool)}
        for tracker in list(self.trackers):
            self._call(tracker, "log", flat, step=step)

    def finish(self, record: dict) -> None:
        """The record's metrics and costs, then close every tracker run."""
        if not self.trackers:
            return
        rec = load_record(record)
        values = {"status/ok": float(rec.status == "ok")}
        for eval_set, slices in rec.metrics.items():
            if "all" in slices:
                for metric, value in slices["all"].model_dump(exclude_none=True).items():
                    if isinstance(value, (int, float)) and metric != "n":
                        values[f"final/{eval_set}/{metric}"] = value
        for phase, cost in rec.costs.items():
            values[f"cost/{phase}/seconds"] = cost.seconds
            values[f"cost/{phase}/peak_memory_gib"] = cost.peak_memory_bytes / 2**30
        steps = getattr(rec.method_info, "steps", None)
        for tracker in list(self.trackers):
            self._call(tracker, "log", values, step=steps or 0)
            self._call(tracker, "finish")
        self.trackers = []

    def _call(self, tracker, method: str, *args, **kwargs) -> None:
        try:
            getattr(tracker, method)(*args, **kwargs)
        except Exception as e:  # a tracker is an observer: its failure is reported, never the run's
            warnings.warn(f"tracker {tracker.name}: {method} failed ({type(e).__name__}: {e}); not logging to it "
                          f"for this run")
            if tracker in self.trackers:
                self.trackers.remove(tracker)


def _make(kind: str, project: str, name: str, folder: str, run_id: str):
    """accelerate's tracker ``kind`` for one run (not started)."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    cls = LOGGER_TYPE_TO_CLASS[kind]
    if kind == "tensorboard":
        return cls(name, os.path.join(folder, "tensorboard"))
    if kind == "mlflow":
        if "MLFLOW_TRACKING_URI" not in os.environ:
            import mlflow

            mlflow.set_tracking_uri("sqlite:///" + os.path.abspath(os.path.join(folder, "mlflow.db")))
        return cls(experiment_name=project, run_name=name, tags={"adaptbench.run_id": run_id})
    if kind == "wandb":
        return cls(project, name=name, dir=folder, reinit="finish_previous")
    if cls.requires_logging_directory:
        return cls(project, os.path.join(folder, kind))
    return cls(project)
