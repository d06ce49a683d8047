"""Frames and rigid transforms against hand-computed cases.

Reminder of the conventions (frames.py): ego x forward, y left, z up; camera x right, y down, z forward.
The camera->ego rotation's columns are the camera's right, down and optical axes written in ego coordinates.
"""

import numpy as np
import pytest

from visionpilot.geometry.frames import (
    CAMERA_TO_EGO_AXES,
    camera_extrinsics,
    intrinsics_from_fov,
    invert_rigid,
    mounting_rotation,
    quaternion_to_rotation,
    rot_z,
    rotation_to_quaternion,
    transform_points,
    wrap_angle,
    yaw_of_rotation,
)

C45 = np.cos(np.deg2rad(45.0))
C55, S55 = np.cos(np.deg2rad(55.0)), np.sin(np.deg2rad(55.0))  # 0.573576, 0.819152
C10, S10 = np.cos(np.deg2rad(10.0)), np.sin(np.deg2rad(10.0))
C30, S30 = np.cos(np.deg2rad(30.0)), 0.5


def _axes(rot):
    """(right, down, optical) camera axes in ego coordinates: the columns of a camera->ego rotation."""
    return rot[:, 0], rot[:, 1], rot[:, 2]


@pytest.mark.parametrize(
    ("yaw", "right", "down", "forward"),
    [
        # Looking ahead: optical axis = ego +x, right = ego -y (y is left), down = ego -z.
        (0.0, [0, -1, 0], [0, 0, -1], [1, 0, 0]),
        # Yaw +90 turns the camera to look left (ego +y); its right then points to the front of the car (ego +x).
        (90.0, [1, 0, 0], [0, 0, -1], [0, 1, 0]),
        # Looking backwards: optical axis ego -x, right = ego +y (the car's left side).
        (180.0, [0, 1, 0], [0, 0, -1], [-1, 0, 0]),
        # Front-right camera (nuScenes CAM_FRONT_RIGHT): axis (cos55, -sin55, 0); right is the axis turned 90 deg
        # clockwise from above: (cos(-145), sin(-145)) = (-sin55, -cos55).
        (-55.0, [-S55, -C55, 0], [0, 0, -1], [C55, -S55, 0]),
    ],
)
def test_mounting_rotation_yaw_axes(yaw, right, down, forward):
    """For a level camera with a given yaw, its right/down/optical axes point where they should in the ego frame."""
    r, d, f = _axes(mounting_rotation(yaw))
    np.testing.assert_allclose(r, right, atol=1e-12)
    np.testing.assert_allclose(d, down, atol=1e-12)
    np.testing.assert_allclose(f, forward, atol=1e-12)


def test_mounting_rotation_pitch_down():
    """Pitch +10 deg tilts the optical axis down: (cos10, 0, -sin10); down axis leans back: (-sin10, 0, -cos10)."""
    r, d, f = _axes(mounting_rotation(0.0, pitch_deg=10.0))
    np.testing.assert_allclose(f, [C10, 0, -S10], atol=1e-12)
    np.testing.assert_allclose(d, [-S10, 0, -C10], atol=1e-12)
    np.testing.assert_allclose(r, [0, -1, 0], atol=1e-12)  # pitch does not move the right axis


def test_mounting_rotation_yaw_then_pitch():
    """Pitch is applied in the yawed frame: yaw 90 + pitch 30 looks left *and* down: (0, cos30, -sin30)."""
    r, _, f = _axes(mounting_rotation(90.0, pitch_deg=30.0))
    np.testing.assert_allclose(f, [0, C30, -S30], atol=1e-12)
    np.testing.assert_allclose(r, [1, 0, 0], atol=1e-12)


def test_mounting_rotation_roll_tips_right_side_down():
    """Roll +90 about the optical axis: the camera's right points to the ground (-z), its down to ego left (+y)."""
    r, d, f = _axes(mounting_rotation(0.0, roll_deg=90.0))
    np.testing.assert_allclose(r, [0, 0, -1], atol=1e-12)
    np.testing.assert_allclose(d, [0, 1, 0], atol=1e-12)
    np.testing.assert_allclose(f, [1, 0, 0], atol=1e-12)


