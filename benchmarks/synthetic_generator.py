"""Synthetic world generator throughput: frames per second per core (per CPU-second of one process).

    python benchmarks/synthetic_generator.py --rig nuscenes6 --height 256 --width 704 --frames 60

One process, OpenCV and BLAS limited to one thread, so the figure is per core. Frames are drawn round-robin from
every region (scenes change often, so scene sampling is included). Prints a JSON line with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from visionpilot.data.regions import REGIONS  # noqa: E402
from visionpilot.data.sources.synthetic import SyntheticSource  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rig", default="nuscenes6")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=704)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--frames-per-scene", type=int, default=10)
    parser.add_argument("--labels-only", action="store_true", help="time label generation without images")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    regions = sorted(REGIONS)
    src = SyntheticSource(args.rig, regions=regions, scenes_per_region=50, frames_per_scene=args.frames_per_scene,
                          image_size=(args.height, args.width))
    per_region = src.scenes_per_region * src.frames_per_scene
    fps = args.frames_per_scene
    # A drive at a time (all its frames, as when writing a dataset), rotating through the regions.
    order = [((k // fps) % len(regions)) * per_region + (k // (fps * len(regions))) * fps + k % fps
             for k in range(args.frames)]
    src.load(0, with_images=not args.labels_only)  # rig geometry and caches
    times = []
    cpu0 = time.process_time()
    for i in order:
        t0 = time.perf_counter()
        src.load(i, with_images=not args.labels_only)
        times.append(time.perf_counter() - t0)
    cpu = time.process_time() - cpu0
    times = np.asarray(times)
    result = {
        "rig": args.rig, "cameras": len(src.rig), "height": args.height, "width": args.width,
        "frames": len(times), "labels_only": args.labels_only,
        # Per core = frames per second of this process's CPU time (robust to other load on the machine).
        "frames_per_s_per_core": round(len(times) / cpu, 2),
        "frames_per_s_wall": round(1.0 / times.mean(), 2),
        "ms_mean": round(times.mean() * 1000, 1), "ms_p50": round(float(np.median(times)) * 1000, 1),
        "ms_p90": round(float(np.percentile(times, 90)) * 1000, 1),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "python": platform.python_version(), "numpy": np.__version__, "opencv": cv2.__version__},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
