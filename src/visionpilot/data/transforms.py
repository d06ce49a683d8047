"""Per-frame transforms: photometric and geometric augmentation, resize, horizontal flip, and pipelines.

Every transform is a callable ``transform(frame, seed) -> Frame``. It never mutates its input (sources may cache
frames): it returns a new :class:`~visionpilot.data.frame.Frame` that shares untouched arrays with the input, or
the input itself when it changes nothing. Randomness comes only from the explicit ``seed`` (the dataset derives
it from ``(seed, epoch, index)``), so an epoch is reproducible whatever the worker layout.

Pixel convention (see :mod:`visionpilot.geometry.frames`): continuous coordinates, pixel ``i`` covers
``[i, i+1)``. An image-space affine ``A`` (3x3, homogeneous pixels) changes intrinsics to ``K' = A @ K``.

Photometric changes use albumentations. Geometric ones are written here on purpose: albumentations can move
boxes and keypoints but knows nothing of camera intrinsics, and a geometric augmentation that does not update K
silently breaks the camera -> BEV lifting. Ours apply one known affine to image, K, 2D boxes and 2D lanes at once.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Protocol

import albumentations as A
import cv2
import numpy as np

from visionpilot.data.frame import Boxes3D, CameraView, Frame, Lane
from visionpilot.data.regions import other_side
from visionpilot.geometry.boxes import project_box_2d
from visionpilot.geometry.polylines import clip_polylines_box

Size = tuple[int, int]  # (height, width)


class FrameTransform(Protocol):
    """A per-frame transform: returns a new frame (or the input, unchanged); randomness only from ``seed``."""

    def __call__(self, frame: Frame, seed: int | None = None) -> Frame: ...


def child_seeds(seed: int | None, n: int, *salt: int) -> list[int]:
    """``n`` independent 32-bit seeds derived from ``seed`` and optional salt (a camera index); None: fresh entropy."""
    seq = np.random.SeedSequence() if seed is None else np.random.SeedSequence([int(seed) & (2**64 - 1), *salt])
    return [int(s) for s in seq.generate_state(n)]


def as_size(size: Sequence[int], what: str = "image size") -> Size:
    """``(height, width)`` as ints; anything else (3 values, one int, a string) is refused naming ``what``."""
    try:
        h, w = (float(v) for v in size)
    except (TypeError, ValueError):
        h = w = 0.0
    # A fraction (64.5) is refused, not truncated: the frames would be a pixel smaller than the size asked for.
    if isinstance(size, str) or not all(1 <= v < math.inf and v == int(v) for v in (h, w)):
        raise ValueError(f"{what} must be (height, width), two positive integers, found {size!r}")
    return int(h), int(w)


_CROP_V_ENDS = " (0 keeps the top, 1 the bottom)"


def _as_unit(value: float, owner: str, field: str, meaning: str = "") -> float:
    """``value`` in [0, 1], else an error naming ``owner`` and ``field`` (``meaning`` says what the ends mean).

    Probabilities: albumentations refuses them only at the first frame, deep in a loader worker, naming neither owner
    nor field. ``crop_v``: outside [0, 1] the picture slides off the output and black padding replaces it, silently.
    """
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{owner}: field '{field}' must be in [0, 1]{meaning}, found {float(value)}")
    return float(value)


# -- affine warping of one camera -----------------------------------------------------------------------------


def _translate(dx: float, dy: float) -> np.ndarray:
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]])


def warp_image(image: np.ndarray, affine: np.ndarray, out_size: Size, border_value: int = 0) -> np.ndarray:
    """Warp an (H, W, C) image by a 3x3 affine in continuous pixel coordinates into ``out_size`` (h, w)."""
    h, w = out_size
    a = np.asarray(affine, dtype=np.float64)
    src_h, src_w = image.shape[:2]
    channels = image.shape[2:]  # cv2 drops a single channel axis: restore it on the way out
    axis_aligned = abs(a[0, 1]) < 1e-12 and abs(a[1, 0]) < 1e-12
    if axis_aligned and a[0, 0] > 0 and a[1, 1] > 0 and abs(a[0, 2]) < 1e-9 and abs(a[1, 2]) < 1e-9 \
            and abs(a[0, 0] * src_w - w) < 1e-6 and abs(a[1, 1] * src_h - h) < 1e-6:
        # A pure resize: cv2.resize shares our convention (it aligns pixel-area edges, not centres).
        shrink = a[0, 0] < 1.0 or a[1, 1] < 1.0
        out = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        return out.reshape(h, w, *channels)
    if axis_aligned and (abs(a[0, 0]) < 0.75 or abs(a[1, 1]) < 0.75):
        # Strong shrink: area-average first so bilinear sampling below does not alias, then warp the remainder.
        mid_w = max(1, round(src_w * min(abs(a[0, 0]), 1.0)))
        mid_h = max(1, round(src_h * min(abs(a[1, 1]), 1.0)))
        image = cv2.resize(image, (mid_w, mid_h), interpolation=cv2.INTER_AREA)
        a = a @ np.diag([src_w / mid_w, src_h / mid_h, 1.0])
    # cv2 puts pixel centres at integers, we put them at i + 0.5: conjugate by a half-pixel shift.
    m = _translate(-0.5, -0.5) @ a @ _translate(0.5, 0.5)
    out = cv2.warpAffine(image, m[:2], (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                         borderValue=(border_value,) * 4)
    return out.reshape(h, w, *channels)


def transform_boxes_2d(boxes: np.ndarray, affine: np.ndarray, out_size: Size, min_size: float = 2.0
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (M, 4) through an affine: bounds of the moved corners, clipped to the image.

    Returns:
        boxes: (M', 4) float32 kept boxes; keep: (M,) bool, False where the box is narrower or lower than
        ``min_size`` pixels after clipping.
    """
    h, w = out_size
    if len(boxes) == 0:
        return np.zeros((0, 4), dtype=np.float32), np.zeros(0, dtype=bool)
    b = np.asarray(boxes, dtype=np.float64)
    corners = np.stack([b[:, [0, 1]], b[:, [2, 1]], b[:, [2, 3]], b[:, [0, 3]]], axis=1)  # (M, 4, 2)
    moved = corners @ affine[:2, :2].T + affine[:2, 2]
    lo, hi = moved.min(axis=1), moved.max(axis=1)
    out = np.stack([np.clip(lo[:, 0], 0, w), np.clip(lo[:, 1], 0, h), np.clip(hi[:, 0], 0, w),
                    np.clip(hi[:, 1], 0, h)], axis=1)
    keep = (out[:, 2] - out[:, 0] >= min_size) & (out[:, 3] - out[:, 1] >= min_size)
    return out[keep].astype(np.float32), keep


