"""Pinhole projection with near-plane handling, and clipping of segments and polygons.

See :mod:`visionpilot.geometry.frames` for the frame and pixel conventions.
"""

from __future__ import annotations

import numpy as np

from visionpilot.geometry.frames import invert_rigid, transform_points

#: Points closer than this along the optical axis (metres) are treated as behind the camera.
DEFAULT_NEAR = 0.1


def ego_to_camera(points_ego: np.ndarray, extrinsics: np.ndarray) -> np.ndarray:
    """Ego-frame points (..., 3) into the camera frame of a camera with camera->ego ``extrinsics``."""
    return transform_points(invert_rigid(extrinsics), points_ego)


def project_camera_points(points_cam: np.ndarray, intrinsics: np.ndarray,
                          near: float = DEFAULT_NEAR) -> tuple[np.ndarray, np.ndarray]:
    """Project camera-frame points (..., 3) to pixels.

    ``intrinsics`` is one (3, 3) matrix or a stack (..., 3, 3) whose leading dims broadcast against the points'
    leading dims (e.g. (C, 1, 1, 3, 3) for points (C, N, P, 3)).

    Returns:
        uv: (..., 2) pixel coordinates. Meaningless where ``valid`` is False (depth clamped to ``near``).
        valid: (...,) True where the point is in front of the near plane.
    """
    depth = points_cam[..., 2]
    valid = depth >= near
    z = np.maximum(depth, near)
    k = np.asarray(intrinsics)
    x, y = points_cam[..., 0] / z, points_cam[..., 1] / z
    u = k[..., 0, 0] * x + k[..., 0, 1] * y + k[..., 0, 2]
    v = k[..., 1, 1] * y + k[..., 1, 2]
    return np.stack([u, v], axis=-1), valid


def project_points(points_ego: np.ndarray, intrinsics: np.ndarray, extrinsics: np.ndarray,
                   near: float = DEFAULT_NEAR) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Project ego-frame points (..., 3) into a camera.

    Returns:
        uv: (..., 2) pixels (only meaningful where valid), depth: (...,) metres along the optical axis,
        valid: (...,) in front of the near plane. Points behind the camera are *not* mirrored into the image.
    """
    points_cam = ego_to_camera(points_ego, extrinsics)
    uv, valid = project_camera_points(points_cam, intrinsics, near)
    return uv, points_cam[..., 2], valid


def in_image(uv: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """True where pixel coordinates (..., 2) fall inside an image of size (height, width)."""
    height, width = image_size
    return (uv[..., 0] >= 0) & (uv[..., 0] <= width) & (uv[..., 1] >= 0) & (uv[..., 1] <= height)


def clip_segments_near(a: np.ndarray, b: np.ndarray, near: float = DEFAULT_NEAR
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Clip camera-frame 3D segments ``a -> b`` (N, 3) to the half-space ``z >= near``.

    Returns:
        a_clipped, b_clipped: (N, 3); keep: (N,) the segment has a part in front;
        a_moved, b_moved: (N,) the start / end point was moved onto the near plane.
    """
    za, zb = a[:, 2], b[:, 2]
    ina, inb = za >= near, zb >= near
    keep = ina | inb
    denom = np.where(np.abs(zb - za) < 1e-12, 1e-12, zb - za)
    t = ((near - za) / denom)[:, None]
    cross = a + t * (b - a)
    a_moved = keep & ~ina
    b_moved = keep & ~inb
    a_out = np.where(a_moved[:, None], cross, a)
    b_out = np.where(b_moved[:, None], cross, b)
    return a_out, b_out, keep, a_moved, b_moved


def clip_segments_rect(p: np.ndarray, q: np.ndarray, width: float, height: float
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Liang-Barsky clipping of 2D segments ``p -> q`` (N, 2) to ``[0, width] x [0, height]``.

    Returns:
        p_clipped, q_clipped: (N, 2); keep: (N,) some part lies inside;
        p_moved, q_moved: (N,) the start / end point was moved onto the border.
    """
    d = q - p
    t0 = np.zeros(len(p))
    t1 = np.ones(len(p))
    keep = np.ones(len(p), dtype=bool)
    # Each boundary as (-d, p - lo) and (d, hi - p) in Liang-Barsky's (p_k, q_k) notation.
    for pk, qk in ((-d[:, 0], p[:, 0]), (d[:, 0], width - p[:, 0]), (-d[:, 1], p[:, 1]), (d[:, 1], height - p[:, 1])):
        parallel = np.abs(pk) < 1e-12
        keep &= ~(parallel & (qk < 0))
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(parallel, 0.0, qk / np.where(parallel, 1.0, pk))
        entering = ~parallel & (pk < 0)
        leaving = ~parallel & (pk > 0)
        t0 = np.where(entering, np.maximum(t0, r), t0)
        t1 = np.where(leaving, np.minimum(t1, r), t1)
    keep &= t0 <= t1
    p_out = p + t0[:, None] * d
    q_out = p + t1[:, None] * d
    return p_out, q_out, keep, keep & (t0 > 0), keep & (t1 < 1)


def clip_polygon_near(poly_cam: np.ndarray, near: float = DEFAULT_NEAR) -> np.ndarray:
    """Sutherland-Hodgman clip of one camera-frame polygon (V, 3) to ``z >= near``. Returns (V', 3), maybe empty."""
    inside = poly_cam[:, 2] >= near
    if inside.all():
        return poly_cam
    if not inside.any():
        return poly_cam[:0]
    out = []
    n = len(poly_cam)
    for i in range(n):
        cur, nxt = poly_cam[i], poly_cam[(i + 1) % n]
        cin, nin = inside[i], inside[(i + 1) % n]
        if cin:
            out.append(cur)
        if cin != nin:
            t = (near - cur[2]) / (nxt[2] - cur[2])
            out.append(cur + t * (nxt - cur))
    return np.asarray(out)
