"""Row-anchor lane heads (MLP and conv): shapes, slot assignment, masking, overfitting, the conv head's sampling
grid, and an exact encode -> decode round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from visionpilot.geometry.polylines import interpolate_x_at_y
from visionpilot.models.heads.lanes_2d import RowAnchorLaneHead, u_at_rows

H, W = 64, 160
VANISH = (80.0, 20.0)  # vanishing point of the hand-made straight lanes


HEADS = ["mlp", "conv"]


def _head(kind: str = "mlp", **kw) -> RowAnchorLaneHead:
    args = dict(in_channels=16, strides=[8, 16, 32], stride=32, num_slots=4, num_rows=8, num_bins=40,
                row_range=(0.5, 1.0), classifier=kind, pool_size=(2, 5), hidden=64, mid_channels=4, head_channels=8)
    return RowAnchorLaneHead(**(args | kw))


def _lane(u_bottom: float, num: int = 12) -> np.ndarray:
    """A straight lane from the vanishing point's region to the image bottom, clipped to the image."""
    v = np.linspace(28.0, H, num)
    u = VANISH[0] + (u_bottom - VANISH[0]) * (v - VANISH[1]) / (H - VANISH[1])
    keep = (u >= 0) & (u <= W)
    return np.stack([u[keep], v[keep]], axis=1)


def _batch(lanes: list[list[tuple[np.ndarray, int]]], has: list[bool] | None = None,
           camera_mask: list[list[bool]] | None = None) -> dict[str, torch.Tensor]:
    """A batch following the contract (2D-lane keys only), one camera per frame unless a mask says more."""
    b = len(lanes)
    camera_mask = camera_mask or [[True] for _ in range(b)]
    n = len(camera_mask[0])
    num_l = max(1, max(len(fr) for fr in lanes))
    num_p = max(1, max((len(p) for fr in lanes for p, _ in fr), default=1))
    pts = torch.zeros(b, n, num_l, num_p, 2)
    valid = torch.zeros(b, n, num_l, num_p, dtype=torch.bool)
    types = torch.full((b, n, num_l), -1)
    for i, frame in enumerate(lanes):
        for j, (p, t) in enumerate(frame):
            pts[i, 0, j, : len(p)] = torch.as_tensor(p, dtype=torch.float32)
            valid[i, 0, j, : len(p)] = True
            types[i, 0, j] = t
    k = torch.tensor([[100.0, 0, W / 2], [0, 100.0, H * 0.3], [0, 0, 1]])
    return {
        "images": torch.zeros(b, n, 3, H, W, dtype=torch.uint8),
        "intrinsics": k.expand(b, n, 3, 3).clone(),
        "extrinsics": torch.eye(4).expand(b, n, 4, 4).clone(),
        "camera_mask": torch.tensor(camera_mask),
        "lanes_2d": pts,
        "lanes_2d_valid": valid,
        "lanes_2d_types": types,
        "has_lanes_2d": torch.tensor(has if has is not None else [True] * b),
    }


def _outputs(head: RowAnchorLaneHead, feats: torch.Tensor, b: int, n: int) -> dict[str, torch.Tensor]:
    return {k: v.unflatten(0, (b, n)) for k, v in head({"s32": feats}).items()}


@pytest.mark.parametrize("kind", HEADS)
def test_forward_shapes(kind: str) -> None:
    head = _head(kind)
    for size in [(2, 5), (3, 7)]:  # the outputs do not depend on the input size
        out = head({"s32": torch.randn(6, 16, *size)})
        assert out["exist"].shape == (6, 4)
        assert out["columns"].shape == (6, 4, 8, 41)
        assert out["types"].shape == (6, 4, 6)


