"""Mixed training: nuScenes-format (6 cameras, 3D labels) with CULane-format (1 camera, 2D lanes) data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from visionpilot.data.collate import collate_frames
from visionpilot.data.sources.culane import CULaneSource
from visionpilot.data.sources.mixed import MixedSource, SourceDataModule, WeightedEpochSampler, slot_order
from visionpilot.data.sources.nuscenes import CAMERAS, NuScenesSource
from visionpilot.data.sources.synthetic import SyntheticSource
from visionpilot.data.transforms import Resize
from visionpilot.data.writers import write_culane, write_nuscenes
from visionpilot.paths import config_dir

CULANE_SIZE = (59, 164)


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A nuScenes export (US, 3 scenes) and a CULane export (CN, 3 clips: train, val, test), one frame each."""
    base = tmp_path_factory.mktemp("mixed")
    nus = SyntheticSource("nuscenes6", regions=["us"], scenes_per_region=3, frames_per_scene=1, image_size=(90, 160))
    write_nuscenes((nus.load(i) for i in range(len(nus))), base / "nuscenes")
    cul = SyntheticSource("front1", regions=["cn"], scenes_per_region=3, frames_per_scene=1, image_size=(90, 160))
    splits = {f"syn-cn-{j:04d}": s for j, s in enumerate(("train", "val", "test"))}
    write_culane((cul.load(i) for i in range(len(cul))), base / "culane", splits=splits, image_size=CULANE_SIZE)
    return {"nuscenes": base / "nuscenes", "culane": base / "culane"}


def _mixed(roots: dict[str, Path], **kwargs: object) -> MixedSource:
    return MixedSource({"nuscenes": NuScenesSource(roots["nuscenes"]),
                        "culane": CULaneSource(roots["culane"], image_size=CULANE_SIZE)}, **kwargs)


def test_camera_slots_and_partial_labels_in_one_batch(roots: dict[str, Path]) -> None:
    src = _mixed(roots)
    assert slot_order([list(CAMERAS), ["CAM_FRONT"]])[0] == "CAM_FRONT"
    assert src.camera_names == ["CAM_FRONT", *[c for c in CAMERAS if c != "CAM_FRONT"]]
    refs = src.index()
    assert [r.frame_id.split(":")[0] for r in refs] == ["nuscenes"] * 3 + ["culane"] * 3
    assert {r.region for r in refs} == {"us", "cn"}
    nus, cul = src.load(0), src.load(3)
    assert nus.camera_names == src.camera_names and cul.camera_names == ["CAM_FRONT"]
    assert (nus.source, cul.source) == ("nuscenes", "culane") and cul.frame_id == refs[3].frame_id
    resize = Resize((48, 128))
    batch = collate_frames([resize(nus), resize(cul)])
    assert batch["images"].shape == (2, 6, 3, 48, 128)
    assert batch["camera_mask"].tolist() == [[True] * 6, [True] + [False] * 5]
    assert batch["has_boxes_3d"].tolist() == [True, False] and batch["has_lanes_3d"].tolist() == [True, False]
    assert batch["has_lanes_2d"].tolist() == [True, True]
    assert (batch["images"][1, 1:] == 0).all() and torch.equal(batch["intrinsics"][1, 1], torch.eye(3))
    assert batch["lanes_2d_valid"][1, 0].any() and not batch["lanes_2d_valid"][1, 1:].any()


def test_a_source_must_fill_the_first_slots(roots: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match=r"cameras of source 'culane' \['CAM_FRONT'\] must fill the first 1"):
        _mixed(roots, cameras=list(CAMERAS))  # CAM_FRONT_LEFT first
    with pytest.raises(ValueError, match=r"field 'weights' names unknown sources \['kitti'\]"):
        _mixed(roots, weights={"kitti": 1.0})


@pytest.mark.parametrize("weight", [float("nan"), float("inf")])
def test_a_weight_that_is_not_finite_is_refused(roots: dict[str, Path], weight: float) -> None:
    # NaN passed the '>= 0' check and inf made every share NaN: numpy's "probabilities contain NaN" at the first draw.
    with pytest.raises(ValueError, match=r"field 'weights' must be finite and >= 0 with at least one > 0, found "
                                         rf"\{{'nuscenes': 1.0, 'culane': {weight}\}}"):
        _mixed(roots, weights={"culane": weight})


def test_official_splits_are_delegated(roots: dict[str, Path]) -> None:
    src = _mixed(roots)
    assert {src.official_split(r.scene_id) for r in src.index() if r.frame_id.startswith("culane")} == \
        {"train", "val", "test"}
    assert src.official_split("nuscenes:syn-us-0000") is None  # not an official nuScenes scene name


