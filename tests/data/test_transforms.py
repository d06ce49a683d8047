"""Transforms keep images, intrinsics, extrinsics, 2D and 3D labels consistent, deterministically."""

from __future__ import annotations

import copy
import pickle
from dataclasses import replace

import albumentations as A
import numpy as np
import pytest

from visionpilot.data.frame import CameraView, Frame
from visionpilot.data.transforms import (
    HorizontalFlip,
    Photometric,
    RandomScaleCrop,
    Resize,
    build_transform,
    flip_frame,
    mirror_slots,
    warp_image,
)
from visionpilot.geometry.boxes import project_box_2d
from visionpilot.geometry.polylines import clip_polyline_box, project_polyline
from visionpilot.geometry.rig import load_rig


def assert_labels_consistent(frame: Frame, tol: float = 1.0) -> None:
    """2D labels equal the projection of the 3D labels through each camera's calibration (within ``tol`` px)."""
    b = frame.boxes_3d
    for cam in frame.cameras:
        size = tuple(cam.image_size)
        if cam.image is not None:
            assert cam.image.shape == (*size, 3)
        fresh, visible = project_box_2d(b.centers, b.sizes, b.yaws, cam.intrinsics, cam.extrinsics, size)
        np.testing.assert_allclose(cam.boxes_2d, fresh[cam.box_ids_2d], atol=tol, err_msg=cam.name)
        dropped = np.setdiff1d(np.flatnonzero(visible), cam.box_ids_2d)
        small = np.minimum(fresh[:, 2] - fresh[:, 0], fresh[:, 3] - fresh[:, 1])
        assert (small[dropped] < 2 + tol).all(), f"{cam.name}: visible boxes {dropped} lost"
        pieces = [p for ln in frame.lanes_3d
                  for p in project_polyline(ln.points, cam.intrinsics, cam.extrinsics, size, min_length_px=1.0)]
        assert len(pieces) == len(cam.lanes_2d), cam.name
        for want, got in zip(pieces, cam.lanes_2d):
            assert want.shape == got.points.shape
            np.testing.assert_allclose(got.points, want, atol=tol, err_msg=cam.name)


def _snapshot(frame: Frame) -> Frame:
    return copy.deepcopy(frame)


def _assert_same(a: Frame, b: Frame) -> None:
    assert a.camera_names == b.camera_names and a.driving_side == b.driving_side
    for ca, cb in zip(a.cameras, b.cameras):
        np.testing.assert_array_equal(ca.image, cb.image)
        for field in ("intrinsics", "extrinsics", "boxes_2d", "classes_2d", "box_ids_2d", "visibility_2d"):
            np.testing.assert_allclose(getattr(ca, field), getattr(cb, field), atol=1e-9, err_msg=field)
        assert len(ca.lanes_2d) == len(cb.lanes_2d)
        for la, lb in zip(ca.lanes_2d, cb.lanes_2d):
            np.testing.assert_allclose(la.points, lb.points, atol=1e-9)
    np.testing.assert_allclose(a.boxes_3d.as_array(), b.boxes_3d.as_array(), atol=1e-6)
    np.testing.assert_allclose(a.boxes_3d.velocities, b.boxes_3d.velocities)
    for la, lb in zip(a.lanes_3d, b.lanes_3d):
        np.testing.assert_allclose(la.points, lb.points)


def test_fixture_is_consistent(frame_factory) -> None:
    assert_labels_consistent(frame_factory(1), tol=1e-6)


@pytest.mark.parametrize("keep_aspect", [False, True])
def test_resize_keeps_geometry(frame_factory, keep_aspect: bool) -> None:
    frame = frame_factory(2)
    before = _snapshot(frame)
    out = Resize((64, 96), keep_aspect=keep_aspect, crop_v=1.0)(frame)
    assert all(c.image_size == (64, 96) for c in out.cameras)
    assert_labels_consistent(out)
    _assert_same(frame, before)  # input untouched
    assert Resize((48, 80))(frame) is frame  # already the right size: nothing to do