def test_conv_head_samples_the_row_anchors_and_bin_centres() -> None:
    head = _head("conv", stride=8, num_rows=5, num_bins=20, row_range=(0.3, 0.9))
    h, w = H // 8, W // 8
    # A stride-8 map whose two channels hold each cell centre's image (u, v): bilinear sampling of a linear ramp
    # is exact away from the border, so the samples must be the bin centres and the row anchors in pixels.
    u = (torch.arange(w) + 0.5) * 8
    v = (torch.arange(h) + 0.5) * 8
    ramp = torch.stack([u[None, :].expand(h, -1), v[:, None].expand(-1, w)])[None]
    got = head.sample(ramp)[0]
    # It is grid_sample (bilinear, border, align_corners=False) on the anchors' and bins' normalised coordinates,
    # written as two interpolation MatMuls: the same samples on any map, border rows and columns included.
    grid = head.coords.permute(0, 2, 3, 1)  # (1, R, G, 2) as (x, y)
    for feats in (ramp, torch.randn(3, 4, h, w), torch.randn(1, 2, 5, 7)):
        reference = torch.nn.functional.grid_sample(feats, grid.expand(len(feats), -1, -1, -1), mode="bilinear",
                                                    padding_mode="border", align_corners=False)
        torch.testing.assert_close(head.sample(feats), reference, atol=2e-6, rtol=1e-5)
    inner = (got[0] > 4) & (got[0] < W - 4) & (got[1] > 4) & (got[1] < H - 4)
    bins = (torch.arange(20) + 0.5) * W / 20
    assert inner.sum() > 50
    torch.testing.assert_close(got[0][inner], bins.expand(5, -1)[inner])
    torch.testing.assert_close(got[1][inner], head.row_anchors(H)[:, None].expand(-1, 20)[inner])


def test_u_at_rows_matches_the_numpy_reference() -> None:
    rng = np.random.default_rng(0)
    poly = np.stack([rng.uniform(0, W, 7), np.sort(rng.uniform(0, H, 7))[::-1]], axis=1)
    poly[3, 1] = poly[2, 1]  # a horizontal segment covers nothing
    rows = np.linspace(0, H, 23)
    ref = interpolate_x_at_y(poly, rows)
    pts = torch.as_tensor(poly, dtype=torch.float32)[None]
    valid = torch.ones(1, 7, dtype=torch.bool)
    u, covered = u_at_rows(pts, valid, torch.as_tensor(rows, dtype=torch.float32))
    np.testing.assert_array_equal(covered[0].numpy(), ~np.isnan(ref))
    np.testing.assert_allclose(u[0].numpy()[~np.isnan(ref)], ref[~np.isnan(ref)], atol=1e-3)


def test_slots_are_ego_relative_left_to_right() -> None:
    head = _head()
    ego_left, ego_right = _lane(50.0), _lane(115.0)
    left2, left3, right2 = _lane(-40.0), _lane(-200.0), _lane(260.0)  # these leave through the image sides
    # Frame 0: five lanes in scrambled order; frame 1: only the ego lane's lines.
    batch = _batch([[(right2, 5), (left3, 0), (ego_right, 1), (left2, 2), (ego_left, 3)],
                    [(ego_right, 1), (ego_left, 0)]])
    t = head.targets(batch)
    assert t["lane_index"][0, 0].tolist() == [3, 4, 2, 0]  # left2, ego_left, ego_right, right2; left3 dropped
    assert t["types"][0, 0].tolist() == [2, 3, 1, 5]
    assert t["lane_index"][1, 0].tolist() == [-1, 1, 0, -1]  # ego lines keep slots 1 and 2
    assert t["exist"][1, 0].tolist() == [False, True, True, False]
    assert (t["bins"][1, 0, 0] == head.num_bins).all()  # empty slot: every row "absent"
    # Bin of the ego-left line at the bottom row anchor (v = H): u = 50 -> bin floor(50 / 160 * 40) = 12.
    assert t["bins"][1, 0, 1, -1] == 12


@pytest.mark.parametrize("kind", HEADS)
def test_loss_is_masked_by_presence(kind: str) -> None:
    head = _head(kind)
    lanes = [[(_lane(50.0), 1)], [(_lane(110.0), 1)]]
    feats = torch.randn(2, 16, 2, 5, requires_grad=True)
    out = _outputs(head, feats, 2, 1)
    none = head.loss(out, _batch(lanes, has=[False, False]))
    assert set(none) == {"exist", "columns", "position", "type"}
    total = sum(none.values())
    assert total.item() == 0.0 and total.requires_grad
    total.backward()
    assert torch.isfinite(feats.grad).all() and (feats.grad == 0).all()
    # One labelled frame and a padded camera slot: only the labelled, real camera counts.
    batch = _batch(lanes, has=[True, False], camera_mask=[[True, False], [True, True]])
    batch_solo = _batch(lanes[:1])
    out2 = _outputs(head, torch.cat([feats[:1], torch.randn(3, 16, 2, 5)]), 2, 2)
    masked = head.loss(out2, batch)
    solo = head.loss({k: v[:1, :1] for k, v in out2.items()}, batch_solo)
    for k in masked:
        torch.testing.assert_close(masked[k], solo[k])


