"""Polylines: projection into cameras (clipped at the near plane and the image border), clipping to a box, and
resampling."""

from __future__ import annotations

from collections.abc import Sequence

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
    return project_polylines([points_ego], intrinsics, extrinsics, image_size, near, min_length_px)[0]


def project_polylines(polylines: Sequence[np.ndarray], intrinsics: np.ndarray, extrinsics: np.ndarray,
                      image_size: tuple[int, int], near: float = DEFAULT_NEAR,
                      min_length_px: float = 0.0) -> list[list[np.ndarray]]:
    """:func:`project_polyline` for many polylines in one vectorised pass; one list of pieces per input."""
    out: list[list[np.ndarray]] = [[] for _ in polylines]
    lines = [np.asarray(p, dtype=np.float64) for p in polylines]
    seg_a = [p[:-1] for p in lines if len(p) >= 2]
    if not seg_a:
        return out
    owner = np.concatenate([np.full(len(p) - 1, i) for i, p in enumerate(lines) if len(p) >= 2])
    height, width = image_size
    pts = np.concatenate([p for p in lines if len(p) >= 2])
    pc = ego_to_camera(pts, extrinsics)
    # Segment k joins point k and k+1 of the concatenation; drop the joins between different polylines.
    last = np.cumsum([len(p) for p in lines if len(p) >= 2]) - 1
    first_of_seg = np.delete(np.arange(len(pts)), last)
    a, b, keep3d, a_moved3d, b_moved3d = clip_segments_near(pc[first_of_seg], pc[first_of_seg + 1], near)
    ua, _ = project_camera_points(a, intrinsics, near * (1 - 1e-9))
    ub, _ = project_camera_points(b, intrinsics, near * (1 - 1e-9))
    # Far-off projections of points at the near plane can be huge; Liang-Barsky is exact for any magnitude.
    p, q, keep2d, p_moved2d, q_moved2d = clip_segments_rect(ua, ub, width, height)
    _join_pieces(p, q, keep3d & keep2d, a_moved3d | p_moved2d, b_moved3d | q_moved2d, owner, min_length_px, out)
    return out


def _join_pieces(p: np.ndarray, q: np.ndarray, keep: np.ndarray, start_cut: np.ndarray, end_cut: np.ndarray,
                 owner: np.ndarray, min_length: float, out: list[list[np.ndarray]],
                 offset: np.ndarray | None = None) -> None:
    """Append to ``out[owner]`` the pieces that clipped segments ``p -> q`` (consecutive within each polyline) form.

    A kept segment continues the previous piece only if it directly follows a kept segment of the same polyline and
    neither the previous end nor this start was cut. Pieces shorter than ``min_length`` are dropped; ``offset`` is
    added to the points of the pieces kept.
    """
    idx = np.flatnonzero(keep)
    if len(idx) == 0:
        return
    continues = np.zeros(len(idx), dtype=bool)
    continues[1:] = ((idx[1:] - 1 == idx[:-1]) & (owner[idx[1:]] == owner[idx[:-1]]) & ~end_cut[idx[:-1]]
                     & ~start_cut[idx[1:]])
    starts = np.flatnonzero(~continues)
    piece_len = np.add.reduceat(np.linalg.norm(q[idx] - p[idx], axis=1), starts)
    for s0, s1, length in zip(starts, [*starts[1:], len(idx)], piece_len):
        if length < min_length:
            continue
        seg = idx[s0:s1]
        piece = np.concatenate([p[seg[:1]], q[seg]], axis=0)
        out[int(owner[seg[0]])].append(piece if offset is None else piece + offset)


def clip_polyline_box(points: np.ndarray, x_range: tuple[float, float], y_range: tuple[float, float],
                      min_length: float = 0.0) -> list[np.ndarray]:
    """Pieces of a 2D polyline (P, 2; further columns ignored) inside the box ``x_range x y_range``.

    Liang-Barsky on every segment; where the line leaves the box and re-enters it, it splits. Pieces shorter than
    ``min_length`` are dropped (a single point inside the box is a piece of length 0). Used for image borders
    (``(0, width), (0, height)``), map patches and BEV grids.
    """
    return clip_polylines_box([points], x_range, y_range, min_length)[0]


def clip_polylines_box(polylines: Sequence[np.ndarray], x_range: tuple[float, float], y_range: tuple[float, float],
                       min_length: float = 0.0) -> list[list[np.ndarray]]:
    """:func:`clip_polyline_box` for many polylines in one vectorised pass (the same pieces); a list per input."""
    out: list[list[np.ndarray]] = [[] for _ in polylines]
    lines = [np.asarray(p, dtype=np.float64)[:, :2] for p in polylines]
    for i, pts in enumerate(lines):
        if len(pts) == 1 and min_length <= 0 and x_range[0] <= pts[0, 0] <= x_range[1] \
                and y_range[0] <= pts[0, 1] <= y_range[1]:
            out[i].append(pts.copy())  # never a view of the caller's array
    multi = [i for i, pts in enumerate(lines) if len(pts) >= 2]
    if not multi:
        return out
    origin = np.array([x_range[0], y_range[0]], dtype=np.float64)
    # Segment k of the concatenation joins the point pairs of one polyline; owner says which.
    owner = np.concatenate([np.full(len(lines[i]) - 1, i) for i in multi])
    a = np.concatenate([lines[i][:-1] for i in multi]) - origin
    b = np.concatenate([lines[i][1:] for i in multi]) - origin
    p, q, keep, p_moved, q_moved = clip_segments_rect(a, b, x_range[1] - x_range[0], y_range[1] - y_range[0])
    _join_pieces(p, q, keep, p_moved, q_moved, owner, min_length, out, offset=origin)
    return out


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
