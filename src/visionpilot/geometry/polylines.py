"""Polylines: projection into cameras (clipped at the near plane and the image border) and resampling."""

from __future__ import annotations

import numpy as np

from visionpilot.geometry.camera import (
    DEFAULT_NEAR,
    clip_segments_near,
    clip_segments_rect,
    ego_to_camera,
    project_camera_points,
)


def project_polyline(points_ego: np.ndarray, intrinsics: np.ndarray, extrinsics: np.ndarray,
                     image_size: tuple[int, int], near: float = DEFAULT_NEAR,
                     min_length_px: float = 0.0) -> list[np.ndarray]:
    """Project an ego-frame polyline (P, 3) into a camera.

    Each segment is clipped in 3D at the near plane (so nothing behind the camera is mirrored into the image),
    projected, then clipped to the image rectangle. Where clipping cuts the line, it splits into pieces.

    Returns:
        A list of (Q, 2) pixel polylines, in the order of the input; pieces shorter than ``min_length_px`` dropped.
    """
    points_ego = np.asarray(points_ego, dtype=np.float64)
    if len(points_ego) < 2:
        return []
    height, width = image_size
    pc = ego_to_camera(points_ego, extrinsics)
    a, b, keep3d, a_moved3d, b_moved3d = clip_segments_near(pc[:-1], pc[1:], near)
    ua, _ = project_camera_points(a, intrinsics, near * (1 - 1e-9))
    ub, _ = project_camera_points(b, intrinsics, near * (1 - 1e-9))
    # Far-off projections of points at the near plane can be huge; Liang-Barsky is exact for any magnitude.
    p, q, keep2d, p_moved2d, q_moved2d = clip_segments_rect(ua, ub, width, height)
    keep = keep3d & keep2d
    start_cut = a_moved3d | p_moved2d
    end_cut = b_moved3d | q_moved2d
    if not keep.any():
        return []
    idx = np.flatnonzero(keep)
    # A kept segment continues the previous piece only if it directly follows a kept segment and neither the
    # previous end nor this start was cut.
    prev = idx - 1
    continues = np.zeros(len(idx), dtype=bool)
    continues[1:] = (prev[1:] == idx[:-1]) & ~end_cut[idx[:-1]] & ~start_cut[idx[1:]]
    piece_id = np.cumsum(~continues) - 1
    pieces: list[np.ndarray] = []
    for pid in range(piece_id[-1] + 1):
        seg = idx[piece_id == pid]
        pts = np.concatenate([p[seg[:1]], q[seg]], axis=0)
        if min_length_px > 0 and np.linalg.norm(np.diff(pts, axis=0), axis=1).sum() < min_length_px:
            continue
        pieces.append(pts)
    return pieces


def polyline_length(points: np.ndarray) -> float:
    """Total length of a polyline (P, D)."""
    if len(points) < 2:
        return 0.0
    return float(np.linalg.norm(np.diff(points, axis=0), axis=1).sum())


def resample_polyline(points: np.ndarray, num: int | None = None, step: float | None = None) -> np.ndarray:
    """Resample a polyline (P, D) at equal arc length: ``num`` points, or one every ``step`` units.

    The first and last points are kept exactly.
    """
    points = np.asarray(points, dtype=np.float64)
    if (num is None) == (step is None):
        raise ValueError("give exactly one of num= or step=")
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    total = cum[-1]
    if num is None:
        num = max(int(np.floor(total / step)) + 1, 2)
    if total <= 0 or len(points) < 2:
        return np.repeat(points[:1], num, axis=0)
    s = np.linspace(0.0, total, num)
    # Drop zero-length segments so interp sees strictly increasing abscissae.
    keep = np.concatenate([[True], seg > 0])
    return np.stack([np.interp(s, cum[keep], points[keep, d]) for d in range(points.shape[1])], axis=1)


def interpolate_x_at_y(points: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """For an image-space polyline (P, 2), the u coordinate at each row ``v`` in ``ys`` (NaN where not covered).

    Used by row-anchor lane representations. Where the polyline crosses a row more than once, the first crossing
    along the polyline wins.
    """
    points = np.asarray(points, dtype=np.float64)
    ys = np.asarray(ys, dtype=np.float64)
    out = np.full(len(ys), np.nan)
    if len(points) < 2:
        return out
    a, b = points[:-1], points[1:]
    lo = np.minimum(a[:, 1], b[:, 1])
    hi = np.maximum(a[:, 1], b[:, 1])
    # (rows, segments) crossing table; pick the first segment covering each row.
    cover = (ys[:, None] >= lo[None]) & (ys[:, None] <= hi[None]) & (hi > lo)[None]
    has = cover.any(axis=1)
    first = np.argmax(cover, axis=1)
    sa, sb = a[first], b[first]
    t = (ys - sa[:, 1]) / np.where(sb[:, 1] == sa[:, 1], 1.0, sb[:, 1] - sa[:, 1])
    out[has] = (sa[:, 0] + t * (sb[:, 0] - sa[:, 0]))[has]
    return out
