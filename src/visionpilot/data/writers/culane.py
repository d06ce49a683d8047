"""Write frames as a CULane dataset: ``list/{train,val,test}.txt``, 1640x590 JPEGs and ``.lines.txt`` lanes.

The front camera of each frame is scaled to cover ``image_size`` and cropped (``crop_v``), its 2D lanes with it
(:func:`~visionpilot.data.transforms.affine_camera`). Each lane is sampled like CULane's annotations: its x at rows
every ``row_step`` pixels (at 590 px height, scaled with the image) from the bottom edge upwards, written as
``x y`` pairs. As in CULane, at most ``max_lanes`` lanes are kept, the ones nearest the image centre on each side,
listed left to right; road edges are not lane markings and are left out unless ``include_road_edges``.

Files go to ``driver_<source>_<region>/<scene_id>.MP4/<n>.jpg`` with ``n`` = 30 x the frame's position in its scene
(CULane's frame numbering of 30 fps video), and the list file of the scene's split (``splits``; default train).
No test scenario lists are written, and any under ``list/test_split/`` are removed: there they would describe an
earlier dataset's images, and the reader would give their categories to this export's frames.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from visionpilot.data.frame import Frame
from visionpilot.data.sources.culane import CULANE_IMAGE_SIZE, LISTS
from visionpilot.data.transforms import Resize, affine_camera
from visionpilot.data.vocab import lane_type_index
from visionpilot.data.writers._common import camera_of, check_region, write_image_atomic
from visionpilot.geometry.polylines import interpolate_x_at_y
from visionpilot.utils.io import write_text_atomic

_ROAD_EDGE = lane_type_index("road_edge")


def sample_rows(points: np.ndarray, height: int, width: int, step: float) -> np.ndarray:
    """A 2D lane's (x, y) at rows ``height, height - step, ...`` inside the image, bottom first (P, 2)."""
    rows = np.arange(float(height), 0.0, -step)
    x = interpolate_x_at_y(points, rows)
    ok = np.isfinite(x) & (x >= 0) & (x <= width)
    return np.column_stack([x[ok], rows[ok]])


def pick_lanes(lanes: list[np.ndarray], width: int, max_lanes: int | None) -> list[np.ndarray]:
    """At most ``max_lanes`` lanes nearest the image centre on each side (by x at their lowest point), left to right."""
    lanes = sorted(lanes, key=lambda p: p[0, 0])
    if max_lanes is None:
        return lanes
    left = [p for p in lanes if p[0, 0] < width / 2][::-1][: max_lanes // 2]
    right = [p for p in lanes if p[0, 0] >= width / 2][: max_lanes - max_lanes // 2]  # CULane: 2 slots a side
    return left[::-1] + right


def write_culane(frames: Iterable[Frame], root: str | Path, splits: Mapping[str, str] | None = None,
                 camera: str = "CAM_FRONT", image_size: Sequence[int] = CULANE_IMAGE_SIZE,
                 max_lanes: int | None = 4, include_road_edges: bool = False, row_step: float = 10.0,
                 crop_v: float = 0.5, jpeg_quality: int = 95) -> Path:
    """Write ``frames`` (region cn, with images) under ``root``; returns ``root``.

    Args:
        frames: frames in scene order; streamed.
        root: the dataset folder to create.
        splits: scene id -> ``train`` / ``val`` / ``test`` (default train).
        camera: the camera to export.
        image_size: (height, width) of the written images (CULane's 590 x 1640).
        max_lanes: lanes per image (4 in CULane; None keeps all).
        include_road_edges: also write ``road_edge`` lines.
        row_step: row spacing of the lane points at 590 px height (scaled to ``image_size``).
        crop_v: vertical crop position when covering the size (0 top .. 1 bottom).
        jpeg_quality: JPEG quality.
    """
    root = Path(root)
    for old in (root / "list").glob("*.txt"):  # lists are written last; an earlier export's go first (see nuScenes)
        old.unlink()
    scenarios = root / "list" / "test_split"  # stale test scenarios (see the module docstring)
    for old in scenarios.glob("*.txt"):
        old.unlink()
    if scenarios.is_dir() and not any(scenarios.iterdir()):
        scenarios.rmdir()
    height, width = (int(v) for v in image_size)
    step = max(float(row_step) * height / CULANE_IMAGE_SIZE[0], 1.0)
    resize = Resize((height, width), keep_aspect=True, crop_v=crop_v)
    listed: dict[str, list[str]] = defaultdict(list)
    count: dict[str, int] = defaultdict(int)
    for frame in frames:
        check_region(frame, ("cn",), "CULane")
        cam = camera_of(frame, camera, "CULane")
        cam = affine_camera(cam, resize.affine(tuple(cam.image_size)), (height, width))
        lanes = [sample_rows(ln.points, height, width, step) for ln in cam.lanes_2d
                 if include_road_edges or ln.type != _ROAD_EDGE]
        lanes = pick_lanes([p for p in lanes if len(p) >= 2], width, max_lanes)
        image = f"driver_{frame.source}_{frame.region}/{frame.scene_id}.MP4/{30 * count[frame.scene_id]:05d}.jpg"
        count[frame.scene_id] += 1
        write_image_atomic(root / image, cam.image, jpeg_quality)
        text = "".join(" ".join(f"{x:.3f} {y:g}" for x, y in p) + " \n" for p in lanes)  # CULane ends lines with ' '
        write_text_atomic((root / image).with_suffix(".lines.txt"), text)
        listed[(splits or {}).get(frame.scene_id, "train")].append("/" + image)
    for split in sorted({*LISTS, *listed}):
        write_text_atomic(root / "list" / f"{split}.txt", "".join(f"{p}\n" for p in listed.get(split, [])))
    return root
