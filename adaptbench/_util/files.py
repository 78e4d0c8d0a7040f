"""Files written whole or not at all, and JSON as adaptbench writes it.

A file appears complete or not at all: written to a temp file in the same folder, fsynced, renamed over
the target, and the folder fsynced so the rename survives a crash.  Temp files carry their writer
(host, PID, start time: :mod:`adaptbench._util.owners`), so a later start can remove those of dead writers.
"""


import hashlib
import json
import os
import tempfile
from typing import Iterable

from ..errors import ResultsWriteError
from . import owners
from .secrets import redact

TMP_PREFIX = ".tmp-"  # .tmp-<pid>-<started>-<hosttag>-...: a temp file of a writer that may still be alive


_UMASK = os.umask(0)  # read the process' umask (it can only be read by setting it) ...
os.umask(_UMASK)  # ... and put it back


def atomic_write(path: str, text: str) -> None:
    """Write ``path`` whole or not at all: a temp file beside it, fsynced, renamed over it, and the folder
    fsynced so the rename survives a crash.  A write error (disk full, quota, permissions) leaves the old
    file as it was and no temp file, and is an error naming the path (the sweep resumes once it is fixed)."""
    folder = os.path.dirname(path) or "."
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f"{TMP_PREFIX}{owners.token()}-", suffix=os.path.basename(path))
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; records are meant to be shared
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        fsync_folder(folder)
    except OSError as e:
        raise ResultsWriteError(f"cannot write {path}: {e.strerror or e}; nothing was half-written -- run the "
                                f"same command again once this is fixed, it resumes where it stopped") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def owned_temp(path: str) -> str:
    """A temp name beside ``path`` that names its writer, so a later start removes it if the writer died
    mid-write (``store.records.remove_stale_temp_files``); rename it over ``path`` once written."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f"{TMP_PREFIX}{owners.token()}-{name}")


def sha256_file(path: str) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_file(path: str) -> None:
    """Flush a file written by another library (safetensors, torch.save) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folder(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems do not open folders; the rename itself is done
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def dumps(obj) -> str:
    """JSON as adaptbench writes it, credentials redacted (:mod:`adaptbench.secrets`)."""
    return redact(json.dumps(obj, ensure_ascii=False, allow_nan=False, default=str))


def write_jsonl(path: str, rows: Iterable[dict]) -> None:
    atomic_write(path, "".join(dumps(r) + "\n" for r in rows))


def user_cache(*parts: str) -> str:
    """A path under adaptbench's cache folder ($XDG_CACHE_HOME/adaptbench, else ~/.cache/adaptbench)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "adaptbench", *parts)
