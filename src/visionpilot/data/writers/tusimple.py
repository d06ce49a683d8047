"""Write frames as a TuSimple dataset: ``label_data_synthetic.json`` / ``test_label.json`` lines and clips/.

The front camera is scaled to cover ``image_size`` (1280x720) and cropped (``crop_v``) with its 2D lanes. Each lane
is written as TuSimple does: its x (rounded to whole pixels) at the rows ``h_samples`` (160, 170, ..., 710 at 720 px
height, scaled with the image), ``-2`` where it has no point. Road edges are not lane markings and are left out
unless ``include_road_edges``. Frames of scenes in the ``test`` split (``splits``) go to ``test_label.json``, the
others to ``label_data_synthetic.json``; images to ``clips/<scene_id>/<n>.jpg`` (n = 1, 2, ... within the scene).

A crash never leaves a root that reads as complete. Each file is written atomically, but the two label files cannot
be replaced in one step: a run killed between them would leave train labels without the test ones, which reads as
a whole dataset. So :data:`~visionpilot.data.sources.tusimple.EXPORT_STATUS` says ``writing`` before anything else
is touched and ``complete`` (with the label files and their frame counts) only after the last label file, and the
reader refuses a root whose status is not ``complete``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from visionpilot.data.frame import Frame
from visionpilot.data.sources.tusimple import EXPORT_STATUS, TEST_FILE, TUSIMPLE_IMAGE_SIZE
from visionpilot.data.transforms import Resize, affine_camera
from visionpilot.data.vocab import lane_type_index
from visionpilot.data.writers._common import camera_of, check_region, write_image_atomic
from visionpilot.geometry.polylines import interpolate_x_at_y
from visionpilot.utils.io import write_json_atomic, write_text_atomic

TRAIN_FILE = "label_data_synthetic.json"
_ROAD_EDGE = lane_type_index("road_edge")


def h_samples_for(height: int) -> list[int]:
    """TuSimple's rows (160..710 every 10 at 720 px) scaled to ``height``, as whole pixels."""
    return [int(v) for v in np.unique(np.round(np.arange(160, 711, 10) * height / TUSIMPLE_IMAGE_SIZE[0]))]


def write_tusimple(frames: Iterable[Frame], root: str | Path, splits: Mapping[str, str] | None = None,
                   camera: str = "CAM_FRONT", image_size: Sequence[int] = TUSIMPLE_IMAGE_SIZE,
                   include_road_edges: bool = False, crop_v: float = 0.5, jpeg_quality: int = 95) -> Path:
    """Write ``frames`` (region us, with images) under ``root``; returns ``root``.

    Args:
        frames: frames in scene order; streamed.
        root: the dataset folder to create.
        splits: scene id -> split; scenes in ``test`` go to ``test_label.json``.
        camera: the camera to export.
        image_size: (height, width) of the written images (TuSimple's 720 x 1280).
        include_road_edges: also write ``road_edge`` lines.
        crop_v: vertical crop position when covering the size (0 top .. 1 bottom).
        jpeg_quality: JPEG quality.
    """
    root = Path(root)
    # First mark the root unfinished (see the module docstring), then remove an earlier export's label files (as the
    # nuScenes writer does its tables), so that no old labels point at new images.
    write_json_atomic(root / EXPORT_STATUS, {"format": "tusimple", "status": "writing"})
    for name in (TRAIN_FILE, TEST_FILE):
        (root / name).unlink(missing_ok=True)
    height, width = (int(v) for v in image_size)
    h = h_samples_for(height)
    resize = Resize((height, width), keep_aspect=True, crop_v=crop_v)
    lines: dict[str, list[str]] = defaultdict(list)
    count: dict[str, int] = defaultdict(int)
    for frame in frames:
        check_region(frame, ("us",), "TuSimple")
        cam = camera_of(frame, camera, "TuSimple")
        cam = affine_camera(cam, resize.affine(tuple(cam.image_size)), (height, width))
        lanes = []
        for ln in cam.lanes_2d:
            if ln.type == _ROAD_EDGE and not include_road_edges:
                continue
            x = interpolate_x_at_y(ln.points, np.asarray(h, dtype=np.float64))
            ok = np.isfinite(x) & (x >= 0) & (x <= width - 1)
            if ok.sum() >= 2:
                lanes.append([int(round(v)) if good else -2 for v, good in zip(x, ok)])
        count[frame.scene_id] += 1
        raw_file = f"clips/{frame.scene_id}/{count[frame.scene_id]}.jpg"
        write_image_atomic(root / raw_file, cam.image, jpeg_quality)
        target = TEST_FILE if (splits or {}).get(frame.scene_id) == "test" else TRAIN_FILE
        lines[target].append(json.dumps({"lanes": lanes, "h_samples": h, "raw_file": raw_file}))
    written = {name: len(lines[name]) for name in (TRAIN_FILE, TEST_FILE) if lines.get(name)}
    for name in written:
        write_text_atomic(root / name, "".join(f"{line}\n" for line in lines[name]))
    write_json_atomic(root / EXPORT_STATUS, {"format": "tusimple", "status": "complete", "label_files": written})
    return root