def _aligned(values: np.ndarray, keep: np.ndarray, field: str, cam: CameraView) -> np.ndarray:
    """Select the kept rows of a per-box field; empty means 'not provided' and stays empty."""
    if len(values) == len(keep):
        return values[keep]
    if len(values) == 0:
        return values
    raise ValueError(f"camera '{cam.name}': field '{field}' has {len(values)} rows but boxes_2d has {len(keep)}")


def affine_camera(cam: CameraView, affine: np.ndarray, out_size: Size, min_box_size: float = 2.0,
                  min_lane_length: float = 1.0, boxes_3d: Boxes3D | None = None) -> CameraView:
    """Apply one image-space affine to a camera's image, intrinsics, 2D boxes and 2D lanes.

    With the frame's ``boxes_3d``, a 2D box of a 3D box (``box_ids_2d``) is also cut to the 3D box's projection with
    the new calibration: a box the old image border had clipped covers, after a crop, only what its object still
    shows (the moved box alone would keep the old border's extent inside the new image).
    """
    h, w = out_size
    image = None if cam.image is None else warp_image(cam.image, affine, out_size)
    boxes, keep = transform_boxes_2d(cam.boxes_2d, affine, out_size, 0.0)
    if boxes_3d is not None and len(boxes_3d) and len(cam.box_ids_2d) == len(keep):
        ids = cam.box_ids_2d[keep]
        rows = np.flatnonzero((ids >= 0) & (ids < len(boxes_3d)))
        if len(rows):
            b3 = boxes_3d
            proj, seen = project_box_2d(b3.centers[ids[rows]], b3.sizes[ids[rows]], b3.yaws[ids[rows]],
                                        affine @ cam.intrinsics, cam.extrinsics, out_size)
            cut = boxes[rows[seen]]
            p = proj[seen]
            boxes[rows[seen]] = np.stack([np.maximum(cut[:, 0], p[:, 0]), np.maximum(cut[:, 1], p[:, 1]),
                                          np.minimum(cut[:, 2], p[:, 2]), np.minimum(cut[:, 3], p[:, 3])], axis=1)
    big = (boxes[:, 2] - boxes[:, 0] >= min_box_size) & (boxes[:, 3] - boxes[:, 1] >= min_box_size)
    keep[np.flatnonzero(keep)[~big]] = False
    boxes = boxes[big]
    moved = [lane.points @ affine[:2, :2].T + affine[:2, 2] for lane in cam.lanes_2d]
    lanes = [Lane(piece, lane.type) for lane, pieces in
             zip(cam.lanes_2d, clip_polylines_box(moved, (0.0, w), (0.0, h), min_lane_length)) for piece in pieces]
    privacy = {}
    if cam.privacy_boxes is not None:  # faces and plates follow their pixels; only boxes cut off entirely go
        pboxes, pkeep = transform_boxes_2d(cam.privacy_boxes, affine, out_size, 1e-3)
        privacy = {"privacy_boxes": pboxes.astype(np.float32), "privacy_classes": cam.privacy_classes[pkeep]}
    intrinsics = affine @ cam.intrinsics
    if cam.intrinsics[0, 0] <= 1.0:  # uncalibrated (``uncalibrated_camera``'s 1-px focal marks it): an upscale must
        intrinsics[0, 0], intrinsics[1, 1] = cam.intrinsics[0, 0], cam.intrinsics[1, 1]  # not make it look calibrated
    return replace(cam, image=image, image_size=(h, w), intrinsics=intrinsics, boxes_2d=boxes,
                   classes_2d=_aligned(cam.classes_2d, keep, "classes_2d", cam),
                   box_ids_2d=_aligned(cam.box_ids_2d, keep, "box_ids_2d", cam),
                   visibility_2d=_aligned(cam.visibility_2d, keep, "visibility_2d", cam), lanes_2d=lanes, **privacy)


