"""3D boxes and their clipped 2D projections, against hand computations and a brute-force reference.

The camera used by hand: hfov 90 deg on an 800x600 image (f = 400, principal point (400, 300)), at ego (0, 0, 1.5)
looking forward. An ego point (x, y, z) is then camera (X, Y, Z) = (-y, 1.5 - z, x), and
u = 400 * X / Z + 400, v = 400 * Y / Z + 300.
"""

import numpy as np
import pytest

from visionpilot.geometry.boxes import (
    HEX_EDGES,
    HEX_FACES,
    box_corners,
    frustum_corners,
    group_bounds,
    points_in_box,
    project_box_2d,
    project_hexahedra_bounds,
)
from visionpilot.geometry.camera import in_image, project_points
from visionpilot.geometry.frames import camera_extrinsics, intrinsics_from_fov

K = intrinsics_from_fov(90.0, 800, 600)
SIZE = (600, 800)
CAM = camera_extrinsics([0.0, 0.0, 1.5], 0.0)


def _dense_box_points(center, size, yaw, n_grid=25, n_edge=4001):
    """Brute-force sample of a box: a volume grid (surfaces included) plus dense points along its 12 edges.

    The extremes of a convex solid clipped by a plane lie on its edges, so the edge samples make the brute force
    converge fast; the volume grid checks that nothing inside reaches further.
    """
    g = np.linspace(-0.5, 0.5, n_grid)
    local = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3) * size
    c, s = np.cos(yaw), np.sin(yaw)
    vol = np.stack([c * local[:, 0] - s * local[:, 1], s * local[:, 0] + c * local[:, 1], local[:, 2]], -1) + center
    corners = box_corners(center, size, yaw)
    t = np.linspace(0.0, 1.0, n_edge)[:, None]
    edges = [corners[a] + t * (corners[b] - corners[a]) for a, b in HEX_EDGES]
    return np.concatenate([vol, *edges])


def _brute_force_bounds(points, intrinsics, extrinsics, image_size, near):
    """min/max of the projections of the sampled points in front of the near plane and inside the image."""
    uv, _, valid = project_points(points, intrinsics, extrinsics, near)
    keep = valid & in_image(uv, image_size)
    return np.concatenate([uv[keep].min(0), uv[keep].max(0)])


def test_box_corners_yawed_by_hand():
    """Centre (10, 2, 1), size (l=4, w=2, h=1.5), yaw 90 deg (heading ego +y). Local corner 0 (front-left,
    bottom) = (+2, +1, -0.75); rotating (x, y) by 90 deg gives (-y, x) = (-1, 2) -> (9, 4, 0.25). Likewise
    front-right (2, -1) -> (1, 2) -> (11, 4); rear-right (-2, -1) -> (1, -2) -> (11, 0); rear-left -> (9, 0).
    Top face: same x, y at z = 1 + 0.75 = 1.75."""
    corners = box_corners(np.array([10.0, 2.0, 1.0]), np.array([4.0, 2.0, 1.5]), np.pi / 2)
    bottom = [[9, 4, 0.25], [11, 4, 0.25], [11, 0, 0.25], [9, 0, 0.25]]
    top = [[9, 4, 1.75], [11, 4, 1.75], [11, 0, 1.75], [9, 0, 1.75]]
    np.testing.assert_allclose(corners, bottom + top, atol=1e-12)


def test_box_corners_batched_shapes_and_edge_lengths():
    """(N, 3) centres/sizes and (N,) yaws give (N, 8, 3); edges 0-1 / 1-2 / 0-4 have length width / length /
    height (0-1 is the front edge, across the width)."""
    centers = np.array([[0.0, 0, 0], [5, -3, 1]])
    sizes = np.array([[4.0, 2, 1.5], [1, 0.6, 1.8]])
    yaws = np.array([0.3, -2.0])
    corners = box_corners(centers, sizes, yaws)
    assert corners.shape == (2, 8, 3)
    for k in range(2):
        edge = corners[k, [1, 2, 4]] - corners[k, [0, 1, 0]]  # edges 0-1, 1-2, 0-4
        np.testing.assert_allclose(np.linalg.norm(edge, axis=1), sizes[k, [1, 0, 2]])
        np.testing.assert_allclose(corners[k].mean(0), centers[k], atol=1e-12)
        # Front face centre = centre + l/2 * heading.
        heading = np.array([np.cos(yaws[k]), np.sin(yaws[k]), 0.0])
        np.testing.assert_allclose(corners[k, [0, 1, 4, 5]].mean(0), centers[k] + sizes[k, 0] / 2 * heading)


