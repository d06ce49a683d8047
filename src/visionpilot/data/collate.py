"""Stack frames into the batch contract of docs/architecture.md ("The batch contract").

Padded sizes are the maxima in the batch and at least 1, so no tensor has an empty axis: ``N`` camera slots,
``K`` 3D boxes, ``M`` 2D boxes per camera, ``L``/``P`` lanes and points per lane. The 3D and 2D lane tensors each
take their own ``L``/``P`` maxima. Padding: zeros for values, -1 for class / type indices, False in masks; padded
camera slots get identity intrinsics and extrinsics (so code that inverts them never sees a singular matrix) and a
black image. A label kind the frame does not have (``Frame.labels``) is padded as if empty and flagged by
``has_<kind> = False``, so losses can tell *unknown* from *no objects*.

Everything is written into preallocated numpy buffers (one copy per array) and wrapped with ``torch.from_numpy``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from visionpilot.data.frame import LABEL_KINDS, Frame, Lane


def _fill_lanes(lanes: Sequence[Lane], points: np.ndarray, valid: np.ndarray, types: np.ndarray) -> None:
    """Write lanes into (L, P, D) / (L, P) / (L,) views."""
    for j, lane in enumerate(lanes):
        n = len(lane.points)
        points[j, :n] = lane.points
        valid[j, :n] = True
        types[j] = lane.type


def _image_size(frames: Sequence[Frame]) -> tuple[int, int]:
    sizes = {tuple(c.image_size) for f in frames for c in f.cameras}
    if len(sizes) != 1:
        where = [(f.frame_id, c.name, tuple(c.image_size)) for f in frames for c in f.cameras]
        raise ValueError(f"collate_frames: every camera of a batch must have one image size (set the datamodule's "
                         f"image_size to resize), found {sorted(sizes)}: {where[:8]}")
    for f in frames:
        for c in f.cameras:
            if c.image is None:
                raise ValueError(f"collate_frames: frame '{f.frame_id}', camera '{c.name}': field 'image' is None "
                                 f"(loaded with with_images=False); batches need images")
    return sizes.pop()  # type: ignore[return-value]


def collate_frames(frames: Sequence[Frame]) -> dict[str, Any]:
    """Stack frames into the batch dict (see the module docstring and docs/architecture.md)."""
    if not frames:
        raise ValueError("collate_frames: expected at least one frame, found an empty list")
    h, w = _image_size(frames)
    b = len(frames)
    has = {kind: np.array([f.has(kind) for f in frames], dtype=bool) for kind in LABEL_KINDS}

    n = max(len(f.cameras) for f in frames)
    k = max([len(f.boxes_3d) for f, ok in zip(frames, has["boxes_3d"]) if ok] + [1])
    m = max([len(c.boxes_2d) for f, ok in zip(frames, has["boxes_2d"]) if ok for c in f.cameras] + [1])
    lanes3 = [f.lanes_3d if ok else [] for f, ok in zip(frames, has["lanes_3d"])]
    lanes2 = [[c.lanes_2d for c in f.cameras] if ok else [] for f, ok in zip(frames, has["lanes_2d"])]
    l3 = max([len(ls) for ls in lanes3] + [1])
    p3 = max([len(ln.points) for ls in lanes3 for ln in ls] + [1])
    l2 = max([len(ls) for cams in lanes2 for ls in cams] + [1])
    p2 = max([len(ln.points) for cams in lanes2 for ls in cams for ln in ls] + [1])

    images = np.zeros((b, n, 3, h, w), dtype=np.uint8)  # (B, N, 3, H, W)
    intrinsics = np.tile(np.eye(3, dtype=np.float32), (b, n, 1, 1))  # (B, N, 3, 3)
    extrinsics = np.tile(np.eye(4, dtype=np.float32), (b, n, 1, 1))  # (B, N, 4, 4)
    camera_mask = np.zeros((b, n), dtype=bool)
    boxes_3d = np.zeros((b, k, 7), dtype=np.float32)
    boxes_3d_classes = np.full((b, k), -1, dtype=np.int64)
    boxes_2d = np.zeros((b, n, m, 4), dtype=np.float32)
    boxes_2d_classes = np.full((b, n, m), -1, dtype=np.int64)
    lanes_3d = np.zeros((b, l3, p3, 3), dtype=np.float32)
    lanes_3d_valid = np.zeros((b, l3, p3), dtype=bool)
    lanes_3d_types = np.full((b, l3), -1, dtype=np.int64)
    lanes_2d = np.zeros((b, n, l2, p2, 2), dtype=np.float32)
    lanes_2d_valid = np.zeros((b, n, l2, p2), dtype=bool)
    lanes_2d_types = np.full((b, n, l2), -1, dtype=np.int64)

    for i, f in enumerate(frames):
        nc = len(f.cameras)
        camera_mask[i, :nc] = True
        intrinsics[i, :nc] = np.stack([c.intrinsics for c in f.cameras])
        extrinsics[i, :nc] = np.stack([c.extrinsics for c in f.cameras])
        if has["boxes_3d"][i] and len(f.boxes_3d):
            kb = len(f.boxes_3d)
            boxes_3d[i, :kb] = f.boxes_3d.as_array()
            boxes_3d_classes[i, :kb] = f.boxes_3d.classes
        if has["lanes_3d"][i]:
            _fill_lanes(f.lanes_3d, lanes_3d[i], lanes_3d_valid[i], lanes_3d_types[i])
        for j, c in enumerate(f.cameras):
            images[i, j] = c.image.transpose(2, 0, 1)  # HWC -> CHW within the one copy into the batch buffer
            if has["boxes_2d"][i] and len(c.boxes_2d):
                boxes_2d[i, j, :len(c.boxes_2d)] = c.boxes_2d
                boxes_2d_classes[i, j, :len(c.boxes_2d)] = c.classes_2d
            if has["lanes_2d"][i]:
                _fill_lanes(c.lanes_2d, lanes_2d[i, j], lanes_2d_valid[i, j], lanes_2d_types[i, j])

    t = torch.from_numpy
    return {
        "images": t(images),
        "intrinsics": t(intrinsics),
        "extrinsics": t(extrinsics),
        "camera_mask": t(camera_mask),
        "boxes_3d": t(boxes_3d),
        "boxes_3d_classes": t(boxes_3d_classes),
        "boxes_3d_mask": t(boxes_3d_classes >= 0),
        "boxes_2d": t(boxes_2d),
        "boxes_2d_classes": t(boxes_2d_classes),
        "boxes_2d_mask": t(boxes_2d_classes >= 0),
        "lanes_3d": t(lanes_3d),
        "lanes_3d_valid": t(lanes_3d_valid),
        "lanes_3d_types": t(lanes_3d_types),
        "lanes_2d": t(lanes_2d),
        "lanes_2d_valid": t(lanes_2d_valid),
        "lanes_2d_types": t(lanes_2d_types),
        **{f"has_{kind}": t(has[kind]) for kind in LABEL_KINDS},
        "region": [f.region for f in frames],
        "driving_side": [f.driving_side for f in frames],
        "frame_id": [f.frame_id for f in frames],
        "scene_id": [f.scene_id for f in frames],
        "source": [f.source for f in frames],
    }