@pytest.mark.parametrize(("yaw", "pitch", "roll"), [(0, 0, 0), (90, 0, 0), (-55, 5, 0), (140, 5, -3), (180, 15, 2)])
def test_mounting_rotation_is_proper_rotation(yaw, pitch, roll):
    """R^T R = I and det R = +1 (right-handed camera frame) for every mounting."""
    rot = mounting_rotation(yaw, pitch, roll)
    np.testing.assert_allclose(rot.T @ rot, np.eye(3), atol=1e-12)
    assert np.linalg.det(rot) == pytest.approx(1.0)


def test_camera_extrinsics_translation_and_axis():
    """E maps the camera origin to its position and the camera point (0, 0, 2) to position + 2 * optical axis."""
    pos = np.array([1.52, -0.49, 1.51])
    ext = camera_extrinsics(pos, -55.0)
    np.testing.assert_allclose(ext[3], [0, 0, 0, 1])
    np.testing.assert_allclose(transform_points(ext, np.zeros(3)), pos)
    # 2 m along the optical axis (cos55, -sin55, 0) -> (1.52 + 1.147153, -0.49 - 1.638304, 1.51)
    np.testing.assert_allclose(transform_points(ext, np.array([0.0, 0.0, 2.0])), [2.667153, -2.128304, 1.51],
                               atol=1e-6)


def test_invert_rigid_matches_linalg_inv():
    """invert_rigid agrees with np.linalg.inv for single and batched rigid transforms."""
    exts = np.stack([camera_extrinsics([1.0, 2.0, 3.0], 37.0, 4.0, -2.0), camera_extrinsics([-0.95, 0, 1], 180, 15)])
    np.testing.assert_allclose(invert_rigid(exts[0]), np.linalg.inv(exts[0]), atol=1e-12)
    np.testing.assert_allclose(invert_rigid(exts), np.linalg.inv(exts), atol=1e-12)
    np.testing.assert_allclose(invert_rigid(exts) @ exts, np.broadcast_to(np.eye(4), (2, 4, 4)), atol=1e-12)


def test_transform_points_batched_points():
    """A translation + yaw 90 transform: (1, 0, 0) -> R (0, 1, 0) + t, for points with leading batch dims."""
    tf = np.eye(4)
    tf[:3, :3] = rot_z(np.pi / 2)
    tf[:3, 3] = [10.0, 20.0, 30.0]
    pts = np.array([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])  # (1, 2, 3)
    # rot_z(90): x -> y, y -> -x
    np.testing.assert_allclose(transform_points(tf, pts), [[[10, 21, 30], [9, 20, 30]]], atol=1e-12)


@pytest.mark.parametrize(
    ("quat", "expected"),
    [
        # 90 deg about z: [cos45, 0, 0, sin45] -> R = rot_z(90) = [[0,-1,0],[1,0,0],[0,0,1]].
        ([C45, 0, 0, C45], [[0, -1, 0], [1, 0, 0], [0, 0, 1]]),
        # 180 deg about x: [0, 1, 0, 0] -> diag(1, -1, -1).
        ([0, 1, 0, 0], [[1, 0, 0], [0, -1, 0], [0, 0, -1]]),
        # 120 deg about (1,1,1)/sqrt3: [cos60, sin60/sqrt3 * (1,1,1)] = [.5,.5,.5,.5]; cycles x->y->z->x.
        ([0.5, 0.5, 0.5, 0.5], [[0, 0, 1], [1, 0, 0], [0, 1, 0]]),
        # nuScenes-style front camera (camera->ego) [0.5, -0.5, 0.5, -0.5]: R00 = 1-2(y^2+z^2) = 0,
        # R02 = 2(xz+yw) = 1, R10 = 2(xy+zw) = -1, R21 = 2(yz+xw) = -1 -> exactly our camera axes.
        ([0.5, -0.5, 0.5, -0.5], CAMERA_TO_EGO_AXES),
        # Not normalised: scaled identity quaternion is still the identity.
        ([2.0, 0, 0, 0], np.eye(3)),
    ],
)
def test_quaternion_to_rotation_known(quat, expected):
    """quaternion_to_rotation reads [w, x, y, z] (nuScenes order) and normalises its input."""
    np.testing.assert_allclose(quaternion_to_rotation(quat), expected, atol=1e-12)