@pytest.mark.parametrize(
    ("face", "outward"),
    # HEX_FACES rows: bottom, top, front, rear, left, right (yaw 0: front = +x, left = +y).
    [(0, [0, 0, -1]), (1, [0, 0, 1]), (2, [1, 0, 0]), (3, [-1, 0, 0]), (4, [0, 1, 0]), (5, [0, -1, 0])],
)
def test_hex_faces_wind_counter_clockwise_from_outside(face, outward):
    """Each face's right-hand normal cross(f1 - f0, f3 - f0) (and cross(f1 - f0, f2 - f1)) points out of the
    box, along the face's documented direction; renderers cull back faces with it."""
    corners = box_corners(np.zeros(3), np.array([4.0, 2.0, 1.5]), 0.0)
    p = corners[HEX_FACES[face]]
    for normal in (np.cross(p[1] - p[0], p[3] - p[0]), np.cross(p[1] - p[0], p[2] - p[1])):
        np.testing.assert_allclose(normal / np.linalg.norm(normal), outward, atol=1e-12)


def test_hex_side_faces_edge_directions():
    """On the four side faces, edge 0->1 is horizontal (along the bottom) and edge 0->3 points straight up; the
    planar face parametrisation (a along 0->1, b along 0->3) of decals relies on it."""
    corners = box_corners(np.zeros(3), np.array([4.0, 2.0, 1.5]), 0.0)
    for face in HEX_FACES[2:]:
        p = corners[face]
        assert p[0, 2] == p[1, 2] == -0.75
        np.testing.assert_allclose(p[3] - p[0], [0, 0, 1.5])


def test_frustum_corners_scales_top_face():
    """top_scale 1 gives the box; top_scale 0.5 halves the top face about its centre (length 4 -> 2)."""
    c, s = np.array([1.0, 2.0, 3.0]), np.array([4.0, 2.0, 1.0])
    np.testing.assert_allclose(frustum_corners(c, s, 0.7, 1.0), box_corners(c, s, 0.7))
    f = frustum_corners(c, s, 0.0, 0.5)
    np.testing.assert_allclose(f[:4], box_corners(c, s, 0.0)[:4])
    np.testing.assert_allclose(f[4], [1 + 1.0, 2 + 0.5, 3.5])  # (l/4, w/4, h/2) from the centre


def test_points_in_box():
    """Centre and points just inside the corners are inside; points just beyond the yawed box's front (y = 4),
    side (x = 11) and top (z = 1.75) are outside (box from the hand case above: x in [9, 11], y in [0, 4])."""
    c, s, yaw = np.array([10.0, 2.0, 1.0]), np.array([4.0, 2.0, 1.5]), np.pi / 2
    near_corners = c + 0.999 * (box_corners(c, s, yaw) - c)
    pts = np.concatenate([c[None], near_corners, [[10.0, 4.01, 1.0], [11.01, 2.0, 1.0], [10, 2, 1.76]]])
    np.testing.assert_array_equal(points_in_box(pts, c, s, yaw), [True] * 9 + [False] * 3)


def test_project_box_straight_ahead_by_hand():
    """Box centre (12, 1, 1), size (4, 2, 2), yaw 0: x in [10, 14], y in [0, 2], z in [0, 2].
    Camera coordinates: X = -y in [-2, 0], Y = 1.5 - z in [-0.5, 1.5], Z = x in [10, 14].
    Corner projections: the extremes come from the near face Z = 10:
      u: X = -2 -> 400 * -2 / 10 + 400 = 320;   X = 0 -> 400 (any Z)
      v: Y = -0.5 -> 400 * -0.5 / 10 + 300 = 280;   Y = 1.5 -> 400 * 1.5 / 10 + 300 = 360
    (the far face Z = 14 gives u in [342.9, 400], v in [285.7, 342.9], inside)."""
    boxes, visible = project_box_2d(np.array([12.0, 1.0, 1.0]), np.array([4.0, 2.0, 2.0]), 0.0, K, CAM, SIZE)
    assert visible.tolist() == [True]
    np.testing.assert_allclose(boxes, [[320, 280, 400, 360]], atol=1e-9)


