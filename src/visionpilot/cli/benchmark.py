"""``visionpilot-benchmark``: time PyTorch checkpoints and ONNX files on the same inputs, print the table.

    visionpilot-benchmark "models={pytorch: runs/demo/checkpoints/last.ckpt, onnx-fp32: runs/export-fp32/model.onnx, \\
        onnx-int8: runs/export-int8/model.onnx}" hydra.run.dir=runs/benchmark
    visionpilot-benchmark "models={yolo: {path: yolov8n.onnx, input_shape: [1,3,640,640]}}" scaling.enabled=false

Writes ``benchmark.json``, ``benchmark.md`` and ``scaling.png`` in its run dir (see visionpilot/export/benchmark.py).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from visionpilot.paths import config_dir


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="benchmark")
def main(cfg: DictConfig) -> None:
    from visionpilot.export.benchmark import benchmark, format_markdown

    report = benchmark(cfg)
    print(format_markdown(report))
    print(f"run dir: {cfg.paths.output_dir} (benchmark.json, benchmark.md"
          + (", scaling.png)" if (report.get("scaling") or {}).get("plot") else ")"))


if __name__ == "__main__":
    main()
