"""Result records on disk: one folder per run, written atomically; ``results.jsonl`` as the index.

A record file appears complete or not at all (write to a temp file in the same folder, fsync,
rename), so a sweep killed at any moment never leaves half a record.  ``results.jsonl`` is rewritten
the same way under a file lock after every run, and rebuilt from the run folders when a sweep starts
-- one line per finished run, never a partial line or a duplicate, whatever was killed when.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from contextlib import contextmanager

from .._util import owners
from .._util.files import TMP_PREFIX, atomic_write, dumps, write_jsonl

RESULT = "result.json"
PREDICTIONS = "predictions.jsonl"
INDEX = "results.jsonl"
FINISHED = ("ok", "failed", "skipped")


def run_dir(sweep_dir: str, run_id: str) -> str:
    return os.path.join(sweep_dir, "runs", run_id)


def read_record(sweep_dir: str, run_id: str) -> dict | None:
    """The finished record of a run, or None (never run, or killed before it finished)."""
    path = os.path.join(run_dir(sweep_dir, run_id), RESULT)
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) and record.get("status") in FINISHED else None


@contextmanager
def locked(sweep_dir: str):
    os.makedirs(sweep_dir, exist_ok=True)
    with open(os.path.join(sweep_dir, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def index_order(record: dict) -> tuple[str, str]:
    """Where a record stands in ``results.jsonl``: by finish time (whole seconds), then run id.  Adding a
    record and rebuilding the index both keep this order, so a resume never reorders the index (two runs
    finishing in the same second used to swap places when the index was rebuilt)."""
    return record.get("finished_at", ""), record["run_id"]


def add_to_index(sweep_dir: str, record: dict) -> None:
    """Put one finished record into ``results.jsonl`` (replacing an older one of the same run), by an
    atomic rewrite of the index under the lock: cost grows with the index, not with the run folders."""
    path = os.path.join(sweep_dir, INDEX)
    with locked(sweep_dir):
        kept = []
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                for line in f:
                    try:
                        other = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # cannot happen with atomic writes; a hand-edited file is repaired here
                    if isinstance(other, dict) and "run_id" in other and other["run_id"] != record["run_id"]:
                        kept.append((index_order(other), line if line.endswith("\n") else line + "\n"))
        kept.append((index_order(record), dumps(record) + "\n"))
        atomic_write(path, "".join(line for _, line in sorted(kept)))


def rebuild_index(sweep_dir: str) -> int:
    """Rewrite ``results.jsonl`` from every finished run folder (at the start of a sweep: a run killed
    between writing its record and indexing it gets indexed); returns the number of lines."""
    runs = os.path.join(sweep_dir, "runs")
    with locked(sweep_dir):
        ids = sorted(os.listdir(runs)) if os.path.isdir(runs) else []
        records = [r for r in (read_record(sweep_dir, i) for i in ids) if r is not None]
        records.sort(key=index_order)
        write_jsonl(os.path.join(sweep_dir, INDEX), records)
    return len(records)


def remove_stale_temp_files(sweep_dir: str) -> int:
    """Delete temp files (and checkpoint folders) left by writers that were killed mid-write: their owner ran
    on this host and is gone.  Temp files of other hosts' writers (a shared filesystem) and of live ones are
    left alone."""
    removed = 0
    folders = [sweep_dir]
    for sub in ("runs", "shared"):  # run folders; teacher-side work shared by a sweep's students
        parent = os.path.join(sweep_dir, sub)
        folders += [os.path.join(parent, d) for d in os.listdir(parent)] if os.path.isdir(parent) else []
    for folder in folders:
        if not os.path.isdir(folder):
            continue
        for name in os.listdir(folder):
            owner = owners.parse_token(name[len(TMP_PREFIX):]) if name.startswith(TMP_PREFIX) else None
            if owner is not None and owners.gone(owner):
                path = os.path.join(folder, name)
                try:
                    if os.path.isdir(path):  # a checkpoint folder being written (training/checkpoint.py)
                        shutil.rmtree(path)
                    else:
                        os.unlink(path)
                    removed += 1
                except FileNotFoundError:  # another sweep starting at the same time removed it
                    pass
    return removed
