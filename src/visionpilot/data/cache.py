"""Frames kept in memory, loaded once: ``data.cache=ram`` (what Ultralytics' ``cache=ram`` does for images).

A training run reads every frame once per epoch, and a source that renders (the synthetic world) or decodes (camera
JPEGs) pays for it every time, in a loader worker that shares the machine's cores with the training step: on the
2-core demo machine the worker's ~24 ms of one core per frame made a step 37 % slower than the step alone
(docs/benchmarks.md, "Frames loaded once"). With the cache, the datamodule's ``setup`` loads the frames of the splits
a stage needs once, in parallel processes, before training starts; a loader then only unpickles and augments them.
Augmentation stays per ``(seed, epoch, index)`` and the cached frame is the frame ``load`` returns, so a cached run
trains on exactly the batches of an uncached one.

The cache holds pickled bytes, not frame objects: every read hands out a fresh frame, so a transform that modifies
its input in place cannot corrupt the cache, and loader workers forked afterwards share the bytes' memory pages.

Memory: before loading, one frame's size times the number of frames is checked against the memory the system has
available; a cache that would take more than ``max_fraction`` of it is not built (a warning says so, with the
figures, and frames are loaded as without a cache).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

from visionpilot.data.frame import Frame
from visionpilot.data.sources.base import FrameSource
from visionpilot.utils.machine import available_cores

log = logging.getLogger(__name__)

#: The values ``data.cache`` accepts.
CACHE_MODES = (None, "ram")

_worker_source: FrameSource | None = None  # the source of a fill process (set by its initializer)


def available_memory() -> int | None:
    """Bytes of memory the system can give without swapping (Linux ``MemAvailable``; elsewhere the free pages, which
    undercount it); None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def _init_worker(source: FrameSource) -> None:
    global _worker_source
    _worker_source = source


def _load_pickled(index: int) -> tuple[int, bytes]:
    assert _worker_source is not None
    return index, pickle.dumps(_worker_source.load(index), protocol=pickle.HIGHEST_PROTOCOL)


class FrameCache:
    """Pickled frames of a source by source index, filled by :meth:`fill`, read by :meth:`get`.

    Args:
        workers: processes that load the frames (None: every usable CPU; 1: in this process).
        max_fraction: the largest share of the available memory the cache may take.
    """

    def __init__(self, workers: int | None = None, max_fraction: float = 0.5) -> None:
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise ValueError(f"FrameCache: field 'cache_workers' must be a positive integer or null, found {workers!r}")
        if not 0.0 < float(max_fraction) <= 1.0:
            raise ValueError(f"FrameCache: field 'max_fraction' must be in (0, 1], found {max_fraction!r}")
        self.workers = workers
        self.max_fraction = float(max_fraction)
        self.frames: dict[int, bytes] = {}

    def __len__(self) -> int:
        return len(self.frames)

    def __contains__(self, index: object) -> bool:
        return index in self.frames

    @property
    def nbytes(self) -> int:
        return sum(len(b) for b in self.frames.values())

    def get(self, index: int) -> Frame | None:
        """A fresh copy of the cached frame at source ``index``, or None if it is not cached."""
        data = self.frames.get(index)
        return None if data is None else pickle.loads(data)

    def fill(self, source: FrameSource, indices: Sequence[int], what: str = "frames", share: int = 1) -> bool:
        """Load the frames at source ``indices`` that are not cached yet. False if they would not fit in memory.

        ``what`` names them in the log (e.g. the splits). ``share``: processes on this machine that fill caches of
        their own at the same time (DDP ranks); each takes that share of the CPUs and of the available memory.
        """
        missing = sorted(set(int(i) for i in indices) - self.frames.keys())
        if not missing:
            return True
        start = time.perf_counter()
        # One frame loaded here first: its size decides whether the rest fits (and it is cached if it does).
        first = pickle.dumps(source.load(missing[0]), protocol=pickle.HIGHEST_PROTOCOL)
        need = len(first) * len(missing)
        free = available_memory()
        share = max(1, int(share))
        if free is not None and need > self.max_fraction * free / share:
            log.warning("data.cache=ram: %d %s would take ~%.0f MB, more than %.0f %% of the %.0f MB of memory "
                        "available%s; frames are loaded as without a cache (data.cache=null silences this)",
                        len(missing), what, need / 2**20, 100 * self.max_fraction, free / 2**20,
                        f" shared by {share} processes" if share > 1 else "")
            return False
        self.frames[missing[0]] = first
        rest = missing[1:]
        workers = min(self.workers or max(1, available_cores() // share), max(1, len(rest)))
        if workers == 1:
            for i in rest:
                self.frames[i] = pickle.dumps(source.load(i), protocol=pickle.HIGHEST_PROTOCOL)
        else:
            # fork where the platform has it: the source reaches the processes without being pickled.
            methods = multiprocessing.get_all_start_methods()
            context = multiprocessing.get_context("fork" if "fork" in methods else None)
            with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                     initargs=(source,)) as pool:
                for i, data in pool.map(_load_pickled, rest, chunksize=max(1, len(rest) // (8 * workers))):
                    self.frames[i] = data
        log.info("data.cache=ram: %d %s loaded into memory (%.0f MB) in %.1f s by %d process(es)", len(missing),
                 what, sum(len(self.frames[i]) for i in missing) / 2**20, time.perf_counter() - start, workers)
        return True
