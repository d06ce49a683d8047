"""Polyline projection (near-plane and image clipping), resampling and row interpolation, by hand.

Camera: hfov 90 deg on 800x600 (f = 400, principal point (400, 300)) at ego (1.5, 0, 1.5) looking forward.
An ego point (x, y, z) is camera (X, Y, Z) = (-y, 1.5 - z, x - 1.5); u = 400 X / Z + 400, v = 400 Y / Z + 300.
For a ground point (x, y, 0): u = 400 - 400 y / (x - 1.5), v = 300 + 600 / (x - 1.5).
"""

import numpy as np
import pytest

from visionpilot.geometry.camera import project_points
from visionpilot.geometry.frames import camera_extrinsics, intrinsics_from_fov
from visionpilot.geometry.polylines import (
    clip_polyline_box,
    clip_polylines_box,
    interpolate_x_at_y,
    polyline_length,
    project_polyline,
    resample_polyline,
)

K = intrinsics_from_fov(90.0, 800, 600)
SIZE = (600, 800)
CAM = camera_extrinsics([1.5, 0.0, 1.5], 0.0)


def _ground(x, y):
    return np.array([[xi, y, 0.0] for xi in x])


def test_lane_from_behind_to_far_ahead_by_hand():
    """Lane line y = 1.8 on the ground through x = -10, 0, 10, 30, 60. The first segment is behind the camera
    (Z = -11.5 .. -1.5) and dropped; the second crosses the near plane and enters the image at its bottom edge,
    v = 600 <=> Z = 2 (x = 3.5), where u = 400 - 720 / 2 = 40 (the left edge u = 0 is at Z = 1.8, v = 633 > 600,
    i.e. already outside). So one piece: (40, 600), then the exact projections of x = 10, 30, 60, e.g. x = 10:
    Z = 8.5, u = 400 - 720 / 8.5 = 315.294, v = 300 + 600 / 8.5 = 370.588."""
    pts = _ground([-10.0, 0.0, 10.0, 30.0, 60.0], 1.8)
    pieces = project_polyline(pts, K, CAM, SIZE)
    assert len(pieces) == 1
    piece = pieces[0]
    np.testing.assert_allclose(piece[0], [40, 600], atol=1e-9)
    np.testing.assert_allclose(piece[1], [400 - 720 / 8.5, 300 + 600 / 8.5], atol=1e-9)
    uv, _, valid = project_points(pts[2:], K, CAM)
    assert valid.all()
    np.testing.assert_allclose(piece[1:], uv, atol=1e-9)
    assert (piece[:, 0] >= 0).all() and (piece[:, 0] <= 800).all()
    assert (piece[:, 1] >= 0).all() and (piece[:, 1] <= 600).all()


def test_piece_starting_at_the_near_plane_by_hand():
    """A line from camera (0, 0, -5) to (0.15, 0.15, 10) (ego (-3.5, 0, 1.5) -> (11.5, -0.15, 1.35)) meets the
    near plane Z = 0.1 at t = 5.1 / 15 = 0.34, X = Y = 0.051, which projects *inside* the image:
    u = 400 + 400 * 0.51 = 604, v = 300 + 204 = 504. The piece starts there and ends at the projection of the far
    end, (400 + 400 * 0.015, 300 + 6) = (406, 306)."""
    pieces = project_polyline(np.array([[-3.5, 0.0, 1.5], [11.5, -0.15, 1.35]]), K, CAM, SIZE)
    assert len(pieces) == 1
    np.testing.assert_allclose(pieces[0], [[604, 504], [406, 306]], atol=1e-9)


def test_polyline_leaving_and_reentering_splits_in_two():
    """Ground points A = (11.5, 0), B = (11.5, 20), C = (21.5, 0): A -> (400, 360), B -> (-400, 360) (left of the
    image), C -> (400, 330). A->B leaves through u = 0 halfway: (0, 360). B->C re-enters through u = 0 halfway
    along the (straight) projected segment: v = (360 + 330) / 2 = 345. So two pieces."""
    pts = np.array([[11.5, 0.0, 0.0], [11.5, 20.0, 0.0], [21.5, 0.0, 0.0]])
    pieces = project_polyline(pts, K, CAM, SIZE)
    assert len(pieces) == 2
    np.testing.assert_allclose(pieces[0], [[400, 360], [0, 360]], atol=1e-9)
    np.testing.assert_allclose(pieces[1], [[0, 345], [400, 330]], atol=1e-9)


def test_polyline_min_length_drops_short_pieces():
    """Same two pieces, lengths 400 and hypot(400, 15) = 400.28: min_length_px = 400.1 keeps only the second."""
    pts = np.array([[11.5, 0.0, 0.0], [11.5, 20.0, 0.0], [21.5, 0.0, 0.0]])
    pieces = project_polyline(pts, K, CAM, SIZE, min_length_px=400.1)
    assert len(pieces) == 1
    np.testing.assert_allclose(pieces[0], [[0, 345], [400, 330]], atol=1e-9)


def test_polyline_behind_or_degenerate_gives_nothing():
    """A line entirely behind the camera, and a single point, give no pieces (nothing mirrored into the image)."""
    assert project_polyline(_ground([-20.0, -10.0, 1.0], 0.5), K, CAM, SIZE) == []
    assert project_polyline(_ground([10.0], 0.5), K, CAM, SIZE) == []


def test_polyline_length():
    """3-4-5: (0,0) -> (3,0) -> (3,4) has length 7; one point has length 0."""
    assert polyline_length(np.array([[0.0, 0], [3, 0], [3, 4]])) == pytest.approx(7.0)
    assert polyline_length(np.array([[1.0, 2.0]])) == 0.0


