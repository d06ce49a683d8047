"""Drawing labels and predictions: camera overlays, a bird's-eye-view panel, and the tiled preview of a frame.

Used by ``visionpilot-data action=preview`` (labels) and by training/evaluation (predictions vs labels). Images are
RGB uint8; pixel coordinates follow visionpilot.geometry.frames (OpenCV's integer pixel centres differ by 0.5).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from visionpilot.data.frame import Frame, Lane
from visionpilot.data.vocab import CLASS_COLORS, LANE_COLORS, LANE_TYPES, OBJECT_CLASSES
from visionpilot.geometry.boxes import box_corners

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_CLASS_RGB = [CLASS_COLORS[c] for c in OBJECT_CLASSES]
_LANE_RGB = [LANE_COLORS[t] for t in LANE_TYPES]


#: Pixel coordinates are clipped to this before drawing: far outside any image, still an int32 for OpenCV.
_LIM = 1 << 30


def _pt(p: np.ndarray) -> tuple[int, int]:
    return int(round(float(p[0]) - 0.5)), int(round(float(p[1]) - 0.5))


def _finite_runs(points: np.ndarray) -> list[np.ndarray]:
    """The runs of consecutive finite points of a polyline (P, D): a NaN or inf point (an untrained or diverged
    head) breaks the line there, instead of becoming a garbage pixel that a line is drawn to."""
    pts = np.asarray(points, dtype=np.float64)
    ok = np.isfinite(pts).all(axis=-1)
    if ok.all():
        return [pts]
    idx = np.flatnonzero(ok)
    return [pts[run] for run in np.split(idx, np.flatnonzero(np.diff(idx) > 1) + 1) if len(run)]


def draw_boxes_2d(image: np.ndarray, boxes: np.ndarray, classes: np.ndarray, scores: np.ndarray | None = None,
                  dashed: bool = False, thickness: int = 1) -> np.ndarray:
    """Draw x1y1x2y2 boxes coloured by class (dashed for predictions) in place; returns the image."""
    for k, (box, cls) in enumerate(zip(boxes, classes)):
        color = _CLASS_RGB[int(cls)]
        box = np.clip(np.nan_to_num(np.asarray(box, dtype=np.float64)), -(1 << 30), 1 << 30)  # untrained heads
        p1, p2 = _pt(box[:2]), _pt(box[2:])
        if dashed:
            _dashed_rect(image, p1, p2, color, thickness)
        else:
            cv2.rectangle(image, p1, p2, color, thickness, cv2.LINE_AA)
        if scores is not None:
            cv2.putText(image, f"{scores[k]:.2f}", (p1[0], max(p1[1] - 2, 8)), _FONT, 0.3, color, 1, cv2.LINE_AA)
    return image


def _dashed_rect(image: np.ndarray, p1: tuple[int, int], p2: tuple[int, int], color, thickness: int) -> None:
    corners = [p1, (p2[0], p1[1]), p2, (p1[0], p2[1])]
    for a, b in zip(corners, corners[1:] + corners[:1]):
        _dashed_line(image, np.array(a, float), np.array(b, float), color, thickness)


def _dashed_line(image: np.ndarray, a: np.ndarray, b: np.ndarray, color, thickness: int, dash: float = 4.0) -> None:
    # Clip to the image first: an untrained head can predict boxes millions of pixels wide, and dashing those
    # point by point would take minutes (and draw nothing visible).
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return
    h, w = image.shape[:2]
    lim = 1 << 30
    inside, pa, pb = cv2.clipLine((0, 0, w, h), tuple(int(v) for v in np.clip(a, -lim, lim)),
                                  tuple(int(v) for v in np.clip(b, -lim, lim)))
    if not inside:
        return
    a, b = np.asarray(pa, float), np.asarray(pb, float)
    length = float(np.linalg.norm(b - a))
    n = max(int(length / dash), 1)
    for i in range(0, n, 2):
        p = a + (b - a) * i / n
        q = a + (b - a) * min(i + 1, n) / n
        cv2.line(image, (int(p[0]), int(p[1])), (int(q[0]), int(q[1])), color, thickness, cv2.LINE_AA)


def draw_lanes_2d(image: np.ndarray, lanes: Sequence[Lane], thickness: int = 2, dashed: bool = False) -> np.ndarray:
    """Draw pixel polylines coloured by lane type in place."""
    for lane in lanes:
        color = _LANE_RGB[lane.type]
        for run in _finite_runs(lane.points):
            pts = np.round(np.clip(run, -_LIM, _LIM) - 0.5).astype(np.int32)
            if dashed:
                for a, b in zip(pts[:-1], pts[1:]):
                    _dashed_line(image, a.astype(float), b.astype(float), color, thickness)
            else:
                cv2.polylines(image, [pts], False, color, thickness, cv2.LINE_AA)
    return image


class BEVCanvas:
    """A top-down canvas of the ego frame: x forward is up, y left is left; the ego at the centre."""

    def __init__(self, size_px: int = 512, range_m: float = 50.0) -> None:
        self.size = size_px
        self.range = range_m
        self.ppm = size_px / (2 * range_m)  # pixels per metre
        self.image = np.full((size_px, size_px, 3), 24, np.uint8)
        for r in range(10, int(range_m) + 1, 10):
            cv2.circle(self.image, self.to_px(np.zeros(2)), int(r * self.ppm), (52, 52, 52), 1, cv2.LINE_AA)
        c = self.to_px(np.zeros(2))
        cv2.line(self.image, (c[0], 0), (c[0], size_px), (40, 40, 40), 1)
        cv2.line(self.image, (0, c[1]), (size_px, c[1]), (40, 40, 40), 1)

    def to_px(self, xy: np.ndarray) -> tuple[int, int]:
        u, v = self.to_px_array(np.asarray(xy, dtype=np.float64)[None, :2])[0]
        return int(u), int(v)

    def to_px_array(self, xy: np.ndarray) -> np.ndarray:
        xy = np.asarray(xy, dtype=np.float64)
        px = np.stack([self.size / 2 - xy[:, 1] * self.ppm, self.size / 2 - xy[:, 0] * self.ppm], 1)
        return np.round(np.clip(px, -_LIM, _LIM)).astype(np.int32)  # far-off boxes of an untrained head

    def ego(self, length: float = 4.9, width: float = 1.9, rear_overhang: float = 1.0) -> None:
        corners = np.array([[-rear_overhang, width / 2], [-rear_overhang, -width / 2],
                            [length - rear_overhang, -width / 2], [length - rear_overhang, width / 2]])
        cv2.fillPoly(self.image, [self.to_px_array(corners)], (200, 200, 200), cv2.LINE_AA)

    def frustums(self, intrinsics: np.ndarray, extrinsics: np.ndarray, image_size: tuple[int, int],
                 length_m: float = 12.0) -> None:
        """Draw each camera's horizontal field of view as two rays."""
        width = image_size[1]
        for k, e in zip(intrinsics, extrinsics):
            for u in (0.0, float(width)):
                ray_cam = np.linalg.inv(k) @ np.array([u, k[1, 2], 1.0])
                ray = e[:3, :3] @ ray_cam
                ray_xy = ray[:2] / max(np.linalg.norm(ray[:2]), 1e-9)
                a, b = e[:2, 3], e[:2, 3] + ray_xy * length_m
                cv2.line(self.image, self.to_px(a), self.to_px(b), (70, 70, 90), 1, cv2.LINE_AA)

    def boxes(self, boxes: np.ndarray, classes: np.ndarray, dashed: bool = False, thickness: int = 2) -> None:
        """3D boxes (K, 7) ``x, y, z, l, w, h, yaw`` as oriented footprints with a heading tick."""
        if len(boxes) == 0:
            return
        finite = np.isfinite(boxes).all(axis=1)  # a diverged head's NaN / inf boxes are not drawn
        boxes, classes = boxes[finite], np.asarray(classes)[finite]
        corners = box_corners(boxes[:, :3], boxes[:, 3:6], boxes[:, 6])[:, :4, :2]  # bottom face (K, 4, 2)
        for k, (quad, cls) in enumerate(zip(corners, classes)):
            color = _CLASS_RGB[int(cls)]
            pts = self.to_px_array(quad)
            if dashed:
                for a, b in zip(pts, np.roll(pts, -1, axis=0)):
                    _dashed_line(self.image, a.astype(float), b.astype(float), color, 1, dash=3.0)
            else:
                cv2.polylines(self.image, [pts], True, color, thickness, cv2.LINE_AA)
            front = (quad[0] + quad[1]) / 2
            cv2.line(self.image, self.to_px(boxes[k, :2]), self.to_px(front), color, 1, cv2.LINE_AA)

    def lanes(self, lanes: Sequence[Lane] | Sequence[tuple[np.ndarray, int]], thickness: int = 1,
              dashed: bool = False) -> None:
        for lane in lanes:
            pts3, typ = (lane.points, lane.type) if isinstance(lane, Lane) else lane
            color = _LANE_RGB[int(typ)]
            for run in _finite_runs(np.asarray(pts3)[:, :2]):
                pts = self.to_px_array(run)
                if dashed:
                    for a, b in zip(pts[:-1], pts[1:]):
                        _dashed_line(self.image, a.astype(float), b.astype(float), color, thickness, dash=3.0)
                else:
                    cv2.polylines(self.image, [pts], False, color, thickness, cv2.LINE_AA)


