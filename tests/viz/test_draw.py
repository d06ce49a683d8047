"""Drawing helpers: what an untrained model predicts must draw quickly and without errors."""

from __future__ import annotations

import time

import numpy as np

from visionpilot.viz.draw import draw_boxes_2d


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
