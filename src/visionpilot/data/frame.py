"""The Frame schema: one time step of one vehicle, with whatever labels its source has.

Every dataset source produces :class:`Frame` objects; everything downstream (transforms, collate, previews,
writers, metrics) reads only these. Conventions are those of :mod:`visionpilot.geometry.frames`. Class and lane
type fields hold indices into :data:`~visionpilot.data.vocab.OBJECT_CLASSES` and
:data:`~visionpilot.data.vocab.LANE_TYPES`.

Partial labels are normal (CULane has only 2D lanes, nuScenes no 2D lanes): :attr:`Frame.labels` says which kinds
are present, and an absent kind is *unknown*, not *empty* — losses for it are masked, never faked.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from visionpilot.data.vocab import LANE_TYPES, OBJECT_CLASSES, PRIVACY_CLASSES

#: The label kinds a frame can carry.
LABEL_KINDS: tuple[str, ...] = ("boxes_3d", "boxes_2d", "lanes_3d", "lanes_2d")


@dataclass
class Lane:
    """A lane-line polyline: (P, 3) ego-frame metres, or (P, 2) image pixels, with its lane type index."""

    points: np.ndarray
    type: int

    @property
    def type_name(self) -> str:
        return LANE_TYPES[self.type]


@dataclass
class Boxes3D:
    """3D boxes in the ego frame.

    Attributes:
        centers: (K, 3) box centres (x, y, z).
        sizes: (K, 3) length (along heading), width, height.
        yaws: (K,) heading about +z, radians.
        classes: (K,) object class indices.
        track_ids: (K,) instance ids, stable over a scene (-1 if unknown); empty when the source has none.
        velocities: (K, 2) ego-frame velocity (vx, vy) in m/s, NaN if unknown; empty (0, 2) when the source has none.
    """

    centers: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    sizes: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    yaws: np.ndarray = field(default_factory=lambda: np.zeros(0))
    classes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    track_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    velocities: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))

    def __len__(self) -> int:
        return len(self.classes)

    def as_array(self) -> np.ndarray:
        """(K, 7) ``x, y, z, length, width, height, yaw``."""
        return np.concatenate([self.centers, self.sizes, self.yaws[:, None]], axis=1).astype(np.float32)

    def select(self, keep: np.ndarray) -> Boxes3D:
        return Boxes3D(self.centers[keep], self.sizes[keep], self.yaws[keep], self.classes[keep],
                       self.track_ids[keep], self.velocities[keep])


@dataclass
class CameraView:
    """One camera of a frame.

    Attributes:
        name: camera name as the source names it (``CAM_FRONT``).
        intrinsics: (3, 3) pinhole K for ``image_size``.
        extrinsics: (4, 4) camera -> ego.
        image_size: (height, width) in pixels, known even for label-only frames.
        image: (H, W, 3) uint8 RGB, or None for label-only frames.
        boxes_2d: (M, 4) ``x1, y1, x2, y2`` pixels, the tight box of the object's visible part.
        classes_2d: (M,) object class indices.
        box_ids_2d: (M,) index of the matching row of :attr:`Frame.boxes_3d`, -1 if none; empty when not provided.
        visibility_2d: (M,) fraction of the object's projected silhouette not hidden by nearer objects (1 = unknown
            or fully visible); empty when not provided.
        lanes_2d: lane polylines in pixels.
        privacy_boxes: (Q, 4) ``x1, y1, x2, y2`` pixels of faces and licence plates (for anonymisation), or None
            when the source does not provide them (then a detector must find them; empty means "none here").
        privacy_classes: (Q,) indices into :data:`~visionpilot.data.vocab.PRIVACY_CLASSES`, or None with the boxes.
    """

    name: str
    intrinsics: np.ndarray
    extrinsics: np.ndarray
    image_size: tuple[int, int]
    image: np.ndarray | None = None
    boxes_2d: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), dtype=np.float32))
    classes_2d: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    box_ids_2d: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    visibility_2d: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    lanes_2d: list[Lane] = field(default_factory=list)
    privacy_boxes: np.ndarray | None = None
    privacy_classes: np.ndarray | None = None


@dataclass
class Frame:
    """One time step of one vehicle.

    Attributes:
        frame_id: unique id within its source.
        scene_id: id of the drive it belongs to; splits are by scene.
        source: dataset source name (``synthetic``, ``nuscenes``, ...).
        region: ISO 3166-1 alpha-2, lower-case.
        driving_side: ``left`` or ``right``; usually the region's, swapped by horizontal flip.
        timestamp: seconds since the start of the scene.
        cameras: the camera views, in rig order.
        boxes_3d: 3D boxes in the ego frame.
        lanes_3d: lane polylines (P, 3) in the ego frame.
        labels: which of :data:`LABEL_KINDS` the source provides for this frame.
        latlon: (latitude, longitude) in degrees, if known.
        meta: free-form extras (weather, time of day, ...); JSON-serialisable.
    """

    frame_id: str
    scene_id: str
    source: str
    region: str
    driving_side: str
    timestamp: float
    cameras: list[CameraView]
    boxes_3d: Boxes3D = field(default_factory=Boxes3D)
    lanes_3d: list[Lane] = field(default_factory=list)
    labels: frozenset[str] = field(default_factory=frozenset)
    latlon: tuple[float, float] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def camera_names(self) -> list[str]:
        return [c.name for c in self.cameras]

    def has(self, kind: str) -> bool:
        return kind in self.labels

    def copy(self, **changes: Any) -> Frame:
        """Shallow copy with some fields replaced."""
        return replace(self, **changes)

    def validate(self, origin: str = "frame") -> Frame:
        """Check shapes and value ranges; raise a message naming ``origin``, the field, expected and found."""
        where = f"{origin} '{self.frame_id}'"
        bad = set(self.labels) - set(LABEL_KINDS)
        if bad:
            raise ValueError(f"{where}: field 'labels' has unknown kinds {sorted(bad)}; valid: {list(LABEL_KINDS)}")
        if self.driving_side not in ("left", "right"):
            raise ValueError(f"{where}: field 'driving_side' must be 'left' or 'right', found '{self.driving_side}'")
        if not self.cameras:
            raise ValueError(f"{where}: field 'cameras' must hold at least one camera, found none")
        for cam in self.cameras:
            cw = f"{where}, camera '{cam.name}'"
            if np.shape(cam.intrinsics) != (3, 3):
                raise ValueError(f"{cw}: field 'intrinsics' must be 3x3, found shape {np.shape(cam.intrinsics)}")
            if np.shape(cam.extrinsics) != (4, 4):
                raise ValueError(f"{cw}: field 'extrinsics' must be 4x4, found shape {np.shape(cam.extrinsics)}")
            for name in ("intrinsics", "extrinsics", "boxes_2d"):  # a NaN here reaches the loss, far from its file
                _check_finite(f"{cw}: field '{name}'", getattr(cam, name))
            if cam.image is not None:
                h, w = cam.image_size
                if cam.image.shape != (h, w, 3) or cam.image.dtype != np.uint8:
                    raise ValueError(f"{cw}: field 'image' must be uint8 of shape {(h, w, 3)}, "
                                     f"found {cam.image.dtype} {cam.image.shape}")
            if cam.boxes_2d.shape != (len(cam.classes_2d), 4):
                raise ValueError(f"{cw}: field 'boxes_2d' must be ({len(cam.classes_2d)}, 4), found {cam.boxes_2d.shape}")
            _check_classes(f"{cw}: field 'classes_2d'", cam.classes_2d, OBJECT_CLASSES)
            for name in ("box_ids_2d", "visibility_2d"):
                _check_per_item(f"{cw}: field '{name}'", getattr(cam, name), (len(cam.classes_2d),), "boxes_2d")
            if (cam.privacy_boxes is None) != (cam.privacy_classes is None):
                raise ValueError(f"{cw}: fields 'privacy_boxes' and 'privacy_classes' must both be set or both be "
                                 f"None, found {type(cam.privacy_boxes).__name__} and "
                                 f"{type(cam.privacy_classes).__name__}")
            if cam.privacy_boxes is not None:
                if cam.privacy_boxes.shape != (len(cam.privacy_classes), 4):
                    raise ValueError(f"{cw}: field 'privacy_boxes' must be ({len(cam.privacy_classes)}, 4), "
                                     f"found {cam.privacy_boxes.shape}")
                _check_classes(f"{cw}: field 'privacy_classes'", cam.privacy_classes, PRIVACY_CLASSES)
            for lane in cam.lanes_2d:
                _check_lane(f"{cw}: field 'lanes_2d'", lane, 2)
        b = self.boxes_3d
        k = len(b.classes)
        for name, arr, shape in (("centers", b.centers, (k, 3)), ("sizes", b.sizes, (k, 3)), ("yaws", b.yaws, (k,))):
            if arr.shape != shape:
                raise ValueError(f"{where}: field 'boxes_3d.{name}' must have shape {shape}, found {arr.shape}")
        _check_per_item(f"{where}: field 'boxes_3d.track_ids'", b.track_ids, (k,), "boxes_3d")
        _check_per_item(f"{where}: field 'boxes_3d.velocities'", b.velocities, (k, 2), "boxes_3d")
        for name in ("centers", "sizes", "yaws"):  # velocities may be NaN: unknown
            _check_finite(f"{where}: field 'boxes_3d.{name}'", getattr(b, name))
        if k and (b.sizes <= 0).any():
            raise ValueError(f"{where}: field 'boxes_3d.sizes' must be positive, found min {b.sizes.min():.3g}")
        _check_classes(f"{where}: field 'boxes_3d.classes'", b.classes, OBJECT_CLASSES)
        for lane in self.lanes_3d:
            _check_lane(f"{where}: field 'lanes_3d'", lane, 3)
        return self


def _check_classes(what: str, classes: np.ndarray, vocab: tuple[str, ...]) -> None:
    if len(classes) and (classes.min() < 0 or classes.max() >= len(vocab)):
        raise ValueError(f"{what} must hold indices in [0, {len(vocab)}) ({list(vocab)}), "
                         f"found range [{classes.min()}, {classes.max()}]")


def _check_per_item(what: str, values: np.ndarray, shape: tuple[int, ...], owner: str) -> None:
    # Empty means "not provided" (as in transforms); any other length would mis-pair rows far from the source.
    values = np.asarray(values)
    if values.shape != shape and values.shape != (0, *shape[1:]):
        raise ValueError(f"{what} must have shape {shape}, one row per {owner} row (or {(0, *shape[1:])} when not "
                         f"provided), found {values.shape}")


def _check_finite(what: str, values: np.ndarray) -> None:
    values = np.asarray(values, dtype=np.float64)
    if not np.isfinite(values).all():
        bad = np.argwhere(~np.isfinite(values))[0]
        raise ValueError(f"{what} must be finite, found {values[tuple(bad)]} at index {tuple(int(i) for i in bad)}")


def _check_lane(what: str, lane: Lane, dim: int) -> None:
    if lane.points.ndim != 2 or lane.points.shape[1] != dim or len(lane.points) < 2:
        raise ValueError(f"{what} must hold polylines of shape (P>=2, {dim}), found {lane.points.shape}")
    if not 0 <= lane.type < len(LANE_TYPES):
        raise ValueError(f"{what}: lane type index must be in [0, {len(LANE_TYPES)}) ({list(LANE_TYPES)}), "
                         f"found {lane.type}")
    if not np.isfinite(lane.points).all():
        raise ValueError(f"{what}: polyline points must be finite, found NaN/Inf")