def _base_scale(src: Size, out: Size, keep_aspect: bool) -> tuple[float, float]:
    sy, sx = out[0] / src[0], out[1] / src[1]
    if keep_aspect:  # cover the output, crop the overflow
        sx = sy = max(sx, sy)
    return sx, sy


class Resize:
    """Deterministic resize of every camera to the network input size (validation, and sources of another size).

    Args:
        size: (height, width) output.
        keep_aspect: scale uniformly to cover the output and crop the overflow (at ``crop_v`` vertically,
            centred horizontally) instead of stretching each axis.
        crop_v: where the vertical crop sits when ``keep_aspect``: 0 keeps the top, 1 the bottom (drops the sky).
    """

    def __init__(self, size: Sequence[int], keep_aspect: bool = False, crop_v: float = 0.5,
                 min_box_size: float = 2.0) -> None:
        self.size = as_size(size, "Resize: field 'size'")
        self.keep_aspect = keep_aspect
        self.crop_v = _as_unit(crop_v, "Resize", "crop_v", _CROP_V_ENDS)
        self.min_box_size = min_box_size

    def affine(self, src: Size) -> np.ndarray:
        sx, sy = _base_scale(src, self.size, self.keep_aspect)
        dx = (self.size[1] - src[1] * sx) * 0.5
        dy = (self.size[0] - src[0] * sy) * self.crop_v
        return np.array([[sx, 0.0, dx], [0.0, sy, dy], [0.0, 0.0, 1.0]])

    def __call__(self, frame: Frame, seed: int | None = None) -> Frame:
        if all(tuple(c.image_size) == self.size for c in frame.cameras):
            return frame
        cams = [c if tuple(c.image_size) == self.size
                else affine_camera(c, self.affine(tuple(c.image_size)), self.size, self.min_box_size,
                                   boxes_3d=frame.boxes_3d)
                for c in frame.cameras]
        return frame.copy(cameras=cams)


