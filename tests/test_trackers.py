"""--log-with: what TensorBoard and MLflow received, read back from their own files."""

from __future__ import annotations

import glob
import os

import pytest

from .test_finetune import _ft_config
from .test_run import _records, _run

ICL_RUN = "include:\n  - {method: pbft, trainable: lora}\n  - {method: icl}\n"


@pytest.fixture
def no_mlflow_env(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)


@pytest.mark.slow  # ~20 s / ~11 s: the slow suite keeps the default one under ten minutes
def test_tensorboard_and_mlflow_get_one_run_per_run(tmp_path, data_dir, tiny_models, no_mlflow_env):
    pytest.importorskip("tensorboard")
    mlflow = pytest.importorskip("mlflow")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = _run(tmp_path, data_dir, _ft_config(tiny_models["llama"], ICL_RUN), "--log-with", "tensorboard,mlflow")
    assert result.exit_code == 0, result.output
    recs = {r["spec"]["method"]: r for r in _records(tmp_path)}
    pbft, icl = recs["pbft"], recs["icl"]
    folder = tmp_path / "results" / "t" / "trackers"

    # TensorBoard: one folder per run, named by its id and settings, with the per-step and final scalars
    runs = sorted(os.listdir(folder / "tensorboard"))
    assert runs == sorted([f"{pbft['run_id'][:8]} pbft lora k=8 seed=0", f"{icl['run_id'][:8]} icl k=8 seed=0"])
    events = EventAccumulator(str(folder / "tensorboard" / runs[[r.split()[1] for r in runs].index("pbft")]))
    events.Reload()
    losses = [e.value for e in events.Scalars("train/loss")]
    assert losses == pytest.approx(pbft["method_info"]["train_losses"], abs=1e-4)
    assert [e.step for e in events.Scalars("train/lr")] == [1, 2, 3, 4]
    history = pbft["method_info"]["history"]
    assert [e.step for e in events.Scalars("eval/rte/accuracy")] == [h["step"] for h in history] == [2, 4]
    assert events.Scalars("final/rte/accuracy")[0].value == pytest.approx(pbft["metrics"]["rte"]["all"]["accuracy"])
    assert events.Scalars("cost/train/seconds")[0].value == pytest.approx(pbft["costs"]["train"]["seconds"])

    # MLflow: the sweep is the experiment, a run per adaptbench run with its settings as parameters
    mlflow.set_tracking_uri("sqlite:///" + str(folder / "mlflow.db"))
    found = {r.info.run_name: r for r in mlflow.search_runs(experiment_names=["t"], output_format="list")}
    assert set(found) == set(runs)
    run = found[f"{pbft['run_id'][:8]} pbft lora k=8 seed=0"]
    assert run.data.params["run_id"] == pbft["run_id"] and run.data.params["lora.r"] == "8"
    assert run.data.tags["adaptbench.run_id"] == pbft["run_id"] and run.info.status == "FINISHED"
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "train/loss")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(
        pbft["method_info"]["train_losses"], abs=1e-4)
    icl_run = found[f"{icl['run_id'][:8]} icl k=8 seed=0"]
    assert icl_run.data.metrics["final/rte/accuracy"] == pytest.approx(icl["metrics"]["rte"]["all"]["accuracy"])
    assert "train/loss" not in icl_run.data.metrics


def test_unknown_or_missing_tracker_is_refused_before_any_run(tmp_path, data_dir, tiny_models):
    result = _run(tmp_path, data_dir, _ft_config(tiny_models["llama"]), "--log-with", "tensorbored")
    assert result.exit_code == 2 and "--log-with tensorbored: unknown tracker" in result.output
    assert not glob.glob(str(tmp_path / "results" / "t" / "runs" / "*"))

