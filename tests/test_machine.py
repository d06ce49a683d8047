"""What the machine's CPU can do: the flags that decide bf16 autocast for the demo."""

from __future__ import annotations

import pytest

from visionpilot.utils import machine


@pytest.mark.parametrize(("cpuinfo", "model", "native"), [
    ("processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n",
     "AMD EPYC 9R14", True),
    ("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8481C\nflags\t\t: avx2 avx512f amx_bf16 amx_int8\n",
     "Intel(R) Xeon(R) Platinum 8481C", True),
    ("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\nflags\t\t: avx2 avx512f avx512_vnni\n",
     "Intel(R) Xeon(R) CPU @ 2.20GHz", False),
    ("processor\t: 0\nBogoMIPS\t: 2100.00\nFeatures\t: fp asimd sve bf16 i8mm\n", None, True),  # Arm: Graviton 3
])
def test_native_bf16_reads_the_cpu_flags(tmp_path, monkeypatch, cpuinfo: str, model: str | None,
                                         native: bool) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo)
    real_path = machine.Path
    monkeypatch.setattr(machine, "Path", lambda p: path if p == "/proc/cpuinfo" else real_path(p))
    machine.cpu_info.cache_clear()
    try:
        assert machine.native_bf16() is native
        if model is not None:
            assert machine.cpu_model() == model
    finally:
        machine.cpu_info.cache_clear()


def test_keep_freed_memory_leaves_a_chosen_allocator_alone(monkeypatch) -> None:
    machine.keep_freed_memory.cache_clear()
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    try:
        assert machine.keep_freed_memory() == "unchanged: the environment sets it (MALLOC_ARENA_MAX)"
        monkeypatch.delenv("MALLOC_ARENA_MAX")
        monkeypatch.setenv("LD_PRELOAD", "/usr/lib/libjemalloc.so.2")
        machine.keep_freed_memory.cache_clear()
        assert machine.keep_freed_memory().startswith("unchanged: the environment sets it (LD_PRELOAD")
    finally:
        machine.keep_freed_memory.cache_clear()


# What a training step does: allocate and touch blocks of megabytes, then free them together. glibc hands the heap's
# free top back to the kernel beyond twice the largest block freed so far, so every step faults the same pages in
# again. Run in a fresh process: glibc's behaviour depends on the heap's history and layout.
_STEPS = """
import resource, sys, torch
from visionpilot.utils.machine import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory().startswith("glibc:")
def step():
    alive = [torch.empty(n).fill_(1.0) for n in (1_000_000, 5_000_000, 2_000_000, 5_000_000, 250_000, 3_000_000)]
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""


@pytest.mark.skipif(machine.platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_keep_freed_memory_stops_the_page_faults_of_repeated_large_tensors() -> None:
    import subprocess
    import sys

    env = {k: v for k, v in machine.os.environ.items()
           if not (k.startswith("MALLOC_") or k in ("GLIBC_TUNABLES", "LD_PRELOAD"))}
    faults = {how: float(subprocess.run([sys.executable, "-c", _STEPS, how], env=env, check=True, text=True,
                                        capture_output=True).stdout.split()[-1]) for how in ("default", "keep")}
    pages = 65e6 / machine.os.sysconf("SC_PAGE_SIZE")  # the step's 65 MB
    # The default faults ~60 % of the step's pages in again every step in most fresh processes, none in some (it
    # depends on where the heap lies): only the kept state is certain.
    assert faults["keep"] < 0.02 * pages, faults
