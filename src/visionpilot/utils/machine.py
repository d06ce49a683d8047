"""What this machine's CPU is and can do: its model name and SIMD flags (``/proc/cpuinfo``)."""

from __future__ import annotations

import platform
from functools import cache
from pathlib import Path

#: CPU flags that mean bf16 arithmetic in hardware: x86 AVX-512 BF16 (Cooper Lake, Zen 4 and later) and AMX
#: (Sapphire Rapids and later), Arm's BF16 extension (Neoverse V1/N2, Graviton 3). Elsewhere PyTorch emulates bf16
#: and mixed precision is slower than float32.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


@cache
def cpu_info() -> tuple[str, frozenset[str]]:
    """(model name, flags) of the first CPU in ``/proc/cpuinfo``; what ``platform`` knows and no flags elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine(), frozenset()
    lines = text.splitlines()
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                 platform.processor() or platform.machine())
    # x86 lists "flags", Arm "Features"
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith(("flags", "Features"))), [])
    return model, frozenset(flags)


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    return cpu_info()[0]


def native_bf16() -> bool:
    """Whether the CPU computes bf16 in hardware (see :data:`NATIVE_BF16_FLAGS`)."""
    return bool(cpu_info()[1] & NATIVE_BF16_FLAGS)