@pytest.mark.parametrize("seed", range(4))
def test_random_scale_crop_keeps_geometry(frame_factory, seed: int) -> None:
    frame = frame_factory(seed)
    before = _snapshot(frame)
    out = RandomScaleCrop((40, 72), scale_range=(1.0, 1.5))(frame, seed)
    assert all(c.image_size == (40, 72) for c in out.cameras)
    assert_labels_consistent(out)
    _assert_same(frame, before)
    for a, b in zip(frame.cameras, out.cameras):  # 3D side untouched
        np.testing.assert_array_equal(a.extrinsics, b.extrinsics)
    assert out.boxes_3d is frame.boxes_3d


def test_an_uncalibrated_camera_stays_uncalibrated_when_upscaled(frame_factory) -> None:
    """CULane/TuSimple mark a camera without calibration by a 1-px focal (the BEV lifting skips fx <= 1); scaling
    it like any focal made a zoomed-in frame's camera (fx 1.05) look calibrated to the BEV branch."""
    from visionpilot.data.sources._common import uncalibrated_camera

    frame = frame_factory(0)
    k, ext = uncalibrated_camera(frame.cameras[0].image_size)
    frame = replace(frame, cameras=[replace(c, intrinsics=k.copy(), extrinsics=ext) for c in frame.cameras],
                    boxes_3d=frame.boxes_3d.select(np.zeros(len(frame.boxes_3d), bool)))
    out = RandomScaleCrop((40, 72), scale_range=(1.3, 1.5))(frame, 0)
    for cam in out.cameras:
        assert cam.intrinsics[0, 0] == cam.intrinsics[1, 1] == 1.0
        assert 0 < cam.intrinsics[0, 2] < 72 and 0 < cam.intrinsics[1, 2] < 40  # the centre still moves with the crop
    calibrated = RandomScaleCrop((40, 72), scale_range=(1.3, 1.5))(frame_factory(0), 0)
    assert all(c.intrinsics[0, 0] > 1.0 for c in calibrated.cameras)


def test_random_scale_crop_fixed_vertical_placement(frame_factory) -> None:
    frame = frame_factory(2)
    out = RandomScaleCrop((40, 56), scale_range=(1.1, 1.3), keep_aspect=True, crop_v=1.0)(frame, 5)
    assert_labels_consistent(out)
    for a, b in zip(frame.cameras, out.cameras):
        affine = b.intrinsics @ np.linalg.inv(a.intrinsics)
        assert affine[0, 0] == pytest.approx(affine[1, 1])  # uniform scale
        assert affine[1, 1] * 48 + affine[1, 2] == pytest.approx(40)  # bottom row kept


def test_zoom_out_pads_and_keeps_labels_inside(frame_factory) -> None:
    frame = frame_factory(0)
    out = RandomScaleCrop((48, 80), scale_range=(0.6, 0.6))(frame, 3)
    for a, b in zip(frame.cameras, out.cameras):
        np.testing.assert_allclose(b.intrinsics[0, 0], 0.6 * a.intrinsics[0, 0])
        assert (b.image.sum(axis=2) == 0).any()  # black padding
        area_a = np.prod(a.boxes_2d[:, 2:] - a.boxes_2d[:, :2], axis=1)
        area_b = np.prod(b.boxes_2d[:, 2:] - b.boxes_2d[:, :2], axis=1)
        np.testing.assert_allclose(area_b, 0.36 * area_a[np.isin(a.box_ids_2d, b.box_ids_2d)], rtol=1e-4)