def test_a_lane_of_a_type_the_head_does_not_classify_counts_only_as_a_lane() -> None:
    head = _head("conv", num_types=2)
    out = _outputs(head, torch.randn(1, 16, 2, 5), 1, 1)
    unknown = head.loss(out, _batch([[(_lane(50.0), 5)]]))  # type 5 of a 2-type head: no crash, no type term
    known = head.loss(out, _batch([[(_lane(50.0), 1)]]))
    assert unknown["type"].item() == 0.0 and known["type"].item() > 0.0
    for term in ("exist", "columns", "position"):  # still a lane where it is
        torch.testing.assert_close(unknown[term], known[term])


@pytest.mark.parametrize("kind", HEADS)
def test_overfits_a_tiny_batch(kind: str) -> None:
    torch.manual_seed(0)
    head = _head(kind)
    batch = _batch([[(_lane(50.0), 1), (_lane(115.0), 0)], [(_lane(20.0), 2), (_lane(140.0), 5), (_lane(-30.0), 3)]])
    feats = torch.randn(2, 16, 2, 5)
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        total = sum(head.loss(_outputs(head, feats, 2, 1), batch).values())
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(total.item())
    assert losses[-1] < 0.3 * losses[0], losses[::8]


def test_decode_round_trip_recovers_lanes_within_a_bin() -> None:
    head = _head()
    lanes = [(_lane(50.0), 1), (_lane(115.0), 4), (_lane(-40.0), 2)]
    batch = _batch([lanes])
    t = head.targets(batch)
    # Perfect logits from the targets.
    g = head.num_bins
    outputs = {
        "exist": torch.where(t["exist"], 20.0, -20.0),
        "columns": torch.nn.functional.one_hot(t["bins"], g + 1).float() * 20.0,
        "types": torch.nn.functional.one_hot(t["types"].clamp(min=0), 6).float() * 20.0,
    }
    dec = head.decode(outputs, (H, W))
    assert dec["points"].shape == (1, 1, 4, 8, 2) and dec["points_valid"].shape == (1, 1, 4, 8)
    assert ((dec["exist"] > 0.5) == t["exist"]).all()
    assert (dec["types"][t["exist"]] == t["types"][t["exist"]]).all()
    torch.testing.assert_close(dec["points_valid"], t["bins"] < g)
    rows = head.row_anchors(H)
    for slot, lane_idx in enumerate(t["lane_index"][0, 0].tolist()):
        if lane_idx < 0:
            continue
        ref = interpolate_x_at_y(lanes[lane_idx][0], rows.numpy())
        got = dec["points"][0, 0, slot]
        ok = dec["points_valid"][0, 0, slot].numpy()
        assert ok.any()
        assert np.abs(got[ok, 0].numpy() - ref[ok]).max() <= W / g  # within one bin
        np.testing.assert_allclose(got[:, 1].numpy(), rows.numpy())


@pytest.mark.parametrize("kind", HEADS)
def test_refuses_a_missing_level(kind: str) -> None:
    with pytest.raises(ValueError, match="stride 4 is not a neck level"):
        _head(kind, stride=4)


def test_refuses_an_unknown_classifier() -> None:
    with pytest.raises(ValueError, match="classifier must be 'mlp' or 'conv', found 'transformer'"):
        _head("transformer")


@pytest.mark.parametrize("kind", HEADS)
@pytest.mark.parametrize(("field", "value"), [("num_slots", 0), ("num_rows", 0), ("num_bins", 0), ("num_bins", -1),
                                              ("num_types", 0), ("decode_window", -1)])
def test_refuses_empty_sizes_and_a_negative_decode_window_by_name(kind: str, field: str, value: int) -> None:
    # Before: an error deep in a conv, a reshape or math.log, or (decode_window) NaN points from the decode.
    with pytest.raises(ValueError, match=f"lanes_2d head: {field} must be >= [01].*, found {value}"):
        _head(kind, **{field: value})
