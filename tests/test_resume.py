"""Long runs survive (issue 28): a training run killed (SIGKILL) at a seeded step, or while it writes a checkpoint,
and run again goes on from its last complete checkpoint and ends as the uninterrupted run: the same per-step
losses, the same weights (max |dw| <= 1e-6, CPU float32), metrics and predictions; nothing left behind."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from adaptbench._util.files import sha256_file
from adaptbench.training.checkpoint import FAULT_ENV

from .conftest import write_config
from .test_run import _config, _run as _in_process

STEPS, EVERY = 8, 2
TRAIN = f"train: {{max_steps: {STEPS}, batch_size: 4, lr: 1.0e-3, save: true, checkpoint_every: {EVERY}}}"
_RNG = random.Random(20261206)
# (trainable, where the kill lands): after a seeded step, or while the n-th checkpoint is written (n = 1: before
# any is complete, so the run starts over).  "cd": a context-distillation student (LoRA), its teacher rerun.
KILLS = [(t, f"step:{_RNG.randint(1, STEPS - 1)}") for t in ("lora", "bitfit", "full", "cartridge", "cd")
         for _ in range(2)]
KILLS += [(t, f"checkpoint-write:{_RNG.randint(1, STEPS // EVERY - 1)}") for t in ("lora", "bitfit", "cd", "full")]
KILLS += [("lora", "checkpoint-write:1"), ("cd", "teacher:1")]  # killed in the teacher pass: it runs again
# "seq": long-context (sequence) distillation with teacher-sampled continuations, its targets reused on the rerun
KILLS += [("seq", f"step:{_RNG.randint(1, STEPS - 1)}"), ("seq", "teacher:1")]
FAST = {KILLS[-2]}


def _run(folder: Path, data_dir: str, config: str, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    if fault:
        env[FAULT_ENV] = fault
    cmd = [sys.executable, "-m", "adaptbench", "run", config, "--output-dir", str(folder / "results"),
           "--data-dir", data_dir]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _finished(folder: Path) -> tuple[dict, dict, dict]:
    [line] = (folder / "results" / "t" / "results.jsonl").read_text().splitlines()
    rec = json.loads(line)
    run = folder / "results" / "t" / "runs" / rec["run_id"]
    preds = (run / "predictions.jsonl").read_text()
    weights = {}
    for path in (run / "weights").rglob("*.safetensors"):
        weights.update({f"{path.name}:{k}": v for k, v in load_file(str(path)).items()})
    return rec, {"predictions": preds, "files": sorted(p.name for p in run.iterdir())}, weights


def _params(kill):
    trainable, where = kill
    marks = () if kill in FAST else (pytest.mark.slow,)
    return pytest.param(trainable, where, marks=marks, id=f"{trainable}-{where.replace(':', '')}")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_dir, tiny_models):
    """One uninterrupted run per trainable, computed when first asked for."""
    done: dict[str, tuple] = {}

    def get(trainable: str):
        if trainable not in done:
            folder = tmp_path_factory.mktemp(f"whole-{trainable}")
            result = _in_process(folder, data_dir, _text(tiny_models["llama"], trainable))  # no process start-up
            assert result.exit_code == 0, result.output[-3000:]
            done[trainable] = _finished(folder)
        return done[trainable]
    return get


def _text(model: str, trainable: str) -> str:
    extra = "\nbitfit: {add_biases: true}" if trainable == "bitfit" else ""
    method = ("method: cd\ntrainable: lora" if trainable == "cd" else
              "method: cd\ntrainable: lora\ncd: {target: sequence, unlabeled: 6, generate: {n: 1, max_new_tokens: 4}}"
              if trainable == "seq" else f"method: pbft\ntrainable: {trainable}")
    return _config(model, f"{method}\n{TRAIN}{extra}", seeds=1, max_examples=8)


@pytest.mark.parametrize("trainable,where", [_params(k) for k in KILLS])
def test_a_killed_run_resumes_from_its_checkpoint_and_ends_as_if_never_killed(tmp_path, data_dir, tiny_models,
                                                                              uninterrupted, trainable, where):
    config = write_config(tmp_path, _text(tiny_models["llama"], trainable))
    killed = _run(tmp_path, data_dir, config, where)
    assert killed.returncode == -9, (killed.returncode, killed.stderr[-3000:])
    assert not (tmp_path / "results" / "t" / "results.jsonl").exists() or not \
        (tmp_path / "results" / "t" / "results.jsonl").read_text().strip()
    again = _in_process(tmp_path, data_dir, _text(tiny_models["llama"], trainable))  # the same config, rerun
    assert again.exit_code == 0, again.output[-3000:]
    rec, files, weights = _finished(tmp_path)
    whole_rec, whole_files, whole_weights = uninterrupted(trainable)
    info = rec["method_info"]
    n = int(where.split(":")[1])
    # the last complete checkpoint (0: none, the training starts over) and the last step the killed attempt did;
    # a kill in the teacher pass comes before any training: nothing resumed, the teacher runs again
    last = n // EVERY * EVERY if where.startswith("step") else (n - 1) * EVERY
    done = n if where.startswith("step") else n * EVERY
    trained = not where.startswith("teacher")
    assert ("resumed from step" in again.output) == trained, again.output
    assert info.get("resumed_from_step") == (last if trained else None)
    assert info.get("resumes") == (1 if trained else None)
    assert info.get("lost_steps") == (done - last if trained else None) and (info.get("lost_seconds") or 0) >= 0
    # the teacher's targets of the killed attempt are reused where it finished them, and the record says so
    reused = trainable in ("cd", "seq") and trained
    assert bool(info.get("teacher_reused")) == reused and ("teacher targets reused" in again.output) == reused
    if reused:  # the file the record names, its hash, the same targets as the uninterrupted run's
        path, whole_path = info["teacher_targets"], whole_rec["method_info"]["teacher_targets"]
        assert sha256_file(path) == info["teacher_targets_sha256"]
        assert load_file(path).keys() == load_file(whole_path).keys()
        assert all(bool((v == load_file(whole_path)[k]).all()) for k, v in load_file(path).items())
        assert bool(rec["costs"]["teacher"].get("extra", {}).get("seconds_before_resume")) == reused
    assert info["train_losses"] == whole_rec["method_info"]["train_losses"]  # identical, not close
    assert weights.keys() == whole_weights.keys() and weights
    assert max(float((weights[k] - whole_weights[k]).abs().max()) for k in weights) <= 1e-6
    assert rec["metrics"] == whole_rec["metrics"] and files["predictions"] == whole_files["predictions"]
    assert files["files"] == whole_files["files"]  # no checkpoint, no half-written one left
    assert not [n for n in files["files"] if n.startswith(("checkpoint-", ".tmp-"))]


def _checkpointing(folder: Path, **key):
    import torch

    from adaptbench.training.checkpoint import Checkpointing

    ckpt = Checkpointing(str(folder), {"run_id": "r1", "items": "abc", "version": "1", **key}, every=1)
    return ckpt, {"w": torch.arange(4.0)}, {"step": 3, "numbers": [1, 2], "t": torch.ones(2)}


@pytest.mark.parametrize("damage,why", [
    ("another run", "another run_id"), ("another version", "another version"),
    ("corrupted", "state.pt does not match its SHA-256"), ("half written", "no complete meta.json")])
def test_a_checkpoint_not_of_this_run_or_damaged_is_reported_and_never_used(tmp_path, damage, why):
    ckpt, tensors, state = _checkpointing(tmp_path)
    ckpt.save(3, tensors, state)
    assert ckpt.bytes > 0 and [p.name for p in tmp_path.iterdir()] == ["checkpoint-3"]
    found = _checkpointing(tmp_path)[0].load()
    assert found.step == 3 and found.state["numbers"] == [1, 2] and found.tensors["w"].tolist() == [0, 1, 2, 3]
    folder = tmp_path / "checkpoint-3"
    if damage == "corrupted":
        data = bytearray((folder / "state.pt").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (folder / "state.pt").write_bytes(bytes(data))
    elif damage == "half written":
        (folder / "meta.json").unlink()
    key = {"run_id": "r2"} if damage == "another run" else {"version": "2"} if damage == "another version" else {}
    other = _checkpointing(tmp_path, **key)[0]
    with pytest.warns(UserWarning, match="not used to resume"):
        assert other.load() is None
    assert len(other.rejected) == 1 and other.rejected[0].startswith("checkpoint-3: " + why), other.rejected
    assert not folder.exists()  # not tried again


def test_a_newer_checkpoint_replaces_the_older_and_the_older_is_used_when_the_newer_is_damaged(tmp_path):
    ckpt, tensors, state = _checkpointing(tmp_path)
    ckpt.save(2, tensors, state)
    ckpt.save(4, tensors, {**state, "step": 4})
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-4"]
    import shutil

    shutil.copytree(tmp_path / "checkpoint-4", tmp_path / "checkpoint-6")
    (tmp_path / "checkpoint-6" / "trained.safetensors").write_bytes(b"not a tensor file")
    again = _checkpointing(tmp_path)[0]
    with pytest.warns(UserWarning, match="checkpoint-6: not used to resume"):
        assert again.load().step == 4 and "checkpoint-6: trained.safetensors does not match" in again.rejected[0]


def test_checkpoint_settings_are_not_part_of_the_run_id(tmp_path, tiny_models):
    from adaptbench.sweep.plan import make_plan

    config = write_config(tmp_path, _text(tiny_models["llama"], "lora"))
    [run] = make_plan(config).runs
    assert run.train.checkpoint_every == EVERY
    for overrides in (["train.checkpoint_every=5"], ["train.checkpoint_minutes=0.5"], ["train.save=false"]):
        [other] = make_plan(config, overrides).runs
        assert (other.run_id == run.run_id) == (overrides != ["train.save=false"]), overrides


@pytest.mark.slow  # the fine-tuned predictions' back-off below is in the default suite
def test_scoring_backs_off_after_an_out_of_memory_error_under_batch_size_auto(tmp_path, data_dir, tiny_models,
                                                                              monkeypatch):
    """An injected CUDA out-of-memory error for batches above 2: batch_size auto halves until it fits and records
    where it settled, with the predictions of a run given that size; a batch size the user set is kept (the run
    fails with the error)."""
    import torch

    from adaptbench.scoring import context

    from .test_run import _records

    def predictions(folder: Path, rec: dict) -> str:
        return (folder / "results" / "t" / "runs" / rec["run_id"] / "predictions.jsonl").read_text()

    text = _config(tiny_models["llama"], seeds=1, max_examples=8)
    (tmp_path / "a").mkdir()
    with_size = text.replace("{progress: false}", "{progress: false, batch_size: 2}")
    assert _in_process(tmp_path / "a", data_dir, with_size).exit_code == 0
    [plain] = _records(tmp_path / "a")
    real = context.score

    def small_memory(*args, batch_size, **kw):
        if batch_size > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        return real(*args, batch_size=batch_size, **kw)

    monkeypatch.setattr(context, "score", small_memory)
    (tmp_path / "b").mkdir()
    assert _in_process(tmp_path / "b", data_dir, text).exit_code == 0
    [backed] = _records(tmp_path / "b")
    backoff = backed["method_info"]["batch_size_backoff"]
    assert backoff["settled"] == 2 and backoff["out_of_memory_at"][-1] == 4
    assert predictions(tmp_path / "b", backed) == predictions(tmp_path / "a", plain)
    (tmp_path / "c").mkdir()
    assert _in_process(tmp_path / "c", data_dir, with_size.replace("batch_size: 2", "batch_size: 4")).exit_code
    [failed] = _records(tmp_path / "c")
    assert failed["status"] == "failed" and "out of memory" in failed["reason"]


def test_fine_tuned_predictions_back_off_too(tmp_path, data_dir, tiny_models, monkeypatch):
    import torch

    from adaptbench.methods import finetune

    from .test_run import _records

    real = finetune.batched_logits

    def small_memory(model, seqs, pad, device, batch_size, on_batch=None):
        if batch_size > 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        return real(model, seqs, pad, device, batch_size, on_batch)

    monkeypatch.setattr(finetune, "batched_logits", small_memory)
    text = _config(tiny_models["llama"], "method: pbft\ntrainable: lora\ntrain: {max_steps: 1, batch_size: 4}",
                   seeds=1, max_examples=8)
    assert _in_process(tmp_path, data_dir, text).exit_code == 0
    [rec] = _records(tmp_path)
    assert rec["method_info"]["batch_size_backoff"] == {"out_of_memory_at": [16, 8], "settled": 4}


@pytest.mark.slow
@pytest.mark.parametrize("where", ["step:5", "checkpoint-write:2"])
def test_a_killed_two_process_launch_resumes_as_the_uninterrupted_launch(tmp_path, data_dir, tiny_models, where):
    """`accelerate launch` with 2 processes (DDP over gloo): killed at step 5 (both ranks) or while rank 0 writes
    its second checkpoint, launched again: it goes on from the last complete checkpoint (each rank with its own
    random generators) and ends with the uninterrupted launch's losses, weights and predictions."""
    from .test_distributed import _launch

    def launched(folder: Path, fault: str | None = None):
        folder.mkdir()
        config = write_config(folder, _text(tiny_models["llama"], "lora"))
        env = {FAULT_ENV: fault} if fault else {}
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            return _launch(folder, data_dir, config, folder / "results"), config
        finally:
            for k, v in old.items():
                os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)

    done, _ = launched(tmp_path / "whole")
    assert done.returncode == 0, done.stderr[-3000:]
    killed, config = launched(tmp_path / "killed", where)
    assert killed.returncode != 0
    # rank 0 alone killed (mid-write): rank 1 records the run as failed (its peer gone), so it is retried
    again = _launch(tmp_path / "killed", data_dir, config, tmp_path / "killed" / "results",
                    run_args=("--retry-failed",))
    assert again.returncode == 0, again.stderr[-3000:]
    rec, files, weights = _finished(tmp_path / "killed")
    whole_rec, whole_files, whole_weights = _finished(tmp_path / "whole")
    info = rec["method_info"]
    assert info["processes"] == 2 and info["resumed_from_step"] == (4 if where == "step:5" else 2)
    assert rec["method_info"]["train_losses"] == whole_rec["method_info"]["train_losses"]
    assert max(float((weights[k] - whole_weights[k]).abs().max()) for k in weights) <= 1e-6
    assert files == whole_files and rec["metrics"] == whole_rec["metrics"]


