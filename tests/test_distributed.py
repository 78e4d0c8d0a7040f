"""Scale-out on this CPU machine: two processes with gloo, the FSDP/DeepSpeed config files, submitit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .conftest import REPO, write_config
from .test_run import _records, _run

CONFIG = """# adaptbench run sweep.yaml
name: t
model: {model}
task: rte
shots: 8
data_seeds: [0]
train: {{max_steps: 4, batch_size: 4, lr: 1.0e-3, warmup_ratio: 0.0, schedule: constant}}
eval: {{max_examples: 12}}
runtime: {{progress: false}}
include:
  - {{method: pbft, trainable: full}}
  - {{method: icl}}
"""


def _launch(tmp: Path, data_dir: str, config: str, out: Path, *launch_args: str,
            run_args: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`accelerate launch ... -m adaptbench run` with 2 processes.  On a machine without GPUs accelerate's
    --cpu launcher starts one process, so --multi_gpu does the spawning (torchrun) and adaptbench
    joins a gloo process group on the CPU."""
    launcher = [sys.executable, "-m", "accelerate.commands.launch"]
    args = list(launch_args) or ["--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                                 "--mixed_precision", "no", "--dynamo_backend", "no"]
    env = {**os.environ, "ADAPTBENCH_DATA_DIR": data_dir, "OMP_NUM_THREADS": "1"}
    cmd = launcher + args + ["-m", "adaptbench", "run", config, "--output-dir", str(out), *run_args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _by_method(folder: Path) -> dict[str, dict]:
    return {json.loads(line)["spec"]["method"]: json.loads(line) for line in (folder / "results.jsonl").open()}


def _predictions(folder: Path, run_id: str) -> list[dict]:
    return [json.loads(line) for line in (folder / "runs" / run_id / "predictions.jsonl").open()]


def test_two_processes_equal_one(tmp_path, data_dir, tiny_models):
    """Same global batch (train.batch_size is global), 2 ranks vs 1: losses within 1e-4 (only the order of
    floating-point reductions differs), identical predicted labels, identical metrics."""
    config = write_config(tmp_path, CONFIG.format(model=tiny_models["llama"]))
    done = _launch(tmp_path, data_dir, config, tmp_path / "multi")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert _run(tmp_path, data_dir, CONFIG.format(model=tiny_models["llama"])).exit_code == 0
    multi, single = _by_method(tmp_path / "multi" / "t"), _by_method(tmp_path / "results" / "t")
    assert len((tmp_path / "multi" / "t" / "results.jsonl").read_text().splitlines()) == 2  # one record per run
    for method in ("pbft", "icl"):
        m, s = multi[method], single[method]
        assert m["run_id"] == s["run_id"] and m["metrics"] == s["metrics"]
        pm, ps = _predictions(tmp_path / "multi" / "t", m["run_id"]), _predictions(tmp_path / "results" / "t",
                                                                                   s["run_id"])
        assert [p["pred"] for p in pm] == [p["pred"] for p in ps]
        diff = max(np.abs(np.array(a["label_logprobs"]) - np.array(b["label_logprobs"])).max() for a, b in zip(pm, ps))
        assert diff < 1e-4
        ranks = m["costs"]["predict:rte"]["ranks"]
        assert ranks["n"] == 2 and ranks["peak_memory_bytes_sum"] >= ranks["peak_memory_bytes_max"] > 0
    np.testing.assert_allclose(multi["pbft"]["method_info"]["train_losses"],
                               single["pbft"]["method_info"]["train_losses"], atol=1e-4)
    assert multi["pbft"]["method_info"]["processes"] == 2
    assert multi["pbft"]["method_info"]["distributed_type"] == "MULTI_CPU"


@pytest.mark.parametrize("name,kind", [("ddp", "MULTI_GPU"), ("fsdp", "FSDP"), ("deepspeed_zero3", "DEEPSPEED")])
def test_accelerate_config_files(name, kind):
    from accelerate.commands.config.config_args import load_config_from_file

    path = REPO / "configs" / "accelerate" / f"{name}.yaml"
    assert path.read_text().startswith("# accelerate launch --config_file")
    config = load_config_from_file(str(path))
    assert str(config.distributed_type).endswith(kind)


@pytest.mark.slow
def test_fsdp_config_on_cpu_runs_data_parallel_and_says_so(tmp_path, data_dir, tiny_models):
    """accelerate has no FSDP on CPU: the FSDP config's launch still trains (data-parallel, gloo) and
    the record says what actually ran; a warning says FSDP was not used."""
    fsdp = (REPO / "configs/accelerate/fsdp.yaml").read_text().replace("num_processes: 8", "num_processes: 2")
    fsdp = fsdp.replace("mixed_precision: bf16", 'mixed_precision: "no"')
    (tmp_path / "fsdp.yaml").write_text(fsdp)
    config = write_config(tmp_path, CONFIG.format(model=tiny_models["opt"]))
    done = _launch(tmp_path, data_dir, config, tmp_path / "out", "--config_file", str(tmp_path / "fsdp.yaml"))
    assert done.returncode == 0, done.stderr[-3000:]
    rec = _by_method(tmp_path / "out" / "t")["pbft"]
    assert rec["status"] == "ok" and rec["method_info"]["distributed_type"] == "MULTI_CPU"
    assert "asks for FSDP but accelerate runs MULTI_CPU" in done.stderr


def test_submitit_local_executor_and_resume(tmp_path, data_dir, tiny_models):
    text = CONFIG.format(model=tiny_models["gpt2"])
    result = _run(tmp_path, data_dir, text, "--executor", "local", "--jobs", "2")
    assert result.exit_code == 0, result.output
    recs = _records(tmp_path)
    assert len(recs) == 2 and {r["status"] for r in recs} == {"ok"}
    assert list((tmp_path / "results" / "t" / "jobs").glob("*_log.out"))  # they ran as submitit jobs
    again = _run(tmp_path, data_dir, text, "--executor", "local")
    assert again.exit_code == 0 and "2 already done, 0 to run" in again.output
    assert _records(tmp_path) == recs
