"""Data loading throughput: frames/s from litdata shards vs from the source's own files, per loader worker.

    python benchmarks/data_loading.py --frames 48 --height 256 --width 704 --workers 0 1 2

The source files are the synthetic world written in the exact nuScenes format (six JPEG images per frame plus the
JSON tables and map, read by ``NuScenesSource``: JPEG decoding, table look-ups, 3D -> 2D label projection and map
lanes per frame). The same frames are then sharded (``write_shards``, PNG, JPEG and raw records) and streamed back by
``StreamingDataModule``'s dataset. Every reader yields the same collated batches (no augmentation), shuffled, one
epoch per measurement, after a warm-up epoch (so files are in the page cache: this compares decoding and
parsing work, not disk or network). ``per_worker`` divides by the worker count (the main process for 0 workers).
Prints one JSON line per measurement, then a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2  # noqa: E402
import torch  # noqa: E402
from litdata import CombinedStreamingDataset, StreamingDataLoader  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from visionpilot.data.collate import collate_frames  # noqa: E402
from visionpilot.data.datamodule import EpochSampler, FrameDataset  # noqa: E402
from visionpilot.data.shards import write_shards  # noqa: E402
from visionpilot.data.sources.nuscenes import NuScenesSource  # noqa: E402
from visionpilot.data.sources.streaming import ShardSource, StreamingFrameDataset  # noqa: E402
from visionpilot.data.sources.synthetic import SyntheticSource  # noqa: E402
from visionpilot.data.splits import make_splits  # noqa: E402
from visionpilot.data.writers import write_nuscenes  # noqa: E402


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def time_epoch(loader: Any) -> tuple[int, float, float]:
    """(frames, seconds for the epoch, seconds to the first batch)."""
    t0 = time.perf_counter()
    first, frames = None, 0
    for batch in loader:
        frames += int(batch["images"].shape[0])
        if first is None:
            first = time.perf_counter() - t0
    return frames, time.perf_counter() - t0, first or 0.0


def source_loader(src: NuScenesSource, batch: int, workers: int) -> DataLoader:
    refs = src.index()
    ds = FrameDataset(src, refs)
    return DataLoader(ds, batch_size=batch, sampler=EpochSampler(len(ds), shuffle=True, seed=0), num_workers=workers,
                      collate_fn=collate_frames, worker_init_fn=_worker_init, persistent_workers=False)


def shard_loader(root: Path, batch: int, workers: int) -> StreamingDataLoader:
    src = ShardSource(root)
    parts = [StreamingFrameDataset(src.prefix(r, s), shuffle=True, seed=0, drop_last=False) for r, s, _ in src.parts]
    ds = parts[0] if len(parts) == 1 else CombinedStreamingDataset(parts, seed=0, iterate_over_all=True)
    return StreamingDataLoader(ds, batch_size=batch, num_workers=workers, collate_fn=collate_frames,
                               worker_init_fn=_worker_init)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=48, help="frames in total (half US, half SG)")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=704)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workdir", default=None, help="where to write the dataset and shards (default: a temp dir)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="vp_bench_"))
    per_scene = 4
    scenes = max(1, args.frames // (2 * per_scene))
    synth = SyntheticSource("nuscenes6", regions=["us", "sg"], scenes_per_region=scenes, frames_per_scene=per_scene,
                            image_size=(args.height, args.width))
    nus_root = work / "nuscenes"
    write_nuscenes((synth.load(i) for i in range(len(synth))), nus_root, jpeg_quality=95)
    src = NuScenesSource(nus_root)
    refs = src.index()
    manifest = make_splits(refs, seed=0)
    readers: dict[str, tuple[Path, Any]] = {"nuscenes files": (nus_root, lambda w: source_loader(src, args.batch, w))}
    for fmt in ("png", "jpeg", "raw"):
        root = work / f"shards_{fmt}"
        t0 = time.perf_counter()
        write_shards(src, refs, manifest, manifest.regions, root, image_format=fmt, num_workers=1)
        print(json.dumps({"shard_write": fmt, "frames": len(refs), "seconds": round(time.perf_counter() - t0, 2)}))
        readers[f"shards ({fmt})"] = (root, lambda w, root=root: shard_loader(root, args.batch, w))
    rows = []
    for name, (root, make) in readers.items():
        for workers in args.workers:
            time_epoch(make(workers))  # warm-up: page cache, imports in workers
            frames, seconds, first = time_epoch(make(workers))
            fps = frames / seconds
            row = {"reader": name, "workers": workers, "frames": frames, "cameras": len(src.camera_names),
                   "height": args.height, "width": args.width, "frames_per_s": round(fps, 1),
                   "per_worker": round(fps / max(workers, 1), 1), "first_batch_s": round(first, 2),
                   "disk_mb": round(folder_mb(root), 1)}
            rows.append(row)
            print(json.dumps(row))
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "load_avg_1m": round(os.getloadavg()[0], 2), "python": platform.python_version()}
    print(json.dumps({"machine": machine, "workdir": str(work)}))
    print("\n| reader | workers | frames/s | per worker | first batch (s) | on disk (MB) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['reader']} | {r['workers']} | {r['frames_per_s']} | {r['per_worker']} | {r['first_batch_s']} "
              f"| {r['disk_mb']} |")


if __name__ == "__main__":
    main()
