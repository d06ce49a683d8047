"""3D boxes and hexahedral solids, and their clipped 2D projections.

A 3D box is ``center (x, y, z)`` (the box centre, not its bottom), ``size (length, width, height)`` with length
along the heading, and ``yaw`` about +z, all in the ego frame.

Corner order of a box (and of every hexahedron here): bottom face first, then the top face, each as
front-left, front-right, rear-right, rear-left (front = +length direction, left = +width direction)::

        7 -------- 4          top     (z = +h/2)
       /|         /|
      6 -------- 5 |
      | 3 -------|-0          bottom  (z = -h/2)
      |/         |/
      2 -------- 1
"""

from __future__ import annotations

import numpy as np

from visionpilot.geometry.camera import (
    DEFAULT_NEAR,
    clip_segments_near,
    clip_segments_rect,
    in_image,
    project_camera_points,
)
from visionpilot.geometry.frames import invert_rigid

# Unit corner signs in (length, width, height) for the order above.
_CORNER_SIGNS = np.array(
    [[1, 1, -1], [1, -1, -1], [-1, -1, -1], [-1, 1, -1], [1, 1, 1], [1, -1, 1], [-1, -1, 1], [-1, 1, 1]],
    dtype=np.float64,
) * 0.5

#: The 12 edges of a hexahedron as pairs of corner indices.
HEX_EDGES = np.array([[0, 1], [1, 2], [2, 3], [3, 0], [4, 5], [5, 6], [6, 7], [7, 4], [0, 4], [1, 5], [2, 6], [3, 7]])

# In project_hexahedra_bounds' point list, edge k joins point k (its clipped start) and point k + 12 (its end).
_EDGE_PAIRS = (np.arange(12), np.arange(12) + 12)

#: The 6 faces as corner indices, counter-clockwise seen from outside (outward normals by the right-hand rule:
#: ``cross(f[1] - f[0], f[3] - f[0])`` points out). On the four side faces the edge 0->1 is horizontal along the
#: bottom and 0->3 goes up.
HEX_FACES = np.array(
    [
        [3, 0, 1, 2],  # bottom
        [5, 4, 7, 6],  # top
        [1, 0, 4, 5],  # front
        [3, 2, 6, 7],  # rear
        [0, 3, 7, 4],  # left
        [2, 1, 5, 6],  # right
    ]
)


