"""A killed distillation run's teacher targets, reused by its rerun instead of running the teacher again.

The teacher's pass over the distilled inputs (and the continuations it samples) is the bulk of a long-context
distillation; its result is already a file, ``teacher_targets.safetensors``, holding the targets and every
token id the teacher read.  After that file is written whole, a marker beside it (``teacher_targets.resume.json``)
names what it belongs to -- the run id, adaptbench's version and a hash of the readings (the context's token
prefix and every distilled input's tokens, which the rerun computes again before any model work) -- with the
file's SHA-256 and the seconds the pass took.  A rerun of the same run finds both, checks all of it and loads the
targets; anything else (no marker, another run or version, other readings, a file that does not match its hash)
is reported and the teacher runs again.  The marker goes when the run's record is written
(:func:`adaptbench.training.checkpoint.remove_resume_state`), so only a killed run's targets are ever reused.
The held-out measures (a few inputs) are always taken again: they are evaluation, and deterministic.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from ... import __version__
from ..._util import distributed
from ..._util.files import atomic_write, fsync_file, sha256_file
from ...training.checkpoint import RESUME_SUFFIX
from .sequence import HiddenTargets, frozen_head
from .targets import CompactTargets

TARGETS_FILE = "teacher_targets.safetensors"  # in the run folder, beside its marker


def marker_path(targets_path: str) -> str:
    """Beside the targets file: written once it is whole, removed with the record."""
    return targets_path.rsplit(".", 1)[0] + RESUME_SUFFIX


def readings_key(run_id: str, prefix: list[int], readings: list[tuple[list[int], int]]) -> dict:
    """What a targets file must have been made from: this run, this version, these readings (each input's
    tokens after the shared prefix and where its own tokens start)."""
    digest = hashlib.sha256(np.asarray(prefix, dtype=np.int64).tobytes())
    for ids, start in readings:
        digest.update(np.asarray([len(ids), start], dtype=np.int64).tobytes())
        digest.update(np.asarray(ids, dtype=np.int64).tobytes())
    return {"run_id": run_id, "version": __version__, "readings": digest.hexdigest()}


def mark_complete(targets_path: str, key: dict, seconds: float, tokens: int) -> str:
    """Write the marker once the targets file is whole (fsynced first); returns the file's SHA-256."""
    fsync_file(targets_path)
    digest = sha256_file(targets_path)
    atomic_write(marker_path(targets_path), json.dumps({**key, "sha256": digest, "seconds": round(seconds, 3),
                                                        "tokens": tokens}))
    return digest


@dataclass
class Reused:
    """Targets found complete: the items as the teacher read them (suffix ids, own-token start, input index or
    -1 for a sampled continuation), their targets, and what the pass that made them cost."""

    items: list[tuple[list[int], int, int]]
    targets: CompactTargets | HiddenTargets
    sha256: str
    seconds: float
    tokens: int


def verified(targets_path: str, key: dict, marker: str | None = None) -> tuple[dict | None, str]:
    """The marker of a targets file a killed attempt of this run finished (or ``marker``: another run shared
    it, :mod:`.shared`), or None and why not ("": none)."""
    marker = marker or marker_path(targets_path)
    if not os.path.exists(marker):
        return None, ""
    try:
        with open(marker, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        return None, f"{marker}: unreadable ({e})"
    for k, v in key.items():
        if meta.get(k) != v:
            return None, f"{marker}: another {k} ({str(meta.get(k))[:16]}, this run's {str(v)[:16]})"
    if not os.path.isfile(targets_path) or sha256_file(targets_path) != meta.get("sha256"):
        return None, f"{targets_path}: does not match the SHA-256 its marker holds (corrupted or replaced)"
    return meta, ""


def lookup(out_dir: str | None, key: dict) -> tuple[str | None, dict | None]:
    """The run folder's targets file, and its marker where a killed attempt of this run finished it (else
    None; a marker that does not fit is reported).  Rank 0 checks, every rank of a launch gets its answer."""
    path = os.path.join(out_dir, TARGETS_FILE) if out_dir else None
    meta, why = verified(path, key) if path and distributed.is_main() else (None, "")
    report_rejected(why)
    return path, distributed.broadcast(meta)


def note_reused(ctx, phase, sha256: str, seconds: float, tokens: int) -> None:
    """What the record says of reused targets: their hash, the pass that made them (``method_info``), and that
    pass's seconds beside this attempt's teacher phase (``costs.teacher``)."""
    phase.extra.update(seconds_before_resume=seconds, reused_targets=True)
    ctx.info.update(teacher_targets_sha256=sha256, teacher_reused={"seconds": seconds, "tokens": tokens})


def sequence_targets(targets_path: str, meta: dict, store: str, head_parts, temperature: float) -> Reused:
    """A sequence run's verified targets file read back: the items as the teacher read them and their targets."""
    from safetensors import safe_open

    with safe_open(targets_path, framework="pt") as f:
        ids = {n: f.get_tensor(n) for n in ("seam_ids", "seam_lengths", "input_ids", "input_lengths", "origin")}
        hidden = f.get_tensor("hidden") if store == "hidden" else None
    targets = (HiddenTargets(hidden, frozen_head(head_parts), temperature) if hidden is not None
               else CompactTargets.load(targets_path))
    seams = torch.split(ids["seam_ids"], ids["seam_lengths"].tolist())
    owns = torch.split(ids["input_ids"], ids["input_lengths"].tolist())
    items = [(s.tolist() + o.tolist(), len(s), int(i)) for s, o, i in zip(seams, owns, ids["origin"])]
    return Reused(items, targets, meta["sha256"], float(meta["seconds"]), int(meta["tokens"]))


def report_rejected(why: str) -> None:
    if why:
        warnings.warn(f"teacher targets not reused ({why}): the teacher runs again")
