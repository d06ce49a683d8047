"""View transform geometry: hand-computed rays, moving cameras, validity, camera averaging, a numpy reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from visionpilot.geometry.camera import project_points
from visionpilot.geometry.frames import camera_extrinsics
from visionpilot.models.view_transform import BEVGrid, ViewTransform, feature_projection, parse_strides, rigid_inverse

# A 64x128 image, stride 8 -> an 8x16 feature map; f = 60 px, principal point at the image centre.
H, W, STRIDE, F = 64, 128, 8, 60.0
K = np.array([[F, 0.0, W / 2], [0.0, F, H / 2], [0.0, 0.0, 1.0]])
# One ground layer (z centre 0) and 1 m cells over +-10 m: cell i has its centre at x = -9.5 + i.
GROUND = BEVGrid(x_range=(-10, 10), y_range=(-10, 10), z_range=(-0.25, 0.25), cell_size=1.0, z_levels=1)


def _lift(grid: BEVGrid, feats: np.ndarray, intrinsics: list[np.ndarray], extrinsics: list[np.ndarray],
          camera_mask: list[bool] | None = None) -> np.ndarray:
    """Run ViewTransform.lift for one frame: feats (N, C, h, w) -> (C, Z, X, Y)."""
    vt = ViewTransform(grid, in_channels=feats.shape[1], out_channels=4)
    k = torch.tensor(np.stack(intrinsics), dtype=torch.float32)[None]
    e = torch.tensor(np.stack(extrinsics), dtype=torch.float32)[None]
    mask = None if camera_mask is None else torch.tensor(camera_mask)[None]
    with torch.no_grad():
        out = vt.lift(torch.tensor(feats, dtype=torch.float32)[None], k, e, STRIDE, (H, W), mask)
    return out[0].numpy()


def _hot_pixel(row: int = 6, col: int = 10, channels: int = 1) -> np.ndarray:
    feats = np.zeros((1, channels, H // STRIDE, W // STRIDE))
    feats[0, :, row, col] = 1.0
    return feats


def _reference(grid: BEVGrid, feats: np.ndarray, intrinsics: np.ndarray,
               extrinsics: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Independent numpy lifting of one camera -> (C, Z, X, Y) features and the (Z, X, Y) validity mask."""
    xs, ys, zs = (c.numpy().astype(np.float64) for c in (grid.x_centers(), grid.y_centers(), grid.z_centers()))
    zz, xx, yy = np.meshgrid(zs, xs, ys, indexing="ij")
    uv, _, valid = project_points(np.stack([xx, yy, zz], -1), intrinsics, extrinsics)
    valid &= (uv[..., 0] >= 0) & (uv[..., 0] <= W) & (uv[..., 1] >= 0) & (uv[..., 1] <= H)
    c, h, w = feats.shape
    # Continuous feature coordinates; pixel centres at +0.5, zero outside the map.
    px, py = uv[..., 0] / STRIDE - 0.5, uv[..., 1] / STRIDE - 0.5
    x0, y0 = np.floor(px).astype(int), np.floor(py).astype(int)
    out = np.zeros((c,) + xx.shape)
    for dx in (0, 1):
        for dy in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            wgt = (1 - np.abs(px - xi)) * (1 - np.abs(py - yi))
            ok = valid & (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
            out += np.where(ok, wgt, 0.0) * feats[:, yi.clip(0, h - 1), xi.clip(0, w - 1)]
    return out, valid


def test_hot_pixel_lights_the_ground_point_on_its_ray_and_nothing_behind() -> None:
    # Forward camera 1.5 m above the ground. Hot feature pixel (row 6, col 10) has its centre at image
    # (u, v) = (84, 52): 20 px right of and 20 px below the principal point. The ray hits the ground where
    # 1.5 m / depth = 20 / 60, so depth = 4.5 m and lateral = -20 / 60 * 4.5 = -1.5 m: ego (4.5, -1.5, 0),
    # the centre of cell (i, j) = (14, 8).
    cam = camera_extrinsics([0.0, 0.0, 1.5], yaw_deg=0.0)
    bev = _lift(GROUND, _hot_pixel(), [K], [cam])[0, 0]  # (X, Y)
    assert bev[14, 8] == pytest.approx(1.0, abs=1e-5)
    assert np.unravel_index(bev.argmax(), bev.shape) == (14, 8)
    assert np.all(bev[:10] == 0.0), "cells behind the camera (x < 0) must stay dark"
    # Every lit cell projects into the hot pixel's bilinear footprint (within one feature pixel of its centre).
    lit = np.argwhere(bev > 0)
    assert len(lit) >= 2
    for i, j in lit:
        uv, _, _ = project_points(np.array([-9.5 + i, -9.5 + j, 0.0]), K, cam)
        assert abs(uv[0] / STRIDE - 10.5) < 1 and abs(uv[1] / STRIDE - 6.5) < 1


def test_moving_the_camera_forward_moves_the_response() -> None:
    base = _lift(GROUND, _hot_pixel(), [K], [camera_extrinsics([0.0, 0.0, 1.5], 0.0)])[0, 0]
    moved = _lift(GROUND, _hot_pixel(), [K], [camera_extrinsics([5.0, 0.0, 1.5], 0.0)])[0, 0]
    assert moved[19, 8] == pytest.approx(1.0, abs=1e-5)  # ground point now at x = 9.5
    np.testing.assert_allclose(moved[5:], base[:15], atol=1e-5)
    assert np.all(moved[:5] == 0.0)


def test_yawing_the_camera_rotates_the_response() -> None:
    base = _lift(GROUND, _hot_pixel(), [K], [camera_extrinsics([0.0, 0.0, 1.5], 0.0)])[0, 0]
    left = _lift(GROUND, _hot_pixel(), [K], [camera_extrinsics([0.0, 0.0, 1.5], 90.0)])[0, 0]
    # Facing +y, the point 4.5 m ahead and 1.5 m right is ego (1.5, 4.5): cell (11, 14). In general
    # (x, y) -> (-y, x), i.e. left[19 - j, i] = base[i, j].
    assert left[11, 14] == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(left, base.T[::-1], atol=1e-5)


def test_matches_numpy_reference_for_a_tilted_camera_and_several_levels() -> None:
    grid = BEVGrid(x_range=(-6, 14), y_range=(-8, 8), z_range=(-1.0, 3.0), cell_size=0.5, z_levels=4)
    k = np.array([[70.0, 0.0, 60.0], [0.0, 72.0, 30.0], [0.0, 0.0, 1.0]])
    cam = camera_extrinsics([1.2, 0.3, 1.6], yaw_deg=25.0, pitch_deg=6.0, roll_deg=2.0)
    feats = np.random.default_rng(0).normal(size=(1, 3, H // STRIDE, W // STRIDE))
    got = _lift(grid, feats, [k], [cam])
    want, valid = _reference(grid, feats[0], k, cam)
    assert valid.sum() > 100
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_voxels_no_camera_sees_are_zero() -> None:
    cam = camera_extrinsics([0.0, 0.0, 1.5], 0.0)
    ones = np.ones((1, 2, H // STRIDE, W // STRIDE))
    got = _lift(GROUND, ones, [K], [cam])[:, 0]  # (C, X, Y)
    _, valid = _reference(GROUND, ones[0], K, cam)
    assert np.all(got[:, ~valid[0]] == 0.0)
    assert np.all(got[:, :10] == 0.0)  # behind
    assert (got > 0).any()


def test_average_over_two_overlapping_cameras_and_camera_mask() -> None:
    left = camera_extrinsics([0.0, 0.0, 1.5], 25.0)
    right = camera_extrinsics([0.0, 0.0, 1.5], -25.0)
    fa = np.full((1, 1, H // STRIDE, W // STRIDE), 2.0)
    fb = np.full((1, 1, H // STRIDE, W // STRIDE), 4.0)
    got = _lift(GROUND, np.concatenate([fa, fb]), [K, K], [left, right])[0, 0]
    ra, va = _reference(GROUND, fa[0], K, left)
    rb, vb = _reference(GROUND, fb[0], K, right)
    # Interior cells (full bilinear support, value == the constant) of one or both cameras.
    ia, ib = np.isclose(ra[0, 0], 2.0) & va[0], np.isclose(rb[0, 0], 4.0) & vb[0]
    assert (ia & ib).sum() > 5 and (ia & ~vb[0]).sum() > 5 and (ib & ~va[0]).sum() > 5
    np.testing.assert_allclose(got[ia & ib], 3.0, atol=1e-5)
    np.testing.assert_allclose(got[ia & ~vb[0]], 2.0, atol=1e-5)
    np.testing.assert_allclose(got[ib & ~va[0]], 4.0, atol=1e-5)
    assert np.all(got[~va[0] & ~vb[0]] == 0.0)
    # A masked (padded) camera slot contributes neither features nor count.
    only_a = _lift(GROUND, np.concatenate([fa, fb]), [K, K], [left, right], camera_mask=[True, False])[0, 0]
    np.testing.assert_allclose(only_a[ia], 2.0, atol=1e-5)
    assert np.all(only_a[~va[0]] == 0.0)


def test_padded_identity_slot_is_ignored_without_a_mask() -> None:
    # collate pads missing cameras with identity intrinsics/extrinsics; such a slot must not dilute the average.
    cam = camera_extrinsics([0.0, 0.0, 1.5], 0.0)
    fa = np.full((1, 1, H // STRIDE, W // STRIDE), 2.0)
    pad = np.full((1, 1, H // STRIDE, W // STRIDE), 7.0)
    got = _lift(GROUND, np.concatenate([fa, pad]), [K, np.eye(3)], [cam, np.eye(4)])[0, 0]
    ref = _lift(GROUND, fa, [K], [cam])[0, 0]
    np.testing.assert_allclose(got, ref, atol=1e-6)


def test_forward_shapes_batch_and_helpers() -> None:
    grid = BEVGrid(x_range=(-4, 4), y_range=(-3, 3), z_range=(-1, 3), cell_size=1.0, z_levels=2)
    vt = ViewTransform(grid, in_channels=6, out_channels=5, lift_channels=3)
    k = torch.tensor(K, dtype=torch.float32).expand(2, 3, 3, 3)
    e = torch.tensor(camera_extrinsics([0.0, 0.0, 1.5], 0.0), dtype=torch.float32).expand(2, 3, 4, 4)
    out = vt(torch.randn(2, 3, 6, H // STRIDE, W // STRIDE), k, e, STRIDE, (H, W))
    assert out.shape == (2, 5, 8, 6)
    ext = torch.tensor(camera_extrinsics([1.0, 2.0, 1.5], 30.0, 5.0), dtype=torch.float32)
    torch.testing.assert_close(rigid_inverse(ext) @ ext, torch.eye(4), atol=1e-6, rtol=0)
    proj = feature_projection(torch.tensor(K, dtype=torch.float32)[None, None], ext[None, None], 8.0)
    assert proj.shape == (1, 1, 3, 4)
    assert parse_strides([8, "s16"]) == {"s8": 8, "s16": 16}
    with pytest.raises(ValueError, match="whole number of cells"):
        BEVGrid(x_range=(-1, 1), cell_size=0.3)


def test_channels_last_training_gives_the_same_gradients() -> None:
    # Channels-last convolutions around the lift hand its per-camera grid_sample backward a channels-last
    # gradient (a layout change for speed); values must match a plain contiguous-format run exactly.
    grid = BEVGrid(x_range=(-6, 6), y_range=(-5, 5), z_range=(-1, 3), cell_size=1.0, z_levels=2)
    torch.manual_seed(0)
    vt = ViewTransform(grid, in_channels=6, out_channels=5, lift_channels=3)
    k = torch.tensor(K, dtype=torch.float32).expand(2, 3, 3, 3)
    e = torch.stack([torch.tensor(camera_extrinsics([0.0, 0.0, 1.5], yaw), dtype=torch.float32)
                     for yaw in (0.0, 60.0, -60.0)]).expand(2, 3, 4, 4)
    feats = torch.randn(2, 3, 6, H // STRIDE, W // STRIDE)
    grads = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        vt.zero_grad()
        vt.to(memory_format=fmt)
        x = feats.clone().requires_grad_()
        out = vt(x, k, e, STRIDE, (H, W))
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        grads.append((x.grad.clone(), vt.pre.weight.grad.clone()))
    assert grads[0][0].abs().sum() > 0
    torch.testing.assert_close(grads[1][0], grads[0][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads[1][1], grads[0][1], atol=1e-5, rtol=1e-5)


def test_bf16_autocast_samples_at_float32_coordinates() -> None:
    # Under bf16 autocast (the demo's training on a CPU with bf16) the features arrive in bf16; the grid used to be
    # cast to them, and 8-bit coordinates moved the samples by up to ~0.1 feature pixel, a lift the float32 export
    # does not reproduce. Only the features' own rounding (and the output's) may remain.
    grid = BEVGrid(x_range=(-6, 14), y_range=(-8, 8), z_range=(-1.0, 3.0), cell_size=0.5, z_levels=4)
    k = np.array([[70.0, 0.0, 60.0], [0.0, 72.0, 30.0], [0.0, 0.0, 1.0]])
    cam = camera_extrinsics([1.2, 0.3, 1.6], yaw_deg=25.0, pitch_deg=6.0, roll_deg=2.0)
    feats = np.random.default_rng(0).normal(size=(1, 3, H // STRIDE, W // STRIDE))
    rounded = torch.tensor(feats, dtype=torch.float32).bfloat16()  # what autocast hands the lift
    want, valid = _reference(grid, rounded.float().numpy()[0], k, cam)
    vt = ViewTransform(grid, in_channels=3, out_channels=4)
    k_t = torch.tensor(k, dtype=torch.float32)[None, None]
    e_t = torch.tensor(cam, dtype=torch.float32)[None, None]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = vt.lift(rounded[None], k_t, e_t, STRIDE, (H, W))
    assert valid.sum() > 100
    # bf16 output rounding: relative 2^-8; a moved sample point errs by up to ~0.1 x the neighbouring-pixel step
    err = np.abs(got[0].float().numpy() - want)
    assert err.max() <= 2 ** -8 * np.abs(want).max() + 1e-6, err.max()


def test_sampling_only_the_visible_voxels_equals_sampling_every_voxel() -> None:
    # The CPU training path samples each camera at the voxels it sees; tracing, export and torch.compile keep the
    # dense loop. Both must give the same lift and the same gradients: frames of a batch that see different
    # numbers of voxels (shorter rows padded), a padded camera slot, a camera looking at the sky (sees nothing).
    grid = BEVGrid(x_range=(-10, 10), y_range=(-8, 8), z_range=(-1.0, 3.0), cell_size=1.0, z_levels=3)
    vt = ViewTransform(grid, in_channels=5, out_channels=4)
    yaws = [(0.0, 70.0, 180.0, -90.0), (30.0, 100.0, 200.0, -90.0)]
    e = torch.stack([torch.stack([torch.tensor(camera_extrinsics([0.5 * b, 0.2, 1.5], yaw), dtype=torch.float32)
                                  for yaw in row]) for b, row in enumerate(yaws)])  # (2, 4, 4, 4)
    e[:, 3] = torch.tensor(camera_extrinsics([0.0, 0.0, 1.5], 0.0, pitch_deg=-89.0), dtype=torch.float32)  # sky
    k = torch.tensor(K, dtype=torch.float32).expand(2, 4, 3, 3).clone()
    mask = torch.tensor([[True, True, True, True], [True, True, False, True]])
    feats = torch.randn(2, 4, 5, H // STRIDE, W // STRIDE, generator=torch.Generator().manual_seed(0))
    weight = torch.linspace(-1, 1, 5 * grid.z_levels * grid.nx * grid.ny).reshape(1, 5, grid.z_levels, grid.nx,
                                                                                grid.ny)
    results = []
    for visible_only in (False, True):
        x = feats.clone().requires_grad_()
        out = vt.lift(x, k, e, STRIDE, (H, W), mask, visible_only=visible_only)
        (out * weight).sum().backward()
        results.append((out.detach(), x.grad))
    (dense, dense_grad), (sparse, sparse_grad) = results
    _, valid = vt.sampling_grid(k, e, STRIDE, (H, W), (H // STRIDE, W // STRIDE), mask)
    seen = valid.flatten(2).sum(-1)  # (B, N) voxels per frame and camera
    assert seen[:, 3].sum() == 0 and seen[1, 2] == 0 and (seen[0, :3] > 0).all()
    assert seen[0, 1] != seen[1, 1]  # rows of different length: the shorter one is padded
    assert dense.abs().sum() > 0 and dense_grad.abs().sum() > 0
    assert torch.equal(sparse, dense)
    # grid_sample's backward accumulates the same contributions in the same order, but groups the points into
    # vectors differently: the gradients agree to float rounding, not to the bit
    torch.testing.assert_close(sparse_grad, dense_grad, rtol=1e-5, atol=1e-6)
    # with autocast the samples stay float32 and the result comes back in the features' dtype
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        lifted = [vt.lift(feats.bfloat16(), k, e, STRIDE, (H, W), mask, visible_only=v) for v in (False, True)]
    assert lifted[0].dtype == torch.bfloat16 and torch.equal(lifted[0], lifted[1])


@pytest.mark.parametrize("near", [0.0, -5.0])
def test_refuses_a_near_plane_at_or_behind_the_camera(near: float) -> None:
    # Before: near=-5 lifted the voxels behind a forward camera (mirrored through its centre) into the BEV grid.
    with pytest.raises(ValueError, match=f"ViewTransform: near must be > 0 metres, found {near}"):
        ViewTransform(GROUND, in_channels=1, out_channels=4, near=near)


def test_refuses_a_fractional_number_of_z_levels_and_takes_an_integral_float() -> None:
    # Before: 2.5 levels put a layer centre on z_range's top and failed later in a conv with a float channel count.
    with pytest.raises(ValueError, match="z_levels an integer >= 1, found 1.0, 2.5"):
        BEVGrid(x_range=(-4, 4), y_range=(-4, 4), cell_size=1.0, z_levels=2.5)
    grid = BEVGrid(x_range=(-4, 4), y_range=(-4, 4), cell_size=1.0, z_levels=4.0)  # 4.0 from a command line
    assert grid.z_levels == 4 and isinstance(grid.z_levels, int)
    assert ViewTransform(grid, in_channels=2, out_channels=4).reduce[0].in_channels == 8


@pytest.mark.parametrize("visible_only", [False, True])
def test_refuses_calibration_for_another_number_of_cameras(visible_only: bool) -> None:
    # Before: the dense loop (GPU, tracing, export) zipped 2 cameras' features with 1 calibration and silently
    # dropped the second camera; the CPU path failed in a reshape.
    vt = ViewTransform(GROUND, in_channels=1, out_channels=4)
    k = torch.tensor(K, dtype=torch.float32).expand(1, 1, 3, 3)
    e = torch.tensor(camera_extrinsics([0.0, 0.0, 1.5], 0.0), dtype=torch.float32).expand(1, 1, 4, 4)
    feats = torch.ones(1, 2, 1, H // STRIDE, W // STRIDE)
    with pytest.raises(ValueError, match=r"intrinsics must be \(B, N, 3, 3\) = \(1, 2, 3, 3\) .* found \(1, 1, 3, 3\)"):
        vt.lift(feats, k, e, STRIDE, (H, W), visible_only=visible_only)
    with pytest.raises(ValueError, match=r"extrinsics must be \(B, N, 4, 4\) = \(1, 2, 4, 4\) .* found \(1, 1, 4, 4\)"):
        vt.lift(feats, k.expand(1, 2, 3, 3), e, STRIDE, (H, W), visible_only=visible_only)
