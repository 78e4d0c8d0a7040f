"""Teacher-side work shared by the students of one sweep: self-study requests and the teacher's targets.

A sweep that distils one context into several students (``trainable: [lora, cartridge]``) would write the
same self-study requests and run the same teacher pass once per student: the two differ only in what
trains, and neither the requests (seeded) nor the teacher's targets depend on it.  The first student's run
publishes both in the sweep folder, ``shared/<teacher key>/``; a later run whose teacher key matches reads
them instead (never the run that published them: its ``--force`` rerun measures anew, and a killed attempt's
targets are :mod:`.reuse`'s).  The teacher key hashes the run's identity without ``trainable`` and the trainable's own
settings block -- everything else (model, dtype, context, inputs, seeds, cd settings, train settings) must
be equal -- and each file is checked as a killed attempt's targets are (:mod:`.reuse`): adaptbench's version,
the readings' hash (the context's and every input's token ids, computed by this run), the file's SHA-256.
The targets file is hard-linked into the run folder (no copy, where the file system allows).  The record
says where they came from (``method_info.teacher_shared``, ``self_study.shared_from``) and the shared phases
carry the seconds the pass took (``seconds_shared``), counted in distilling's one-off cost: what a user who
trains only this student pays.  Answer-position CD runs do not share (their teacher pass is one position
per input).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np

from ... import __version__
from ..._util import distributed
from ..._util.files import atomic_write, owned_temp
from ...config.blocks import POLICIES
from .reuse import TARGETS_FILE, report_rejected, verified

SHARED_DIR = "shared"  # in the sweep folder, beside runs/
SELF_STUDY_FILE = "self_study.json"
MARKER = "teacher_targets.shared.json"


def teacher_key(spec) -> str:
    """The run's identity without what only the student decides (``trainable`` and its settings block)."""
    identity = {k: v for k, v in spec.identity().items() if k != "trainable" and k not in POLICIES}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def folder(out_dir: str | None, spec) -> str | None:
    """``<sweep>/shared/<teacher key>`` for a run folder ``<sweep>/runs/<run id>``; None for a run without one."""
    if not out_dir:
        return None
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(out_dir))), SHARED_DIR, teacher_key(spec))


def _ids_hash(ids: list[int]) -> str:
    return hashlib.sha256(np.asarray(ids, dtype=np.int64).tobytes()).hexdigest()


def self_study(where: str | None, context_ids: list[int], out_dir: str) -> dict | None:
    """Requests another student's run wrote about this context: ``{train, held, seconds, run_id}`` or None."""
    path = where and os.path.join(where, SELF_STUDY_FILE)
    found = None
    if path and distributed.is_main() and os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                found = json.load(f)
        except (OSError, ValueError) as e:
            report_rejected(f"{path}: unreadable ({e})")
        if found and (found.get("version") != __version__ or found.get("context") != _ids_hash(context_ids)):
            report_rejected(f"{path}: another version or context")
            found = None
        found = None if found and _own(found, out_dir) else found
    return distributed.broadcast(found)


def publish_self_study(where: str | None, context_ids: list[int], train: list[dict], held: list[dict],
                       seconds: float, out_dir: str) -> None:
    if where and distributed.is_main():
        os.makedirs(where, exist_ok=True)
        atomic_write(os.path.join(where, SELF_STUDY_FILE), json.dumps(
            {"version": __version__, "context": _ids_hash(context_ids), "train": train, "held": held,
             "seconds": round(seconds, 3), "run_id": os.path.basename(out_dir)}))


def key(readings: dict, where: str) -> dict:
    """A shared targets file's key: the readings' hash and version of :func:`.reuse.readings_key`, and the
    teacher key (the folder's name) in place of the run id."""
    return {"teacher": os.path.basename(where), "version": readings["version"], "readings": readings["readings"]}


def targets(where: str | None, out_dir: str, readings: dict) -> dict | None:
    """The marker of targets another student's run published for these readings, with the file linked into
    this run's folder (rank 0 checks and links; every rank gets the answer); None where there are none."""
    meta = None
    if where and distributed.is_main():
        path = os.path.join(where, TARGETS_FILE)
        meta, why = verified(path, key(readings, where), os.path.join(where, MARKER))
        report_rejected(why)
        meta = None if meta and _own(meta, out_dir) else meta
        if meta:
            _place(path, os.path.join(out_dir, TARGETS_FILE))
    return distributed.broadcast(meta)


def publish_targets(where: str | None, run_path: str, readings: dict, sha256: str, seconds: float, tokens: int,
                    out_dir: str) -> None:
    """This run's targets file (whole, hashed) made available to the sweep's other students; ``run_id``: the
    run folder's name (the planned run's id, as in its record)."""
    if where and distributed.is_main():
        os.makedirs(where, exist_ok=True)
        _place(run_path, os.path.join(where, TARGETS_FILE))
        atomic_write(os.path.join(where, MARKER), json.dumps(
            {**key(readings, where), "sha256": sha256, "seconds": round(seconds, 3), "tokens": tokens,
             "run_id": os.path.basename(out_dir)}))


def _own(meta: dict, out_dir: str) -> bool:
    """Published by this run: not read back (a forced rerun measures anew; a killed one has :mod:`.reuse`)."""
    return meta.get("run_id") == os.path.basename(out_dir)


def note(ctx, phase, found, run_id: str) -> None:
    """What the record says of shared targets: their hash, the run and pass that made them."""
    phase.extra.update(seconds_shared=found.seconds, shared_from=run_id)
    ctx.info.update(teacher_targets_sha256=found.sha256,
                    teacher_shared={"run_id": run_id, "seconds": found.seconds, "tokens": found.tokens})


def _place(src: str, dst: str) -> None:
    """``dst`` becomes ``src``'s content: a hard link where the file system allows (else a copy), put in
    place by a rename, so a reader never sees half a file."""
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    tmp = owned_temp(dst)
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
