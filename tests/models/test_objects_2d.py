"""CenterNet 2D head: shapes, targets, masking, overfitting, and an encode -> decode round trip within 1 px."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from visionpilot.models.heads.objects_2d import CenterNetHead, gaussian_radius

H, W = 64, 160


def _head(**kw) -> CenterNetHead:
    args = dict(in_channels=16, strides=[8, 16, 32], stride=8, num_classes=6, head_channels=16, top_k=20)
    return CenterNetHead(**(args | kw))


def _batch(boxes: list[list[tuple[list[float], int]]], has: list[bool] | None = None,
           camera_mask: list[list[bool]] | None = None) -> dict[str, torch.Tensor]:
    """A batch following the contract (2D-box keys only), boxes in camera 0 of each frame."""
    b = len(boxes)
    camera_mask = camera_mask or [[True] for _ in range(b)]
    n = len(camera_mask[0])
    m = max(1, max(len(fr) for fr in boxes))
    xyxy = torch.zeros(b, n, m, 4)
    classes = torch.full((b, n, m), -1)
    for i, frame in enumerate(boxes):
        for j, (box, c) in enumerate(frame):
            xyxy[i, 0, j] = torch.tensor(box)
            classes[i, 0, j] = c
    return {
        "images": torch.zeros(b, n, 3, H, W, dtype=torch.uint8),
        "camera_mask": torch.tensor(camera_mask),
        "boxes_2d": xyxy,
        "boxes_2d_classes": classes,
        "boxes_2d_mask": classes >= 0,
        "has_boxes_2d": torch.tensor(has if has is not None else [True] * b),
    }


def _outputs(head: CenterNetHead, feats: torch.Tensor, b: int, n: int) -> dict[str, torch.Tensor]:
    return {k: v.unflatten(0, (b, n)) for k, v in head({"s8": feats}).items()}


def _centernet_radius(height: float, width: float, min_overlap: float = 0.7) -> float:
    """The reference implementation (CenterNet, src/lib/utils/image.py), verbatim in numpy."""
    a1, b1 = 1, height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + np.sqrt(b1**2 - 4 * a1 * c1)) / 2
    a2, b2 = 4, 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + np.sqrt(b2**2 - 4 * a2 * c2)) / 2
    a3, b3 = 4 * min_overlap, -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + np.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def test_forward_shapes() -> None:
    out = _head()({"s8": torch.randn(6, 16, 8, 20)})
    assert out["heatmap"].shape == (6, 6, 8, 20)
    assert out["size"].shape == (6, 2, 8, 20) and out["offset"].shape == (6, 2, 8, 20)


def test_gaussian_radius_matches_centernet() -> None:
    sizes = [(3.0, 5.0), (10.0, 2.5), (40.0, 80.0), (0.5, 0.7)]
    got = gaussian_radius(torch.tensor([h for h, _ in sizes]), torch.tensor([w for _, w in sizes]))
    np.testing.assert_allclose(got.numpy(), [_centernet_radius(h, w) for h, w in sizes], rtol=1e-5)


def test_targets_put_a_unit_peak_at_each_centre() -> None:
    head = _head()
    batch = _batch([[([20.0, 10.0, 60.0, 42.0], 0), ([100.0, 20.0, 110.0, 40.0], 4)]])
    t = head.targets(batch, (8, 20))
    heat = t["heatmap"][0, 0]  # (C, h, w)
    # Box 0: centre (40, 26) px -> cell (5, 3), offset (0, 0.25); box 1: centre (105, 30) -> cell (13, 3).
    assert heat[0, 3, 5] == 1 and heat[4, 3, 13] == 1
    assert (heat == 1).sum() == 2 and heat[1:4].sum() == 0
    assert t["index"][0, 0].tolist() == [3 * 20 + 5, 3 * 20 + 13]
    torch.testing.assert_close(t["offset"][0, 0, 0], torch.tensor([0.0, 0.25]))
    torch.testing.assert_close(t["size"][0, 0, 0], torch.tensor([5.0, 4.0]).log())
    assert 0 < heat[0, 3, 4] < 1  # the gaussian spreads to neighbours


@pytest.mark.parametrize("area", [0.0, 0.54])
def test_colliding_centres_regress_only_the_largest_box(area: float) -> None:
    head = _head(regress_area=area)
    # A near car (40x32 px) and a far one (10x8 px) straight behind it: both centres fall in cell (5, 3).
    near, far, elsewhere = [20.0, 10.0, 60.0, 42.0], [36.0, 24.0, 46.0, 32.0], [100.0, 20.0, 110.0, 40.0]
    batch = _batch([[(far, 0), (near, 0), (elsewhere, 4)]])
    t = head.targets(batch, (8, 20))
    assert t["index"][0, 0, 0] == t["index"][0, 0, 1]
    assert t["box_mask"][0, 0].tolist() == [True, True, True]
    # The far box's only regression cell is the near box's centre cell, which the larger box owns.
    assert t["regress_mask"][0, 0].tolist() == [False, True, True]
    torch.testing.assert_close(t["size_map"][0, 0, :, 3, 5], torch.tensor([5.0, 4.0]).log())
    # The heatmap still marks both classes' centres; with equal areas the first box wins.
    assert t["heatmap"][0, 0, 0, 3, 5] == 1
    tie = head.targets(_batch([[(near, 0), (near, 1)]]), (8, 20))
    assert tie["regress_mask"][0, 0].tolist() == [True, False]
    # Areas that differ by a sliver (0.50 and 0.52 cells, the smaller first) still go to the larger box.
    close = head.targets(_batch([[([40.0, 20.0, 44.0, 28.0], 0), ([40.0, 20.0, 44.0, 28.32], 1)]]), (8, 20))
    assert close["regress_mask"][0, 0].tolist() == [False, True]
    # So a head that predicts the owners' targets has zero size and offset loss, one that is off at the shared
    # cell does not.
    out = {k: torch.zeros(1, 1, *v.shape[1:]) for k, v in head({"s8": torch.zeros(1, 16, 8, 20)}).items()}
    out["size"][0, 0], out["offset"][0, 0] = t["size_map"][0, 0], t["offset_map"][0, 0]
    losses = head.loss(out, batch)
    assert losses["size"].item() < 1e-6 and losses["offset"].item() < 1e-6
    out["size"][0, 0, :, 3, 5] = torch.tensor([10 / 8, 1.0]).log()  # the far box's size
    assert head.loss(out, batch)["size"].item() > 0.1


def test_regression_cells_cover_the_box_centre_with_unit_weight_per_box() -> None:
    # A 40x32 px box at stride 8 (5x4 cells, centre (40, 26) px -> cell (5, 3)): TTFNet's central 0.54 fraction
    # spans +-1.35 cells across and +-1.08 down, so the 3x3 cells around the centre regress it.
    gt = [([20.0, 10.0, 60.0, 42.0], 0), ([101.3, 20.7, 110.9, 40.2], 4)]
    t = _head(regress_area=0.54).targets(_batch([gt]), (8, 20))
    w0 = t["regress_weight"][0, 0]
    cells = (w0[:, :10] > 0).nonzero().tolist()
    assert cells == [[y, x] for y in (2, 3, 4) for x in (4, 5, 6)]
    assert w0[3, 5] == w0[:, :10].max()  # the gaussian peaks at the centre cell
    torch.testing.assert_close(w0[:, :10].sum(), torch.tensor(1.0))
    torch.testing.assert_close(w0[:, 10:].sum(), torch.tensor(1.0))  # a small box: its centre cell alone
    # Every cell regresses its own offset to the same centre, and the same size.
    torch.testing.assert_close(t["offset_map"][0, 0, :, 2, 4], torch.tensor([5.0 - 4, 3.25 - 2]))
    torch.testing.assert_close(t["size_map"][0, 0, :, 4, 6], torch.tensor([5.0, 4.0]).log())
    # regress_area=0 (the default) is CenterNet: the centre cell only.
    t0 = _head().targets(_batch([gt]), (8, 20))
    assert (t0["regress_weight"][0, 0] > 0).nonzero().tolist() == [[3, 5], [3, 13]]
    with pytest.raises(ValueError, match="regress_area must be in"):
        _head(regress_area=1.5)


def test_loss_is_masked_by_presence() -> None:
    head = _head()
    boxes = [[([20.0, 10.0, 60.0, 42.0], 0)], [([100.0, 20.0, 110.0, 40.0], 4)]]
    feats = torch.randn(2, 16, 8, 20, requires_grad=True)
    none = head.loss(_outputs(head, feats, 2, 1), _batch(boxes, has=[False, False]))
    assert set(none) == {"heatmap", "size", "offset"}
    total = sum(none.values())
    assert total.item() == 0.0 and total.requires_grad
    total.backward()
    assert torch.isfinite(feats.grad).all() and (feats.grad == 0).all()
    # A padded camera slot and an unlabelled frame contribute nothing.
    out2 = _outputs(head, torch.cat([feats[:1], torch.randn(3, 16, 8, 20)]), 2, 2)
    masked = head.loss(out2, _batch(boxes, has=[True, False], camera_mask=[[True, False], [True, True]]))
    solo = head.loss({k: v[:1, :1] for k, v in out2.items()}, _batch(boxes[:1]))
    for k in masked:
        torch.testing.assert_close(masked[k], solo[k])


def test_overfits_a_tiny_batch() -> None:
    torch.manual_seed(0)
    head = _head()
    batch = _batch([[([20.0, 10.0, 60.0, 42.0], 0), ([100.0, 20.0, 110.0, 40.0], 4)],
                    [([5.0, 30.0, 45.0, 60.0], 1)]])
    feats = torch.randn(2, 16, 8, 20)
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        total = sum(head.loss(_outputs(head, feats, 2, 1), batch).values())
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(total.item())
    assert losses[-1] < 0.3 * losses[0], losses[::8]


def test_decode_round_trip_recovers_boxes_within_a_pixel() -> None:
    head = _head()
    gt = [([20.0, 10.0, 60.0, 42.0], 0), ([101.3, 20.7, 110.9, 40.2], 4), ([3.0, 33.0, 47.5, 63.0], 2)]
    t = head.targets(_batch([gt]), (8, 20))
    # Perfect raw outputs: logit of the target heatmap, size/offset written at each centre cell.
    size = torch.zeros(1, 1, 2, 8 * 20)
    offset = torch.zeros(1, 1, 2, 8 * 20)
    size[0, 0, :, t["index"][0, 0]] = t["size"][0, 0].T
    offset[0, 0, :, t["index"][0, 0]] = t["offset"][0, 0].T
    outputs = {"heatmap": t["heatmap"].clamp(1e-6, 1 - 1e-6).logit(),
               "size": size.view(1, 1, 2, 8, 20), "offset": offset.view(1, 1, 2, 8, 20)}
    _assert_decodes_to(head.decode(outputs), gt)


def _assert_decodes_to(dec: dict[str, torch.Tensor], gt: list[tuple[list[float], int]]) -> None:
    """The decoded top-20 of one image holds exactly the ground truth's boxes first (score > 0.99, within 1 px)."""
    assert dec["scores"].shape == (1, 1, 20) and dec["boxes"].shape == (1, 1, 20, 4)
    n = len(gt)
    assert (dec["scores"][0, 0, :n] > 0.99).all() and (dec["scores"][0, 0, n:] < 0.99).all()
    for box, cls in gt:
        hit = (dec["classes"][0, 0, :n] == cls).nonzero()[:, 0]
        assert len(hit) == 1
        np.testing.assert_allclose(dec["boxes"][0, 0, hit[0]].numpy(), box, atol=1.0)


