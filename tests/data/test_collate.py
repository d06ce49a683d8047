"""collate_frames produces exactly the batch contract of docs/architecture.md."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from visionpilot.data.collate import collate_frames


def test_contract_shapes_padding_and_masks(frame_factory, batch_contract) -> None:
    contract, lists = batch_contract
    full = frame_factory(0, cameras=("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT"))
    partial = frame_factory(1, scene_id="gb-001", region="gb", cameras=("CAM_FRONT", "CAM_BACK"),
                            labels=("boxes_2d", "lanes_3d"))
    batch = collate_frames([full, partial])
    assert set(batch) == set(contract) | set(lists)
    for key, (dtype, rank) in contract.items():
        assert batch[key].dtype == dtype and batch[key].ndim == rank, key
    b, n, h, w = 2, 3, 48, 80
    assert batch["images"].shape == (b, n, 3, h, w)
    assert batch["camera_mask"].tolist() == [[True, True, True], [True, True, False]]
    # A padded camera slot: black image, identity calibration, no labels.
    assert batch["images"][1, 2].sum() == 0
    assert torch.equal(batch["intrinsics"][1, 2], torch.eye(3)) and torch.equal(batch["extrinsics"][1, 2], torch.eye(4))
    assert not batch["boxes_2d_mask"][1, 2].any() and not batch["lanes_2d_valid"][1, 2].any()
    # Images are CHW copies of the HWC frames, in slot order.
    assert torch.equal(batch["images"][1, 1], torch.from_numpy(partial.cameras[1].image).permute(2, 0, 1))
    np.testing.assert_allclose(batch["intrinsics"][0, 2].numpy(), full.cameras[2].intrinsics, rtol=1e-6)

    assert batch["has_boxes_3d"].tolist() == [True, False] and batch["has_lanes_2d"].tolist() == [True, False]
    assert batch["has_boxes_2d"].tolist() == [True, True] and batch["has_lanes_3d"].tolist() == [True, True]
    # 3D boxes: only the first frame has them; the second is padding even though its Frame holds boxes.
    k = batch["boxes_3d"].shape[1]
    assert k == len(full.boxes_3d)
    np.testing.assert_allclose(batch["boxes_3d"][0].numpy(), full.boxes_3d.as_array(), rtol=1e-6)
    assert batch["boxes_3d_mask"][0].all() and not batch["boxes_3d_mask"][1].any()
    assert (batch["boxes_3d_classes"][1] == -1).all() and (batch["boxes_3d"][1] == 0).all()
    # 2D boxes per camera slot, padded to the largest camera.
    m = batch["boxes_2d"].shape[2]
    assert m == max(len(c.boxes_2d) for f in (full, partial) for c in f.cameras)
    for i, f in enumerate((full, partial)):
        for j, cam in enumerate(f.cameras):
            nb = len(cam.boxes_2d)
            assert batch["boxes_2d_mask"][i, j].tolist() == [True] * nb + [False] * (m - nb)
            np.testing.assert_allclose(batch["boxes_2d"][i, j, :nb].numpy(), cam.boxes_2d)
            assert batch["boxes_2d_classes"][i, j, :nb].tolist() == cam.classes_2d.tolist()
            assert (batch["boxes_2d_classes"][i, j, nb:] == -1).all()
    # 3D lanes: points and validity; padding zeros / -1.
    for i, f in enumerate((full, partial)):
        for li, lane in enumerate(f.lanes_3d):
            p = len(lane.points)
            np.testing.assert_allclose(batch["lanes_3d"][i, li, :p].numpy(), lane.points, rtol=1e-6)
            assert batch["lanes_3d_valid"][i, li, :p].all() and not batch["lanes_3d_valid"][i, li, p:].any()
            assert batch["lanes_3d_types"][i, li] == lane.type
            assert (batch["lanes_3d"][i, li, p:] == 0).all()
    # 2D lanes: only frame 0; frame 1 all padding.
    lanes = full.cameras[1].lanes_2d
    assert batch["lanes_2d_types"][0, 1, :len(lanes)].tolist() == [ln.type for ln in lanes]
    np.testing.assert_allclose(batch["lanes_2d"][0, 1, 0, :len(lanes[0].points)].numpy(), lanes[0].points, rtol=1e-6)
    assert (batch["lanes_2d_types"][1] == -1).all() and not batch["lanes_2d_valid"][1].any()
    assert batch["region"] == ["de", "gb"] and batch["driving_side"] == ["right", "left"]
    assert batch["scene_id"] == ["de-000", "gb-001"] and batch["source"] == ["tiny", "tiny"]
    assert batch["frame_id"] == [full.frame_id, partial.frame_id]


def test_no_labels_gives_size_one_padding(frame_factory) -> None:
    batch = collate_frames([frame_factory(0, labels=()), frame_factory(1, labels=())])
    assert batch["boxes_3d"].shape == (2, 1, 7) and batch["boxes_2d"].shape == (2, 3, 1, 4)
    assert batch["lanes_3d"].shape == (2, 1, 1, 3) and batch["lanes_2d"].shape == (2, 3, 1, 1, 2)
    for key in ("boxes_3d_mask", "boxes_2d_mask", "lanes_3d_valid", "lanes_2d_valid"):
        assert not batch[key].any(), key
    for kind in ("boxes_3d", "boxes_2d", "lanes_3d", "lanes_2d"):
        assert not batch[f"has_{kind}"].any()


def test_errors_name_the_problem(frame_factory) -> None:
    with pytest.raises(ValueError, match="at least one frame"):
        collate_frames([])
    with pytest.raises(ValueError, match="one image size"):
        collate_frames([frame_factory(0), frame_factory(1, image_size=(40, 80))])
    with pytest.raises(ValueError, match="camera 'CAM_FRONT_LEFT': field 'image' is None"):
        collate_frames([frame_factory(0, with_images=False)])


def test_frame_validate_refuses_non_finite_geometry_and_boxes(frame_factory) -> None:
    # A NaN in a dataset file would otherwise reach the loss as a NaN many steps later, far from its file.
    frame = frame_factory(0).validate("sample x")
    frame.cameras[1].boxes_2d[0, 2] = np.nan
    with pytest.raises(ValueError, match=r"sample x '.*', camera 'CAM_FRONT': field 'boxes_2d' must be finite, "
                                         r"found nan at index \(0, 2\)"):
        frame.validate("sample x")
    frame = frame_factory(0)
    frame.boxes_3d.centers[1, 0] = np.inf
    with pytest.raises(ValueError, match=r"field 'boxes_3d.centers' must be finite, found inf at index \(1, 0\)"):
        frame.validate("sample x")
    frame = frame_factory(0)
    frame.boxes_3d.velocities[:] = np.nan  # unknown velocity: allowed
    frame.validate("sample x")


@pytest.mark.parametrize(("field", "bad"), [("track_ids", np.arange(3)), ("velocities", np.zeros((5, 2))),
                                            ("velocities", np.zeros((4, 3)))])
def test_frame_validate_refuses_per_box_arrays_of_the_wrong_length(frame_factory, field, bad) -> None:
    # A track_ids one row short passes unnoticed and mis-pairs ids with boxes in a writer or tracker much later.
    frame = frame_factory(0)
    assert len(frame.boxes_3d) == 4
    setattr(frame.boxes_3d, field, bad)
    shape = (4,) if field == "track_ids" else (4, 2)
    with pytest.raises(ValueError, match=rf"sample x '.*': field 'boxes_3d.{field}' must have shape "
                                         rf"{re.escape(str(shape))}, one row per boxes_3d row .*, "
                                         rf"found {re.escape(str(bad.shape))}"):
        frame.validate("sample x")


@pytest.mark.parametrize("field", ["box_ids_2d", "visibility_2d"])
def test_frame_validate_refuses_per_2d_box_arrays_of_the_wrong_length(frame_factory, field) -> None:
    frame = frame_factory(0)
    cam = frame.cameras[1]
    m = len(cam.boxes_2d)
    assert m >= 1
    setattr(cam, field, getattr(cam, field)[:-1])
    with pytest.raises(ValueError, match=rf"camera 'CAM_FRONT': field '{field}' must have shape \({m},\), "
                                         rf"one row per boxes_2d row .*, found \({m - 1},\)"):
        frame.validate("sample x")


def test_frame_validate_accepts_per_item_arrays_left_out(frame_factory) -> None:
    # Empty means "not provided" (transforms keep it empty), as for a source without tracks or 3D matches.
    frame = frame_factory(0)
    frame.boxes_3d.track_ids = np.zeros(0, np.int64)
    frame.boxes_3d.velocities = np.zeros((0, 2))
    for cam in frame.cameras:
        cam.box_ids_2d, cam.visibility_2d = np.zeros(0, np.int64), np.zeros(0, np.float32)
    frame.validate("sample x")
