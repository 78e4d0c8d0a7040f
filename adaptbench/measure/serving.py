"""Serving many users (issue 27, item 4): throughput at several batch sizes and memory per user, measured.

A way of answering queries about a long context is served in one of two regimes:

- ``shared``: one context for every user (a system prompt, a manual): one state (cache, compressed cache,
  cartridge, adapter) is resident, and users only add their queries;
- ``per_user``: each user has their own context (their own dialogue): one state per user is resident, and a
  batch reads each row after its user's state.

For each regime a :class:`ServingPath` builds states and answers a batch; :func:`measure_serving` measures

- **throughput** at each batch size B: B queries answered in one forward (as scoring needs them), the median
  seconds of ``repeats`` batches, queries/s = B / seconds; per user, B users' states are resident;
- **memory per user**: the rise of the process' resident set (RSS on CPU, allocated bytes on CUDA) while the
  largest batch's users' states are built (all but the first, built before), divided by their number --
  beside the bytes the states' tensors hold (their shapes' figure, a check);
- **a batch's transient memory**: its peak above what was resident before it.

:func:`users_within` then gives the largest number of concurrent users whose states and batch fit a memory
budget, and the throughput at the batch that fits: Cartridges' comparison (memory per user, throughput at
the batch that fits), on the user's machine.  The arithmetic is apart from the timing, so it is testable by
hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import median
from typing import Any, Callable, Sequence

import torch

from .costs import _reset_rss_peak, _rss_peak_bytes, resident_bytes, timed

SHARED, PER_USER = "shared", "per_user"


@dataclass
class ServingPath:
    """One way of serving, in one regime.  ``state()`` builds one user's state (per user) or the one shared
    state; ``batch(states, queries)`` answers len(queries) queries in one forward (``states``: one per query
    per user, or ``[shared]``); ``nbytes(state)``: the bytes its tensors hold; ``batches``: whether queries of
    different users share a forward (False: one model per user, answered one after another)."""

    name: str
    regime: str
    state: Callable[[], Any]
    batch: Callable[[list, list], None]
    nbytes: Callable[[Any], int]
    batches: bool = True
    note: str = ""
    replaces_model_bytes: int = 0  # a state that is a whole model (merged) is held instead of the base model


def _peak_above(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float, int]:
    """``fn()``, its seconds and its peak memory above what was resident before it."""
    before = resident_bytes(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        _reset_rss_peak(collect=False)
    out, seconds = timed(fn, device)
    peak = int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else _rss_peak_bytes()
    return out, seconds, max(peak - before, 0)


def measure_serving(path: ServingPath, queries: Sequence, batch_sizes: Sequence[int], repeats: int,
                    device: torch.device) -> dict:
    """Throughput per batch size, memory per user (measured and from shapes) and each batch's transient peak.
    The queries of a batch of B are the first B of ``queries`` (cycled)."""
    most = max(batch_sizes)
    batch = [queries[i % len(queries)] for i in range(most)]
    users = 1 if path.regime == SHARED or not path.batches else most
    empty = resident_bytes(device)  # the model and the run's own state, no user's
    states = [path.state()] if users > 1 else []  # built before measuring: the users after it are measured
    before = resident_bytes(device)
    states += [path.state() for _ in range(users - len(states))]
    counted = users - 1 if users > 1 else 1
    rise, shapes = resident_bytes(device) - before, sum(path.nbytes(s) for s in states[-counted:])
    out: dict[str, Any] = {"regime": path.regime, "users_built": users, "users_measured": counted,
                           "resident_before_bytes": empty, "replaces_model_bytes": path.replaces_model_bytes}
    if path.regime == PER_USER:
        out["per_user_bytes_measured"], out["per_user_bytes_shapes"] = rise / counted, shapes / counted
    else:
        out["shared_bytes_measured"], out["shared_bytes_shapes"] = rise, shapes
        out["per_user_bytes_measured"] = out["per_user_bytes_shapes"] = 0
    sizes = {}
    for b in sorted(set(batch_sizes)):
        if not path.batches and b > 1:
            continue  # users with models of their own do not share a forward: batch 1, one after another
        rows = [states[0]] * b if path.regime == SHARED else states[:b]
        path.batch(rows, batch[:b])  # warm-up at this shape
        seconds, transient = [], 0
        for _ in range(repeats):
            _, s, peak = _peak_above(lambda: path.batch(rows, batch[:b]), device)
            seconds.append(s)
            transient = max(transient, peak)
        sizes[str(b)] = {"seconds": median(seconds), "queries_per_second": b / median(seconds),
                         "transient_bytes": transient, "all_seconds": seconds}
    out["batch"] = sizes
    if path.note:
        out["note"] = path.note
    del states
    return out


def users_within(budget: int, measured: dict) -> dict:
    """The most concurrent users whose states fit ``budget`` bytes beside the largest measured batch that
    fits, and the throughput at that batch: with b that batch, N = floor((budget - resident before - shared
    state - transient of batch b) / per-user state) (N >= b; users beyond b queue for batches of b).  With no
    per-user state ``users`` is None (memory sets no limit on users, only on the batch)."""
    base = (measured["resident_before_bytes"] + measured.get("shared_bytes_measured", 0)
            - measured.get("replaces_model_bytes", 0))
    per_user = max(measured["per_user_bytes_measured"], 0)
    sizes = sorted((int(b), v) for b, v in measured["batch"].items())
    fits = [(b, v) for b, v in sizes if base + b * per_user + v["transient_bytes"] <= budget]
    if not fits:
        return {"users": 0, "batch": None, "queries_per_second": None}
    b, v = fits[-1]
    users = None if per_user <= 0 else math.floor((budget - base - v["transient_bytes"]) / per_user)
    return {"users": users, "batch": b, "queries_per_second": v["queries_per_second"]}