def camera_grid(tiles: Sequence[np.ndarray], names: Sequence[str], columns: int | None = None) -> np.ndarray:
    """Tile camera images (all the same size) into a grid with their names written on them."""
    n = len(tiles)
    cols = columns or (3 if n in (3, 5, 6, 9) else 4 if n in (4, 7, 8) and n > 4 else min(n, 4))
    rows = math.ceil(n / cols)
    h, w = tiles[0].shape[:2]
    grid = np.zeros((rows * h, cols * w, 3), np.uint8)
    for i, (tile, name) in enumerate(zip(tiles, names)):
        r, c = divmod(i, cols)
        grid[r * h:(r + 1) * h, c * w:(c + 1) * w] = tile
        outlined_text(grid, name, (c * w + 5, r * h + 14), 0.42)
    return grid


def outlined_text(image: np.ndarray, text: str, org: tuple[int, int], scale: float,
                  color: tuple[int, int, int] = (255, 255, 255), outline: tuple[int, int, int] = (0, 0, 0)) -> None:
    """Write ``text`` in ``color`` with a 1-px ``outline``, readable on any image, in place.

    The outline is the text's own mask dilated by one pixel, not the text drawn again thicker: from OpenCV 5 a
    thicker stroke also widens the glyphs' advance, so a thick dark copy under a thin light one drifts to the right
    along the string (a dark trailing letter on every camera name).
    """
    (tw, th), base = cv2.getTextSize(text, _FONT, scale, 1)
    x0, y0 = max(org[0] - 2, 0), max(org[1] - th - 2, 0)  # the text's box and the outline's pixel, clipped
    x1, y1 = min(org[0] + tw + 2, image.shape[1]), min(org[1] + base + 2, image.shape[0])
    if x1 <= x0 or y1 <= y0:
        return
    roi = image[y0:y1, x0:x1]
    mask = np.zeros(roi.shape[:2], np.uint8)
    cv2.putText(mask, text, (org[0] - x0, org[1] - y0), _FONT, scale, 255, 1, cv2.LINE_AA)
    text_a = (mask.astype(np.float32) / 255.0)[..., None]
    ring_a = (cv2.dilate(mask, np.ones((3, 3), np.uint8)).astype(np.float32) / 255.0)[..., None]
    out = roi.astype(np.float32) * (1 - ring_a) + np.float32(outline) * ring_a
    out = out * (1 - text_a) + np.float32(color) * text_a
    roi[...] = np.clip(out + 0.5, 0, 255).astype(np.uint8)


