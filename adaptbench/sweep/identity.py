"""What a run reads besides its settings: content hashes of its local files, and what ``auto`` resolves to.

A run id is the hash of the run's settings.  Two things the settings do not show change results too:
the contents of the files they name (a user task's CSV, the ``cd.context`` file, ``cd.inputs``, a local
model folder or GGUF file) and what ``auto`` resolves to on the machine: the dtype (bfloat16 on a GPU;
float32 on a CPU, or bfloat16 with ``ADAPTBENCH_CPU_BF16=1``) and the training autocast
(``train.mixed_precision``).  Both go into the run's identity (``spec.resolved``), so a run whose data was
edited, or a sweep resumed on another kind of machine, runs again instead of reusing records made from
other inputs.
File hashes are cached by path, size and modification time (``~/.cache/adaptbench/file-hashes.json``),
so a large model folder is read once.
"""

from __future__ import annotations

import hashlib
import json
import os

from .._util.files import sha256_file, user_cache
from ..errors import AdaptbenchError, ResultsWriteError
from ..methods import METHODS
from ..models.loading import auto_dtype, resolve
from ..training.precision import resolved_mixed_precision

_CACHE: dict[str, dict] | None = None
_DIRTY = False  # hashes computed since the cache file was written


def _cache_path() -> str:
    return user_cache("file-hashes.json")


def _cache() -> dict[str, dict]:
    global _CACHE
    if _CACHE is None:
        try:
            with open(_cache_path(), encoding="utf-8") as f:
                _CACHE = json.load(f)
        except (OSError, ValueError):
            _CACHE = {}
        if not isinstance(_CACHE, dict):
            _CACHE = {}
    return _CACHE


def _save_cache() -> None:
    """Write the cache if hashes were computed since it was last written (once per run, not per file)."""
    global _DIRTY
    if not _DIRTY:
        return
    from .._util.files import atomic_write

    _DIRTY = False
    try:
        atomic_write(_cache_path(), json.dumps(_cache()))
    except ResultsWriteError:  # a cache: without it the hashes are only computed again
        pass


def file_sha256(path: str) -> str:
    """SHA-256 of a file's bytes, from the cache while its size and mtime are unchanged."""
    global _DIRTY
    path = os.path.abspath(path)
    st = os.stat(path)
    hit = _cache().get(path)
    if hit and hit.get("size") == st.st_size and hit.get("mtime_ns") == st.st_mtime_ns:
        return hit["sha256"]
    digest = sha256_file(path)
    _cache()[path] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    _DIRTY = True
    return digest


def content_sha256(path: str) -> str:
    """A file's hash, or a folder's: over its files' relative paths and hashes (hidden entries such as
    ``.git`` or a hub download's ``.cache`` left out)."""
    if os.path.isfile(path):
        return file_sha256(path)
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(f for f in files if not f.startswith(".")):
            full = os.path.join(root, name)
            digest.update(f"{os.path.relpath(full, path)}\0{file_sha256(full)}\n".encode())
    return digest.hexdigest()


def run_files(run, config_dir: str) -> dict[str, str]:
    """The local files and folders a run reads, by role (``task.train``, ``cd.context``, ``model``, ...)."""
    found: dict[str, str] = {}
    task = run.task
    if not isinstance(task, str):
        if task.hub is None:
            found.update({f"task.{split}": getattr(task, split) for split in ("train", "validation")})
            found.update({f"task.ood.{name}": path for name, path in task.ood.items()})
        elif os.path.isdir(os.path.join(config_dir, task.hub)):  # a local dataset folder
            found["task.hub"] = task.hub
    method = METHODS[run.method]
    found.update(method.files(run, config_dir))
    model, *teachers = method.models(run)
    found.update(model_files(model, "model"))
    for spec in teachers:
        found.update(model_files(spec, f"{run.method}.teacher"))
    return {role: os.path.join(config_dir, path) for role, path in found.items()}


def model_files(spec, role: str) -> dict[str, str]:
    """A local model's weights (folder or GGUF file) and tokenizer folder, as absolute paths: model paths
    are relative to the working folder, not the config's.  Hub ids and api models have none."""
    if spec.api is not None:
        return {}
    try:
        where = resolve(spec.name, spec.gguf_file)
    except AdaptbenchError:
        return {}  # loading the model says why, in the run's record
    found = {}
    weights = os.path.join(where.path, where.gguf_file) if where.gguf_file else where.path
    if os.path.exists(weights):
        found[role] = os.path.abspath(weights)
    if spec.tokenizer and os.path.isdir(spec.tokenizer):
        found[f"{role}.tokenizer"] = os.path.abspath(spec.tokenizer)
    return found


def resolved_dtype(dtype: str, device: str) -> str:
    """What ``model.dtype`` becomes where the run executes (``device``: cpu or cuda)."""
    return auto_dtype(device) if dtype == "auto" else dtype


def resolve_run(run, config_dir: str, device: str):
    """The run with ``resolved``: its resolved dtype and the content hash of every local file it reads."""
    files = {role: content_sha256(path) for role, path in sorted(run_files(run, config_dir).items())
             if os.path.exists(path)}
    _save_cache()
    dtype = {} if run.model.api is not None else {"dtype": resolved_dtype(run.model.dtype, device)}
    if run.train is not None and run.train.mixed_precision == "auto":
        dtype["mixed_precision"] = resolved_mixed_precision("auto", device)
    resolved = {**dtype, **({"files": files} if files else {}), **METHODS[run.method].resolved(run)}
    return run.model_copy(update={"resolved": resolved})