def test_quaternion_order_is_wxyz_not_xyzw():
    """The same 4 numbers read as [x, y, z, w] would be a different rotation: [cos45, 0, 0, sin45] is NOT about x."""
    rot = quaternion_to_rotation([C45, 0, 0, C45])
    # Rotating ego x by +90 about z gives ego y; a quaternion read in xyzw order would leave x near x.
    np.testing.assert_allclose(rot @ [1, 0, 0], [0, 1, 0], atol=1e-12)


def test_quaternion_to_rotation_batched():
    """A (N, 4) batch of quaternions gives (N, 3, 3), each equal to the single-quaternion result."""
    quats = np.array([[C45, 0, 0, C45], [0, 1, 0, 0], [0.5, 0.5, 0.5, 0.5], [2.0, 0, 0, 0]])
    out = quaternion_to_rotation(quats)
    assert out.shape == (4, 3, 3)
    for q, rot in zip(quats, out):
        np.testing.assert_allclose(rot, quaternion_to_rotation(q), atol=1e-12)


@pytest.mark.parametrize(
    "quat",
    [
        [C45, 0, 0, C45],  # trace > 0 branch
        [0, 1, 0, 0],  # 180 about x: trace = -1, m00 largest
        [0, 0, 1, 0],  # 180 about y: m11 largest
        [0, 0, 0, 1],  # 180 about z: m22 largest
        [0.5, -0.5, 0.5, -0.5],
        [0.1, 0.7, -0.2, 0.3],
    ],
)
def test_rotation_to_quaternion_round_trip(quat):
    """rotation_to_quaternion inverts quaternion_to_rotation (unit quaternion, sign fixed so that w >= 0)."""
    q = np.asarray(quat, dtype=float)
    q = q / np.linalg.norm(q)
    q = q if q[0] >= 0 else -q
    np.testing.assert_allclose(rotation_to_quaternion(quaternion_to_rotation(q)), q, atol=1e-12)


def test_intrinsics_from_fov_hand():
    """hfov 90 at width 800: f = 400 / tan(45) = 400; principal at the image centre (400, 300) for 800x600."""
    np.testing.assert_allclose(intrinsics_from_fov(90.0, 800, 600), [[400, 0, 400], [0, 400, 300], [0, 0, 1]],
                               atol=1e-9)


def test_intrinsics_from_fov_principal_fraction():
    """hfov 60 at width 1000: f = 500 / tan(30) = 866.0254; principal (0.5, 0.3) of 1000x400 -> (500, 120)."""
    k = intrinsics_from_fov(60.0, 1000, 400, principal=(0.5, 0.3))
    np.testing.assert_allclose(k, [[866.0254038, 0, 500], [0, 866.0254038, 120], [0, 0, 1]], atol=1e-6)


@pytest.mark.parametrize("hfov", [0.0, 180.0, -10.0, 200.0])
def test_intrinsics_from_fov_rejects_impossible_fov(hfov):
    """A pinhole camera cannot see 0 or >= 180 degrees; the error names the argument."""
    with pytest.raises(ValueError, match="hfov_deg"):
        intrinsics_from_fov(hfov, 800, 600)


def test_yaw_of_rotation_and_wrap_angle():
    """yaw_of_rotation(rot_z(a)) = a; wrap_angle maps to [-pi, pi): 3pi/2 -> -pi/2, pi -> -pi."""
    assert yaw_of_rotation(rot_z(0.3)) == pytest.approx(0.3)
    assert yaw_of_rotation(rot_z(-2.5)) == pytest.approx(-2.5)
    np.testing.assert_allclose(wrap_angle(np.array([3 * np.pi / 2, np.pi, -np.pi, 0.1])), [-np.pi / 2, -np.pi, -np.pi, 0.1])


def test_wrap_angle_just_below_minus_pi_stays_in_range():
    """An angle one ulp below -pi wrapped to +pi (the modulo rounded up to 2 pi): outside [-pi, pi)."""
    below = np.nextafter(-np.pi, -np.inf)
    for angle in (below, below - 2 * np.pi, np.array([below, 0.5])):
        wrapped = np.asarray(wrap_angle(angle))
        assert ((wrapped >= -np.pi) & (wrapped < np.pi)).all(), wrapped
    assert wrap_angle(below) == pytest.approx(-np.pi) and isinstance(wrap_angle(0.3), np.floating)
