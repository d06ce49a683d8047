"""BEV heads: target building, shapes, masked losses, a tiny overfit, and decoding perfect outputs back to labels."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from visionpilot.data.vocab import LANE_TYPES, OBJECT_CLASSES, class_index, lane_type_index
from visionpilot.models.heads.lanes_bev import LanesBEVHead
from visionpilot.models.heads.objects_3d import Objects3DHead, gaussian_radius
from visionpilot.models.view_transform import BEVGrid

OBJ_GRID = BEVGrid(x_range=(-8, 8), y_range=(-8, 8), z_range=(-1, 3), cell_size=0.5, z_levels=2)  # 32 x 32
LANE_GRID = BEVGrid(x_range=(-10, 20), y_range=(-8, 8), z_range=(-1, 3), cell_size=0.5, z_levels=2)  # 60 x 32
CAR, PED = class_index("car"), class_index("pedestrian")


@pytest.fixture(autouse=True)
def _flush_denormals() -> None:
    # Denormal floats make CPU convs up to 100x slower on some machines (there is no getter to restore it, and
    # flushing them is what training does anyway).
    torch.set_flush_denormal(True)

# x, y, z, length, width, height, yaw
BOXES = [[3.3, -2.1, 0.8, 4.5, 1.9, 1.6, 0.3], [-4.2, 5.6, 0.9, 0.6, 0.6, 1.7, -2.0], [6.0, 6.0, 1.0, 12.0, 2.5, 3.5,
                                                                                         math.pi / 2]]
CLASSES = [CAR, PED, class_index("truck")]


def _box_batch(has: tuple[bool, bool] = (True, False)) -> dict[str, torch.Tensor]:
    boxes = torch.zeros(2, 4, 7)
    boxes[:, :3] = torch.tensor(BOXES)
    classes = torch.full((2, 4), -1)
    classes[:, :3] = torch.tensor(CLASSES)
    mask = classes >= 0
    return {"boxes_3d": boxes, "boxes_3d_classes": classes, "boxes_3d_mask": mask,
            "has_boxes_3d": torch.tensor(has)}


def _lane_batch(has: tuple[bool, bool] = (True, False)) -> dict[str, torch.Tensor]:
    xs = torch.arange(-10.0, 21.0, 2.0)  # 16 points, 2 m apart
    lanes = [
        (torch.full_like(xs, 1.75), "white_dashed"),
        (torch.full_like(xs, 5.25), "white_solid"),
        (torch.full_like(xs, -1.75), "yellow_solid"),
        (-5.25 + 0.01 * xs**2, "road_edge"),  # curving left
    ]
    b, n_lanes, p = 2, 5, len(xs) + 2
    pts = torch.zeros(b, n_lanes, p, 3)
    valid = torch.zeros(b, n_lanes, p, dtype=torch.bool)
    types = torch.full((b, n_lanes), -1)
    for i, (ys, name) in enumerate(lanes):
        pts[:, i, : len(xs)] = torch.stack([xs, ys, 0.1 * torch.ones_like(xs)], -1)
        valid[:, i, : len(xs)] = True
        types[:, i] = lane_type_index(name)
    return {"lanes_3d": pts, "lanes_3d_valid": valid, "lanes_3d_types": types, "has_lanes_3d": torch.tensor(has)}


def _overfit(head: torch.nn.Module, batch: dict[str, torch.Tensor], channels: int, steps: int = 40) -> list[float]:
    torch.manual_seed(0)
    feats = torch.randn(2, channels, *head.grid.shape)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    history = []
    for _ in range(steps):
        loss = sum(head.loss(head(feats), batch).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(float(loss.detach()))
    return history


# ----------------------------------------------------------------------------------------------------- objects 3D

def test_objects_shapes_and_targets() -> None:
    head = Objects3DHead(in_channels=8, grid=OBJ_GRID, head_channels=8, max_objects=10)
    out = head(torch.randn(2, 8, 32, 32))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "heatmap": (2, len(OBJECT_CLASSES), 32, 32), "offset": (2, 2, 32, 32), "z": (2, 1, 32, 32),
        "size": (2, 3, 32, 32), "rot": (2, 2, 32, 32)}
    t = head.build_targets(_box_batch())
    # Car at (3.3, -2.1): cell (floor(11.3 / 0.5), floor(5.9 / 0.5)) = (22, 11), offset (0.6, 0.8).
    assert t["heatmap"][0, CAR, 22, 11] == 1.0
    assert int(t["cell"][0, 0]) == 22 * 32 + 11
    torch.testing.assert_close(t["offset"][0, 0], torch.tensor([0.6, 0.8]), atol=1e-4, rtol=0)
    assert int((t["heatmap"][0] == 1.0).sum()) == 3  # one peak per box, each in its class channel
    assert t["heatmap"][1].sum() == 0  # frame without 3D labels: no targets
    assert t["valid"].tolist() == [[True, True, True, False], [False] * 4]
    assert gaussian_radius(torch.tensor(9.0), torch.tensor(3.8)) > 0


def test_objects_loss_masked_by_presence_is_zero_and_connected() -> None:
    head = Objects3DHead(in_channels=8, grid=OBJ_GRID, head_channels=8)
    feats = torch.randn(2, 8, 32, 32, requires_grad=True)
    losses = head.loss(head(feats), _box_batch(has=(False, False)))
    assert set(losses) == {"heatmap", "offset", "z", "size", "rot"}
    total = sum(losses.values())
    assert all(float(v.detach()) == 0.0 for v in losses.values())
    total.backward()
    assert feats.grad is not None and torch.isfinite(feats.grad).all()


def test_objects_overfit_tiny_batch() -> None:
    head = Objects3DHead(in_channels=8, grid=OBJ_GRID, head_channels=16)
    history = _overfit(head, _box_batch(has=(True, True)), channels=8)
    assert all(math.isfinite(v) for v in history)
    assert history[-1] < 0.4 * history[0]


def test_objects_decode_of_perfect_outputs_recovers_boxes() -> None:
    head = Objects3DHead(in_channels=8, grid=OBJ_GRID, max_objects=10)
    t = head.build_targets(_box_batch(has=(True, True)))
    b, k = t["cell"].shape
    heat = t["heatmap"].clamp(1e-4, 1 - 1e-4)
    outputs = {"heatmap": torch.log(heat / (1 - heat))}
    for name, dim in (("offset", 2), ("z", 1), ("size", 3), ("rot", 2)):
        value = t[name].reshape(b, k, dim).transpose(1, 2)  # (B, D, K)
        dense = torch.zeros(b, dim, 32 * 32).scatter(2, t["cell"][:, None].expand(-1, dim, -1), value)
        outputs[name] = dense.reshape(b, dim, 32, 32)
    dec = head.decode(outputs)
    assert dec["boxes"].shape == (2, 10, 7) and dec["scores"].shape == (2, 10) and dec["classes"].dtype == torch.int64
    for frame in range(2):
        top = dec["scores"][frame] > 0.99
        assert int(top.sum()) == 3
        boxes, classes = dec["boxes"][frame][top], dec["classes"][frame][top]
        for gt, cls in zip(BOXES, CLASSES):
            gt = torch.tensor(gt)
            match = (boxes[:, :2] - gt[:2]).norm(dim=1).argmin()
            assert int(classes[match]) == cls
            assert (boxes[match, :2] - gt[:2]).abs().max() < 0.5 * OBJ_GRID.cell_size  # within a cell
            torch.testing.assert_close(boxes[match, 2:6], gt[2:6], atol=1e-3, rtol=0)
            yaw_err = math.remainder(float(boxes[match, 6] - gt[6]), 2 * math.pi)
            assert abs(yaw_err) < 1e-3


# -------------------------------------------------------------------------------------------------------- lanes BEV

def test_lanes_shapes_and_targets() -> None:
    head = LanesBEVHead(in_channels=8, grid=LANE_GRID, num_slots=8, head_channels=8)
    out = head(torch.randn(2, 8, 60, 32))
    t_count = len(LANE_TYPES)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "seg": (2, t_count, 60, 32), "z": (2, 1, 60, 32), "pos": (2, 8, 60, 33), "exist": (2, 8),
        "type": (2, 8, t_count)}
    t = head.build_targets(_lane_batch())
    row0 = 20  # x = 0.25: the row whose centre is nearest the ego
    col = int((1.75 + 8) / 0.5)  # 19
    assert t["seg"][0, lane_type_index("white_dashed"), row0, col] == 1
    assert t["seg"][0, lane_type_index("white_dashed"), row0, col + 4] == 0  # line width is ~1-2 cells
    assert t["seg"][1].sum() == 0
    # Slots ordered outwards from the ego: first line left -> slot 3, next left -> 2, first right -> 4, ...
    assert t["exist"][0].tolist() == [0, 0, 1, 1, 1, 1, 0, 0]
    assert t["type"][0].tolist() == [-1, -1, lane_type_index("white_solid"), lane_type_index("white_dashed"),
                                     lane_type_index("yellow_solid"), lane_type_index("road_edge"), -1, -1]
    assert int(t["pos"][0, 3, row0]) == col
    assert int(t["pos"][0, 0, row0]) == 32  # empty slot: "absent"
    assert t["exist"][1].sum() == 0
    torch.testing.assert_close(t["z"][0, 3, row0], torch.tensor(0.1))


def test_lanes_loss_masked_by_presence_is_zero_and_connected() -> None:
    head = LanesBEVHead(in_channels=8, grid=LANE_GRID, head_channels=8)
    feats = torch.randn(2, 8, 60, 32, requires_grad=True)
    losses = head.loss(head(feats), _lane_batch(has=(False, False)))
    assert set(losses) == {"seg", "dice", "pos", "exist", "type", "z"}
    assert all(float(v.detach()) == 0.0 for v in losses.values())
    sum(losses.values()).backward()
    assert feats.grad is not None and torch.isfinite(feats.grad).all()


def test_lanes_loss_on_a_batch_padded_without_lanes() -> None:
    # collate pads a batch in which no frame has 3D lanes to L = P = 1.
    head = LanesBEVHead(in_channels=8, grid=LANE_GRID, head_channels=8)
    batch = {"lanes_3d": torch.zeros(2, 1, 1, 3), "lanes_3d_valid": torch.zeros(2, 1, 1, dtype=torch.bool),
             "lanes_3d_types": torch.full((2, 1), -1), "has_lanes_3d": torch.tensor([True, False])}
    losses = head.loss(head(torch.randn(2, 8, 60, 32)), batch)
    assert all(torch.isfinite(v) for v in losses.values())
    assert float(losses["type"].detach()) == 0.0 and float(losses["z"].detach()) == 0.0


def test_lanes_overfit_tiny_batch() -> None:
    head = LanesBEVHead(in_channels=8, grid=LANE_GRID, head_channels=16, context_dilations=(1, 2))
    history = _overfit(head, _lane_batch(has=(True, True)), channels=8)
    assert all(math.isfinite(v) for v in history)
    assert history[-1] < 0.5 * history[0]


def test_lanes_decode_of_perfect_outputs_recovers_polylines() -> None:
    head = LanesBEVHead(in_channels=8, grid=LANE_GRID, num_slots=8)
    batch = _lane_batch(has=(True, True))
    t = head.build_targets(batch)
    ny = LANE_GRID.ny
    outputs = {
        "seg": (t["seg"] * 2 - 1) * 10,
        "z": torch.full((2, 1, 60, 32), 0.1),
        "pos": F.one_hot(t["pos"], ny + 1).float() * 20,
        "exist": (t["exist"] * 2 - 1) * 10,
        "type": F.one_hot(t["type"].clamp(min=0), len(LANE_TYPES)).float() * 10,
    }
    dec = head.decode(outputs)
    assert dec["points"].shape == (2, 8, 60, 3) and dec["valid"].shape == (2, 8, 60)
    assert dec["seg_prob"].shape == (2, len(LANE_TYPES), 60, 32)
    torch.testing.assert_close(dec["valid"], (t["pos"] < ny) & (t["exist"] > 0)[..., None])
    exists = t["exist"] > 0
    assert torch.equal(dec["types"][exists], t["type"][exists])
    assert (dec["scores"][exists] > 0.99).all() and (dec["scores"][~exists] < 0.01).all()
    # Every decoded point lies on its ground-truth line: within half a cell laterally, at the row's x.
    gt_lines = {3: lambda x: 1.75 + 0 * x, 2: lambda x: 5.25 + 0 * x, 4: lambda x: -1.75 + 0 * x,
                5: lambda x: -5.25 + 0.01 * x**2}
    for slot, fn in gt_lines.items():
        pts = dec["points"][0, slot][dec["valid"][0, slot]]
        assert len(pts) >= 50
        err = (pts[:, 1] - fn(pts[:, 0])).abs().max()
        assert err <= 0.5 * LANE_GRID.cell_size + 1e-4
        torch.testing.assert_close(pts[:, 2], torch.full_like(pts[:, 2], 0.1))


@pytest.mark.parametrize("width", [1.0, 2.0])
def test_lane_raster_width(width: float) -> None:
    head = LanesBEVHead(in_channels=8, grid=LANE_GRID, line_width=width)
    seg = head.build_targets(_lane_batch())["seg"][0, lane_type_index("white_dashed")]
    per_row = seg.sum(dim=1)[2:-2]  # lit cells per row of a straight line along x
    assert per_row.min() >= 1 and per_row.max() <= math.ceil(width) + 1


def test_objects_ignore_classes_the_head_does_not_predict() -> None:
    # A head trained on fewer classes than the vocabulary (num_classes=3) skips the other labels, as the 2D head does.
    head = Objects3DHead(in_channels=8, grid=OBJ_GRID, head_channels=8, num_classes=3)
    batch = _box_batch(has=(True, True))
    batch["boxes_3d_classes"][:, 1] = len(OBJECT_CLASSES) - 1  # the pedestrian relabelled to the last class
    t = head.build_targets(batch)
    assert t["valid"][0].tolist() == [CAR < 3, False, CLASSES[2] < 3, False]
    assert int((t["heatmap"][0] == 1.0).sum()) == int(t["valid"][0].sum())
    losses = head.loss(head(torch.randn(2, 8, 32, 32)), batch)
    assert all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize(("head", "field", "value", "expected"), [
    (Objects3DHead, "max_objects", 0, ">= 1"), (Objects3DHead, "max_objects", -1, ">= 1"),
    (Objects3DHead, "num_classes", 0, ">= 1"), (Objects3DHead, "min_overlap", 1.0, r"in \(0, 1\)"),
    (LanesBEVHead, "num_slots", 0, ">= 1"), (LanesBEVHead, "num_types", 0, ">= 1"),
    (LanesBEVHead, "window", -1, ">= 0 columns"),
])
def test_heads_refuse_empty_sizes_by_name(head: type, field: str, value: float, expected: str) -> None:
    # Before: max_objects=0 decoded to nothing, window=-1 put every decoded point at y = 0 and min_overlap=1 gave
    # every box a radius 0 silently; the others failed deep in a conv or a topk without naming the field.
    with pytest.raises(ValueError, match=f"{head.__name__}: {field} must be {expected}, found {value}"):
        head(in_channels=8, grid=OBJ_GRID, head_channels=8, **{field: value})


def test_lanes_dice_is_a_mean_over_the_drawn_types() -> None:
    """The Dice term is -ln of each drawn type's soft Dice coefficient, averaged over the types the batch draws: a
    right mask costs ~0, a missed type ln(its cells + 1) / (types drawn) whatever the others' cells; weight 0 removes
    the term (still in the graph)."""
    head = LanesBEVHead(in_channels=8, grid=LANE_GRID, head_channels=8)
    batch = _lane_batch(has=(True, True))
    t = head.build_targets(batch)
    perfect = {**head(torch.randn(2, 8, 60, 32)), "seg": (t["seg"] * 2 - 1) * 12}
    assert float(head.loss(perfect, batch)["dice"]) < 1e-3
    drawn = [i for i in range(len(LANE_TYPES)) if t["seg"][:, i].sum() > 0]
    assert len(drawn) == 4
    for missed in ("yellow_solid", "road_edge"):
        seg = perfect["seg"].clone()
        seg[:, lane_type_index(missed)] = -12.0
        cells = float(t["seg"][:, lane_type_index(missed)].sum())
        assert float(head.loss({**perfect, "seg": seg}, batch)["dice"]) == pytest.approx(math.log(cells + 1) / 4,
                                                                                           rel=1e-2)
    with pytest.raises(ValueError, match=r"LanesBEVHead: loss_weights has no term \['dise'\]"):  # it weighed nothing
        LanesBEVHead(in_channels=8, grid=LANE_GRID, loss_weights={"dise": 0.0})
    with pytest.raises(ValueError, match=r"Objects3DHead: loss_weights has no term \['offest'\]"):
        Objects3DHead(in_channels=8, grid=OBJ_GRID, loss_weights={"offest": 2.0})
    off = LanesBEVHead(in_channels=8, grid=LANE_GRID, head_channels=8, loss_weights={"dice": 0.0})
    feats = torch.randn(2, 8, 60, 32, requires_grad=True)
    losses = off.loss(off(feats), batch)
    assert float(losses["dice"].detach()) == 0.0 and losses["dice"].requires_grad


def test_objects_objectness_class_head() -> None:
    """class_head="objectness": one centre map and a class softmax; perfect outputs decode every box with its class;
    the class term is the cross-entropy near the centres."""
    head = Objects3DHead(in_channels=8, grid=OBJ_GRID, max_objects=10, class_head="objectness")
    out = head(torch.randn(2, 8, 32, 32))
    assert out["objectness"].shape == (2, 1, 32, 32) and out["classes"].shape == (2, len(OBJECT_CLASSES), 32, 32)
    assert "heatmap" not in out
    batch = _box_batch(has=(True, True))
    assert set(head.loss(out, batch)) == {"heatmap", "classes", "offset", "z", "size", "rot"}
    t = head.build_targets(batch)
    b, k = t["cell"].shape
    heat, cls = t["heatmap"].max(dim=1, keepdim=True)
    right = F.one_hot(cls[:, 0], len(OBJECT_CLASSES)).permute(0, 3, 1, 2).float() * 20
    outputs = {"objectness": heat.clamp(1e-4, 1 - 1e-4).logit(), "classes": right}
    for name, dim in (("offset", 2), ("z", 1), ("size", 3), ("rot", 2)):
        value = t[name].reshape(b, k, dim).transpose(1, 2)
        outputs[name] = torch.zeros(b, dim, 32 * 32).scatter(2, t["cell"][:, None].expand(-1, dim, -1),
                                                              value).reshape(b, dim, 32, 32)
    dec = head.decode(outputs)
    for frame in range(2):
        top = dec["scores"][frame] > 0.99
        assert int(top.sum()) == 3
        for gt, c in zip(BOXES, CLASSES):
            match = (dec["boxes"][frame][top][:, :2] - torch.tensor(gt[:2])).norm(dim=1).argmin()
            assert int(dec["classes"][frame][top][match]) == c
    assert float(head.loss(outputs, batch)["classes"]) < 1e-6
    wrong = {**outputs, "classes": right.roll(1, dims=1)}
    assert float(head.loss(wrong, batch)["classes"]) > 10.0
    with pytest.raises(ValueError, match="class_head must be 'per_class' or 'objectness', found 'x'"):
        Objects3DHead(in_channels=8, grid=OBJ_GRID, class_head="x")


def test_objects_heatmap_normalised_per_class_weighs_a_rare_class_as_a_common_one() -> None:
    # Five cars and one pedestrian. Joint (CenterNet): the summed loss over the 6 centres. Per class (CenterPoint's
    # per-task normalisation): each class's loss over its own centres, summed over the classes.
    from visionpilot.models.heads import centernet_focal_loss

    boxes = torch.zeros(1, 6, 7)
    boxes[0, :, :3] = torch.tensor([[-6.0 + 2.5 * i, -5.0, 0.8] for i in range(5)] + [[4.0, 5.0, 0.9]])
    boxes[0, :, 3:6] = torch.tensor([4.5, 1.9, 1.6])
    batch = {"boxes_3d": boxes, "boxes_3d_classes": torch.tensor([[CAR] * 5 + [PED]]),
             "boxes_3d_mask": torch.ones(1, 6, dtype=torch.bool), "has_boxes_3d": torch.tensor([True])}
    torch.manual_seed(0)
    joint = Objects3DHead(in_channels=8, grid=OBJ_GRID, head_channels=8)
    per_class = Objects3DHead(in_channels=8, grid=OBJ_GRID, head_channels=8, heatmap_norm="per_class")
    per_class.load_state_dict(joint.state_dict())
    out = joint(torch.randn(1, 8, 32, 32))
    heat = joint.build_targets(batch)["heatmap"]
    sums, counts = centernet_focal_loss(out["heatmap"], heat, torch.ones(1, 1, 1, 1), per_class=True)
    assert counts[CAR] == 5 and counts[PED] == 1 and counts.sum() == 6
    torch.testing.assert_close(joint.loss(out, batch)["heatmap"], sums.sum() / 6)
    expected = (sums / counts.clamp(min=1)).sum()
    torch.testing.assert_close(per_class.loss(out, batch)["heatmap"], expected)
    with pytest.raises(ValueError, match=r"heatmap_norm must be 'joint' or 'per_class', found 'classes'"):
        Objects3DHead(in_channels=8, grid=OBJ_GRID, heatmap_norm="classes")
    with pytest.raises(ValueError, match=r"heatmap_norm='per_class' needs class_head='per_class', found "
                                         r"class_head='objectness'"):
        Objects3DHead(in_channels=8, grid=OBJ_GRID, heatmap_norm="per_class", class_head="objectness")