def box_corners(center: np.ndarray, size: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """Corners of 3D boxes. center, size: (..., 3); yaw: (...,). Returns (..., 8, 3) in the order above."""
    center = np.asarray(center, dtype=np.float64)
    size = np.asarray(size, dtype=np.float64)
    yaw = np.asarray(yaw, dtype=np.float64)
    local = _CORNER_SIGNS * size[..., None, :]  # (..., 8, 3)
    c, s = np.cos(yaw)[..., None], np.sin(yaw)[..., None]
    x = c * local[..., 0] - s * local[..., 1]
    y = s * local[..., 0] + c * local[..., 1]
    return np.stack([x, y, local[..., 2]], axis=-1) + center[..., None, :]


def frustum_corners(center: np.ndarray, size: np.ndarray, yaw: np.ndarray, top_scale: float) -> np.ndarray:
    """Corners of a box whose top face is scaled by ``top_scale`` about its centre (a truncated pyramid)."""
    scale = np.array([1, 1, 1, 1, top_scale, top_scale, top_scale, top_scale], dtype=np.float64)
    local = _CORNER_SIGNS * np.asarray(size, dtype=np.float64)[..., None, :]
    local = local * np.stack([scale, scale, np.ones(8)], axis=-1)
    yaw = np.asarray(yaw, dtype=np.float64)
    c, s = np.cos(yaw)[..., None], np.sin(yaw)[..., None]
    x = c * local[..., 0] - s * local[..., 1]
    y = s * local[..., 0] + c * local[..., 1]
    return np.stack([x, y, local[..., 2]], axis=-1) + np.asarray(center, dtype=np.float64)[..., None, :]


def project_hexahedra_bounds(corners_ego: np.ndarray, intrinsics: np.ndarray, extrinsics: np.ndarray,
                             image_size: tuple[int, int], near: float = DEFAULT_NEAR
                             ) -> tuple[np.ndarray, np.ndarray]:
    """Tight 2D boxes of the visible part of convex hexahedra, clipped at the near plane and the image border.

    The projection of a convex solid is the convex hull of its projected vertices, so after clipping the solid at
    the near plane (vertices in front, plus where edges cross the plane) its image is the hull of those points.
    The box bounds that hull's intersection with the image rectangle (not merely the hull's bounds clamped to the
    image, which can be far too large for a solid that sticks out of a corner of the image). Occlusion by *other*
    solids is not considered here.

    Args:
        corners_ego: (N, 8, 3) hexahedra in the order of :data:`HEX_EDGES`.
        intrinsics, extrinsics: one camera (3, 3) / (4, 4), or C cameras (C, 3, 3) / (C, 4, 4) at once.
        image_size: (height, width).

    Returns:
        boxes: (N, 4) ``x1, y1, x2, y2`` in pixels (zeros where not visible); visible: (N,). With C cameras,
        (C, N, 4) and (C, N).
    """
    multi = np.ndim(extrinsics) == 3
    ext = np.asarray(extrinsics) if multi else np.asarray(extrinsics)[None]
    kmat = np.asarray(intrinsics) if multi else np.asarray(intrinsics)[None]
    c, n = len(ext), corners_ego.shape[0]
    height, width = image_size
    if n == 0:
        boxes, visible = np.zeros((c, 0, 4)), np.zeros((c, 0), dtype=bool)
        return (boxes, visible) if multi else (boxes[0], visible[0])
    to_cam = invert_rigid(ext)  # (C, 4, 4)
    # (C, N, 8, 3); one matrix product (BLAS) rather than einsum, which is several times slower here.
    pc = (corners_ego.reshape(-1, 3) @ to_cam[:, :3, :3].transpose(0, 2, 1)).reshape(c, n, 8, 3)
    pc += to_cam[:, None, None, :3, 3]
    a = pc[:, :, HEX_EDGES[:, 0]].reshape(-1, 3)
    b = pc[:, :, HEX_EDGES[:, 1]].reshape(-1, 3)
    a_c, b_c, keep, a_moved, b_moved = clip_segments_near(a, b, near)
    cut = (a_moved | b_moved).reshape(c, n, 12).any(axis=2)  # solid crosses the near plane
    pts = np.concatenate([a_c.reshape(c, n, 12, 3), b_c.reshape(c, n, 12, 3)], axis=2)  # (C, N, 24, 3)
    ok = np.concatenate([keep.reshape(c, n, 12), keep.reshape(c, n, 12)], axis=2)
    uv, _ = project_camera_points(pts, kmat[:, None, None], near * (1 - 1e-9))  # (C, N, 24, 2)
    lo = np.where(ok[..., None], uv, np.inf).min(axis=2)  # (C, N, 2)
    hi = np.where(ok[..., None], uv, -np.inf).max(axis=2)
    # Solids that stick out of the image: the clamped hull bounds can be far too large; bound hull & image exactly.
    out = ok.any(axis=2) & ((lo[..., 0] < 0) | (lo[..., 1] < 0) | (hi[..., 0] > width) | (hi[..., 1] > height))
    out &= (lo[..., 0] < width) & (hi[..., 0] > 0) & (lo[..., 1] < height) & (hi[..., 1] > 0)
    # An uncut convex solid's outline is made of its projected edges (point k to point k + 12): 12 chords suffice.
    # A solid cut by the near plane also has the cut face's edges: fall back to every chord.
    for rows, pairs in ((out & ~cut, _EDGE_PAIRS), (out & cut, None)):
        if rows.any():
            lo[rows], hi[rows] = _hull_in_rect_bounds(uv[rows], ok[rows], width, height, pairs)
    x1 = np.clip(lo[..., 0], 0, width)
    y1 = np.clip(lo[..., 1], 0, height)
    x2 = np.clip(hi[..., 0], 0, width)
    y2 = np.clip(hi[..., 1], 0, height)
    visible = np.isfinite(lo).all(axis=-1) & (x2 > x1) & (y2 > y1)
    boxes = np.where(visible[..., None], np.stack([x1, y1, x2, y2], axis=-1), 0.0)
    return (boxes, visible) if multi else (boxes[0], visible[0])


def _hull_in_rect_bounds(uv: np.ndarray, ok: np.ndarray, width: float, height: float,
                         pairs: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Bounds (lo, hi), each (N, 2), of the convex hull of points ``uv`` (N, P, 2) where ``ok``, cut to
    ``[0, width] x [0, height]``; +-inf where the hull misses the rectangle.

    Every vertex of hull & rectangle is a point inside the rectangle, a crossing of a hull edge with the border, or
    a rectangle corner inside the hull. Hull edges are among the chords between all pairs of points, and every chord
    lies inside the hull, so clipping all chords to the rectangle finds the first two kinds exactly. ``pairs``
    restricts the chords to a subset known to contain the hull's edges (e.g. a solid's projected edges).
    """
    n = len(uv)
    i, j = pairs if pairs is not None else np.triu_indices(uv.shape[1], k=1)
    p_c, q_c, chord_ok, _, _ = clip_segments_rect(uv[:, i].reshape(-1, 2), uv[:, j].reshape(-1, 2), width, height)
    chord_ok = chord_ok.reshape(n, -1) & ok[:, i] & ok[:, j]
    corners = np.array([[0.0, 0.0], [width, 0.0], [width, height], [0.0, height]])
    cand = np.concatenate(
        [uv, p_c.reshape(n, -1, 2), q_c.reshape(n, -1, 2), np.broadcast_to(corners, (n, 4, 2))], axis=1
    )
    cand_ok = np.concatenate([ok & in_image(uv, (height, width)), chord_ok, chord_ok, _in_hull(corners, uv, ok)], axis=1)
    lo = np.where(cand_ok[..., None], cand, np.inf).min(axis=1)
    hi = np.where(cand_ok[..., None], cand, -np.inf).max(axis=1)
    return lo, hi


def _in_hull(queries: np.ndarray, points: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Whether 2D ``queries`` (Q, 2) lie in the convex hull of each set of ``points`` (N, P, 2) where ``ok`` (N, P).

    A query is inside iff the directions to the points leave no angular gap wider than pi (else a line through the
    query separates it from all points). Returns (N, Q).
    """
    d = points[:, None, :, :] - queries[None, :, None, :]  # (N, Q, P, 2)
    ang = np.arctan2(d[..., 1], d[..., 0])
    # Masked points repeat the angle of the first valid point, so they open no gap.
    first = np.broadcast_to(np.argmax(ok, axis=1)[:, None, None], (*ang.shape[:2], 1))
    ang = np.sort(np.where(ok[:, None, :], ang, np.take_along_axis(ang, first, axis=2)), axis=-1)
    gaps = np.diff(ang, axis=-1, append=ang[..., :1] + 2 * np.pi)
    on_point = ((np.abs(d).max(axis=-1) < 1e-9) & ok[:, None, :]).any(axis=-1)
    return ok.any(axis=1)[:, None] & ((gaps.max(axis=-1) <= np.pi + 1e-9) | on_point)


def group_bounds(boxes: np.ndarray, visible: np.ndarray, group: np.ndarray, n_groups: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Union of 2D boxes (P, 4) per group id (P,) -> (n_groups, 4) and whether each group has any visible part."""
    lo = np.full((n_groups, 2), np.inf)
    hi = np.full((n_groups, 2), -np.inf)
    g = group[visible]
    np.minimum.at(lo, g, boxes[visible, :2])
    np.maximum.at(hi, g, boxes[visible, 2:])
    any_visible = np.isfinite(lo[:, 0])
    out = np.where(any_visible[:, None], np.concatenate([lo, hi], axis=1), 0.0)
    return out, any_visible


def project_box_2d(center: np.ndarray, size: np.ndarray, yaw: np.ndarray, intrinsics: np.ndarray,
                   extrinsics: np.ndarray, image_size: tuple[int, int], near: float = DEFAULT_NEAR
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Clipped 2D boxes of the visible part of 3D boxes (N, ...) in one camera. See :func:`project_hexahedra_bounds`."""
    corners = box_corners(np.atleast_2d(center), np.atleast_2d(size), np.atleast_1d(yaw))
    return project_hexahedra_bounds(corners, intrinsics, extrinsics, image_size, near)


def points_in_box(points: np.ndarray, center: np.ndarray, size: np.ndarray, yaw: float) -> np.ndarray:
    """Which ego-frame points (P, 3) lie inside one 3D box."""
    d = np.asarray(points) - np.asarray(center)
    c, s = np.cos(yaw), np.sin(yaw)
    local_x = c * d[:, 0] + s * d[:, 1]
    local_y = -s * d[:, 0] + c * d[:, 1]
    half = np.asarray(size) / 2
    return (np.abs(local_x) <= half[0]) & (np.abs(local_y) <= half[1]) & (np.abs(d[:, 2]) <= half[2])