class RandomScaleCrop:
    """Random zoom and crop/translate to a fixed output size, per camera, updating intrinsics and 2D labels.

    Each camera is first scaled to the output as :class:`Resize` would, then zoomed by a factor drawn from
    ``scale_range`` and placed at a random offset: zooming in crops, zooming out pads with black.

    Args:
        size: (height, width) output.
        scale_range: zoom factor range (1 = plain resize).
        keep_aspect: as in :class:`Resize`.
        crop_v: fixed vertical placement as in :class:`Resize` (0 top .. 1 bottom) instead of a random one, so
            that training sees the horizon where validation does; None: random.
        same_for_all_cameras: one draw for the whole rig instead of one per camera.
    """

    def __init__(self, size: Sequence[int], scale_range: Sequence[float] = (0.9, 1.1), keep_aspect: bool = False,
                 crop_v: float | None = None, same_for_all_cameras: bool = False, min_box_size: float = 2.0) -> None:
        self.size = as_size(size, "RandomScaleCrop: field 'size'")
        try:
            lo, hi = (float(v) for v in scale_range)
        except (TypeError, ValueError):
            lo = hi = 0.0
        if isinstance(scale_range, str) or not 0 < lo <= hi:
            raise ValueError(f"RandomScaleCrop: field 'scale_range' must be (low, high) with 0 < low <= high, "
                             f"found {scale_range!r}")
        self.scale_range = (lo, hi)
        self.keep_aspect = keep_aspect
        self.crop_v = None if crop_v is None else _as_unit(crop_v, "RandomScaleCrop", "crop_v", _CROP_V_ENDS)
        self.same_for_all_cameras = same_for_all_cameras
        self.min_box_size = min_box_size

    def affine(self, src: Size, rng: np.random.Generator) -> np.ndarray:
        zoom = rng.uniform(*self.scale_range)
        sx, sy = _base_scale(src, self.size, self.keep_aspect)
        sx, sy = sx * zoom, sy * zoom
        slack_x, slack_y = self.size[1] - src[1] * sx, self.size[0] - src[0] * sy  # < 0: crop, > 0: pad
        dx = rng.uniform(min(slack_x, 0.0), max(slack_x, 0.0))
        dy = rng.uniform(min(slack_y, 0.0), max(slack_y, 0.0)) if self.crop_v is None else slack_y * self.crop_v
        return np.array([[sx, 0.0, dx], [0.0, sy, dy], [0.0, 0.0, 1.0]])

    def __call__(self, frame: Frame, seed: int | None = None) -> Frame:
        seeds = child_seeds(seed, 1 if self.same_for_all_cameras else len(frame.cameras))
        cams = []
        for i, cam in enumerate(frame.cameras):
            rng = np.random.default_rng(seeds[0 if self.same_for_all_cameras else i])
            cams.append(affine_camera(cam, self.affine(tuple(cam.image_size), rng), self.size, self.min_box_size,
                                      boxes_3d=frame.boxes_3d))
        return frame.copy(cameras=cams)


# -- photometric ----------------------------------------------------------------------------------------------


class Photometric:
    """Per-camera colour and image-quality augmentation (albumentations), seeded per call and camera.

    Args:
        strength: 0 (off) .. 1 (strong); scales every range.
        p: probability of each colour op (brightness/contrast, hue/saturation, gamma).
        p_degrade: probability of each degradation (Gaussian noise, motion/Gaussian blur, JPEG compression).
    """

    def __init__(self, strength: float = 0.5, p: float = 0.5, p_degrade: float = 0.2) -> None:
        self.strength = _as_unit(strength, "Photometric", "strength")
        self.p, self.p_degrade = _as_unit(p, "Photometric", "p"), _as_unit(p_degrade, "Photometric", "p_degrade")
        self._compose: A.Compose | None = None

    def _build(self) -> A.Compose:
        s, p, pd = self.strength, self.p, self.p_degrade
        blur = 3 + 2 * max(1, round(2 * s))  # odd kernel, >= 5 so the range is not empty
        return A.Compose([
            A.RandomBrightnessContrast(brightness_limit=0.3 * s, contrast_limit=0.3 * s, p=p),
            A.HueSaturationValue(hue_shift_limit=10 * s, sat_shift_limit=30 * s, val_shift_limit=0, p=p),
            A.RandomGamma(gamma_limit=(100 - 30 * s, 100 + 40 * s), p=p),
            A.GaussNoise(std_range=(0.005 * s, 0.04 * s), p=pd),
            # Centred, symmetric kernels only: albumentations' defaults (allow_shifted, direction_range (-1, 1))
            # shift the picture by up to half a kernel (~2 px measured), which no label or intrinsics follow.
            A.OneOf([A.MotionBlur(blur_limit=(3, blur), allow_shifted=False, direction_range=(0.0, 0.0)),
                     A.GaussianBlur(blur_limit=(3, blur), sigma_limit=(0.1, 1.5 * s))], p=pd),
            A.ImageCompression(quality_range=(max(1, round(100 - 60 * s)), 100), p=pd),
        ])

    def __getstate__(self) -> dict[str, Any]:
        # Rebuilt lazily in each worker: keeps pickles small and independent of albumentations internals.
        return {**self.__dict__, "_compose": None}

    def __call__(self, frame: Frame, seed: int | None = None) -> Frame:
        if self.strength == 0 or (self.p <= 0 and self.p_degrade <= 0):
            return frame
        if self._compose is None:
            self._compose = self._build()
        cams = []
        for i, cam in enumerate(frame.cameras):
            if cam.image is None:
                cams.append(cam)
                continue
            s = child_seeds(seed, 1, i)[0]
            # One shared stream per call: children draw in sequence instead of replaying the same numbers.
            self._compose.set_random_state(np.random.default_rng(s), random.Random(s))
            cams.append(replace(cam, image=self._compose(image=cam.image)["image"]))
        return frame.copy(cameras=cams)