@pytest.mark.parametrize("damage,why", [("none", ""), ("another run", "another run_id"),
                                        ("other readings", "another readings"), ("corrupted", "does not match"),
                                        ("no marker", "")])
def test_teacher_targets_are_reused_only_whole_and_of_this_run(tmp_path, damage, why):
    from adaptbench.methods.cd.reuse import mark_complete, marker_path, readings_key, verified

    path = tmp_path / "teacher_targets.safetensors"
    path.write_bytes(b"targets" * 100)
    key = readings_key("r1", [1, 2, 3], [([4, 5], 0), ([6], 1)])
    digest = mark_complete(str(path), key, 12.5, 300)
    asked = dict(key)
    if damage == "another run":
        asked = readings_key("r2", [1, 2, 3], [([4, 5], 0), ([6], 1)])
    elif damage == "other readings":  # one token of one input differs
        asked = readings_key("r1", [1, 2, 3], [([4, 5], 0), ([7], 1)])
    elif damage == "corrupted":
        path.write_bytes(b"targetz" * 100)
    elif damage == "no marker":  # the file of a finished run (its marker goes with the record), or half a pass
        os.unlink(marker_path(str(path)))
    meta, reason = verified(str(path), asked)
    assert (meta is not None) == (damage == "none") and why in reason and bool(reason) == bool(why)
    if meta:
        assert meta["sha256"] == digest and meta["seconds"] == 12.5 and meta["tokens"] == 300