def test_sampling_weights_set_each_sources_share(roots: dict[str, Path]) -> None:
    src = _mixed(roots, weights={"nuscenes": 3.0, "culane": 1.0})
    refs = src.index()[:3] + src.index()[3:4]  # 3 nuScenes frames, 1 CULane frame
    w = src.sampling_weights(refs)
    assert w[:3].sum() == pytest.approx(0.75) and w[3] == pytest.approx(0.25)
    sampler = WeightedEpochSampler(w, 4000, seed=1)
    draws = np.array([i for _, i in sampler])
    assert abs((draws == 3).mean() - 0.25) < 0.03
    sampler.set_epoch(1)
    assert [i for _, i in sampler][:50] != draws[:50].tolist()


def test_weighted_sampler_shards_ranks_and_resumes(monkeypatch: pytest.MonkeyPatch) -> None:
    # Under DDP (use_distributed_sampler=false) each rank must draw its own share, not the whole epoch again.
    weights = np.array([0.5, 0.25, 0.25])
    whole = [i for _, i in WeightedEpochSampler(weights, 11, seed=2)]
    shards = []
    for rank in (0, 1):
        sampler = WeightedEpochSampler(weights, 11, seed=2)
        monkeypatch.setattr(sampler, "replicas", lambda rank=rank: (2, rank))
        assert len(sampler) == 6
        shards.append([i for _, i in sampler])
    assert shards[0] == whole[0::2] and shards[1] == whole[1::2] + [whole[0]]  # padded by wrapping, as DDP needs
    # A restart mid-epoch goes on with the same draws.
    resumed = WeightedEpochSampler(weights, 11, seed=2)
    resumed.load_state_dict({"epoch": 0, "consumed": 4})
    assert [i for _, i in resumed] == whole[4:]


def test_datamodule_draws_by_weight(roots: dict[str, Path], tmp_path: Path) -> None:
    dm = SourceDataModule(_mixed(roots, weights={"nuscenes": 0.0, "culane": 1.0}), image_size=(48, 128),
                          batch_size=2, num_workers=0, manifest_path=tmp_path)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, WeightedEpochSampler)
    assert "sampler" in loader.state_dict()  # the position within the epoch goes into checkpoints
    batch = next(iter(loader))
    # A batch of 1-camera frames still has all 6 slots: slot i is camera_names[i] in every batch.
    assert all(s == "culane" for s in batch["source"]) and batch["images"].shape[1] == 6
    assert batch["camera_mask"][:, 0].all() and batch["camera_mask"][:, 1:].sum() == 0
    assert torch.equal(batch["extrinsics"][0, 5], torch.eye(4)) and (batch["lanes_2d_types"][:, 1:] == -1).all()
    assert dm.frame_counts["val"] == {"cn": 1, "us": 1}


def test_drop_last_keeps_the_only_batch_of_each_ddp_rank(roots: dict[str, Path], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # As VisionPilotDataModule's: a rank with fewer frames than a batch keeps them rather than train on none.
    dm = SourceDataModule(_mixed(roots), image_size=(48, 128), num_workers=0, manifest_path=tmp_path, drop_last=True)
    dm.setup("fit")
    n = len(dm.datasets["train"])
    dm.batch_size = n  # a whole batch on one process, about half of one on each of two ranks
    monkeypatch.setattr(WeightedEpochSampler, "replicas", lambda self: (2, 0))
    batches = list(dm.train_dataloader())
    assert len(batches) == 1 and len(batches[0]["frame_id"]) == (n + 1) // 2


@pytest.mark.slow
def test_mixed_experiment_trains_a_few_steps(roots: dict[str, Path], tmp_path: Path) -> None:
    from visionpilot.training.train import train

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[
            f"paths.output_dir={tmp_path}", "experiment=mixed", "debug=fdr", f"data.roots.nuscenes={roots['nuscenes']}",
            f"data.roots.culane={roots['culane']}", f"data.source.sources.culane.image_size=[{CULANE_SIZE[0]},"
            f"{CULANE_SIZE[1]}]", "data.image_size=[64,176]", "data.batch_size=4", "logger=csv"])
    metrics, objects = train(cfg)
    assert metrics["train/steps"] == 1 and np.isfinite(metrics["train/loss"])
    assert objects["model"].camera_names[0] == "CAM_FRONT" and objects["model"].lane_cameras == ["CAM_FRONT"]