def test_project_box_equals_corner_bounds_when_fully_visible():
    """For a yawed box fully in front and inside the image, the bounds are exactly the min/max of its 8 corners."""
    c, s, yaw = np.array([15.0, -1.0, 0.8]), np.array([4.5, 1.9, 1.6]), 0.6
    uv, _, valid = project_points(box_corners(c, s, yaw), K, CAM)
    assert valid.all() and in_image(uv, SIZE).all()
    boxes, visible = project_box_2d(c, s, yaw, K, CAM, SIZE)
    assert visible[0]
    np.testing.assert_allclose(boxes[0], np.concatenate([uv.min(0), uv.max(0)]), atol=1e-9)


def test_project_box_partly_outside_image_by_hand():
    """Boxes of size (4, 2, 2) cut by the image border, all yaw 0 (Z = x in [8, 12] for centre x = 10):
    (a) centre (10, 10, 1.5): X in [-11, -9], Y in [-1, 1]. u from 400*(-11/8)+400 = -150 to 400*(-9/12)+400 = 100
        -> x1 = 0, x2 = 100. Inside the image (u >= 0 <=> -X <= Z, i.e. y <= x) the top is reached at y = x = 9
        (nearest Z with Y = -1): v = 300 - 400/9 = 255.56, the bottom at v = 300 + 400/9 = 344.44. The corner at
        Z = 8 (v = 250 / 350) is outside the image and must not widen the box.
    (b) centre (10, -10, 1.5): mirror image of (a): u from 700 to 950 -> x2 = 800; v again 255.56 .. 344.44.
    (c) centre (10, 0, -4.5): z in [-5.5, -3.5] -> Y in [5, 7], X in [-1, 1]: v from 400*5/12+300 = 466.67 to
        400*7/8+300 = 650 -> y2 = 600; rows v <= 600 need Y/Z <= 0.75, the widest u there is at Z = 8:
        u = 400 +- 400/8 = 350 .. 450.
    (d) centre (10, 30, 1.5): u <= 400*(-29/12)+400 = -566.7 -> entirely left of the image: not visible."""
    centers = np.array([[10.0, 10, 1.5], [10, -10, 1.5], [10, 0, -4.5], [10, 30, 1.5]])
    sizes = np.tile([4.0, 2.0, 2.0], (4, 1))
    boxes, visible = project_box_2d(centers, sizes, np.zeros(4), K, CAM, SIZE)
    np.testing.assert_array_equal(visible, [True, True, True, False])
    np.testing.assert_allclose(boxes[0], [0, 300 - 400 / 9, 100, 300 + 400 / 9], atol=1e-6)
    np.testing.assert_allclose(boxes[1], [700, 300 - 400 / 9, 800, 300 + 400 / 9], atol=1e-6)
    np.testing.assert_allclose(boxes[2], [350, 400 * 5 / 12 + 300, 450, 600], atol=1e-6)
    np.testing.assert_allclose(boxes[3], [0, 0, 0, 0])


@pytest.mark.parametrize(
    ("center", "size", "yaw", "ext"),
    [
        # A car alongside, front camera at (1.5, 0, 1.4): it straddles the near plane and leaves the image.
        ([1.5, 2.5, 0.75], [5.0, 2.0, 1.5], 0.1, camera_extrinsics([1.5, 0.0, 1.4], 0.0)),
        # A truck passing the front-left corner of a side camera (yaw 60, pitch 5).
        ([3.0, 4.0, 1.6], [10.0, 2.5, 3.2], 0.35, camera_extrinsics([1.1, 0.9, 1.25], 60.0, 5.0)),
        # A box off the image corner, fully in front: its projection cuts the top-left corner diagonally.
        ([9.0, 9.5, 5.5], [6.0, 1.0, 1.0], 0.9, CAM),
    ],
)
def test_project_box_matches_brute_force_in_image(center, size, yaw, ext):
    """Boxes cut by the near plane and/or the image border: the bounds equal the min/max of densely sampled points
    of the box that are in front of the near plane and inside the image (within 1 px of sampling error)."""
    center, size = np.asarray(center), np.asarray(size)
    boxes, visible = project_box_2d(center, size, yaw, K, ext, SIZE)
    expected = _brute_force_bounds(_dense_box_points(center, size, yaw), K, ext, SIZE, 0.1)
    assert visible[0]
    np.testing.assert_allclose(boxes[0], expected, atol=1.0)