def test_decoded_boxes_are_clipped_to_the_image_as_the_labels_are() -> None:
    """A box predicted past the border is cut at it, as the label of a truncated object is: at the image size given,
    else the feature map's extent times the stride."""
    head = _head(top_k=3)
    heatmap = torch.full((1, 1, 6, 8, 20), -9.0)
    heatmap[0, 0, 0, 0, 0] = 9.0    # a peak in the top-left cell ...
    heatmap[0, 0, 1, 7, 19] = 9.0   # ... and one in the bottom-right cell
    size = torch.full((1, 1, 2, 8, 20), float(np.log(6.0)))  # 48 x 48 px boxes around both corner cells
    dec = head.decode({"heatmap": heatmap, "size": size, "offset": torch.full((1, 1, 2, 8, 20), 0.5)}, (60, 150))
    boxes = {int(c): b.tolist() for c, b in zip(dec["classes"][0, 0, :2], dec["boxes"][0, 0, :2])}
    assert boxes == {0: pytest.approx([0.0, 0.0, 28.0, 28.0]), 1: pytest.approx([132.0, 36.0, 150.0, 60.0])}
    dec = head.decode({"heatmap": heatmap, "size": size, "offset": torch.full((1, 1, 2, 8, 20), 0.5)})
    boxes = {int(c): b.tolist() for c, b in zip(dec["classes"][0, 0, :2], dec["boxes"][0, 0, :2])}
    assert boxes == {0: pytest.approx([0.0, 0.0, 28.0, 28.0]), 1: pytest.approx([132.0, 36.0, 160.0, 64.0])}


