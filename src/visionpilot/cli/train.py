"""``visionpilot-train``: train a model from Hydra configs.

    visionpilot-train experiment=demo
    visionpilot-train model=small region=gb trainer.max_epochs=20 hydra.run.dir=runs/gb
    visionpilot-train experiment=demo ckpt_path=runs/demo/checkpoints/last.ckpt   # resume
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from visionpilot.paths import config_dir


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def main(cfg: DictConfig) -> float | None:
    from visionpilot.training.train import train

    metrics, _ = train(cfg)
    keys = [k for k in ("val/lane_f1", "val/det_map50", "val/det_map", "val/bev_map", "val/bev_lane_iou") if k in metrics]
    print("final: " + ", ".join(f"{k}={metrics[k]:.3f}" for k in keys))
    print(f"run dir: {cfg.paths.output_dir} ({cfg.get('metrics_file', 'metrics.json')}, checkpoints/, plots/)")
    monitor = cfg.get("optimized_metric")
    if monitor and monitor not in metrics:  # a sweeper would get None for its objective, with no word why
        raise ValueError(f"field 'optimized_metric': expected a key of metrics.json, one of {sorted(metrics)}; "
                         f"found {monitor!r}")
    return metrics[monitor] if monitor else None


if __name__ == "__main__":
    main()
