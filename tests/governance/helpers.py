"""Shared pieces of the governance tests: policies as the CLI composes them, and a source that counts reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from visionpilot.data.frame import Frame
from visionpilot.data.sources.synthetic import SyntheticSource
from visionpilot.paths import config_dir

# One forward camera at 64 x 176, few scenes: frames render in milliseconds.
TINY = ["rig=front1", "data.image_size=[64,176]", "data.source.scenes_per_region=3", "data.source.frames_per_scene=2",
        "data.num_workers=0", "data.persistent_workers=false", "data.batch_size=2", "logger=csv",
        "callbacks.progress_bar=null"]


def compose_cfg(name: str, out: Path | None, overrides: list[str]) -> DictConfig:
    """An entry point's config as its console script composes it (``name``: train, finetune, export, data)."""
    import visionpilot.cli.finetune  # noqa: F401  (registers the open config node finetune.yaml uses)

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(name, overrides=([f"paths.output_dir={out}"] if out else []) + overrides)


def policy(name: str = "sovereign", *overrides: str) -> dict[str, Any]:
    """A policy of configs/governance/ as a plain mapping (what the datamodule receives)."""
    cfg = compose_cfg("train", None, [f"governance={name}", *overrides])
    return OmegaConf.to_container(cfg.governance, resolve=True)


class CountingSource(SyntheticSource):
    """The synthetic world, counting loads (class-wide, so a CLI-built instance can be checked too)."""

    loads = 0
    image_loads = 0

    def load(self, index: int, with_images: bool = True) -> Frame:
        type(self).loads += 1
        type(self).image_loads += int(with_images)
        return super().load(index, with_images=with_images)

    @classmethod
    def reset(cls) -> None:
        cls.loads = cls.image_loads = 0
