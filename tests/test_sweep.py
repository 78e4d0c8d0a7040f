"""Sweeps: a killed sweep resumes with every run done exactly once; parallel workers; stale temp files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from adaptbench._util import owners
from adaptbench.store import records

from .conftest import REPO, write_config
from .test_run import _config as _run_config
from .test_run import _run


def _config(model: str, seeds: int) -> str:
    return _run_config(model, seeds=seeds, max_examples=16)


def _index(sweep: Path) -> list[dict]:
    text = (sweep / "results.jsonl").read_text()
    assert text == "" or text.endswith("\n")  # never a partial last line
    return [json.loads(line) for line in text.splitlines()]


def test_sigkill_mid_sweep_then_resume(tmp_path, data_dir, tiny_models):
    config = write_config(tmp_path, _config(tiny_models["llama"], 6))
    out = tmp_path / "results"
    sweep = out / "t"
    env = {**os.environ, "ADAPTBENCH_DATA_DIR": data_dir}
    cmd = [sys.executable, "-m", "adaptbench", "run", config, "--output-dir", str(out)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and len(list(sweep.glob("runs/*/result.json"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # mid-way: typically inside the third run
    proc.wait()
    done_before = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("runs/*/result.json")}
    assert 2 <= len(done_before) < 6, "the sweep finished before it could be killed"
    index = _index(sweep)
    assert len({r["run_id"] for r in index}) == len(index)  # no duplicates
    assert {r["run_id"] for r in index} <= set(done_before)

    result = _run(tmp_path, data_dir, _config(tiny_models["llama"], 6))  # the same command again
    assert result.exit_code == 0, result.output
    assert f"{len(done_before)} already done, {6 - len(done_before)} to run" in result.output
    index = _index(sweep)
    assert len(index) == 6 and len({r["run_id"] for r in index}) == 6 and {r["status"] for r in index} == {"ok"}
    for run_id, before in done_before.items():  # finished runs were not run again
        after = json.loads((sweep / "runs" / run_id / "result.json").read_text())
        assert after["started_at"] == before["started_at"] and after["finished_at"] == before["finished_at"]
    assert not [p for p in sweep.rglob(".tmp-*")]


def test_parallel_jobs(tmp_path, data_dir, tiny_models):
    result = _run(tmp_path, data_dir, _config(tiny_models["opt"], 4), "--jobs", "2")
    assert result.exit_code == 0, result.output
    index = _index(tmp_path / "results" / "t")
    assert len(index) == 4 and len({r["run_id"] for r in index}) == 4 and {r["status"] for r in index} == {"ok"}
    serial = tmp_path / "serial"
    serial.mkdir()
    assert _run(serial, data_dir, _config(tiny_models["opt"], 4)).exit_code == 0
    by_id = {r["run_id"]: r["metrics"] for r in _index(serial / "results" / "t")}
    assert {r["run_id"]: r["metrics"] for r in index} == by_id  # same results as one process


def test_stale_temp_files_are_removed(tmp_path):
    """Owner = host + PID + start time: a dead writer's file on this host goes (also when its PID was reused
    since); a live writer's stays, and so does any file of another host's writer (a shared filesystem)."""
    sweep = tmp_path / "s"
    (sweep / "runs" / "abc").mkdir(parents=True)
    here = owners.host_tag()
    dead = sweep / "runs" / "abc" / f".tmp-999999999-1700000000-{here}-result.json"
    reused = sweep / f".tmp-{os.getpid()}-1000-{here}-results.jsonl"
    alive = sweep / f".tmp-{owners.token()}-results.jsonl"
    elsewhere = sweep / "runs" / "abc" / ".tmp-999999999-1700000000-0badc0de-result.json"
    for path in (dead, reused, alive, elsewhere):
        path.write_text("{")
    assert records.remove_stale_temp_files(str(sweep)) == 2
    assert not dead.exists() and not reused.exists() and alive.exists() and elsewhere.exists()


def test_a_claim_left_beside_a_finished_record_is_removed(tmp_path):
    """A writer killed after writing a run's record but before releasing its claim leaves the claim; the next
    sweep removes it when its owner is gone (a live owner's claim stays)."""
    from adaptbench.sweep import claims

    sweep = tmp_path / "s"
    for run_id in ("dead", "alive"):
        (sweep / "runs" / run_id).mkdir(parents=True)
    (sweep / "runs" / "dead" / claims.CLAIM).write_text(json.dumps(
        {"host": owners.host(), "pid": 999_999_999, "started": 1_700_000_000.0}) + "\n")
    (sweep / "runs" / "alive" / claims.CLAIM).write_text(json.dumps(owners.me()) + "\n")
    assert claims.remove_stale_claims(str(sweep), ["dead", "alive", "never-claimed"]) == 1
    assert not (sweep / "runs" / "dead" / claims.CLAIM).exists() and (sweep / "runs" / "alive" / claims.CLAIM).exists()
