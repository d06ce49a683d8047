"""Measuring on a shared machine: what the machine is, peak memory per model, interleaved timing, percentiles.

The pieces of ``visionpilot-benchmark`` (export/benchmark.py) that know nothing of models.

Peak memory is the peak resident set size (Linux ``VmHWM``, reset through ``/proc/self/clear_refs`` before each
model) minus the resident size before the model was loaded. Freed heap is handed back first (``gc`` + glibc
``malloc_trim``) so one model's leftovers do not hide the next one's peak. Where the kernel does not allow the
reset, it is None and ``machine_info()["memory_method"]`` says so.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

import visionpilot
from visionpilot.utils.machine import available_cores, cpu_info

MEMORY_METHOD = "peak RSS (VmHWM, reset via /proc/self/clear_refs) minus RSS before loading"


# --- the machine -------------------------------------------------------------------------------------------------

def machine_info(threads: int) -> dict[str, Any]:
    """What the numbers depend on: CPU, cores, SIMD flags, GPU, threads, library versions, load."""
    model, flags = cpu_info()
    try:
        mem_gb = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    except (OSError, IndexError, ValueError):
        mem_gb = None
    try:
        from visionpilot.governance.provenance import code_version
        version = code_version()
    except Exception:  # provenance is optional here; the package version still says which code ran
        version = f"visionpilot {visionpilot.__version__}"
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "cores_available": available_cores(),
        "cpu_flags": [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")
                      if f in flags],
        "memory_gb": None if mem_gb is None else round(mem_gb, 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "onnx": onnx.__version__,
        "numpy": np.__version__,
        "code_version": version,
        "onnxruntime_providers": ort.get_available_providers(),
        "threads": {"torch_intra_op": torch.get_num_threads(), "onnxruntime_intra_op": threads,
                    "onnxruntime_inter_op": 1},
        "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")
                if k in os.environ},
        "flush_denormal": True,
        "memory_method": MEMORY_METHOD if _reset_peak_rss() else "unavailable (no /proc/self/clear_refs)",
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


# --- memory ------------------------------------------------------------------------------------------------------

def _status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def release_memory() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # glibc keeps freed heap resident: hand it back, so
        ctypes.CDLL("libc.so.6").malloc_trim(0)          # the next model's peak is its own


class PeakMemory:
    """Peak resident memory above the level at entry, in MB (None where it cannot be measured)."""

    def __enter__(self) -> PeakMemory:
        release_memory()
        self.ok = _reset_peak_rss()
        self.start = _status_kb("VmRSS")
        self.mb: float | None = None
        return self

    def __exit__(self, *exc: object) -> None:
        peak = _status_kb("VmHWM")
        if self.ok and peak is not None and self.start is not None:
            self.mb = max(peak - self.start, 0) / 1024


# --- timing ------------------------------------------------------------------------------------------------------

def timed_session_options(threads: int, spinning: bool = False) -> ort.SessionOptions:
    """onnxruntime session options for timing: ``threads`` intra-op threads, one inter-op, every graph
    optimisation, denormals as zero. ``spinning``: whether idle intra-op threads spin-wait for work (onnxruntime's
    default); off, a session timed beside others does not take a core from them between its calls."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.set_denormal_as_zero", "1")
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return options


