"""Fine-tuning a base trained on a real-format source (nuScenes here): the replay datamodule keeps the base's own
datamodule (root, on_error, padded camera slots), and evaluation maps it back."""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest
import torch
from hydra import compose, initialize_config_dir

import visionpilot.cli.finetune  # noqa: F401  (registers the open config node finetune.yaml uses)
from visionpilot.data.replay import (
    ReplayDataModule,
    SourceReplayDataModule,
    plain_datamodule,
    replay_datamodule,
)
from visionpilot.data.sources.synthetic import SyntheticSource
from visionpilot.data.writers import write_nuscenes
from visionpilot.paths import config_dir
from visionpilot.training.finetune import finetune, write_checkpoint

SIZE = (90, 160)


@pytest.fixture(scope="module")
def nuscenes_base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A nuScenes root (US and SG, 3 scenes x 2 frames each) and a random-weight base checkpoint trained on it."""
    tmp = tmp_path_factory.mktemp("nuscenes_base")
    src = SyntheticSource("nuscenes6", regions=["us", "sg"], scenes_per_region=3, frames_per_scene=2, image_size=SIZE)
    root = write_nuscenes([src.load(i) for i in range(len(src))], tmp / "nuscenes")
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[
            f"paths.output_dir={tmp / 'base'}", "data=nuscenes", f"data.root={root}", "data.image_size=[64,128]",
            "data.num_workers=0", "data.persistent_workers=false", "data.batch_size=2",
            # the fixture's 6 scenes: every split needs one of each region
            "data.source.official_splits=false", "+data.split_fractions={train: 0.34, val: 0.33, test: 0.33}"])
    torch.manual_seed(0)
    net = hydra.utils.instantiate(cfg.model.net)
    meta = {"camera_names": src.camera_names, "image_size": [64, 128], "regions": ["sg", "us"]}
    return root, write_checkpoint(tmp / "base.ckpt", net, cfg, meta)


def test_a_base_trained_on_nuscenes_fine_tunes_on_one_region_with_replay(tmp_path: Path,
                                                                          nuscenes_base: tuple[Path, Path]) -> None:
    # The replay datamodule used to replace the base's SourceDataModule by the synthetic world's one, which does not
    # take the stored 'root' / 'on_error' fields: every fine-tune of a real-dataset base failed with a TypeError.
    _, base = nuscenes_base
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("finetune", overrides=[
            f"paths.output_dir={tmp_path / 'ft'}", f"ckpt_path={base}", "region=sg", "strategy=heads",
            "replay.regions=base", "replay.fraction=0.5", "trainer.max_steps=2", "trainer.limit_val_batches=1",
            "data.num_workers=0", "data.persistent_workers=false", "callbacks.progress_bar=null", "logger=csv"])
    metrics, objects = finetune(cfg)
    dm = objects["datamodule"]
    assert isinstance(dm, SourceReplayDataModule) and dm.root is not None and dm.on_error == "raise"
    assert dm.selected_regions == ["sg"] and dm.selected_replay == ["us"] and dm.replay_per_batch == 1
    batch = next(iter(dm.train_dataloader()))
    assert sorted(batch["region"]) == ["sg", "us"] and batch["images"].shape[1] == 6
    assert metrics["train/steps"] == 2
    assert (tmp_path / "ft" / "delta.safetensors").is_file()


def test_the_replay_datamodule_matches_the_base_datamodule() -> None:
    plain, source = "visionpilot.data.datamodule.VisionPilotDataModule", "visionpilot.data.sources.mixed.SourceDataModule"
    assert replay_datamodule(plain, "base.ckpt").endswith(ReplayDataModule.__name__)
    assert replay_datamodule(None, "base.ckpt").endswith(".ReplayDataModule")
    assert replay_datamodule(source, "base.ckpt").endswith(SourceReplayDataModule.__name__)
    # a fine-tune of a fine-tune, and evaluation, go back to the plain datamodule
    assert replay_datamodule(replay_datamodule(source, "x"), "x") == replay_datamodule(source, "x")
    assert plain_datamodule(replay_datamodule(source, "x")) == source and plain_datamodule(None) == plain
    with pytest.raises(ValueError, match=r"base.ckpt: field 'data._target_'.*found 'visionpilot.data.sources."
                                         r"streaming.StreamingDataModule'"):
        replay_datamodule("visionpilot.data.sources.streaming.StreamingDataModule", "base.ckpt")