def test_crop_v_outside_the_image_is_refused() -> None:
    # crop_v=2 used to push the picture half out of the frame and pad the rest black, silently.
    with pytest.raises(ValueError, match=r"Resize: field 'crop_v' must be in \[0, 1\].*found 2.0"):
        Resize((40, 72), keep_aspect=True, crop_v=2.0)
    with pytest.raises(ValueError, match=r"RandomScaleCrop: field 'crop_v' must be in \[0, 1\].*found -0.5"):
        RandomScaleCrop((40, 72), crop_v=-0.5)
    with pytest.raises(ValueError, match=r"RandomScaleCrop: field 'size' must be \(height, width\).*found \[40\]"):
        RandomScaleCrop([40])


@pytest.mark.parametrize(("make", "message"), [
    (lambda: Photometric(p=1.5), r"Photometric: field 'p' must be in \[0, 1\], found 1.5"),
    (lambda: Photometric(p_degrade=-0.2), r"Photometric: field 'p_degrade' must be in \[0, 1\], found -0.2"),
    (lambda: Photometric(strength=5.0), r"Photometric: field 'strength' must be in \[0, 1\], found 5.0"),
    (lambda: HorizontalFlip(p=50), r"HorizontalFlip: field 'p' must be in \[0, 1\], found 50"),
    (lambda: RandomScaleCrop((40, 72), scale_range=1.1), r"RandomScaleCrop: field 'scale_range' must be \(low, high\)"
                                                         r".*found 1.1"),
    (lambda: RandomScaleCrop((40, 72), scale_range=(0.9, 1.0, 1.1)), r"field 'scale_range'.*found \(0.9, 1.0, 1.1\)"),
])
def test_bad_augmentation_values_are_refused_when_built(frame_factory, make, message) -> None:
    # Photometric's used to pass construction and fail at the first frame, inside a loader worker, with a pydantic
    # error of albumentations naming neither the transform nor the field; a flip p of 50 flipped every frame.
    with pytest.raises(ValueError, match=message):
        make()(frame_factory(0), 0)


def test_random_scale_crop_is_deterministic(frame_factory) -> None:
    frame = frame_factory(1)
    t = RandomScaleCrop((40, 72), scale_range=(0.8, 1.3))
    _assert_same(t(frame, 11), t(frame, 11))
    assert not np.allclose(t(frame, 11).cameras[0].intrinsics, t(frame, 12).cameras[0].intrinsics)


def test_warp_image_half_pixel_convention() -> None:
    img = np.zeros((40, 60, 1), np.uint8)
    img[10:20, 12:30] = 200  # covers [12, 30) x [10, 20) in continuous coordinates
    for scale, shift in ((2.0, 0.0), (1.3, 3.25), (0.5, -1.0), (1.0, 5.0), (0.7, 0.25), (0.8, 2.0)):
        a = np.array([[scale, 0, shift], [0, scale, 0], [0, 0, 1]])
        out = warp_image(img, a, (100, 140))[..., 0].astype(np.float64)
        cols = out.sum(axis=0)
        centroid = (cols * (np.arange(out.shape[1]) + 0.5)).sum() / cols.sum()  # pixel centres at i + 0.5
        assert centroid == pytest.approx(scale * 21.0 + shift, abs=0.05), (scale, shift)


def test_clip_polyline_splits_where_it_leaves() -> None:
    pts = np.array([[5.0, 5.0], [15.0, 5.0], [25.0, 5.0], [25.0, 15.0], [5.0, 15.0], [5.0, 8.0]])
    pieces = clip_polyline_box(pts, (0, 20), (0, 20), min_length=1.0)  # the image border, as affine_camera cuts
    assert len(pieces) == 2
    np.testing.assert_allclose(pieces[0], [[5, 5], [15, 5], [20, 5]])
    np.testing.assert_allclose(pieces[1], [[20, 15], [5, 15], [5, 8]])
    assert clip_polyline_box(pts + 100, (0, 20), (0, 20), min_length=1.0) == []


