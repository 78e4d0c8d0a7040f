"""Wall time, peak memory and token counts per phase of a run -- measured, never estimated.

Peak memory is reset at the start of every phase: on CUDA through the allocator's peak statistics
(after a synchronize, so queued kernels are charged to the right phase), on CPU by resetting the
kernel's high-water mark of the process' resident set (``/proc/self/clear_refs``, Linux >= 4.0) and
reading ``VmHWM`` at the end.  Where that reset is not possible the process-lifetime peak is recorded
and the phase says so (``peak_rss_scope: process``).

Work done in the middle of a phase that is not that phase's (evaluation points during training) is
timed as an *interval*: its seconds are taken out of the enclosing phase, its peak memory is measured
on its own and left out of the enclosing phase's, and it is recorded as a phase of its own.
"""

from __future__ import annotations

import ctypes
import gc
import resource
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

from collections.abc import Callable

import torch


def _release_freed_memory(collect: bool = True) -> None:
    """Collect garbage and hand freed heap back to the OS, so a phase's peak RSS is not inflated by
    memory an earlier phase freed but glibc kept (it would otherwise be counted as in use).  Intervals
    (evaluation points inside training) skip the collection."""
    if collect:
        gc.collect()
        _freeze_what_lives_before_the_first_phase()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _freeze_what_lives_before_the_first_phase() -> None:
    """Leave the objects alive at the process' first collection out of every later one (``gc.freeze``).

    They are torch's, transformers' and the other imports' ~400,000 modules, functions and classes, and the
    config and data read before the first phase: they live as long as the process, yet a full collection
    walks them all, 0.23-0.27 s each time on this project's CPU, at every phase of every run (the default
    test suite spent more than half its time there).  Frozen objects are still freed when nothing refers to
    them; only reference cycles among them are never collected -- a program that runs sweeps in its own
    process and drops such objects afterwards can call ``gc.unfreeze()`` (models and tensors, loaded later,
    are not frozen)."""
    if not gc.get_freeze_count():
        gc.freeze()


def _reset_rss_peak(collect: bool = True) -> bool:
    _release_freed_memory(collect)
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

    def set_peaks(self, rss: int, cuda: int | None) -> None:
        self.peak_rss_bytes, self.peak_cuda_bytes = rss, cuda
        self.peak_memory_bytes = cuda if cuda is not None else rss

    def add(self, other: Phase) -> None:
        """Fold in another interval of the same name: seconds and tokens add up, peaks are the largest."""
        self.seconds += other.seconds
        self.tokens, self.padded_tokens = _add(self.tokens, other.tokens), _add(self.padded_tokens, other.padded_tokens)
        self.set_peaks(max(self.peak_rss_bytes, other.peak_rss_bytes),
                       _max(self.peak_cuda_bytes, other.peak_cuda_bytes))
        if other.peak_rss_scope == "process":
            self.peak_rss_scope = "process"
        self.extra["count"] = self.extra.get("count", 1) + 1


def _add(a: int | None, b: int | None) -> int | None:
    return None if a is None and b is None else (a or 0) + (b or 0)


def _max(a: int | None, b: int | None) -> int | None:
    return None if a is None and b is None else max(a or 0, b or 0)


@dataclass(eq=False)
class _Open:
    """A phase being timed: its peaks up to its latest interval, and its intervals by name."""

    phase: Phase
    cuda: bool
    start: float
    peak_rss: int = 0
    peak_cuda: int | None = None
    intervals: dict[str, Phase] = field(default_factory=dict)


@dataclass
class CostTracker:
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    phases: list[Phase] = field(default_factory=list)
    _open: list[_Open] = field(default_factory=list, repr=False)  # phases being timed, innermost last

    def _reset(self, cuda: bool, collect: bool = True) -> bool:
        """Start counting peak memory afresh; whether the RSS peak could be scoped."""
        if cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        return _reset_rss_peak(collect)

    def _peaks(self, cuda: bool) -> tuple[int, int | None]:
        """(peak RSS, peak CUDA allocation or None) since the last reset, once queued kernels are done."""
        if cuda:
            torch.cuda.synchronize(self.device)
        return _rss_peak_bytes(), int(torch.cuda.max_memory_allocated(self.device)) if cuda else None

    @contextmanager
    def phase(self, name: str):
        """Time a block and record its peak memory; the yielded :class:`Phase` takes token counts.
        Intervals inside it (:meth:`interval`) are left out of it and recorded after it."""
        cuda = self.device.type == "cuda"
        scoped = self._reset(cuda)
        op = _Open(Phase(name, peak_rss_scope="phase" if scoped else "process"), cuda, time.perf_counter())
        self._open.append(op)
        try:
            yield op.phase
        finally:
            self._open.remove(op)
            self._close(op)

    def elapsed(self) -> float:
        """Seconds of the innermost open phase so far, its intervals left out (as it will be recorded)."""
        op = self._open[-1]
        return time.perf_counter() - op.start - sum(i.seconds for i in op.intervals.values())

    def _close(self, op: _Open) -> None:
        rss, cuda = self._peaks(op.cuda)
        p = op.phase
        p.seconds = time.perf_counter() - op.start - sum(i.seconds for i in op.intervals.values())
        p.set_peaks(max(rss, op.peak_rss), _max(cuda, op.peak_cuda))
        if op.intervals:  # what was taken out, so that the phase and its intervals add up to its wall time
            p.extra["excluded_seconds"] = {n: round(i.seconds, 3) for n, i in op.intervals.items()}
        self.phases += [p, *op.intervals.values()]

    @contextmanager
    def interval(self, name: str):
        """Time a stretch of the innermost open phase that is not that phase's work (an evaluation point
        during training), so that training's numbers are training's alone: its seconds are taken out of
        the phase, its peak memory is its own (and left out of the phase's), and the intervals of one
        name are recorded as one phase ``name`` (seconds and tokens summed, peak the largest,
        ``extra["count"]``).  Outside any phase it is a phase of its own."""
        if not self._open:
            with self.phase(name) as p:
                yield p
            return
        op = self._open[-1]
        rss, cuda = self._peaks(op.cuda)  # the enclosing phase's peak up to here
        op.peak_rss, op.peak_cuda = max(op.peak_rss, rss), _max(op.peak_cuda, cuda)
        part = Phase(name, peak_rss_scope="phase" if self._reset(op.cuda, collect=False) else "process")
        start = time.perf_counter()
        try:
            yield part
        finally:
            rss, cuda = self._peaks(op.cuda)
            part.seconds = time.perf_counter() - start
            part.set_peaks(rss, cuda)
            self._reset(op.cuda, collect=False)  # from here on the enclosing phase's peak leaves this interval out
            if name in op.intervals:
                op.intervals[name].add(part)
            else:
                part.extra["count"] = 1
                op.intervals[name] = part

    def to_dict(self) -> dict:
        return {p.name: p.to_dict() for p in self.phases}

    @property
    def total_seconds(self) -> float:
        return sum(p.seconds for p in self.phases)

    @property
    def peak_memory_bytes(self) -> int:
        return max((p.peak_memory_bytes for p in self.phases), default=0)


def resident_bytes(device: torch.device) -> int:
    """What is in memory now (the level a peak rises from): allocated bytes on CUDA, the process' resident
    set on CPU (after handing freed heap back to the OS)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return int(torch.cuda.memory_allocated(device))
    _release_freed_memory(collect=False)
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def timed(fn: Callable, device: torch.device):
    """``fn()`` and its wall seconds; on CUDA, queued kernels are waited for on both sides."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - start
