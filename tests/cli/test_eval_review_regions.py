"""visionpilot-eval: a real-format source (TuSimple: US only), a fine-tuned reference, bad settings."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import hydra
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from visionpilot.cli.eval import run
from visionpilot.data.datamodule import VisionPilotDataModule
from visionpilot.data.replay import ReplayDataModule
from visionpilot.data.sources.synthetic import SyntheticSource
from visionpilot.data.writers import write_tusimple
from visionpilot.evaluation.cross_region import build_eval_datamodule
from visionpilot.paths import config_dir
from visionpilot.training.finetune import write_checkpoint

SIZE = (72, 128)


@pytest.fixture(scope="module")
def tusimple_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint whose stored data config is TuSimple's (SourceDataModule, a source with US frames only)."""
    root = tmp_path_factory.mktemp("tusimple")
    src = SyntheticSource("front1", regions=["us"], scenes_per_region=4, frames_per_scene=2, image_size=(90, 160))
    write_tusimple([src.load(i) for i in range(len(src))], root / "data", image_size=SIZE,
                   splits={"syn-us-0001": "test", "syn-us-0002": "test"})
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.output_dir={root / 'base'}", "data=tusimple",
                                          f"data.root={root / 'data'}", f"data.source.image_size=[{SIZE[0]},{SIZE[1]}]",
                                          "data.image_size=[64,128]", "data.num_workers=0",
                                          "data.persistent_workers=false", "data.batch_size=2"])
    torch.manual_seed(0)
    net = hydra.utils.instantiate(cfg.model.net)
    return write_checkpoint(root / "base.ckpt", net, cfg, {"camera_names": ["CAM_FRONT"], "image_size": [64, 128],
                                                            "regions": ["us"]})


@pytest.mark.parametrize("regions", ["[us]", "global"])
def test_eval_on_a_source_datamodule_and_regions_global(tmp_path: Path, tusimple_checkpoint: Path,
                                                        regions: str) -> None:
    # The stored datamodule (SourceDataModule: root, on_error) must be kept, and regions=global means every region
    # the source has (US), not every registered region.
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("eval", overrides=[f"paths.output_dir={tmp_path / 'eval'}", "data.num_workers=0",
                                         f"models=['{tusimple_checkpoint}']", f"regions={regions}", "split=test",
                                         "plots=0"])
    report = run(cfg)
    data = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["regions"] == data["regions"] == ["us"]
    assert data["frames"]["us"] == 4 and "lane_f1" in data["results"]["base"]["us"]


def test_fine_tuned_reference_is_evaluated_without_replay(tmp_path: Path) -> None:
    # A fine-tune stores the replay datamodule and its settings: evaluation uses the plain datamodule.
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.output_dir={tmp_path}", "rig=front1", "data.num_workers=0",
                                          "data.source.scenes_per_region=2", "data.source.frames_per_scene=1"])
    data = OmegaConf.merge(OmegaConf.to_container(cfg.data, resolve=True), {"_target_": "visionpilot.data.replay.ReplayDataModule",
                                      "replay_regions": ["us"], "replay_fraction": 0.25})
    dm = build_eval_datamodule(SimpleNamespace(config=OmegaConf.create({"data": data})), ["gb"])
    assert type(dm) is VisionPilotDataModule and not isinstance(dm, ReplayDataModule)
    assert dm.regions == ["gb"]


@pytest.mark.parametrize("limit", ["0", "-1", "two"])
def test_eval_refuses_a_bad_batch_limit_before_loading_anything(tmp_path: Path, limit: str) -> None:
    # limit_batches <= 0 used to evaluate no frame and still write a report of empty tables.
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("eval", overrides=[f"paths.output_dir={tmp_path / 'eval'}", f"models=[{tmp_path / 'x.ckpt'}]",
                                         "regions=[us]", f"limit_batches={limit}"])
    with pytest.raises(ValueError, match=r"field 'limit_batches' must be an integer >= 1 or null \(every batch\), "
                                         r"found (0|-1|'two')"):
        run(cfg)
