"""``visionpilot-export``: a checkpoint to one ONNX file for the vehicle, with parity on real frames.

    visionpilot-export ckpt_path=runs/demo/checkpoints/last.ckpt hydra.run.dir=runs/export-fp32
    visionpilot-export ckpt_path=runs/demo/checkpoints/last.ckpt precision=int8 region=gb hydra.run.dir=runs/int8
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from visionpilot.paths import config_dir


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="export")
def main(cfg: DictConfig) -> None:
    from visionpilot.export.pipeline import export, summary

    result = export(cfg)
    print(summary(result))
    print(f"run dir: {cfg.paths.output_dir} ({result['model']}, export.json)")


if __name__ == "__main__":
    main()