# -- horizontal flip ------------------------------------------------------------------------------------------

_MIRROR_EGO = np.diag([1.0, -1.0, 1.0, 1.0])  # ego y -> -y
_MIRROR_CAM = np.diag([-1.0, 1.0, 1.0, 1.0])  # camera x -> -x


def _hfov_deg(cam: CameraView) -> float:
    return float(np.degrees(2 * np.arctan2(cam.image_size[1], 2 * cam.intrinsics[0, 0])))


def mirror_slots(cameras: Sequence[CameraView], max_error: float = 0.2) -> list[int]:
    """For each slot ``i``, the camera whose mirrored pose matches camera ``i`` (its left/right twin).

    Matches as :meth:`visionpilot.geometry.rig.Rig.mirror_order` does, but from the calibration: mirrored position
    within ``max_error`` metres (rotation error counts 0.1 m per degree) and the same field of view (1 degree).
    A camera without a twin keeps its slot; if the matches do not form a permutation, the order is kept.
    """
    n = len(cameras)
    ext = np.stack([np.asarray(c.extrinsics, dtype=np.float64) for c in cameras])  # (N, 4, 4)
    mirrored = _MIRROR_EGO @ ext @ _MIRROR_CAM  # pose of each camera after mirroring the world
    pos_err = np.linalg.norm(ext[:, None, :3, 3] - mirrored[None, :, :3, 3], axis=-1)  # (N, N) [slot, camera]
    rel = np.swapaxes(ext[:, None, :3, :3], -1, -2) @ mirrored[None, :, :3, :3]
    cos = np.clip((np.trace(rel, axis1=-2, axis2=-1) - 1) / 2, -1.0, 1.0)
    err = pos_err + np.degrees(np.arccos(cos)) / 10.0
    fov = np.array([_hfov_deg(c) for c in cameras])
    err[np.abs(fov[:, None] - fov[None, :]) > 1.0] = np.inf
    best = err.argmin(axis=1)
    order = [int(b) if err[i, b] <= max_error else i for i, b in enumerate(best)]
    return order if sorted(order) == list(range(n)) else list(range(n))


