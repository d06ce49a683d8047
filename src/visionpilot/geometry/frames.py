"""Coordinate frames and rigid transforms.

Conventions (used everywhere in visionpilot):

- **ego**: x forward, y left, z up; metres; origin at the rear axle, on the ground.
- **camera**: x right, y down, z forward (optical axis); metres.
- **image**: u right, v down; pixels. Continuous coordinates: pixel ``(i, j)`` covers ``[i, i+1) x [j, j+1)``,
  its centre is ``(i + 0.5, j + 0.5)``; an image of width W spans ``u`` in ``[0, W]``. A principal point at
  ``(W/2, H/2)`` is the image centre.
- **extrinsics**: 4x4 camera -> ego (``p_ego = E @ p_cam``). **intrinsics**: 3x3 pinhole ``K``.
- **yaw**: rotation about +z of the ego frame, counter-clockwise seen from above; 0 = facing ego +x.

All functions are pure numpy. ``rot_x/y/z``, ``invert_rigid``, ``quaternion_to_rotation`` and ``wrap_angle``
accept any leading batch shape, ``transform_points`` any batch of points (one transform); the mounting,
intrinsics and ``rotation_to_quaternion`` / ``yaw_of_rotation`` helpers take one camera / rotation.
"""

from __future__ import annotations

import numpy as np

# Rotation that maps camera axes to ego axes for a camera looking straight ahead (along ego +x):
# camera x (right) = ego -y, camera y (down) = ego -z, camera z (forward) = ego +x. Columns are the camera axes
# written in ego coordinates.
CAMERA_TO_EGO_AXES = np.array(
    [
        [0.0, 0.0, 1.0],
        [-1.0, 0.0, 0.0],
        [0.0, -1.0, 0.0],
    ]
)


def rot_z(angle: float | np.ndarray) -> np.ndarray:
    """Rotation about +z (yaw), counter-clockwise. Returns (..., 3, 3)."""
    c, s = np.cos(angle), np.sin(angle)
    z, o = np.zeros_like(c), np.ones_like(c)
    return np.stack([np.stack([c, -s, z], -1), np.stack([s, c, z], -1), np.stack([z, z, o], -1)], -2)


def rot_y(angle: float | np.ndarray) -> np.ndarray:
    """Rotation about +y. In the ego frame a positive angle pitches the x axis down (nose down)."""
    c, s = np.cos(angle), np.sin(angle)
    z, o = np.zeros_like(c), np.ones_like(c)
    return np.stack([np.stack([c, z, s], -1), np.stack([z, o, z], -1), np.stack([-s, z, c], -1)], -2)


def rot_x(angle: float | np.ndarray) -> np.ndarray:
    """Rotation about +x (roll)."""
    c, s = np.cos(angle), np.sin(angle)
    z, o = np.zeros_like(c), np.ones_like(c)
    return np.stack([np.stack([o, z, z], -1), np.stack([z, c, -s], -1), np.stack([z, s, c], -1)], -2)


def mounting_rotation(yaw_deg: float, pitch_deg: float = 0.0, roll_deg: float = 0.0) -> np.ndarray:
    """Camera -> ego rotation of a camera mounted with the given yaw/pitch/roll.

    ``yaw_deg`` turns the optical axis left (counter-clockwise from above); ``pitch_deg`` > 0 tilts it down
    towards the ground; ``roll_deg`` rotates the camera about its optical axis (positive tips its right side down).
    """
    yaw, pitch, roll = np.deg2rad([yaw_deg, pitch_deg, roll_deg])
    # Intrinsic rotations in the ego frame: yaw about z, then pitch about the (rotated) y, then roll about x.
    mount = rot_z(yaw) @ rot_y(pitch) @ rot_x(roll)
    return mount @ CAMERA_TO_EGO_AXES


def make_transform(rotation: np.ndarray, translation: np.ndarray | list[float]) -> np.ndarray:
    """4x4 homogeneous transform from a 3x3 rotation and a translation."""
    out = np.eye(4)
    out[:3, :3] = rotation
    out[:3, 3] = np.asarray(translation, dtype=np.float64)
    return out


def camera_extrinsics(position: list[float] | np.ndarray, yaw_deg: float, pitch_deg: float = 0.0,
                      roll_deg: float = 0.0) -> np.ndarray:
    """Camera -> ego 4x4 for a camera at ``position`` (ego frame) with the given mounting angles."""
    return make_transform(mounting_rotation(yaw_deg, pitch_deg, roll_deg), position)


def invert_rigid(transform: np.ndarray) -> np.ndarray:
    """Inverse of rigid 4x4 transforms (..., 4, 4) without a general matrix inverse."""
    rot = transform[..., :3, :3]
    trans = transform[..., :3, 3]
    out = np.zeros_like(transform)
    rot_t = np.swapaxes(rot, -1, -2)
    out[..., :3, :3] = rot_t
    out[..., :3, 3] = -(rot_t @ trans[..., None])[..., 0]
    out[..., 3, 3] = 1.0
    return out


def transform_points(transform: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 transform to points (..., 3)."""
    return points @ transform[:3, :3].T + transform[:3, 3]


def intrinsics_from_fov(hfov_deg: float, width: int, height: int,
                        principal: tuple[float, float] = (0.5, 0.5)) -> np.ndarray:
    """Pinhole intrinsics with square pixels from a horizontal field of view.

    Args:
        hfov_deg: horizontal field of view in degrees.
        width, height: image size in pixels.
        principal: principal point as fractions of (width, height); (0.5, 0.5) is the image centre.
    """
    if not 0.0 < hfov_deg < 180.0:
        raise ValueError(f"hfov_deg must be in (0, 180) for a pinhole camera, found {hfov_deg}")
    focal = 0.5 * width / np.tan(np.deg2rad(hfov_deg) / 2.0)
    return np.array(
        [[focal, 0.0, principal[0] * width], [0.0, focal, principal[1] * height], [0.0, 0.0, 1.0]]
    )


def quaternion_to_rotation(q: np.ndarray | list[float]) -> np.ndarray:
    """Rotation matrices (..., 3, 3) from quaternions (..., 4) in ``[w, x, y, z]`` order (nuScenes / pyquaternion)."""
    q = np.asarray(q, dtype=np.float64)
    w, x, y, z = np.moveaxis(q / np.linalg.norm(q, axis=-1, keepdims=True), -1, 0)
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ]
    return np.stack([np.stack(r, axis=-1) for r in rows], axis=-2)


def rotation_to_quaternion(rot: np.ndarray) -> np.ndarray:
    """Unit quaternion ``[w, x, y, z]`` (w >= 0) of a rotation matrix."""
    m = np.asarray(rot, dtype=np.float64)
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    if trace > 0:
        s = 2.0 * np.sqrt(trace + 1.0)
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [(m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s]
    else:
        s = 2.0 * np.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s]
    q = np.asarray(q)
    return q if q[0] >= 0 else -q


def yaw_of_rotation(rot: np.ndarray) -> float:
    """Yaw (about +z) of a rotation, i.e. the heading of its x axis projected on the ground plane."""
    return float(np.arctan2(rot[1, 0], rot[0, 0]))


def wrap_angle(angle: np.ndarray | float) -> np.ndarray | float:
    """Wrap angles to [-pi, pi)."""
    out = (np.asarray(angle) + np.pi) % (2 * np.pi) - np.pi
    # Just below -pi, the modulo rounds up to 2 pi: the result would be pi, outside the range. ([()]: a scalar in,
    # a scalar out)
    return np.where(out >= np.pi, out - 2 * np.pi, out)[()]
