"""``visionpilot-finetune``: fine-tune a global checkpoint on one region.

    visionpilot-finetune ckpt_path=runs/global/checkpoints/last.ckpt region=gb strategy=adapter
    visionpilot-finetune ckpt_path=... region=jp strategy=full replay.fraction=0.5 trainer.max_steps=500
    visionpilot-finetune -m ckpt_path=... region=gb,jp strategy=full,adapter hydra.sweep.dir=runs/ft  # ft/<strategy>-<region>
"""

from __future__ import annotations

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from visionpilot.paths import config_dir

#: Config name of an empty node open to new keys (``defaults: [open_node@data]``): the ``data`` and ``model``
#: nodes of finetune.yaml / eval.yaml are merged onto a checkpoint's stored config, so any key of that config
#: (``data.batch_size=8``, ``data.source.scenes_per_region=40``) must be accepted without Hydra's ``+`` prefix.
OPEN_NODE = "open_node"


def register_open_node() -> None:
    """Register :data:`OPEN_NODE` in Hydra's config store (idempotent; before composing finetune/eval)."""
    ConfigStore.instance().store(name=OPEN_NODE, node=OmegaConf.create({}, flags={"struct": False}))


register_open_node()


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="finetune")
def main(cfg: DictConfig) -> float | None:
    from visionpilot.training.finetune import finetune

    metrics, objects = finetune(cfg)
    region = objects["config"].finetune.region
    keys = [k for k in (f"val/{region}/lane_f1", f"val/{region}/det_map50", f"val/{region}/bev_map",
                        f"val/{region}/bev_lane_iou") if k in metrics]
    summary = objects["summary"]
    print("final: " + ", ".join(f"{k}={metrics[k]:.3f}" for k in keys))
    print(f"strategy {summary['strategy']}: {summary['trainable_params']:,} of {summary['total_params']:,} parameters "
          f"trained; region delta {summary['delta']} ({summary['delta_bytes'] / 1e6:.2f} MB, checkpoint "
          f"{summary['checkpoint_bytes'] / 1e6:.2f} MB)")
    print(f"run dir: {cfg.paths.output_dir} (checkpoints/finetuned.ckpt, {cfg.get('delta_file', 'delta.safetensors')}, "
          f"{cfg.get('metrics_file', 'metrics.json')}, finetune.json)")
    monitor = cfg.get("optimized_metric")
    if monitor and monitor not in metrics:  # a sweeper would get None for its objective, with no word why
        raise ValueError(f"field 'optimized_metric': expected a key of metrics.json, one of {sorted(metrics)}; "
                         f"found {monitor!r}")
    return metrics[monitor] if monitor else None


if __name__ == "__main__":
    main()
