"""Pinhole projection and clipping helpers against hand-computed cases.

Unless said otherwise the camera has hfov 90 deg on an 800x600 image: f = 400 / tan(45) = 400, principal point
(cx, cy) = (400, 300), so u = 400 * X / Z + 400 and v = 400 * Y / Z + 300 for a camera-frame point (X, Y, Z).
"""

import numpy as np
import pytest

from visionpilot.geometry.camera import (
    clip_polygon_near,
    clip_segments_near,
    clip_segments_rect,
    ego_to_camera,
    in_image,
    project_points,
)
from visionpilot.geometry.frames import camera_extrinsics, intrinsics_from_fov

K = intrinsics_from_fov(90.0, 800, 600)
SIZE = (600, 800)  # (height, width)
FRONT = camera_extrinsics([1.5, 0.0, 1.4], 0.0)  # 1.5 m ahead of the rear axle, 1.4 m up, looking forward


def test_point_ahead_at_camera_height_hits_principal_point():
    """10 m straight ahead at the camera's height: camera (0, 0, 10) -> (cx, cy) = (400, 300), depth 10."""
    uv, depth, valid = project_points(np.array([11.5, 0.0, 1.4]), K, FRONT)
    np.testing.assert_allclose(uv, [400, 300], atol=1e-9)
    assert depth == pytest.approx(10.0)
    assert valid


def test_point_ahead_and_left_by_hand():
    """10 m ahead, 1 m left (ego y = +1): camera X = -1 (x is right) -> u = 400 * -1 / 10 + 400 = 360, v = 300."""
    uv, depth, valid = project_points(np.array([11.5, 1.0, 1.4]), K, FRONT)
    np.testing.assert_allclose(uv, [360, 300], atol=1e-9)
    assert depth == pytest.approx(10.0) and valid


def test_point_below_camera_by_hand():
    """10 m ahead, 1 m below the camera (ego z = 0.4): camera Y = +1 (y is down) -> v = 400 * 1 / 10 + 300 = 340."""
    uv, _, valid = project_points(np.array([11.5, 0.0, 0.4]), K, FRONT)
    np.testing.assert_allclose(uv, [400, 340], atol=1e-9)
    assert valid


def test_point_behind_camera_is_invalid_and_not_mirrored():
    """10 m behind and 1 m left: camera (-1, 0, -10). Dividing by the negative depth would mirror it to
    u = 400 * -1 / -10 + 400 = 440 *inside* the image; it must be flagged invalid and not land there."""
    uv, depth, valid = project_points(np.array([-8.5, 1.0, 1.4]), K, FRONT)
    assert depth == pytest.approx(-10.0)
    assert not valid
    assert abs(uv[0] - 440.0) > 1.0


def test_near_plane_threshold():
    """valid is depth >= near: 0.2 m in front is valid with near 0.1 and invalid with near 0.5."""
    p = np.array([1.7, 0.0, 1.4])  # camera depth 0.2
    assert project_points(p, K, FRONT)[2]
    assert not project_points(p, K, FRONT, near=0.5)[2]


def test_side_camera_by_hand():
    """Camera at (1, 0.9, 1) looking left (yaw 90): right = ego +x, down = ego -z, axis = ego +y.
    Ego point (2, 10.9, 0.5) is offset (1, 10, -0.5) -> camera (X, Y, Z) = (1, 0.5, 10)
    -> u = 400 * 1 / 10 + 400 = 440, v = 400 * 0.5 / 10 + 300 = 320."""
    ext = camera_extrinsics([1.0, 0.9, 1.0], 90.0)
    np.testing.assert_allclose(ego_to_camera(np.array([2.0, 10.9, 0.5]), ext), [1, 0.5, 10], atol=1e-12)
    uv, depth, valid = project_points(np.array([2.0, 10.9, 0.5]), K, ext)
    np.testing.assert_allclose(uv, [440, 320], atol=1e-9)
    assert depth == pytest.approx(10.0) and valid


def test_front_right_camera_axis_point():
    """A point 10 m along the -55 deg camera's axis, (cos55, -sin55, 0) * 10 from it, projects to (400, 300)."""
    pos = np.array([1.52, -0.49, 1.51])
    ext = camera_extrinsics(pos, -55.0)
    a = np.deg2rad(-55.0)
    uv, depth, valid = project_points(pos + 10 * np.array([np.cos(a), np.sin(a), 0.0]), K, ext)
    np.testing.assert_allclose(uv, [400, 300], atol=1e-9)
    assert depth == pytest.approx(10.0) and valid


