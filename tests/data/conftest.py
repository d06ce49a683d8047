"""A tiny in-memory frame source whose labels are geometrically consistent.

Frames hold a few 3D boxes and ground lanes around the ego car, seen by a subset of the ``nuscenes6`` rig at a small
image size. The 2D labels are the projections of the 3D ones (``project_box_2d`` / ``project_polyline``), and the
images paint each visible 2D box in its class colour over a gradient, so image content, 2D labels, 3D labels and
calibration all agree and transforms can be checked against each other.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pytest
import torch

from visionpilot.data.frame import LABEL_KINDS, Boxes3D, CameraView, Frame, Lane
from visionpilot.data.regions import get_region
from visionpilot.data.sources.base import FrameRef, FrameSource
from visionpilot.data.vocab import CLASS_COLORS, OBJECT_CLASSES, class_index, lane_type_index
from visionpilot.geometry.boxes import project_box_2d
from visionpilot.geometry.polylines import project_polyline
from visionpilot.geometry.rig import load_rig

# The batch contract of docs/architecture.md: tensor key -> (dtype, rank), and the per-frame string lists.
BATCH_CONTRACT = {  # key -> (dtype, rank)
    "images": (torch.uint8, 5), "intrinsics": (torch.float32, 4), "extrinsics": (torch.float32, 4),
    "camera_mask": (torch.bool, 2),
    "boxes_3d": (torch.float32, 3), "boxes_3d_classes": (torch.int64, 2), "boxes_3d_mask": (torch.bool, 2),
    "boxes_2d": (torch.float32, 4), "boxes_2d_classes": (torch.int64, 3), "boxes_2d_mask": (torch.bool, 3),
    "lanes_3d": (torch.float32, 4), "lanes_3d_valid": (torch.bool, 3), "lanes_3d_types": (torch.int64, 2),
    "lanes_2d": (torch.float32, 5), "lanes_2d_valid": (torch.bool, 4), "lanes_2d_types": (torch.int64, 3),
    "has_boxes_3d": (torch.bool, 1), "has_boxes_2d": (torch.bool, 1), "has_lanes_3d": (torch.bool, 1),
    "has_lanes_2d": (torch.bool, 1),
}
BATCH_LISTS = ("region", "driving_side", "frame_id", "scene_id", "source")

CAMERAS = ("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT")
IMAGE_SIZE = (48, 80)  # (H, W)

# (x, y, class, length, width, height): one object ahead, one front-left, one front-right, one far ahead.
_OBJECTS = [(12.0, 0.3, "car", 4.5, 1.9, 1.6), (6.0, 6.0, "car", 4.2, 1.8, 1.5),
            (6.5, -6.0, "pedestrian", 0.6, 0.6, 1.75), (28.0, 3.5, "truck", 8.0, 2.5, 3.2)]


def make_frame(index: int = 0, scene_id: str = "de-000", region: str = "de", cameras: Sequence[str] = CAMERAS,
               image_size: tuple[int, int] = IMAGE_SIZE, labels: Sequence[str] = LABEL_KINDS,
               with_images: bool = True, source: str = "tiny") -> Frame:
    """One consistent frame; content varies with ``index``."""
    rng = np.random.default_rng(index)
    rig = {c.name: c for c in load_rig("nuscenes6").cameras}
    k = len(_OBJECTS)
    centers = np.array([[x, y, h / 2] for x, y, _, _, _, h in _OBJECTS]) + rng.uniform(-0.5, 0.5, (k, 3)) * [1, 1, 0]
    boxes = Boxes3D(centers=centers, sizes=np.array([[ln, w, h] for *_, ln, w, h in _OBJECTS]),
                    yaws=rng.uniform(-0.4, 0.4, k), classes=np.array([class_index(o[2]) for o in _OBJECTS]),
                    track_ids=np.arange(k), velocities=rng.normal(0, 2, (k, 2)))
    curv = rng.uniform(-0.002, 0.002)
    x = np.linspace(3.0, 45.0, 15)
    lane_types = ["white_solid", "white_dashed", get_region(region).centre_lines[0], "white_solid"]
    lanes_3d = [Lane(np.stack([x, y0 + curv * x**2, np.zeros_like(x)], axis=1), lane_type_index(t))
                for y0, t in zip((-5.25, -1.75, 1.75, 5.25), lane_types)]
    views = []
    for name in cameras:
        spec = rig[name]
        kmat, ext = spec.intrinsics(image_size), spec.extrinsics()
        b2d, visible = project_box_2d(boxes.centers, boxes.sizes, boxes.yaws, kmat, ext, image_size)
        keep = visible & (b2d[:, 2] - b2d[:, 0] >= 2) & (b2d[:, 3] - b2d[:, 1] >= 2)
        ids = np.flatnonzero(keep)
        lanes_2d = [Lane(piece, ln.type) for ln in lanes_3d
                    for piece in project_polyline(ln.points, kmat, ext, image_size, min_length_px=1.0)]
        image = _paint(b2d[ids], boxes.classes[ids], image_size, index) if with_images else None
        views.append(CameraView(name=name, intrinsics=kmat, extrinsics=ext, image_size=image_size, image=image,
                                boxes_2d=b2d[ids].astype(np.float32), classes_2d=boxes.classes[ids],
                                box_ids_2d=ids, visibility_2d=np.ones(len(ids), np.float32), lanes_2d=lanes_2d))
    return Frame(frame_id=f"{scene_id}-{index:04d}", scene_id=scene_id, source=source, region=region,
                 driving_side=get_region(region).driving_side, timestamp=0.5 * index, cameras=views,
                 boxes_3d=boxes, lanes_3d=lanes_3d, labels=frozenset(labels)).validate("tiny source")


def _paint(boxes: np.ndarray, classes: np.ndarray, image_size: tuple[int, int], index: int) -> np.ndarray:
    h, w = image_size
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = np.linspace(20, 120, w, dtype=np.uint8)[None]
    img[..., 2] = (index * 37) % 200
    for (x1, y1, x2, y2), c in zip(boxes, classes):
        # Pixel i covers [i, i+1): fill the pixels whose centres lie inside the box.
        img[int(np.ceil(y1 - 0.5)):int(np.ceil(y2 - 0.5)), int(np.ceil(x1 - 0.5)):int(np.ceil(x2 - 0.5))] = \
            CLASS_COLORS[OBJECT_CLASSES[c]]
    return img


class TinySource(FrameSource):
    """``scenes`` region -> number of scenes, ``frames_per_scene`` each; caches frames like real sources may."""

    name = "tiny"

    def __init__(self, scenes: Mapping[str, int] | None = None, frames_per_scene: int = 2,
                 cameras: Sequence[str] = CAMERAS, image_size: tuple[int, int] = IMAGE_SIZE,
                 labels: Sequence[str] = LABEL_KINDS, official: Mapping[str, str] | None = None) -> None:
        scenes = {"de": 4, "gb": 3} if scenes is None else scenes
        self.cameras, self.image_size, self.labels = tuple(cameras), image_size, tuple(labels)
        self._refs = [FrameRef(0, "", f"{region}-{s:03d}", region) for region, n in scenes.items() for s in range(n)
                      for _ in range(frames_per_scene)]
        self._refs = [FrameRef(i, f"{r.scene_id}-{i:04d}", r.scene_id, r.region) for i, r in enumerate(self._refs)]
        self._official = dict(official or {})
        self._cache: dict[tuple[int, bool], Frame] = {}
        if official is not None:
            self.official_split = self._official.get  # only sources with official splits have the method

    def __len__(self) -> int:
        return len(self._refs)

    def index(self) -> list[FrameRef]:
        return list(self._refs)

    def load(self, index: int, with_images: bool = True) -> Frame:
        key = (index, with_images)
        if key not in self._cache:
            r = self._refs[index]
            self._cache[key] = make_frame(index, r.scene_id, r.region, self.cameras, self.image_size, self.labels,
                                          with_images, self.name)
        return self._cache[key]


@pytest.fixture
def frame_factory() -> Callable[..., Frame]:
    return make_frame


@pytest.fixture
def source_factory() -> type[TinySource]:
    return TinySource


@pytest.fixture
def tiny_source() -> TinySource:
    return TinySource()


@pytest.fixture
def batch_contract() -> tuple[dict[str, tuple[torch.dtype, int]], tuple[str, ...]]:
    return BATCH_CONTRACT, BATCH_LISTS