def flip_camera(cam: CameraView) -> CameraView:
    """The camera's view of the left/right mirrored world: flipped image, intrinsics, extrinsics and 2D labels."""
    w = cam.image_size[1]
    flip_u = np.array([[-1.0, 0.0, w], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # u -> W - u
    # K' = flip_u @ K @ diag(-1, 1, 1): cx -> W - cx, skew -> -skew, focal lengths unchanged.
    intrinsics = flip_u @ np.asarray(cam.intrinsics, dtype=np.float64) @ _MIRROR_CAM[:3, :3]
    extrinsics = _MIRROR_EGO @ np.asarray(cam.extrinsics, dtype=np.float64) @ _MIRROR_CAM
    boxes = cam.boxes_2d.copy()
    boxes[:, 0], boxes[:, 2] = w - cam.boxes_2d[:, 2], w - cam.boxes_2d[:, 0]
    lanes = [Lane(np.stack([w - ln.points[:, 0], ln.points[:, 1]], axis=1), ln.type) for ln in cam.lanes_2d]
    image = None if cam.image is None else np.ascontiguousarray(cam.image[:, ::-1])
    privacy = None
    if cam.privacy_boxes is not None:
        privacy = cam.privacy_boxes.copy()
        privacy[:, 0], privacy[:, 2] = w - cam.privacy_boxes[:, 2], w - cam.privacy_boxes[:, 0]
    return replace(cam, image=image, intrinsics=intrinsics, extrinsics=extrinsics, boxes_2d=boxes, lanes_2d=lanes,
                   privacy_boxes=privacy)


def flip_frame(frame: Frame) -> Frame:
    """Mirror the whole world left/right, consistently in every label, and swap the driving side.

    Slot ``i`` keeps its name and receives the flipped view of its mirror twin (:func:`mirror_slots`), so
    ``CAM_FRONT_LEFT`` still looks front-left. Flipping twice is the identity.
    """
    order = mirror_slots(frame.cameras)
    cams = [replace(flip_camera(frame.cameras[j]), name=frame.cameras[i].name) for i, j in enumerate(order)]
    b = frame.boxes_3d
    boxes = Boxes3D(centers=b.centers * [1.0, -1.0, 1.0], sizes=b.sizes, yaws=-b.yaws, classes=b.classes,
                    track_ids=b.track_ids, velocities=b.velocities * [1.0, -1.0])
    lanes = [Lane(ln.points * [1.0, -1.0, 1.0], ln.type) for ln in frame.lanes_3d]
    return frame.copy(cameras=cams, boxes_3d=boxes, lanes_3d=lanes, driving_side=other_side(frame.driving_side))


class HorizontalFlip:
    """Random left/right mirror of the world. ``mode``: ``swap_side`` (flip and swap driving side) or ``off``."""

    MODES = ("swap_side", "off")

    def __init__(self, mode: str = "swap_side", p: float = 0.5) -> None:
        if mode not in self.MODES:
            raise ValueError(f"HorizontalFlip: mode must be one of {list(self.MODES)}, found '{mode}'")
        self.mode, self.p = mode, _as_unit(p, "HorizontalFlip", "p")

    def __call__(self, frame: Frame, seed: int | None = None) -> Frame:
        if self.mode == "off" or self.p <= 0 or np.random.default_rng(child_seeds(seed, 1)[0]).random() >= self.p:
            return frame
        return flip_frame(frame)


# -- pipelines ------------------------------------------------------------------------------------------------


class Compose:
    """Apply frame transforms in order, each with its own seed derived from the call's seed."""

    def __init__(self, transforms: Sequence[FrameTransform | Callable[..., Frame]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, frame: Frame, seed: int | None = None) -> Frame:
        for t, s in zip(self.transforms, child_seeds(seed, max(len(self.transforms), 1))):
            frame = t(frame, s)
        return frame

    def __repr__(self) -> str:
        return f"Compose({[type(t).__name__ for t in self.transforms]})"


def build_transform(image_size: Sequence[int] | None = None, train: bool = False, *, keep_aspect: bool = False,
                    crop_v: float = 0.5, scale_range: Sequence[float] = (0.9, 1.1), flip: str = "swap_side",
                    flip_p: float = 0.5, photometric_strength: float = 0.5, photometric_p: float = 0.5,
                    degrade_p: float = 0.2) -> Compose:
    """The train or val pipeline from plain kwargs (what a Hydra config holds).

    Train: flip -> random scale/crop to ``image_size`` -> photometric (on the small image, it is cheaper).
    Val: resize to ``image_size`` only. With ``keep_aspect``, train crops vertically at ``crop_v`` as val does.
    ``image_size=None`` keeps native sizes (then every camera of a source
    must already share one size for batching), and train skips the scale/crop.
    """
    if not train:
        return Compose([] if image_size is None else [Resize(image_size, keep_aspect, crop_v)])
    steps: list[FrameTransform] = [HorizontalFlip(flip, flip_p)]
    if image_size is not None:
        steps.append(RandomScaleCrop(image_size, scale_range, keep_aspect, crop_v if keep_aspect else None))
    steps.append(Photometric(photometric_strength, photometric_p, degrade_p))
    return Compose(steps)