def test_flip_is_consistent(frame_factory) -> None:
    frame = frame_factory(5, region="gb")
    before = _snapshot(frame)
    out = flip_frame(frame)
    _assert_same(frame, before)
    assert out.driving_side == "right" and frame.driving_side == "left"
    assert out.camera_names == frame.camera_names  # names stay with the slots
    assert_labels_consistent(out, tol=1e-4)
    # Slot 0 (front-left) now holds the mirrored front-right view, from the same mounting position.
    np.testing.assert_array_equal(out.cameras[0].image, frame.cameras[2].image[:, ::-1])
    np.testing.assert_allclose(out.cameras[0].extrinsics, frame.cameras[0].extrinsics, atol=1e-9)
    np.testing.assert_allclose(out.boxes_3d.centers[:, 1], -frame.boxes_3d.centers[:, 1])
    _assert_same(flip_frame(out), frame)  # an involution


def test_flip_with_skew_and_off_centre_principal(frame_factory) -> None:
    frame = frame_factory(4)
    cams = []
    for c in frame.cameras:
        k = c.intrinsics.copy()
        k[0, 1], k[0, 2] = 3.0, k[0, 2] + 7.0
        cams.append(CameraView(c.name, k, c.extrinsics, c.image_size, c.image))
    out = flip_frame(frame.copy(cameras=cams, labels=frozenset()))
    src = out.cameras[1]  # CAM_FRONT is its own twin
    assert src.intrinsics[0, 1] == -3.0
    assert src.intrinsics[0, 2] == pytest.approx(80 - cams[1].intrinsics[0, 2])


def test_horizontal_flip_modes(frame_factory) -> None:
    frame = frame_factory(0)
    assert HorizontalFlip("off", p=1.0)(frame, 0) is frame
    assert HorizontalFlip("swap_side", p=1.0)(frame, 0).driving_side == "left"
    flips = [HorizontalFlip("swap_side", p=0.5)(frame, s) is not frame for s in range(40)]
    assert 5 < sum(flips) < 35
    with pytest.raises(ValueError, match="mode must be one of"):
        HorizontalFlip("mirror")


@pytest.mark.parametrize("rig_name", ["nuscenes6", "surround8", "front1"])
def test_mirror_slots_match_rig_mirror_order(rig_name: str) -> None:
    rig = load_rig(rig_name)
    cams = [CameraView(c.name, c.intrinsics((90, 160)), c.extrinsics(), (90, 160)) for c in rig.cameras]
    assert mirror_slots(cams) == (rig.mirror_order() or list(range(len(rig))))


def test_mirror_slots_keep_order_without_twins(frame_factory) -> None:
    frame = frame_factory(0, cameras=("CAM_FRONT_LEFT", "CAM_BACK"))
    assert mirror_slots(frame.cameras) == [0, 1]
    assert_labels_consistent(flip_frame(frame), tol=1e-4)


def test_photometric_is_seeded_and_leaves_geometry(frame_factory) -> None:
    frame = frame_factory(3)
    before = _snapshot(frame)
    t = Photometric(strength=1.0, p=1.0, p_degrade=0.5)
    a, b, c = t(frame, 7), t(frame, 7), t(frame, 8)
    _assert_same(frame, before)
    for ca, cb, cc, c0 in zip(a.cameras, b.cameras, c.cameras, frame.cameras):
        np.testing.assert_array_equal(ca.image, cb.image)
        assert not np.array_equal(ca.image, c0.image) and not np.array_equal(ca.image, cc.image)
        assert ca.intrinsics is c0.intrinsics and ca.boxes_2d is c0.boxes_2d
    t2 = pickle.loads(pickle.dumps(t))
    np.testing.assert_array_equal(t2(frame, 7).cameras[0].image, a.cameras[0].image)
    assert Photometric(strength=0.0)(frame, 1) is frame
    label_only = frame_factory(3, with_images=False)
    assert t(label_only, 1).cameras[0].image is None


