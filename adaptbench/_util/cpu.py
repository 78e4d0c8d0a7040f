"""Whether this CPU multiplies bfloat16 matrices in hardware, which decides what ``dtype: auto`` means on CPU.

x86 cores with AMX (``amx_bf16``: Intel Sapphire Rapids and later) or AVX512-BF16 (``avx512_bf16``: Intel
Cooper Lake and later, AMD Zen 4 and later) run oneDNN's bfloat16 matmuls -- PyTorch's CPU kernels -- 2-4x
faster than float32 (``bench/roofline.py`` measures it on the machine in use).  Cores without them emulate
bfloat16 and are slower than float32, so ``auto`` stays float32 there.  Other architectures are not measured
here and keep float32.  ``ADAPTBENCH_CPU_BF16=0`` (or ``1``) overrides the detection: the test suite sets 0 so
its values do not depend on the machine it runs on.
"""

from __future__ import annotations

import os
from functools import lru_cache

BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # fastest first
ENV = "ADAPTBENCH_CPU_BF16"


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux lists them in /proc/cpuinfo (empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def bf16_instructions() -> list[str]:
    """The bfloat16 matrix instructions this CPU has, among :data:`BF16_FLAGS`."""
    return [flag for flag in BF16_FLAGS if flag in cpu_flags()]


def cpu_bf16() -> bool:
    """Whether bfloat16 compute is the fast choice on this CPU (see the module docstring; env override)."""
    forced = os.environ.get(ENV, "").strip().lower()
    if forced in ("0", "false", "no", "off"):
        return False
    if forced in ("1", "true", "yes", "on"):
        return True
    return bool(bf16_instructions())
