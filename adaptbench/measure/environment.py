"""What a result was produced with: versions, device, git commit."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from functools import lru_cache

import torch

from .._util.cpu import ENV, bf16_instructions, cpu_bf16

PACKAGES = ("adaptbench", "torch", "transformers", "tokenizers", "peft", "accelerate", "datasets", "gguf")


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """Commit of the adaptbench checkout the code runs from (None for an installed wheel)."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict:
    return {
        "versions": {name: _version(name) for name in PACKAGES} | {"python": platform.python_version()},
        "git_commit": git_commit(),
        "device": str(device),
        "device_name": device_name(device),
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "torch_threads": torch.get_num_threads(),
        # what model.dtype / train.mixed_precision "auto" read on this CPU (adaptbench._util.cpu)
        "cpu_bf16": {"instructions": bf16_instructions(), "used": cpu_bf16(), "setting": os.environ.get(ENV)},
        "cpu_count": os.cpu_count(),
        "hostname": platform.node(),
        "platform": platform.platform(),
    }
