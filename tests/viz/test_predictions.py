"""Predictions drawn against labels: one model per row, each row drawing its own model's outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from visionpilot.data.collate import collate_frames
from visionpilot.data.sources.synthetic import SyntheticSource
from visionpilot.viz.predictions import render_comparison, render_prediction


def _frame_batch() -> dict:
    frame = SyntheticSource(rig="front1", regions=["gb"], image_size=(64, 176), scenes_per_region=1,
                            frames_per_scene=1).load(0)
    batch = collate_frames([frame])
    batch["images"] = torch.zeros_like(batch["images"])  # a black camera: only drawings are bright
    for key in ("boxes_2d_mask", "boxes_3d_mask", "lanes_2d_types", "lanes_3d_types"):  # no labels to draw
        batch[key] = torch.zeros_like(batch[key]) if key.endswith("mask") else torch.full_like(batch[key], -1)
    return batch


def _decoded(box: list[float] | None) -> dict[str, torch.Tensor]:
    """2D detections on the one camera: ``box`` at score 0.9 (or nothing above the drawing threshold)."""
    boxes = torch.zeros(1, 1, 3, 4)
    scores = torch.zeros(1, 1, 3)
    if box is not None:
        boxes[0, 0, 0], scores[0, 0, 0] = torch.tensor(box), 0.9
    return {"objects_2d.boxes": boxes, "objects_2d.scores": scores,
            "objects_2d.classes": torch.zeros(1, 1, 3, dtype=torch.long)}


def test_each_row_draws_its_own_models_predictions() -> None:
    batch = _frame_batch()
    image = render_comparison(batch, {"with-box": _decoded([40.0, 10.0, 120.0, 50.0]), "empty": _decoded(None)},
                              ["CAM_FRONT"])
    single = render_prediction(batch, _decoded(None), ["CAM_FRONT"])
    row = 20 + 64  # name strip + the camera
    assert image.shape == (2 * row + 22, single.shape[1], 3)
    camera = (slice(20 + 16, 64), slice(0, 176))  # below the camera's name
    first, second = image[:row][camera], image[row:2 * row][camera]
    assert (first.max(axis=2) > 60).sum() > 20   # the dashed box of the first model (its sides, here)
    assert (second.max(axis=2) > 60).sum() == 0  # the second model predicted nothing
    # The first row alone is exactly what render_prediction draws for that model.
    alone = render_prediction(batch, _decoded([40.0, 10.0, 120.0, 50.0]), ["CAM_FRONT"])
    np.testing.assert_array_equal(image[20:row], alone[:64])


def test_comparison_needs_a_model() -> None:
    with pytest.raises(ValueError, match="no models"):
        render_comparison(_frame_batch(), {}, ["CAM_FRONT"])
