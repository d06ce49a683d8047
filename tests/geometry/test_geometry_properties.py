"""Property tests (hypothesis) for projection, boxes, polylines and rotations on random cameras."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from visionpilot.geometry.boxes import box_corners, project_box_2d
from visionpilot.geometry.camera import in_image, project_points
from visionpilot.geometry.frames import (
    camera_extrinsics,
    intrinsics_from_fov,
    invert_rigid,
    quaternion_to_rotation,
    rotation_to_quaternion,
    transform_points,
)
from visionpilot.geometry.polylines import project_polyline

FAST = settings(max_examples=60, deadline=None)


def _f(lo, hi):
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


@st.composite
def cameras(draw):
    """A random pinhole camera on a car: (intrinsics, extrinsics, (height, width))."""
    width, height = draw(st.integers(64, 1920)), draw(st.integers(64, 1080))
    k = intrinsics_from_fov(draw(_f(20.0, 150.0)), width, height, (draw(_f(0.2, 0.8)), draw(_f(0.2, 0.8))))
    pos = [draw(_f(-2.0, 4.0)), draw(_f(-1.0, 1.0)), draw(_f(0.3, 2.5))]
    e = camera_extrinsics(pos, draw(_f(-180.0, 180.0)), draw(_f(-30.0, 30.0)), draw(_f(-10.0, 10.0)))
    return k, e, (height, width)


@FAST
@given(cam=cameras(), z=_f(0.2, 200.0), x_over_z=_f(-2.0, 2.0), y_over_z=_f(-2.0, 2.0))
def test_project_then_back_project_recovers_point(cam, z, x_over_z, y_over_z):
    """An ego point in front of the camera, projected then lifted back with its depth (p_cam = depth * K^-1 [u, v, 1]),
    is the same point; the reported depth is its distance along the optical axis."""
    k, e, _ = cam
    p_ego = transform_points(e, np.array([x_over_z * z, y_over_z * z, z]))
    uv, depth, valid = project_points(p_ego, k, e)
    assert valid
    np.testing.assert_allclose(depth, z, rtol=1e-9)
    back = transform_points(e, depth * (np.linalg.inv(k) @ np.array([uv[0], uv[1], 1.0])))
    np.testing.assert_allclose(back, p_ego, atol=1e-8 * max(1.0, z))


@FAST
@given(cam=cameras(), cx=_f(-20.0, 20.0), cy=_f(-5.0, 5.0), cz=_f(-5.0, 40.0), length=_f(0.3, 12.0),
       width=_f(0.3, 3.0), height=_f(0.3, 4.0), yaw=_f(-np.pi, np.pi))
def test_box_bounds_contain_visible_corners(cam, cx, cy, cz, length, width, height, yaw):
    """The 2D bounds of a random box lie in the image, and contain the projection of every corner that is in front
    of the camera and inside the image (such a corner also makes the box visible). Box centres are drawn in the
    camera frame (mostly in front, some straddling the near plane or behind), then moved to the ego frame."""
    k, e, (img_h, img_w) = cam
    center, size = transform_points(e, np.array([cx, cy, cz])), np.array([length, width, height])
    boxes, visible = project_box_2d(center, size, yaw, k, e, (img_h, img_w))
    x1, y1, x2, y2 = boxes[0]
    uv, _, valid = project_points(box_corners(center, size, yaw), k, e)
    strictly_in = valid & (uv[:, 0] > 0) & (uv[:, 0] < img_w) & (uv[:, 1] > 0) & (uv[:, 1] < img_h)
    if strictly_in.any():
        assert visible[0]
    if visible[0]:
        assert 0 <= x1 < x2 <= img_w and 0 <= y1 < y2 <= img_h
        tol = 1e-6 * max(img_w, img_h)
        seen = uv[valid & in_image(uv, (img_h, img_w))]
        assert (seen[:, 0] >= x1 - tol).all() and (seen[:, 0] <= x2 + tol).all()
        assert (seen[:, 1] >= y1 - tol).all() and (seen[:, 1] <= y2 + tol).all()
    else:
        assert boxes[0].tolist() == [0, 0, 0, 0]


@FAST
@given(cam=cameras(), xyz=st.lists(st.tuples(_f(-30.0, 30.0), _f(-5.0, 5.0), _f(-10.0, 60.0)), min_size=2, max_size=8))
def test_polyline_pieces_lie_in_image_and_on_projections(cam, xyz):
    """Every point of every projected piece is inside [0, W] x [0, H]; the interior points of a piece (those not
    created by clipping) are the direct projections of input vertices that are in front of the camera. Vertices
    are drawn in the camera frame (some behind it) and moved to the ego frame."""
    k, e, (img_h, img_w) = cam
    pts = transform_points(e, np.array(xyz))
    pieces = project_polyline(pts, k, e, (img_h, img_w))
    uv, _, valid = project_points(pts, k, e)
    direct = uv[valid]
    tol = 1e-6 * max(img_w, img_h)
    for piece in pieces:
        assert len(piece) >= 2
        assert (piece[:, 0] >= -tol).all() and (piece[:, 0] <= img_w + tol).all()
        assert (piece[:, 1] >= -tol).all() and (piece[:, 1] <= img_h + tol).all()
        for p in piece[1:-1]:
            assert np.abs(direct - p).max(axis=1).min() < tol


@FAST
@given(q=st.lists(_f(-1.0, 1.0), min_size=4, max_size=4).filter(lambda v: np.linalg.norm(v) > 0.1))
def test_quaternion_round_trip(q):
    """quaternion -> rotation is orthonormal with det +1, and rotation -> quaternion gives it back up to sign."""
    q = np.asarray(q) / np.linalg.norm(q)
    rot = quaternion_to_rotation(q)
    np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-12)
    assert abs(np.linalg.det(rot) - 1.0) < 1e-12
    back = rotation_to_quaternion(rot)
    assert back[0] >= 0
    assert min(np.abs(back - q).max(), np.abs(back + q).max()) < 1e-9


@FAST
@given(cam=cameras())
def test_invert_rigid_is_inverse(cam):
    """invert_rigid(E) @ E = I and agrees with the general inverse for random camera extrinsics."""
    _, e, _ = cam
    np.testing.assert_allclose(invert_rigid(e) @ e, np.eye(4), atol=1e-12)
    np.testing.assert_allclose(invert_rigid(e), np.linalg.inv(e), atol=1e-12)
