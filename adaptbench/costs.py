"""Wall time, peak memory and token counts per phase of a run -- measured, never estimated.

Peak memory is reset at the start of every phase: on CUDA through the allocator's peak statistics
(after a synchronize, so queued kernels are charged to the right phase), on CPU by resetting the
kernel's high-water mark of the process' resident set (``/proc/self/clear_refs``, Linux >= 4.0) and
reading ``VmHWM`` at the end.  Where that reset is not possible the process-lifetime peak is recorded
and the phase says so (``peak_rss_scope: process``).
"""

from __future__ import annotations

import ctypes
import gc
import resource
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch


def _release_freed_memory() -> None:
    """Collect garbage and hand freed heap back to the OS, so a phase's peak RSS is not inflated by
    memory an earlier phase freed but glibc kept (it would otherwise be counted as in use)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_rss_peak() -> bool:
    _release_freed_memory()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _rss_peak_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass
class Phase:
    name: str
    seconds: float = 0.0
    peak_memory_bytes: int = 0  # CUDA allocator peak on GPU runs, else the process' peak RSS
    peak_rss_bytes: int = 0
    peak_rss_scope: str = "phase"
    peak_cuda_bytes: int | None = None
    tokens: int | None = None  # real tokens run through the model
    padded_tokens: int | None = None  # positions computed, padding included
    extra: dict = field(default_factory=dict)

    @property
    def tokens_per_second(self) -> float | None:
        return self.tokens / self.seconds if self.tokens and self.seconds > 0 else None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tokens_per_second"] = self.tokens_per_second
        return d


@dataclass
class CostTracker:
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    phases: list[Phase] = field(default_factory=list)

    @contextmanager
    def phase(self, name: str):
        """Time a block and record its peak memory; the yielded :class:`Phase` takes token counts."""
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        scoped = _reset_rss_peak()
        p = Phase(name, peak_rss_scope="phase" if scoped else "process")
        start = time.perf_counter()
        try:
            yield p
        finally:
            if cuda:
                torch.cuda.synchronize(self.device)
                p.peak_cuda_bytes = int(torch.cuda.max_memory_allocated(self.device))
            p.seconds = time.perf_counter() - start
            p.peak_rss_bytes = _rss_peak_bytes()
            p.peak_memory_bytes = p.peak_cuda_bytes if cuda else p.peak_rss_bytes
            self.phases.append(p)

    def to_dict(self) -> dict:
        return {p.name: p.to_dict() for p in self.phases}

    @property
    def total_seconds(self) -> float:
        return sum(p.seconds for p in self.phases)

    @property
    def peak_memory_bytes(self) -> int:
        return max((p.peak_memory_bytes for p in self.phases), default=0)