def summarise(seconds: Sequence[float], batch: int) -> dict[str, Any]:
    """p50 / p90 / p99 and mean in ms, frames/s (frames = batch items per second of timed calls), the samples."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99), "min_ms": float(ms.min()),
            "mean_ms": float(ms.mean()),
            "fps": float(batch * 1000.0 * len(ms) / ms.sum()), "iters": len(ms),
            "samples_ms": [round(float(v), 3) for v in ms]}  # in call order: shows bursts of outside load


def call_interleaved(calls: Sequence[Callable[[], float]], iters: int) -> list[list[float]]:
    """``iters`` calls of every timed call (each returns its own seconds), round-robin with the order rotated each
    round."""
    times: list[list[float]] = [[] for _ in calls]
    for i in range(iters):
        for k in range(len(calls)):
            j = (k + i) % len(calls)
            times[j].append(float(calls[j]()))
    return times


def time_interleaved(runs: Sequence[Callable[[], Any]], iters: int) -> list[list[float]]:
    """``iters`` timed calls of every run, round-robin with the order rotated each round."""
    return call_interleaved([_timed(run) for run in runs], iters)


def time_call(run: Callable[[], Any]) -> float:
    """Seconds one call of ``run`` takes."""
    t0 = time.perf_counter()
    run()
    return time.perf_counter() - t0


def _timed(run: Callable[[], Any]) -> Callable[[], float]:
    return lambda: time_call(run)


# --- other processes ---------------------------------------------------------------------------------------------

def _busy_ticks() -> int | None:
    """CPU ticks the whole machine spent busy since boot: user, nice, system, irq, softirq and steal (time a
    hypervisor gave this machine's virtual CPUs to other guests); idle and iowait are not busy."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    except (OSError, ValueError):
        return None
    return user + nice + system + irq + softirq + steal


def _process_ticks(pid: int) -> float:
    """CPU time process ``pid`` has used (all threads), in clock ticks; 0 once it is gone.

    From each thread's ``schedstat`` (nanoseconds on the CPU), not ``stat``'s utime + stime: those are whole ticks,
    and over the millisecond windows of a fast model's calls their rounding left most of our own time unaccounted,
    so it was counted as other processes' (2.2-2.7 "other" cores on a 2-core machine).
    """
    tick_ns = 1e9 / os.sysconf("SC_CLK_TCK")
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return 0.0
    total = 0
    for task in tasks:
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):  # a thread that ended meanwhile
            continue
    return total / tick_ns


class OthersCpu:
    """How many cores processes other than ``pids`` kept busy, averaged over the stretches between :meth:`start`
    and :meth:`stop` (Linux ``/proc``; ``cores`` is None elsewhere).

    Why: a timing is only as good as the machine was quiet. Eager PyTorch suffers most: with a busy loop on one of
    two cores, its demo-model latency went from 39 to 222 ms while onnxruntime's went from 35 to 56 ms
    (docs/benchmarks.md), so a contended run changes the ratios the benchmark exists to give. The load average is
    a minute-long mean that counts the benchmark's own threads; this counts only the others, while each model ran.
    Ticks are 10 ms, so single short calls are coarse, but many of them average out.
    """

    def __init__(self, pids: Sequence[int]) -> None:
        self.pids = list(pids)
        self.ticks = 0.0
        self.seconds = 0.0
        self.ok = _busy_ticks() is not None
        self._start: tuple[int, list[float], float] | None = None

    def start(self) -> None:
        if self.ok:
            self._start = (_busy_ticks() or 0, [_process_ticks(p) for p in self.pids], time.perf_counter())

    def stop(self) -> None:
        if self._start is None:
            return
        busy, own, t0 = self._start
        # Per process and never negative: a worker killed meanwhile reads 0 and must not count as others' time.
        ours = sum(max(_process_ticks(p) - before, 0) for p, before in zip(self.pids, own))
        # Signed: in a window shorter than a tick the machine's count is 0 or 1 while ours is a fraction, and only
        # the sum over many windows is right (clamping each window at 0 would bias it upwards).
        self.ticks += (_busy_ticks() or 0) - busy - ours
        self.seconds += time.perf_counter() - t0
        self._start = None

    @property
    def cores(self) -> float | None:
        if not self.ok or self.seconds <= 0:
            return None
        # The machine's counter moves in whole ticks: over few windows the estimate can leave [0, cores].
        return min(max(self.ticks / os.sysconf("SC_CLK_TCK") / self.seconds, 0.0), float(os.cpu_count() or 1))
