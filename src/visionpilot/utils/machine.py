"""What this machine's CPU is and can do: its model name and SIMD flags (``/proc/cpuinfo``), the cores this process
may use."""

from __future__ import annotations

import os
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


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's own ceiling for its dynamic threshold on 64-bit systems
_INT_MAX = 2**31 - 1  # mallopt takes a C int


@cache
def keep_freed_memory() -> str:
    """Have glibc's malloc keep the memory PyTorch frees for the next allocation instead of handing it back.

    PyTorch has no caching allocator on the CPU: every activation and gradient of a training step is a fresh
    ``malloc``. glibc serves large blocks from the heap once its dynamic threshold has grown, but gives the heap's
    free top back to the kernel as soon as it exceeds twice the largest block freed so far, which a step that
    frees its activations together does every time: the next step faults the same pages in again (~5,000-10,000
    page faults and 20-35 ms of kernel time per step of the CPU demo; docs/benchmarks.md, "Training
    throughput"). Here: blocks up to 32 MB (glibc's own ceiling) from the heap from the start, and the heap's top
    kept up to 2 GB. onnxruntime keeps an arena for the same reason. The resident memory then stays near the
    run's peak, which a training process reaches every step anyway.

    Returns what was done, or why nothing was: not glibc (macOS, musl), or the user chose the allocator
    (``LD_PRELOAD`` of jemalloc / tcmalloc / mimalloc, ``MALLOC_*`` or ``GLIBC_TUNABLES`` settings). Called once
    per process by the training, fine-tuning and evaluation entry points.
    """
    import ctypes

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return f"unchanged: not glibc ({platform.system()} {platform.libc_ver()[0] or 'unknown libc'})"
    chosen = sorted(k for k in os.environ if k.startswith("MALLOC_") or k == "GLIBC_TUNABLES")
    if "malloc" in os.environ.get("LD_PRELOAD", ""):
        chosen.append("LD_PRELOAD")
    if chosen:
        return f"unchanged: the environment sets it ({', '.join(chosen)})"
    try:
        libc = ctypes.CDLL("libc.so.6")
        done = [libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX), libc.mallopt(_M_TRIM_THRESHOLD, _INT_MAX)]
    except (OSError, AttributeError) as err:
        return f"unchanged: {err}"
    if not all(done):  # mallopt returns 1 on success
        return f"unchanged: mallopt refused ({done})"
    return "glibc: blocks up to 32 MB from the heap, its free top kept (mmap_threshold 32 MB, trim_threshold 2 GB)"


def available_cores() -> int:
    """The cores this process may run on (its affinity mask; a container's quota is not visible here)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
