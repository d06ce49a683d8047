"""``frames.jsonl``: one JSON object per frame, exactly what a loader read (``visionpilot-data action=dump``).

Fields of each line (label kinds the source does not have are ``null``, not empty):

    id, scene, source, region, driving_side, timestamp, labels   identity and the label kinds present
    cameras     [{name (as the dataset names it, e.g. CAM_FRONT), width, height, intrinsics (3x3),
                  extrinsics (4x4 camera -> ego)}]
    boxes_3d    [{class, center [x, y, z], size [length, width, height], yaw}]      ego frame, metres / radians
    boxes_2d    {camera name: [{class, box [x1, y1, x2, y2]}]}                     the source image's pixels
    lanes       [{type, points [[x, y, z], ...]}]                                  ego frame
    lanes_2d    {camera name: [{type, points [[u, v], ...]}]}                      the source image's pixels
    meta        the source's extras (e.g. TuSimple h_samples)

Frames are loaded without images, so a dump of a large dataset reads only its labels.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from visionpilot.data.frame import Frame, Lane
from visionpilot.data.sources.base import FrameRef, FrameSource
from visionpilot.data.vocab import LANE_TYPES, OBJECT_CLASSES
from visionpilot.utils.io import write_atomic


def _r(values: np.ndarray, decimals: int) -> Any:
    return (np.round(np.asarray(values, dtype=np.float64), decimals) + 0.0).tolist()  # + 0.0: no "-0.0"


def _lanes(lanes: list[Lane], decimals: int) -> list[dict[str, Any]]:
    return [{"type": LANE_TYPES[ln.type], "points": _r(ln.points, decimals)} for ln in lanes]


def frame_record(frame: Frame, decimals: int = 4) -> dict[str, Any]:
    """The JSON object of one frame (see the module docstring)."""
    has = frame.has
    return {
        "id": frame.frame_id,
        "scene": frame.scene_id,
        "source": frame.source,
        "region": frame.region,
        "driving_side": frame.driving_side,
        "timestamp": round(float(frame.timestamp), 6),
        "labels": sorted(frame.labels),
        "cameras": [{"name": c.name, "width": int(c.image_size[1]), "height": int(c.image_size[0]),
                     "intrinsics": _r(c.intrinsics, 6), "extrinsics": _r(c.extrinsics, 6)} for c in frame.cameras],
        "boxes_3d": [{"class": OBJECT_CLASSES[int(k)], "center": _r(c, decimals), "size": _r(s, decimals),
                      "yaw": round(float(y), 6)}
                     for c, s, y, k in zip(frame.boxes_3d.centers, frame.boxes_3d.sizes, frame.boxes_3d.yaws,
                                           frame.boxes_3d.classes)] if has("boxes_3d") else None,
        "boxes_2d": {c.name: [{"class": OBJECT_CLASSES[int(k)], "box": _r(b, 2)}
                              for b, k in zip(c.boxes_2d, c.classes_2d)] for c in frame.cameras}
        if has("boxes_2d") else None,
        "lanes": _lanes(frame.lanes_3d, decimals) if has("lanes_3d") else None,
        "lanes_2d": {c.name: _lanes(c.lanes_2d, 2) for c in frame.cameras} if has("lanes_2d") else None,
        "meta": frame.meta,
    }


def write_frames_jsonl(source: FrameSource, refs: Iterable[FrameRef], path: str | Path) -> int:
    """Write one line per ref (label-only loads) to ``path`` atomically; returns the number of frames."""
    count = 0

    def write(tmp: str) -> None:
        nonlocal count
        with open(tmp, "w") as f:
            for ref in refs:
                f.write(json.dumps(frame_record(source.load(ref.index, with_images=False))) + "\n")
                count += 1

    write_atomic(path, write)
    return count