def test_pitched_camera_by_hand():
    """Camera 2 m up pitched 45 deg down. Ground point 2 m ahead lies on the optical axis -> (400, 300), depth
    2*sqrt2. A point 4 m ahead at camera height: Z = axis . (4,0,0) = 4 cos45 = 2 sqrt2, Y = down . (4,0,0) =
    -4 sin45 = -2 sqrt2 -> v = 300 + 400 * (-1) = -100 (above the image: the horizon is 45 deg above the axis)."""
    ext = camera_extrinsics([0.0, 0.0, 2.0], 0.0, pitch_deg=45.0)
    uv, depth, valid = project_points(np.array([[2.0, 0.0, 0.0], [4.0, 0.0, 2.0]]), K, ext)
    np.testing.assert_allclose(uv, [[400, 300], [400, -100]], atol=1e-9)
    np.testing.assert_allclose(depth, [2 * np.sqrt(2), 2 * np.sqrt(2)])
    assert valid.all()


def test_in_image_closed_rectangle():
    """The image spans the closed rectangle [0, W] x [0, H]: corners are in, anything past them is out."""
    uv = np.array([[0, 0], [800, 600], [400, 300], [-0.01, 300], [800.01, 300], [400, -0.01], [400, 600.01]])
    np.testing.assert_array_equal(in_image(uv, SIZE), [True, True, True, False, False, False, False])


def test_clip_segments_near_by_hand():
    """Segment (0,0,-1) -> (2,0,3) crosses z = 0.1 at t = 1.1 / 4 = 0.275 -> (0.55, 0, 0.1); a segment fully
    behind is dropped; one fully in front is untouched."""
    a = np.array([[0.0, 0, -1], [0, 0, -2], [1, 1, 1]])
    b = np.array([[2.0, 0, 3], [0, 0, -1], [2, 2, 2]])
    a_c, b_c, keep, a_moved, b_moved = clip_segments_near(a, b, 0.1)
    np.testing.assert_array_equal(keep, [True, False, True])
    np.testing.assert_allclose(a_c[0], [0.55, 0, 0.1])
    np.testing.assert_allclose(b_c[0], b[0])
    np.testing.assert_array_equal(a_moved, [True, False, False])
    np.testing.assert_array_equal(b_moved, [False, False, False])
    np.testing.assert_allclose(a_c[2], a[2])
    np.testing.assert_allclose(b_c[2], b[2])


def test_clip_segments_rect_by_hand():
    """10x10 rectangle. (-5,5)->(5,5) enters at x=0 -> (0,5); (2,2)->(8,8) stays; (-5,-5)->(-1,20) misses;
    (5,-5)->(5,15) is cut at both ends -> (5,0)->(5,10)."""
    p = np.array([[-5.0, 5], [2, 2], [-5, -5], [5, -5]])
    q = np.array([[5.0, 5], [8, 8], [-1, 20], [5, 15]])
    pc, qc, keep, p_moved, q_moved = clip_segments_rect(p, q, 10, 10)
    np.testing.assert_array_equal(keep, [True, True, False, True])
    np.testing.assert_allclose(pc[[0, 1, 3]], [[0, 5], [2, 2], [5, 0]])
    np.testing.assert_allclose(qc[[0, 1, 3]], [[5, 5], [8, 8], [5, 10]])
    np.testing.assert_array_equal(p_moved, [True, False, False, True])
    np.testing.assert_array_equal(q_moved, [False, False, False, True])


def test_clip_polygon_near_by_hand():
    """Square in the x-z plane, z from -1 to 1, clipped at z = 0.1: keeps the part with z >= 0.1 (a rectangle)."""
    sq = np.array([[-1.0, 0, -1], [1, 0, -1], [1, 0, 1], [-1, 0, 1]])
    out = clip_polygon_near(sq, 0.1)
    assert out[:, 2].min() == pytest.approx(0.1)
    assert len(out) == 4
    expected = {(1.0, 0.1), (1.0, 1.0), (-1.0, 1.0), (-1.0, 0.1)}
    assert {(round(x, 9), round(z, 9)) for x, _, z in out} == expected
    assert len(clip_polygon_near(sq - [0, 0, 5], 0.1)) == 0  # fully behind
