"""Mid-run checkpoints: a killed training run resumes from its last one and ends as if never killed.

What a step depends on is saved after it: the trained parameters (only those with ``requires_grad``), the
optimizer and scheduler, every random generator the loop draws from (torch's, CUDA's, Python's, NumPy's, and
the data order's generator as it stood when the epoch began, with the micro-batches consumed since), the
accelerator's accumulation counter, the training log so far and the evaluation points' scores.  Restored, the
loop replays the epoch's order, skips what was consumed and goes on: CPU float32 gives the same losses and
weights as an uninterrupted run.

A checkpoint is a folder ``checkpoint-<step>`` in the run folder, written as ``.tmp-<owner>-checkpoint-<step>``
(host + PID + start time, as every temp file: a sweep's start removes those of dead writers), fsynced, renamed
into place, its ``meta.json`` last and holding the SHA-256 of its files; the previous one is removed after.
Under a data-parallel launch (DDP: every rank holds the same weights and optimizer) rank 0 writes it, with every
rank's random generators; rank 0 picks the checkpoint to resume from and every rank reads it.  A checkpoint of
another run (its key: the run id, the trained inputs' hash, the adaptbench version, the number of processes), a
corrupted one (a hash that does not match) or a half-written one is never used: it is reported and the run
starts over (or from an older complete one).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import random
import shutil
import signal
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .._util import owners
from .._util.files import TMP_PREFIX, atomic_write, fsync_file, fsync_folder, owned_temp, sha256_file

PREFIX = "checkpoint-"
RESUME_SUFFIX = ".resume.json"  # notes a rerun reads (removed with the record): progress, the teacher's targets
PROGRESS_NOTE = f"training{RESUME_SUFFIX}"
DEFAULT_MINUTES = 10.0  # without train.checkpoint_*: runs shorter than this never write one
FAULT_ENV = "ADAPTBENCH_FAULT_KILL"  # tests: "step:N", "checkpoint-write:N" or "teacher:N" (its N-th batch)


def fault(point: str, n: int) -> None:
    """SIGKILL this process at a named point (the fault suite's seeded kills); nothing unless asked for."""
    if os.environ.get(FAULT_ENV) == f"{point}:{n}":
        os.kill(os.getpid(), signal.SIGKILL)


def faulting(point: str, advance=None):
    """A progress callback that also SIGKILLs at the n-th batch of ``point`` when the fault suite asks for it."""
    count = [0]

    def on_batch(n: int) -> None:
        if advance is not None:
            advance(n)
        count[0] += 1
        fault(point, count[0])
    return on_batch


def items_hash(items) -> str:
    """The trained inputs and targets, hashed: a checkpoint belongs to a run only if it trained on these."""
    digest = hashlib.sha256()
    for it in items:
        digest.update(np.asarray(it.input_ids, dtype=np.int64).tobytes())
        digest.update(it.target.detach().cpu().numpy().tobytes())
    return digest.hexdigest()


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {"python": random.getstate(), "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class Resumed:
    """What a resumed run had: its step, the loop's state and the trained tensors."""

    step: int
    state: dict
    tensors: dict[str, torch.Tensor]
    meta: dict


@dataclass
class Checkpointing:
    """Where and when a run's checkpoints are written, and which of them belong to it."""

    run_folder: str
    key: dict  # run_id, items, version, processes: what a checkpoint must match
    every: int | None = None  # steps
    minutes: float | None = DEFAULT_MINUTES
    written: int = 0
    bytes: int = 0
    seconds: float = 0.0  # spent writing them (inside the training phase's time)
    rejected: list[str] = field(default_factory=list)
    _last: float = field(default_factory=time.monotonic)

    def due(self, step: int) -> bool:
        if self.every and step % self.every == 0:
            return True
        return self.minutes is not None and time.monotonic() - self._last >= self.minutes * 60

    def save(self, step: int, tensors: dict[str, torch.Tensor], state: dict) -> None:
        """Write ``checkpoint-<step>`` whole or not at all, then remove the older ones."""
        began = time.perf_counter()
        os.makedirs(self.run_folder, exist_ok=True)
        tmp = os.path.join(self.run_folder, f"{TMP_PREFIX}{owners.token()}-{PREFIX}{step}")
        os.makedirs(tmp)
        save_file({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()},
                  os.path.join(tmp, "trained.safetensors"))
        torch.save(state, os.path.join(tmp, "state.pt"))
        self.written += 1
        fault("checkpoint-write", self.written)  # tests: killed while writing (no meta.json yet)
        for name in ("trained.safetensors", "state.pt"):
            fsync_file(os.path.join(tmp, name))
        files = {name: sha256_file(os.path.join(tmp, name)) for name in ("trained.safetensors", "state.pt")}
        meta = {**self.key, "step": step, "files": files, "owner": owners.me(), "time": time.time()}
        atomic_write(os.path.join(tmp, "meta.json"), json.dumps(meta))
        fsync_folder(tmp)
        final = os.path.join(self.run_folder, f"{PREFIX}{step}")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        fsync_folder(self.run_folder)
        self.bytes = sum(os.path.getsize(os.path.join(final, f)) for f in os.listdir(final))
        for old in self._found():
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
        self._last = time.monotonic()
        self.seconds += time.perf_counter() - began

    def _found(self) -> list[str]:
        return sorted(glob.glob(os.path.join(self.run_folder, f"{PREFIX}*")),
                      key=lambda p: int(p.rsplit("-", 1)[-1]) if p.rsplit("-", 1)[-1].isdigit() else -1)

    def load(self) -> Resumed | None:
        """The newest complete checkpoint of this run; others are reported in :attr:`rejected` and removed."""
        for folder in reversed(self._found()):
            why = self._why_not(folder)
            if why is None:
                return self._read(folder)
            self.rejected.append(f"{os.path.basename(folder)}: {why}")
            warnings.warn(f"{folder}: not used to resume ({why}); removed")
            shutil.rmtree(folder, ignore_errors=True)
        return None

    def read(self, step: int) -> Resumed:
        """``checkpoint-<step>``, as rank 0 found it complete (the other ranks of a launch read it too)."""
        return self._read(os.path.join(self.run_folder, f"{PREFIX}{step}"))

    @staticmethod
    def _read(folder: str) -> Resumed:
        with open(os.path.join(folder, "meta.json"), encoding="utf-8") as f:
            meta = json.load(f)
        state = torch.load(os.path.join(folder, "state.pt"), map_location="cpu", weights_only=True)
        return Resumed(meta["step"], state, load_file(os.path.join(folder, "trained.safetensors")), meta)

    def _why_not(self, folder: str) -> str | None:
        try:
            with open(os.path.join(folder, "meta.json"), encoding="utf-8") as f:
                meta = json.load(f)
        except (OSError, ValueError):
            return "no complete meta.json (written when the checkpoint is whole)"
        for k, v in self.key.items():
            if meta.get(k) != v:
                return f"another {k} ({str(meta.get(k))[:16]}, this run's {str(v)[:16]})"
        for name, digest in (meta.get("files") or {}).items():
            path = os.path.join(folder, name)
            if not os.path.isfile(path) or sha256_file(path) != digest:
                return f"{name} does not match its SHA-256 (corrupted)"
        return None


def remove_checkpoints(run_folder: str) -> None:
    """A finished run's checkpoints (its record is written)."""
    for folder in glob.glob(os.path.join(run_folder, f"{PREFIX}*")):
        shutil.rmtree(folder, ignore_errors=True)


def remove_resume_state(run_folder: str) -> None:
    """A finished run's notes for a rerun (the training progress note, the teacher targets' marker): once its
    record is written, a forced rerun measures everything again."""
    for path in glob.glob(os.path.join(run_folder, f"*{RESUME_SUFFIX}")):
        with contextlib.suppress(OSError):
            os.unlink(path)


def note_progress(run_folder: str, key: dict, step: int, about: dict) -> None:
    """After every optimizer step: how far this attempt got (no fsync: a hint for the next attempt's
    "steps and seconds lost", never a thing a result depends on)."""
    os.makedirs(run_folder, exist_ok=True)
    path = os.path.join(run_folder, PROGRESS_NOTE)
    tmp = owned_temp(path)
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({**key, **about, "step": step, "time": time.time()}, f)
    os.replace(tmp, path)


def read_progress(run_folder: str, key: dict) -> dict | None:
    """The last progress note of an earlier attempt of this run, or None."""
    try:
        with open(os.path.join(run_folder, PROGRESS_NOTE), encoding="utf-8") as f:
            note = json.load(f)
    except (OSError, ValueError):
        return None
    return note if all(note.get(k) == v for k, v in key.items()) else None