def test_blur_does_not_move_the_picture() -> None:
    # albumentations' default motion blur uses shifted, one-sided kernels: a point moved by up to ~2 px that no
    # label or intrinsics followed. A bright blob's centroid must stay put under every blur Photometric draws.
    import random

    yy, xx = np.mgrid[0:64, 0:96] + 0.5
    blob = np.repeat((250 * np.exp(-((xx - 48.3) ** 2 + (yy - 30.7) ** 2) / 4.5))[..., None], 3, 2).astype(np.uint8)

    def centroid(img: np.ndarray) -> np.ndarray:
        g = img[..., 1].astype(float)
        return np.array([(g * xx).sum(), (g * yy).sum()]) / g.sum()

    blurs = Photometric(strength=1.0)._build().transforms[4].transforms  # the OneOf of motion and Gaussian blur
    shifts = []
    for blur in blurs:
        blur.p = 1.0
        one = A.Compose([blur])
        for k in range(40):
            one.set_random_state(np.random.default_rng(k), random.Random(k))
            shifts.append(np.hypot(*(centroid(one(image=blob)["image"]) - centroid(blob))))
    assert max(shifts) < 0.05, f"blur moved the picture by up to {max(shifts):.2f} px"


def test_crops_cut_a_border_box_to_what_its_object_still_shows() -> None:
    # 2D boxes that the original border clipped: after a crop, the moved box alone would keep the old border's
    # extent (up to 15 px too big here); with the 3D box it is the projection through the new calibration.
    from visionpilot.data.sources.synthetic import SyntheticSource

    src = SyntheticSource(scenes_per_region=1, frames_per_scene=2, image_size=(256, 704), regions=["us", "gb"])
    errors = []
    for i in range(len(src)):
        f = src.load(i, with_images=False)
        b, cams = f.boxes_3d, []
        for c in f.cameras:  # labels that are exactly the projections, so any later mismatch is the transform's
            box, seen = project_box_2d(b.centers, b.sizes, b.yaws, c.intrinsics, c.extrinsics, tuple(c.image_size))
            ids = np.flatnonzero(seen & (box[:, 2] - box[:, 0] >= 2) & (box[:, 3] - box[:, 1] >= 2))
            cams.append(replace(c, boxes_2d=box[ids].astype(np.float32), classes_2d=b.classes[ids], box_ids_2d=ids,
                                visibility_2d=np.ones(len(ids), np.float32)))
        for seed in range(3):
            out = RandomScaleCrop((256, 704), (1.05, 1.1))(f.copy(cameras=cams), seed)
            for c in out.cameras:
                box, _ = project_box_2d(b.centers, b.sizes, b.yaws, c.intrinsics, c.extrinsics, (256, 704))
                errors += [float(np.abs(row - box[k]).max()) for row, k in zip(c.boxes_2d, c.box_ids_2d)]
    assert len(errors) > 100 and max(errors) < 0.01, f"max {max(errors):.2f} px off the re-projected box"


def test_pipelines(frame_factory) -> None:
    frame = frame_factory(6)
    train = build_transform((40, 64), train=True, scale_range=(1.0, 1.2), flip_p=1.0)
    val = build_transform((40, 64), train=False)
    out = train(frame, 3)
    assert all(c.image_size == (40, 64) for c in out.cameras) and out.driving_side == "left"
    assert_labels_consistent(out)
    _assert_same(train(frame, 3), out)
    _assert_same(val(frame, 1), val(frame, 2))  # no randomness
    assert_labels_consistent(build_transform(None, train=True, flip_p=1.0)(frame, 0), tol=1e-4)
    assert_labels_consistent(val(frame_factory(6, with_images=False)))


def test_a_fractional_size_is_refused_not_truncated() -> None:
    # as_size read (64.5, 176) as (64, 176): frames a pixel smaller than asked for, without a word.
    from visionpilot.data.transforms import as_size

    assert as_size([64.0, 176]) == (64, 176) and as_size(np.array([64, 176])) == (64, 176)
    for size in ((64.5, 176), (64, float("inf")), (64, 0)):
        with pytest.raises(ValueError, match=r"Resize: field 'size' must be \(height, width\), two positive integers"):
            Resize(size)