def test_decode_pads_when_the_map_has_fewer_cells_than_top_k() -> None:
    head = _head(num_classes=2, top_k=50)
    out = head({"s8": torch.randn(1, 16, 4, 5)})
    dec = head.decode({k: v[None] for k, v in out.items()})
    assert dec["scores"].shape == (1, 1, 50) and dec["boxes"].shape == (1, 1, 50, 4)
    assert (dec["classes"][0, 0, 40:] == -1).all() and (dec["scores"][0, 0, 40:] == 0).all()


def test_refuses_a_missing_level() -> None:
    with pytest.raises(ValueError, match="stride 4 is not a neck level"):
        _head(stride=4)


@pytest.mark.parametrize("area", [0.0, 0.54])
def test_a_box_regresses_at_its_own_centre_cell_inside_a_larger_box(area: float) -> None:
    # A far car (10x8 px, centre (49, 30) px -> cell (6, 3)) next to the centre cell of a near one (40x32 px, centre
    # cell (5, 3)): with TTFNet's areas the near car's area covers the far car's centre cell, but that cell must
    # regress the far car, or decoding its peak returns the near car's box.
    head = _head(regress_area=area)
    near, far = [20.0, 10.0, 60.0, 42.0], [44.0, 26.0, 54.0, 34.0]
    t = head.targets(_batch([[(near, 0), (far, 1)]]), (8, 20))
    assert t["regress_mask"][0, 0].tolist() == [True, True]
    out = {"heatmap": t["heatmap"].clamp(1e-6, 1 - 1e-6).logit(), "size": t["size_map"], "offset": t["offset_map"]}
    dec = head.decode(out)
    assert (dec["scores"][0, 0, :2] > 0.99).all()
    for box, cls in ((near, 0), (far, 1)):
        hit = (dec["classes"][0, 0, :2] == cls).nonzero()[:, 0]
        np.testing.assert_allclose(dec["boxes"][0, 0, hit[0]].numpy(), box, atol=1e-4)


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("top_k", 0, ">= 1"), ("top_k", -1, ">= 1"), ("num_classes", 0, ">= 1"), ("prior", 0.0, r"in \(0, 1\)"),
    ("prior", 1.5, r"in \(0, 1\)"), ("min_overlap", 1.0, r"in \(0, 1\)"), ("min_overlap", 0.0, r"in \(0, 1\)"),
])
def test_refuses_empty_sizes_and_out_of_range_probabilities_by_name(field: str, value: float, expected: str) -> None:
    # Before: top_k=0 decoded to nothing, a min_overlap outside (0, 1) gave every box a radius 0 silently, the others
    # failed deep (topk, math.log, a conv) without naming the field.
    with pytest.raises(ValueError, match=f"objects_2d head: {field} must be {expected}, found {value}"):
        _head(**{field: value})