def legend(width: int) -> np.ndarray:
    """One strip naming the class and lane-type colours."""
    strip = np.full((22, width, 3), 16, np.uint8)
    x = 6
    for name, color in list(zip(OBJECT_CLASSES, _CLASS_RGB)) + list(zip(LANE_TYPES, _LANE_RGB)):
        cv2.rectangle(strip, (x, 6), (x + 10, 16), color, -1)
        cv2.putText(strip, name, (x + 14, 15), _FONT, 0.36, (220, 220, 220), 1, cv2.LINE_AA)
        x += 22 + int(cv2.getTextSize(name, _FONT, 0.36, 1)[0][0])
        if x > width - 60:
            break
    return strip


def frame_preview(frame: Frame, bev_range_m: float = 50.0, title: str | None = None) -> np.ndarray:
    """The labelled preview of a frame: cameras with 2D boxes and lanes, a BEV panel, a legend (RGB uint8)."""
    tiles = []
    for cam in frame.cameras:
        h, w = cam.image_size
        img = cam.image.copy() if cam.image is not None else np.zeros((h, w, 3), np.uint8)
        draw_lanes_2d(img, cam.lanes_2d, thickness=2)
        draw_boxes_2d(img, cam.boxes_2d, cam.classes_2d)
        tiles.append(img)
    grid = camera_grid(tiles, frame.camera_names)
    bev = BEVCanvas(size_px=max(grid.shape[0], 256), range_m=bev_range_m)
    bev.frustums(np.stack([c.intrinsics for c in frame.cameras]), np.stack([c.extrinsics for c in frame.cameras]),
                 frame.cameras[0].image_size)
    bev.lanes(frame.lanes_3d, thickness=1)
    bev.ego()
    bev.boxes(frame.boxes_3d.as_array(), frame.boxes_3d.classes)
    bev_img = bev.image
    if bev_img.shape[0] != grid.shape[0]:
        bev_img = cv2.resize(bev_img, (grid.shape[0], grid.shape[0]), interpolation=cv2.INTER_AREA)
    body = np.concatenate([grid, bev_img], axis=1)
    header = np.full((22, body.shape[1], 3), 16, np.uint8)
    text = title or (f"{frame.frame_id}  region={frame.region.upper()}  drive on the {frame.driving_side}  "
                     f"t={frame.timestamp:.1f}s  {frame.meta.get('time_of_day', '')}  "
                     f"boxes3d={len(frame.boxes_3d)}  lanes3d={len(frame.lanes_3d)}")
    cv2.putText(header, text, (6, 15), _FONT, 0.42, (230, 230, 230), 1, cv2.LINE_AA)
    return np.concatenate([header, body, legend(body.shape[1])], axis=0)


def save_rgb(path: str, image: np.ndarray) -> None:
    """Write an RGB image (PNG/JPEG by extension) atomically."""
    from visionpilot.data.writers._common import write_image_atomic

    write_image_atomic(Path(path), np.ascontiguousarray(image))