def test_project_box_straddling_near_plane_matches_brute_force():
    """A yawed box cut by the near plane (near = 0.5) in a camera with a huge virtual image (no image clipping):
    the bounds come from the clipped solid. Check against brute force, and that using only the corners in front
    of the plane would be wrong (the part between the front corners and the near plane widens the box)."""
    k_big = np.array([[100.0, 0, 5000], [0, 100.0, 5000], [0, 0, 1]])
    size_big = (10000, 10000)
    near = 0.5
    center, size, yaw = np.array([1.0, 0.3, 1.5]), np.array([4.0, 1.5, 1.0]), np.deg2rad(25.0)
    boxes, visible = project_box_2d(center, size, yaw, k_big, CAM, size_big, near=near)
    pts = _dense_box_points(center, size, yaw, n_edge=20001)
    expected = _brute_force_bounds(pts, k_big, CAM, size_big, near)
    assert visible[0]
    assert boxes[0, 0] > 0 and boxes[0, 2] < 10000  # really not clipped by the virtual image
    np.testing.assert_allclose(boxes[0], expected, atol=0.5)
    uv, _, valid = project_points(box_corners(center, size, yaw), k_big, CAM, near)
    assert 0 < valid.sum() < 8  # really straddling
    corners_only = np.concatenate([uv[valid].min(0), uv[valid].max(0)])
    assert np.abs(corners_only - boxes[0]).max() > 50


def test_box_entirely_behind_camera_is_not_visible():
    """x in [-7, -3] is behind the camera at x = 0. Dividing by the negative depth would mirror it onto the centre
    of the image; it must be reported invisible with zero bounds."""
    boxes, visible = project_box_2d(np.array([-5.0, 0.0, 1.5]), np.array([4.0, 2.0, 1.5]), 0.0, K, CAM, SIZE)
    assert not visible[0]
    np.testing.assert_array_equal(boxes, [[0, 0, 0, 0]])


def test_box_around_the_camera_fills_the_image():
    """A box containing the camera covers the whole field of view: bounds are the full image [0, W] x [0, H]."""
    boxes, visible = project_box_2d(np.array([0.5, 0.0, 1.5]), np.array([4.0, 2.0, 2.0]), 0.0, K, CAM, SIZE)
    assert visible[0]
    np.testing.assert_allclose(boxes[0], [0, 0, 800, 600])


def test_project_hexahedra_bounds_empty_input():
    """No solids in, no boxes out (shapes (0, 4) and (0,))."""
    boxes, visible = project_hexahedra_bounds(np.zeros((0, 8, 3)), K, CAM, SIZE)
    assert boxes.shape == (0, 4) and visible.shape == (0,)


def test_group_bounds_unions_visible_parts():
    """Group 0 = union of (0,0,10,10) and (5,5,20,15) -> (0,0,20,15); group 1 has one visible (100..110) and one
    invisible box (ignored); group 2 has no box -> zeros and not visible."""
    boxes = np.array([[0.0, 0, 10, 10], [5, 5, 20, 15], [100, 100, 110, 110], [1, 1, 2, 2]])
    visible = np.array([True, True, True, False])
    group = np.array([0, 0, 1, 1])
    out, any_visible = group_bounds(boxes, visible, group, 3)
    np.testing.assert_allclose(out, [[0, 0, 20, 15], [100, 100, 110, 110], [0, 0, 0, 0]])
    np.testing.assert_array_equal(any_visible, [True, True, False])