def test_objectness_class_head_outputs_losses_and_decode() -> None:
    """class_head="objectness": one centre map and a class softmax; perfect outputs decode every box with its class,
    and the class term is a cross-entropy that a wrong class raises."""
    head = _head(class_head="objectness")
    out = _outputs(head, torch.randn(2, 16, 8, 20), 2, 1)
    assert out["objectness"].shape == (2, 1, 1, 8, 20) and out["classes"].shape == (2, 1, 6, 8, 20)
    assert "heatmap" not in out
    gt = [([20.0, 10.0, 60.0, 42.0], 0), ([101.3, 20.7, 110.9, 40.2], 4), ([3.0, 33.0, 47.5, 63.0], 2)]
    batch = _batch([gt])
    assert set(head.loss(_outputs(head, torch.randn(1, 16, 8, 20), 1, 1), batch)) == {
        "heatmap", "classes", "size", "offset"}
    t = head.targets(batch, (8, 20))
    heat, cls = t["heatmap"].max(dim=2, keepdim=True)
    right = torch.nn.functional.one_hot(cls[:, :, 0], 6).permute(0, 1, 4, 2, 3).float() * 20.0
    perfect = {"objectness": heat.clamp(1e-6, 1 - 1e-6).logit(), "classes": right,
               "size": t["size_map"], "offset": t["offset_map"]}
    dec = head.decode(perfect)
    assert (dec["scores"][0, 0, :3] > 0.99).all() and (dec["scores"][0, 0, 3:] < 0.99).all()
    for box, c in gt:
        hit = (dec["classes"][0, 0, :3] == c).nonzero()[:, 0]
        assert len(hit) == 1
        np.testing.assert_allclose(dec["boxes"][0, 0, hit[0]].numpy(), box, atol=1.0)
    losses = head.loss(perfect, batch)
    assert losses["classes"] < 1e-6
    wrong = dict(perfect, classes=right.roll(1, dims=2))
    assert head.loss(wrong, batch)["classes"] > 10.0
    assert head.loss(wrong, batch)["heatmap"] == losses["heatmap"]


