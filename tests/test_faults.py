"""What adaptbench survives: kills at random points, two writers on one folder, a full disk, a failing rank,
and inputs that changed under a run id.  Each run must end with exactly one record, predictions that belong
to it, and no temp file, claim or orphan process left behind."""

from __future__ import annotations

import hashlib
import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from adaptbench.sweep import claims, identity as fingerprint, jobs
from adaptbench.models import loading as models
from adaptbench._util import owners
from adaptbench.store import records
from adaptbench.sweep.plan import make_plan

from .conftest import REPO, write_config
from .test_run import _config

N_RUNS = 4
MODES = {"serial": [], "jobs": ["--jobs", "2"], "local": ["--executor", "local", "--jobs", "2"]}
# A kill lands anywhere from start-up to the last run; the later bound is about a whole sweep's time here.
KILL_WINDOW = {"serial": (0.5, 20.0), "jobs": (0.5, 30.0), "local": (0.5, 40.0)}
KILLS_PER_MODE = 7  # 21 in all; the serial mode's median delay runs in the default suite, the rest are slow
# (the parallel and submitit modes' resumes have default-suite tests of their own: test_sweep, test_distributed)
_RNG = random.Random(20261129)
KILLS = [(mode, i, round(_RNG.uniform(*KILL_WINDOW[mode]), 2)) for mode in MODES for i in range(KILLS_PER_MODE)]
FAST_KILLS = {"serial": sorted(d for m, _, d in KILLS if m == "serial")[KILLS_PER_MODE // 2]}


def _command(config: str, out: Path, data_dir: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "adaptbench", "run", config, "--output-dir", str(out), "--data-dir", data_dir,
            *args]


def _tagged(tag: str) -> list[psutil.Process]:
    """Live processes started by one test (the tag is in their environment, inherited by every child)."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get("ADAPTBENCH_TEST_TAG") == tag and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _wait_gone(tag: str, timeout: float = 8.0) -> list[psutil.Process]:
    deadline = time.time() + timeout
    while (left := _tagged(tag)) and time.time() < deadline:
        time.sleep(0.2)
    return left


def check_folder(sweep: Path, n: int) -> list[dict]:
    """Every run of the sweep has exactly one finished record, in its folder and once in the index; its
    predictions file is the one the record names; no temp file or claim is left."""
    index = [json.loads(line) for line in (sweep / "results.jsonl").read_text().splitlines()]
    ids = [r["run_id"] for r in index]
    assert len(ids) == n and len(set(ids)) == n, ids
    for rec in index:
        folder = sweep / "runs" / rec["run_id"]
        assert json.loads((folder / records.RESULT).read_text()) == rec
        text = (folder / records.PREDICTIONS).read_bytes()
        assert rec["predictions"] == {"rows": len(text.splitlines()), "sha256": hashlib.sha256(text).hexdigest()}
    assert not [p for p in sweep.rglob(f"{records.TMP_PREFIX}*")]
    assert not list(sweep.rglob(claims.CLAIM))
    return index


@pytest.mark.parametrize("mode,i,delay", [
    pytest.param(*k, marks=[] if FAST_KILLS.get(k[0]) == k[2] else [pytest.mark.slow], id=f"{k[0]}-{k[1]}-{k[2]}s")
    for k in KILLS])
def test_sigkill_anywhere_then_resume(tmp_path, data_dir, tiny_models, mode, i, delay):
    """SIGKILL the sweep's main process after a seeded random delay (the way the OOM killer or a node's
    kill does), then run the same command: no run lost or done twice, no orphan worker or job left."""
    config = write_config(tmp_path, _config(tiny_models["llama"], seeds=N_RUNS, max_examples=8))
    out, sweep, tag = tmp_path / "results", tmp_path / "results" / "t", uuid.uuid4().hex
    env = {**os.environ, "ADAPTBENCH_TEST_TAG": tag, "OMP_NUM_THREADS": "1"}
    cmd = _command(config, out, data_dir, *MODES[mode])
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        proc.wait(timeout=delay)
        finished_first = True  # the sweep was quicker than the kill: still a valid point (resume = no-op)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        finished_first = False
    assert not _wait_gone(tag), "orphan processes outlived the killed sweep"
    before = {p.parent.name: p.read_text() for p in sweep.glob("runs/*/result.json")}

    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{len(before)} already done, {N_RUNS - len(before)} to run" in again.stderr
    assert "Traceback" not in again.stderr
    index = check_folder(sweep, N_RUNS)
    assert {r["status"] for r in index} == {"ok"}
    for run_id, text in before.items():  # records written before the kill were kept, not redone
        assert (sweep / "runs" / run_id / records.RESULT).read_text() == text
    assert not _wait_gone(tag, 5.0)
    assert finished_first or len(before) < N_RUNS or proc.returncode == -signal.SIGKILL


def test_two_sweeps_at_once_run_each_run_once(tmp_path, data_dir, tiny_models):
    """Two `adaptbench run` on one results folder, started together: each run is executed by one of them
    (its console line says ok once over both; the other says who has it), each run has one record."""
    config = write_config(tmp_path, _config(tiny_models["llama"], seeds=N_RUNS, max_examples=8))
    out = tmp_path / "results"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = _command(config, out, data_dir)
    procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for _, e in outputs]
    index = check_folder(out / "t", N_RUNS)
    executed = [line for _, err in outputs for line in err.splitlines() if "] " in line and " ok " in line]
    assert sorted(line.split()[1] for line in executed) == sorted(r["run_id"][:8] for r in index)
    writers = {r["writer"]["pid"] for r in index}
    assert writers <= {p.pid for p in procs}
    for _, err in outputs:  # each prints the whole table at the end, also of runs the other one did
        assert f"{N_RUNS} runs, " in err


@pytest.mark.slow  # ~20 s / ~11 s: the slow suite keeps the default one under ten minutes
def test_a_file_size_limit_fails_cleanly_and_resumes(tmp_path, data_dir, tiny_models):
    """A real failing write (RLIMIT_FSIZE: the kernel refuses to grow a file past it, as a full disk would):
    exit status 2 with the path in the message, no traceback, no half-written or temp file; without the
    limit the same command completes."""
    config = write_config(tmp_path, _config(tiny_models["llama"], seeds=1, max_examples=8))
    out, sweep = tmp_path / "results", tmp_path / "results" / "t"
    cmd = _command(config, out, data_dir)

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failing write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (3000, 3000))

    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    failed = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, preexec_fn=limit)
    text = " ".join(failed.stderr.split())
    assert failed.returncode == 2, failed.stderr[-3000:]
    assert "Traceback" not in failed.stderr and "cannot write " in text and "File too large" in text
    assert "nothing was half-written" in text
    assert not [p for p in sweep.rglob(f"{records.TMP_PREFIX}*")]
    for path in sweep.rglob("*.json*"):  # whatever exists is whole
        lines = path.read_text().splitlines()
        assert all(json.loads(line) is not None for line in lines if line), path
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r["status"] for r in check_folder(sweep, 1)] == ["ok"]


FAULTY_RANK = """# adaptbench run sweep.yaml
name: t
model: {model}
task: rte
shots: 8
data_seeds: [0]
method: pbft
trainable: full
train: {{max_steps: 4, batch_size: 4, lr: 1.0e-3, warmup_ratio: 0.0, schedule: constant}}
eval: {{max_examples: 12}}
runtime: {{progress: false}}
"""


def test_one_rank_fails_all_stop_with_its_reason(tmp_path, data_dir, tiny_models):
    """Two gloo ranks; rank 1 raises at the start of training while rank 0 goes on into the gradient
    all-reduce.  Both processes end within 60 s (not at the backend's timeout) and the record names rank 1's
    error first."""
    config = write_config(tmp_path, FAULTY_RANK.format(model=tiny_models["llama"]))
    out = tmp_path / "results"
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    cmd = launcher + [str(Path(__file__).with_name("faulty_rank.py")), "run", config, "--output-dir", str(out),
                      "--data-dir", data_dir]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ADAPTBENCH_TEST_TAG": (tag := uuid.uuid4().hex)}
    start = time.time()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    took = time.time() - start
    assert done.returncode != 0
    assert not _wait_gone(tag, 5.0)
    [rec] = [json.loads(p.read_text()) for p in (out / "t").glob("runs/*/result.json")]
    assert rec["status"] == "failed" and rec["failed_rank"] == 1, rec.get("reason")
    assert rec["reason"].startswith("rank 1: RuntimeError: injected fault on rank 1")
    assert "the launch was stopped" in rec["reason"]
    assert "failed on rank 1" in done.stderr
    # the launch includes two interpreters importing torch; the stop itself is bounded by the launcher
    assert took < 60 + 45, took


def test_claims(tmp_path, monkeypatch):
    """A live claim keeps others out; a dead owner's (same host), a corrupt one and another host's whose
    heartbeat stopped are taken over; a live other host's claim is never taken on a guess."""
    sweep, run_id = str(tmp_path), "abc"
    path = Path(claims.claim_path(sweep, run_id))
    assert claims.acquire(sweep, run_id) is None and json.loads(path.read_text())["pid"] == os.getpid()
    claims.release(sweep, run_id)
    assert not path.exists()

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = {"host": owners.host(), "pid": sleeper.pid, "started": owners.started(sleeper.pid), "claimed_at": 1}
        path.write_text(json.dumps(live))
        assert claims.acquire(sweep, run_id) == live
        with claims.holding(sweep, run_id) as other:
            assert other == live
    finally:
        sleeper.kill()
        sleeper.wait()
    assert claims.acquire(sweep, run_id) is None  # its owner is gone: taken over

    path.write_text('{"host": ')  # a writer killed while writing its claim
    assert claims.acquire(sweep, run_id) is None

    far = {"host": "another-host", "pid": os.getpid(), "started": 1, "claimed_at": 1}
    path.write_text(json.dumps(far))
    assert claims.acquire(sweep, run_id) == far  # a fresh heartbeat: alive as far as anyone here can tell
    monkeypatch.setenv("ADAPTBENCH_CLAIM_STALE_S", "60")
    os.utime(path, (time.time() - 120, time.time() - 120))
    assert claims.acquire(sweep, run_id) is None


def test_dead_processes_gguf_snapshots_are_removed(tmp_path):
    here = owners.host_tag()
    dead = tmp_path / f"{models.SNAPSHOT_PREFIX}999999999-1700000000-{here}-x1"
    live = tmp_path / f"{models.SNAPSHOT_PREFIX}{owners.token()}-x2"
    far = tmp_path / f"{models.SNAPSHOT_PREFIX}999999999-1700000000-0badc0de-x3"
    for folder in (dead, live, far):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"0" * 10)
    assert models.remove_dead_snapshots(str(tmp_path)) == 1
    assert not dead.exists() and live.exists() and far.exists()


def test_local_jobs_get_the_gpus(monkeypatch):
    """submitit's local executor hides every GPU unless told which: one job at a time gets all visible ones,
    several get one each (the parent's CUDA_VISIBLE_DEVICES numbering kept)."""

    class Job:
        def __init__(self, params):
            self.params, self.job_id = dict(params), "1"

        def done(self):
            return True

        def result(self):
            return {"status": "ok", "gpus": self.params["visible_gpus"]}

    class Executor:
        def __init__(self):
            self.params, self.jobs = {}, []

        def update_parameters(self, **kw):
            self.params.update(kw)

        def submit(self, fn, *args):
            self.jobs.append(Job(self.params))
            return self.jobs[-1]

    monkeypatch.setattr(jobs.time, "sleep", lambda s: None)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    assert jobs.visible_gpus() == [4, 6]
    one = Executor()
    jobs._rolling(one, None, ["a", "b"], 1, None)
    assert [j.params["visible_gpus"] for j in one.jobs] == [(4, 6), (4, 6)]
    assert one.jobs[0].params["gpus_per_node"] == 2
    two = Executor()
    jobs._rolling(two, None, ["a", "b", "c"], 2, None)
    assert [j.params["visible_gpus"] for j in two.jobs] == [(4,), (6,), (4,)]


USER_TASK = """# adaptbench run sweep.yaml
name: t
model: {model}
task: {{name: mine, train: train.csv, validation: dev.csv, text_fields: [text], labels: ["no", "yes"]}}
method: icl
shots: 2
"""


def test_run_ids_cover_file_contents_and_the_resolved_dtype(tmp_path, tiny_models, monkeypatch):
    """Editing a data file makes new run ids (touching it does not); so does the machine's dtype for
    `auto`; a local model folder's contents count too.  Hashes are cached by size and mtime."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(fingerprint, "_CACHE", None)
    for name in ("train.csv", "dev.csv"):
        (tmp_path / name).write_text("text,label\na,no\nb,yes\n")
    config = write_config(tmp_path, USER_TASK.format(model=tiny_models["llama"]))
    [run] = make_plan(config).runs
    assert run.resolved["dtype"] == "float32"
    assert set(run.resolved["files"]) == {"task.train", "task.validation", "model"}
    assert run.resolved["files"]["task.train"] == hashlib.sha256(b"text,label\na,no\nb,yes\n").hexdigest()

    os.utime(tmp_path / "train.csv", (time.time() + 5, time.time() + 5))  # touched, same bytes
    assert make_plan(config).runs[0].run_id == run.run_id
    (tmp_path / "train.csv").write_text("text,label\na,no\nb,no\n")
    edited = make_plan(config).runs[0]
    assert edited.run_id != run.run_id and edited.resolved["files"]["task.train"] != run.resolved["files"]["task.train"]
    on_gpu = make_plan(config, device="cuda").runs[0]
    assert on_gpu.resolved["dtype"] in ("bfloat16", "float16") and on_gpu.run_id != edited.run_id
    cache = json.loads((tmp_path / "cache" / "adaptbench" / "file-hashes.json").read_text())
    assert str(tmp_path / "train.csv") in cache


def test_hub_commit_is_recorded():
    class Config:
        _commit_hash = "0123abcd" * 5

    assert models.hub_commit(Config()) == {"commit": "0123abcd" * 5}
    assert models.hub_commit(object()) == {}


def test_index_order_is_the_same_after_adding_and_after_a_rebuild(tmp_path):
    """Two runs finishing in the same second, indexed in the order they finished: a resume rebuilds the
    index, and the lines must not swap places (the cause of a flaky resume test)."""
    sweep = str(tmp_path)
    recs = [{"run_id": rid, "status": "ok", "finished_at": "2026-12-05T10:00:01+00:00"} for rid in ("bbbb", "aaaa")]
    for rec in recs:
        records.atomic_write(os.path.join(records.run_dir(sweep, rec["run_id"]), records.RESULT),
                             records.dumps(rec) + "\n")
        records.add_to_index(sweep, rec)
    index = Path(sweep, records.INDEX)
    added = index.read_text()
    assert [json.loads(line)["run_id"] for line in added.splitlines()] == ["aaaa", "bbbb"]
    records.rebuild_index(sweep)
    assert index.read_text() == added