def test_resample_polyline_num_by_hand():
    """L-shape (0,0) -> (3,0) -> (3,4), length 7. num = 5 -> arc lengths 0, 1.75, 3.5, 5.25, 7 ->
    (0,0), (1.75,0), (3,0.5), (3,2.25), (3,4): endpoints exact, equal spacing along the line."""
    out = resample_polyline(np.array([[0.0, 0], [3, 0], [3, 4]]), num=5)
    np.testing.assert_allclose(out, [[0, 0], [1.75, 0], [3, 0.5], [3, 2.25], [3, 4]], atol=1e-12)


def test_resample_polyline_step_keeps_endpoints_and_spacing():
    """step = 1 on the length-7 L-shape -> 8 points one unit apart along the line, first and last exact."""
    pts = np.array([[0.0, 0], [3, 0], [3, 4]])
    out = resample_polyline(pts, step=1.0)
    np.testing.assert_allclose(out, [[0, 0], [1, 0], [2, 0], [3, 0], [3, 1], [3, 2], [3, 3], [3, 4]], atol=1e-12)
    assert out[0].tolist() == pts[0].tolist() and out[-1].tolist() == pts[-1].tolist()


def test_resample_polyline_3d_with_duplicate_points():
    """A 3D polyline with a repeated vertex: (0,0,0) x2 -> (0,0,2) -> (0,2,2), num = 5 -> spacing 1."""
    pts = np.array([[0.0, 0, 0], [0, 0, 0], [0, 0, 2], [0, 2, 2]])
    out = resample_polyline(pts, num=5)
    np.testing.assert_allclose(out, [[0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 1, 2], [0, 2, 2]], atol=1e-12)


def test_resample_polyline_requires_exactly_one_of_num_step():
    """Giving both num and step, or neither, is an error that says so."""
    pts = np.array([[0.0, 0], [1, 0]])
    with pytest.raises(ValueError, match="exactly one"):
        resample_polyline(pts)
    with pytest.raises(ValueError, match="exactly one"):
        resample_polyline(pts, num=3, step=0.5)


def test_interpolate_x_at_y_by_hand():
    """Polyline (100,400) -> (200,200) -> (200,100). Row 400 -> 100; 300 is halfway along the first segment ->
    150; 200 -> 200; 150 lies on the vertical second segment -> 200; rows 50 and 450 are not covered -> NaN."""
    pts = np.array([[100.0, 400], [200, 200], [200, 100]])
    out = interpolate_x_at_y(pts, np.array([400.0, 300, 200, 150, 50, 450]))
    np.testing.assert_allclose(out, [100, 150, 200, 200, np.nan, np.nan])


def test_interpolate_x_at_y_first_crossing_wins():
    """A polyline going down then up, (0,0) -> (100,100) -> (200,0), crosses row 50 twice (x = 50 and x = 150):
    the first crossing along the polyline wins. A horizontal segment covers no row by itself."""
    out = interpolate_x_at_y(np.array([[0.0, 0], [100, 100], [200, 0]]), np.array([50.0]))
    np.testing.assert_allclose(out, [50])
    np.testing.assert_array_equal(np.isnan(interpolate_x_at_y(np.array([[0.0, 5], [10, 5]]), np.array([5.0]))), [True])


def test_clip_polyline_box_cuts_at_the_box_and_keeps_a_point_inside() -> None:
    line = np.array([[-5.0, 0.0], [5.0, 0.0], [5.0, 20.0], [-5.0, 20.0]])
    pieces = clip_polyline_box(line, (-2.0, 8.0), (-1.0, 10.0))
    assert len(pieces) == 1
    np.testing.assert_allclose(pieces[0], [[-2, 0], [5, 0], [5, 10]], atol=1e-12)
    assert len(clip_polyline_box(np.array([[0.0, 0.0], [0.0, 20.0], [3.0, 20.0], [3.0, 0.0]]), (-1, 4), (-1, 10))) == 2
    point = np.array([[1.0, 1.0]])
    assert [p.tolist() for p in clip_polyline_box(point, (0, 2), (0, 2))] == [[[1.0, 1.0]]]
    assert clip_polyline_box(point, (0, 2), (0, 2), min_length=0.5) == []  # length 0 < min_length
    assert clip_polyline_box(point + 5, (0, 2), (0, 2)) == []


def test_clip_polylines_box_gives_each_polyline_its_own_pieces() -> None:
    """The vectorised pass over many polylines cuts exactly as one call per polyline: a polyline ending inside the box
    and the next one starting inside it stay two pieces (their segments are adjacent in the concatenation)."""
    rng = np.random.default_rng(3)
    lines = [rng.uniform(-30, 130, (int(n), 2)) for n in rng.integers(0, 7, 40)]
    lines += [np.array([[10.0, 10.0], [20.0, 20.0]]), np.array([[20.0, 20.0], [30.0, 10.0]]), np.array([[50.0, 50.0]])]
    for min_length in (0.0, 15.0):
        batched = clip_polylines_box(lines, (0.0, 100.0), (0.0, 80.0), min_length)
        assert len(batched) == len(lines)
        for line, pieces in zip(lines, batched):
            single = clip_polyline_box(line, (0.0, 100.0), (0.0, 80.0), min_length)
            assert len(pieces) == len(single)
            for a, b in zip(pieces, single):
                np.testing.assert_array_equal(a, b)
    assert [len(p) for p in clip_polylines_box(lines[-3:], (0.0, 100.0), (0.0, 80.0))] == [1, 1, 1]
    assert sum(len(p) for p in batched) > 10  # the random lines do cross the box