def test_objectness_class_head_refuses_an_unknown_kind() -> None:
    with pytest.raises(ValueError, match="class_head must be 'per_class' or 'objectness', found 'softmax'"):
        _head(class_head="softmax")


def _two_level_head(**kw) -> CenterNetHead:
    """Strides 4 and 8 sharing the branches; boxes whose larger side is under 24 px on stride 4."""
    args = dict(in_channels=16, strides=[4, 8, 16], stride=[4, 8], level_bounds=[24.0], num_classes=6,
                head_channels=16, top_k=20)
    return CenterNetHead(**(args | kw))


def _perfect_outputs(head: CenterNetHead, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Raw outputs that decode to the labels: the target heatmap's logit, size and offset at each centre cell."""
    outputs = {}
    for level, stride in enumerate(head.strides):
        h, w = H // stride, W // stride
        t = head.targets(batch, (h, w), level)
        size, offset = torch.zeros(1, 1, 2, h * w), torch.zeros(1, 1, 2, h * w)
        keep = t["box_mask"][0, 0]
        size[0, 0, :, t["index"][0, 0][keep]] = t["size"][0, 0][keep].T
        offset[0, 0, :, t["index"][0, 0][keep]] = t["offset"][0, 0][keep].T
        suffix = f"_s{stride}"
        outputs |= {"heatmap" + suffix: t["heatmap"].clamp(1e-6, 1 - 1e-6).logit(),
                    "size" + suffix: size.view(1, 1, 2, h, w), "offset" + suffix: offset.view(1, 1, 2, h, w)}
    return outputs


def test_two_levels_put_each_box_on_one_level_by_its_larger_side() -> None:
    head = _two_level_head()
    small, large = ([100.0, 20.0, 120.0, 30.0], 1), ([20.0, 10.0, 60.0, 42.0], 0)  # larger sides 20 and 40 px
    edge = ([70.0, 40.0, 94.0, 50.0], 2)  # exactly 24 px: the coarse level's, as FCOS's ranges start inclusive
    batch = _batch([[small, large, edge]])
    fine, coarse = head.targets(batch, (H // 4, W // 4), 0), head.targets(batch, (H // 8, W // 8), 1)
    assert fine["box_mask"][0, 0].tolist() == [True, False, False]
    assert coarse["box_mask"][0, 0].tolist() == [False, True, True]
    assert fine["heatmap"][0, 0, 1].max() == 1 and fine["heatmap"][0, 0, [0, 2]].max() == 0
    assert coarse["heatmap"][0, 0, 1].max() == 0 and coarse["heatmap"][0, 0, [0, 2]].amax((-2, -1)).tolist() == [1, 1]
    # Each level's outputs carry its suffix; the branches are shared, so the parameters are one level's.
    out = head({"s4": torch.randn(2, 16, H // 4, W // 4), "s8": torch.randn(2, 16, H // 8, W // 8)})
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "heatmap_s4": (2, 6, 16, 40), "size_s4": (2, 2, 16, 40), "offset_s4": (2, 2, 16, 40),
        "heatmap_s8": (2, 6, 8, 20), "size_s8": (2, 2, 8, 20), "offset_s8": (2, 2, 8, 20)}
    assert sum(p.numel() for p in head.parameters()) == sum(p.numel() for p in _head().parameters())


def test_two_levels_decode_round_trip_recovers_small_and_large_boxes() -> None:
    head = _two_level_head()
    # Two 10 px boxes whose centres share a stride-8 cell (one decodes there at most) but not a stride-4 one.
    gt = [([100.0, 20.0, 110.0, 30.0], 1), ([105.0, 21.0, 115.0, 29.0], 3), ([20.0, 10.0, 60.0, 42.0], 0),
          ([3.0, 33.0, 47.5, 63.0], 2)]
    _assert_decodes_to(head.decode(_perfect_outputs(head, _batch([gt])), (H, W)), gt)


def test_two_levels_loss_counts_each_box_once_whatever_its_level() -> None:
    """Terms divide by all levels' centres and boxes: perfect size and offset give zero, and the terms of a batch with a
    small and a large box equal those of either level alone, weighted by its share."""
    torch.manual_seed(0)
    head = _two_level_head(class_head="objectness")
    batch = _batch([[([100.0, 20.0, 110.0, 30.0], 1), ([20.0, 10.0, 60.0, 42.0], 0)]])
    perfect = _perfect_outputs(_two_level_head(), batch)
    out = head({"s4": torch.randn(1, 16, H // 4, W // 4), "s8": torch.randn(1, 16, H // 8, W // 8)})
    out = {k: v[None] for k, v in out.items()}
    for k in ("size_s4", "offset_s4", "size_s8", "offset_s8"):
        out[k] = perfect[k]
    terms = head.loss(out, batch)
    assert set(terms) == {"heatmap", "classes", "size", "offset"}
    assert terms["size"] == 0 and terms["offset"] == 0 and terms["heatmap"] > 0 and terms["classes"] > 0
    # The size term of one wrong box is halved by the other level's box.
    out["size_s4"] = out["size_s4"] + 1.0
    assert head.loss(out, batch)["size"].item() == pytest.approx(0.5)
    # Unlabelled: every term zero, still differentiable.
    none = head.loss(out, _batch([[]], has=[False]))
    assert all(v == 0 for v in none.values())
    sum(none.values()).backward()


@pytest.mark.parametrize(("kw", "expected"), [
    (dict(stride=[8, 4], level_bounds=[24.0]), "finest first"),
    (dict(stride=[4, 8], level_bounds=[]), "level_bounds must be 1"),
    (dict(stride=[4, 8, 16], level_bounds=[48.0, 24.0]), "increasing"),
    (dict(stride=[4, 8], level_bounds=[0.0]), "positive"),
    (dict(stride=[4, 32], level_bounds=[24.0]), "stride 32 is not a neck level"),
    (dict(stride=8, level_bounds=[24.0]), "needs several levels"),
])
def test_two_levels_refuse_bad_levels_by_name(kw: dict, expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        _two_level_head(**kw)


def test_two_levels_drop_a_box_found_again_on_the_other_level() -> None:
    """The same 24 px box peaking on both levels decodes once (the better score), a box of another class there stays,
    and the dropped one becomes tail padding; with cross_level_iou=1 both peaks stay."""
    def outputs() -> dict[str, torch.Tensor]:
        out = {}
        for stride, cell, logit, offset in ((4, (5, 10), 3.0, 0.5), (8, (2, 5), 2.0, (0.25, 0.75))):
            h, w = H // stride, W // stride
            heat = torch.full((1, 1, 6, h, w), -9.0)
            heat[0, 0, 0, cell[0], cell[1]] = logit
            if stride == 8:
                heat[0, 0, 1, cell[0], cell[1]] = 1.0  # another class at the same place
            off = torch.zeros(1, 1, 2, h, w)
            off[0, 0, 0], off[0, 0, 1] = (offset, offset) if stride == 4 else offset
            size = torch.full((1, 1, 2, h, w), float(np.log(24 / stride)))
            out |= {f"heatmap_s{stride}": heat, f"size_s{stride}": size, f"offset_s{stride}": off}
        return out

    box = [30.0, 10.0, 54.0, 34.0]  # centre (42, 22) on both levels
    dec = _two_level_head(top_k=3).decode(outputs(), (H, W))  # the three peaks, no background
    assert dec["classes"][0, 0].tolist() == [0, 1, -1] and dec["scores"][0, 0, 2] == 0
    assert dec["scores"][0, 0, 0].item() == pytest.approx(torch.sigmoid(torch.tensor(3.0)).item())
    np.testing.assert_allclose(dec["boxes"][0, 0, :2].numpy(), [box, box], atol=1e-4)
    both = _two_level_head(top_k=3, cross_level_iou=1.0).decode(outputs(), (H, W))
    assert both["classes"][0, 0].tolist() == [0, 0, 1]
    with pytest.raises(ValueError, match="cross_level_iou"):
        _two_level_head(cross_level_iou=0.0)
