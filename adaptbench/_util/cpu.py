"""Whether ``dtype: auto`` computes in bfloat16 on this CPU: only where the user asks (``ADAPTBENCH_CPU_BF16=1``)
and the CPU multiplies bfloat16 matrices in hardware.

x86 cores with AMX (``amx_bf16``: Intel Sapphire Rapids and later) or AVX512-BF16 (``avx512_bf16``: Intel
Cooper Lake and later, AMD Zen 4 and later) run oneDNN's bfloat16 matmuls -- PyTorch's CPU kernels -- 2-4x
faster than float32 (``bench/roofline.py`` measures it on the machine in use).  Cores without them emulate
bfloat16 and are slower than float32.  It is not the default because it changes results beyond a float32
run's: on SmolLM2-135M 3.3 % of near-tie ICL predictions flip and fine-tuned accuracies move by up to 7
points (``bench/dtype_agreement.py``; docs/models.md, "Precision").  ``ADAPTBENCH_CPU_BF16``: unset or ``0``
float32; ``1`` bfloat16 where the CPU has the instructions; ``force`` bfloat16 on any CPU (tests).
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


def setting() -> str:
    """``ADAPTBENCH_CPU_BF16`` as given ("" when unset); an unknown value is an error, not a silent float32."""
    from ..errors import AdaptbenchError

    value = os.environ.get(ENV, "").strip().lower()
    if value not in ("", "0", "1", "force"):
        raise AdaptbenchError(f"{ENV}={os.environ[ENV]!r}: use 1 (bfloat16 where the CPU has AMX or AVX512-BF16), "
                              f"0 (float32, the default) or force (bfloat16 on any CPU)")
    return value


def cpu_bf16() -> bool:
    """Whether ``auto`` means bfloat16 on this CPU (see the module docstring)."""
    value = setting()
    return value == "force" or (value == "1" and bool(bf16_instructions()))
