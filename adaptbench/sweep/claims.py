"""Run claims: every run executed by one writer, however many sweeps point at one results folder.

Before a run executes, its writer puts ``runs/<id>/claim.json`` (owner: host, PID, start time) in place
under the sweep's lock; a second sweep, a Slurm array task or an orphaned worker that finds a live
claim leaves the run alone.  The holder touches the claim every ``HEARTBEAT_S`` seconds.  A claim is
taken over when its owner is provably gone (same host, PID dead or reused) or, for an owner on another
host, when its heartbeat is older than ``ADAPTBENCH_CLAIM_STALE_S`` seconds (default 600).  The claim
is removed once the run's record is written.
"""

from __future__ import annotations

import json
import os
import threading
import time
from contextlib import contextmanager

from .._util import owners
from ..store import records

CLAIM = "claim.json"
HEARTBEAT_S = 30.0


def stale_after_s() -> float:
    return float(os.environ.get("ADAPTBENCH_CLAIM_STALE_S", "600"))


def claim_path(sweep_dir: str, run_id: str) -> str:
    return os.path.join(records.run_dir(sweep_dir, run_id), CLAIM)


def read_claim(path: str) -> dict | None:
    """The claim's owner; ``{}`` for a claim file that cannot be read (only a writer killed while writing
    it leaves one, as claims are written whole under the lock); None when there is no claim."""
    try:
        with open(path, encoding="utf-8") as f:
            owner = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def is_stale(path: str, owner: dict) -> bool:
    if not owner or owners.gone(owner):
        return True
    if owners.on_this_host(owner):
        return False  # alive here: PID and start time match
    try:
        return time.time() - os.path.getmtime(path) > stale_after_s()
    except FileNotFoundError:
        return True


def _same_owner(a: dict | None, b: dict) -> bool:
    return bool(a) and all(a.get(k) == b[k] for k in ("host", "pid", "started"))


def acquire(sweep_dir: str, run_id: str) -> dict | None:
    """Claim the run: None when this process now holds it, else the live owner that does."""
    path = claim_path(sweep_dir, run_id)
    me = owners.me()
    with records.locked(sweep_dir):
        holder = read_claim(path)
        if holder is not None and not _same_owner(holder, me) and not is_stale(path, holder):
            return holder
        records.atomic_write(path, json.dumps({**me, "claimed_at": time.time()}) + "\n")
    return None


def release(sweep_dir: str, run_id: str) -> None:
    """Remove the run's claim if this process still holds it."""
    path = claim_path(sweep_dir, run_id)
    with records.locked(sweep_dir):
        if _same_owner(read_claim(path), owners.me()):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


def remove_stale_claims(sweep_dir: str, run_ids: list[str]) -> int:
    """Claims of finished runs left by a writer that died between writing the record and releasing the
    claim (a kill in that instant): the run is done, so a claim whose owner is gone is removed."""
    removed = 0
    for run_id in run_ids:
        path = claim_path(sweep_dir, run_id)
        if not os.path.exists(path):
            continue
        with records.locked(sweep_dir):
            holder = read_claim(path)
            if holder is not None and is_stale(path, holder):
                try:
                    os.unlink(path)
                    removed += 1
                except FileNotFoundError:
                    pass
    return removed


def _heartbeat(path: str, stop: threading.Event) -> None:
    me = owners.me()
    while not stop.wait(HEARTBEAT_S):
        if _same_owner(read_claim(path), me):
            try:
                os.utime(path)
            except OSError:
                pass


@contextmanager
def holding(sweep_dir: str, run_id: str):
    """``with holding(d, id) as other:`` -- ``other`` is None while this process holds the run's claim (kept
    fresh by a heartbeat, released at the end), else the owner dict of the live writer that holds it."""
    other = acquire(sweep_dir, run_id)
    if other is not None:
        yield other
        return
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(claim_path(sweep_dir, run_id), stop), daemon=True,
                            name="adaptbench-claim-heartbeat")
    beat.start()
    try:
        yield None
    finally:
        stop.set()
        release(sweep_dir, run_id)


def describe(owner: dict) -> str:
    """'host h, pid 123, claimed 14:02:11 UTC' for console lines and messages."""
    when = time.strftime("%H:%M:%S UTC", time.gmtime(owner["claimed_at"])) if owner.get("claimed_at") else "?"
    return f"host {owner.get('host', '?')}, pid {owner.get('pid', '?')}, claimed {when}"
