"""Who owns a file or a claim: host + PID + the process' start time.

Results folders live on shared filesystems, seen by processes on many hosts.  A PID alone says
nothing about a process on another host (and may have been reused on this one), so every temp file,
snapshot folder and run claim carries its writer's host, PID and start time.  Only an owner on *this*
host can be proved dead; another host's files are never deleted on a guess.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time

import psutil


def host() -> str:
    return socket.gethostname()


def host_tag(name: str | None = None) -> str:
    """Eight hex digits naming a host inside file names (host names may hold '-' or '.')."""
    return hashlib.sha1((name or host()).encode()).hexdigest()[:8]


def started(pid: int | None = None) -> int:
    """A process' start time in whole seconds (with the PID, it names one process even after PID reuse)."""
    return int(psutil.Process(pid or os.getpid()).create_time())


def me() -> dict:
    return {"host": host(), "pid": os.getpid(), "started": started()}


def token() -> str:
    """``<pid>-<started>-<hosttag>``: the owner of a temp file or folder, in its name."""
    return f"{os.getpid()}-{started()}-{host_tag()}"


def parse_token(text: str) -> dict | None:
    """The owner named at the start of ``text`` (``<pid>-<started>-<hosttag>-...``), or None."""
    parts = text.split("-", 3)
    if len(parts) < 3 or not (parts[0].isdigit() and parts[1].isdigit()):
        return None
    return {"pid": int(parts[0]), "started": int(parts[1]), "host_tag": parts[2]}


def on_this_host(owner: dict) -> bool:
    if "host" in owner:
        return owner["host"] == host()
    return owner.get("host_tag") == host_tag()


def gone(owner: dict) -> bool:
    """True only when the owner is provably dead: it ran on this host and its PID is gone or now names a
    process started at another time.  An owner on another host is never 'gone' by this test."""
    if not on_this_host(owner):
        return False
    try:
        return abs(started(owner["pid"]) - owner["started"]) > 1
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return True
    except (psutil.AccessDenied, KeyError, TypeError, ValueError):
        return False


def exit_when_gone(owner: dict, every_s: float = 1.0) -> None:
    """End this process (exit status 3) within ``every_s`` of ``owner`` dying.

    Worker processes (``--jobs``) and local submitit jobs run the sweep's runs; if the sweep is killed
    they must not go on as orphans that a rerun would race.  A daemon thread checks the owner; torch
    releases the GIL in its kernels, so the check runs during long computations too."""
    def watch():
        while True:
            time.sleep(every_s)
            if gone(owner):
                os._exit(3)

    threading.Thread(target=watch, name="adaptbench-exit-when-gone", daemon=True).start()
