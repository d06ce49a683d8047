"""Drawing helpers: what an untrained model predicts must draw quickly and without errors."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from visionpilot.data.frame import Lane
from visionpilot.viz.draw import BEVCanvas, camera_grid, draw_boxes_2d, draw_lanes_2d, outlined_text


def test_dashed_boxes_are_clipped_to_the_image() -> None:
    image = np.zeros((64, 176, 3), np.uint8)
    # An untrained CenterNet head decodes sizes up to exp(12) * stride: boxes a million pixels wide, inf, nan.
    boxes = np.array([[-1.3e6, -1.3e6, 1.3e6, 1.3e6], [10, 10, 40, 30], [0, 0, np.inf, np.nan]], np.float32)
    start = time.perf_counter()
    draw_boxes_2d(image, boxes, np.array([0, 1, 2]), dashed=True)
    assert time.perf_counter() - start < 1.0  # drawn point by point before clipping, this took minutes
    # The in-image box is drawn where it is: its top edge, dashed (some pixels on, some off).
    top = image[9:12, 10:41].any(axis=(0, 2))
    assert top.any() and not top.all()
    assert image[20, 25].sum() == 0  # inside the small box: untouched


def test_solid_boxes_draw_where_they_are() -> None:
    image = np.zeros((32, 32, 3), np.uint8)
    draw_boxes_2d(image, np.array([[4.5, 4.5, 20.5, 20.5]]), np.array([0]))
    assert image[4, 4:20].any() and image[12, 12].sum() == 0


def test_camera_names_are_outlined_without_a_trailing_shadow() -> None:
    # OpenCV 5 widens the glyph advance with the stroke: a thick dark copy under a thin white name ran past it
    # (a dark extra letter after every camera name). The outline must end where the name ends, plus its 1 px.
    grid = camera_grid([np.full((40, 200, 3), 128, np.uint8)], ["CAM_FRONT_LEFT"])
    width = cv2.getTextSize("CAM_FRONT_LEFT", cv2.FONT_HERSHEY_SIMPLEX, 0.42, 1)[0][0]
    changed = np.nonzero((grid != 128).any(axis=(0, 2)))[0]
    assert changed.min() >= 5 - 2 and changed.max() <= 5 + width + 1
    dark, light = (grid < 100).all(-1), (grid > 200).all(-1)
    assert dark.any() and light.any()  # a white name on a dark ring


def test_outlined_text_clips_at_the_image_border() -> None:
    image = np.zeros((20, 30, 3), np.uint8)
    outlined_text(image, "edge", (-8, 4), 0.42)  # starts left of and above the image
    outlined_text(image, "gone", (100, 100), 0.42)  # wholly outside: nothing drawn, no error
    assert image.any() and image[15:].sum() == 0


def test_bev_boxes_of_a_diverged_head_are_skipped_not_a_crash() -> None:
    # NaN / inf / astronomically far boxes raised (NaN to int, OpenCV's int32 points) and lost the whole image.
    canvas = BEVCanvas(size_px=128, range_m=50.0)
    boxes = np.array([[np.nan, 0, 0, 4, 2, 1.5, 0], [np.inf, 0, 0, 4, 2, 1.5, 0], [1e12, 0, 0, 4, 2, 1.5, 0],
                      [10, 5, 0, 4, 2, 1.5, 0]])
    for dashed in (False, True):
        canvas.boxes(boxes, np.zeros(4, int), dashed=dashed)
    alone = BEVCanvas(size_px=128, range_m=50.0)
    alone.boxes(boxes[3:], np.zeros(1, int))
    alone.boxes(boxes[3:], np.zeros(1, int), dashed=True)
    np.testing.assert_array_equal(canvas.image, alone.image)  # only the finite, nearby box, where it is


@pytest.mark.parametrize("dashed", [False, True])
def test_a_nan_lane_point_breaks_the_line_instead_of_drawing_to_a_corner(dashed: bool) -> None:
    # NaN cast to int32 is -2**31: a line was drawn from the last good point towards the image's top-left corner.
    a, b = np.array([[40.0, 40.0], [50.0, 50.0]]), np.array([[20.0, 60.0], [10.0, 50.0]])
    image = draw_lanes_2d(np.zeros((64, 64, 3), np.uint8), [Lane(np.concatenate([a, [[np.nan, np.nan]], b]), 0)],
                          thickness=1, dashed=dashed)
    expected = draw_lanes_2d(np.zeros((64, 64, 3), np.uint8), [Lane(a, 0), Lane(b, 0)], thickness=1, dashed=dashed)
    np.testing.assert_array_equal(image, expected)  # both good parts, and nothing else
    a3, b3 = np.array([[10.0, 0, 0], [20.0, 0, 0]]), np.array([[30.0, 20.0, 0], [40.0, 20.0, 0]])
    canvas, alone = BEVCanvas(size_px=128, range_m=50.0), BEVCanvas(size_px=128, range_m=50.0)
    canvas.lanes([(np.concatenate([a3, [[np.nan, np.nan, 0]], b3]), 0)], dashed=dashed)
    alone.lanes([(a3, 0), (b3, 0)], dashed=dashed)
    np.testing.assert_array_equal(canvas.image, alone.image)
