"""Training throughput: frames/s, the fraction of time spent waiting for data, and (on a GPU) model FLOP utilisation.

    python benchmarks/training_throughput.py --steps 40 --warmup 10                  # experiment=demo, this machine
    python benchmarks/training_throughput.py --steps 200 trainer=gpu data.num_workers=8   # Hydra overrides follow

Runs ``visionpilot-train``'s own ``build(cfg)`` (same datamodule, module, trainer) for ``--steps`` optimiser
steps with validation, checkpoints, logging and the progress bar off, and reads the ``Throughput`` callback
(``training/callbacks.py``): frames/s and data-wait fraction over the steps after ``--warmup`` (the first steps
include loader start-up and kernel selection; on a GPU every 10th of them, each synchronised with the device). A frame is one time step of the rig (all its cameras).

Model FLOP utilisation (MFU) = achieved model FLOP/s / the accelerator's peak. Model FLOPs per frame are counted
once over a forward and backward pass of the network on a real batch (``visionpilot.training.flops``: torch's
``FlopCounterMode`` with its grouped-convolution backward formula corrected; matmuls and convolutions, 2 FLOPs per
multiply-add; the optimiser and element-wise ops are not counted, as is usual for MFU). The peak is looked up by
GPU name for the trainer's precision (dense, no sparsity) or given with ``--peak-tflops``. On CPU the achieved
model GFLOP/s is printed and MFU is "n/a (CPU)": a CPU peak depends on clocks and SIMD units no API reports
reliably.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from typing import Any

import torch
from hydra import compose, initialize_config_dir

from visionpilot.paths import config_dir
from visionpilot.training.callbacks import Throughput
from visionpilot.training.flops import training_flops_per_frame
from visionpilot.training.train import build
from visionpilot.utils.machine import cpu_model

#: Dense peak TFLOP/s by GPU name fragment: (bf16/fp16 tensor cores, tf32/fp32). From the vendors' data sheets
#: (SXM parts; PCIe variants are lower: pass --peak-tflops).
GPU_PEAK_TFLOPS = {"H200": (989.0, 494.0), "H100": (989.0, 494.0), "A100": (312.0, 156.0), "L40S": (362.0, 183.0),
                   "L4": (121.0, 60.0), "A10": (125.0, 62.5), "V100": (125.0, 15.7), "T4": (65.0, 8.1)}


def gpu_peak_tflops(precision: str) -> float | None:
    name = torch.cuda.get_device_name(0)
    for key, (half, full) in GPU_PEAK_TFLOPS.items():
        if key in name:
            return half if ("16" in precision) else full
    return None


def flops_per_frame(objects: dict[str, Any]) -> float:
    """Forward + backward model FLOPs of one frame, counted on one training batch."""
    module, dm = objects["model"], objects["datamodule"]
    batch = next(iter(dm.train_dataloader()))
    device = next(module.parameters()).device
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    return training_flops_per_frame(module.net, batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", default="demo")
    parser.add_argument("--steps", type=int, default=40, help="optimiser steps in total")
    parser.add_argument("--warmup", type=int, default=10, help="steps not measured (start-up)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="accelerator peak (default: by GPU name)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the train config")
    args = parser.parse_args()
    torch.set_flush_denormal(True)

    with tempfile.TemporaryDirectory(prefix="vp-throughput-") as out, \
            initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[
            f"experiment={args.experiment}", f"paths.output_dir={out}", f"trainer.max_steps={args.steps}",
            "trainer.max_epochs=-1", "trainer.limit_val_batches=0", "trainer.enable_model_summary=false",
            "+trainer.enable_progress_bar=false",
            "~logger", "callbacks.progress_bar=null", "callbacks.prediction_images=null",
            "callbacks.model_checkpoint=null", "callbacks.periodic_checkpoint=null", "callbacks.lr_monitor=null",
            "++callbacks.time_budget=null",  # the demo's: --steps steps are timed, not what 8 minutes hold
            f"+callbacks.throughput.warmup_steps={args.warmup}", "ckpt_path=never", *args.overrides])
        objects = build(cfg)
        trainer = objects["trainer"]
        trainer.fit(objects["model"], objects["datamodule"])
        meter = next(cb for cb in objects["callbacks"] if isinstance(cb, Throughput))
        stats = meter.summary()
        if not stats:
            raise SystemExit(f"no steps measured: --steps {args.steps} must exceed --warmup {args.warmup}")
        per_frame = flops_per_frame(objects)

    on_gpu = torch.cuda.is_available() and cfg.trainer.accelerator in ("gpu", "cuda", "auto")
    fps = stats["train/frames_per_s"]
    achieved = per_frame * fps  # model FLOP/s
    peak = args.peak_tflops or (gpu_peak_tflops(str(cfg.trainer.precision)) if on_gpu else None)
    if not on_gpu:
        mfu = "n/a (CPU)"
    elif peak is None:
        mfu = "n/a (unknown GPU peak: pass --peak-tflops)"
    else:
        mfu = f"{100 * achieved / (peak * 1e12):.1f} %"
    cameras = len(cfg.rig.cameras) if "cameras" in cfg.rig else None
    result = {
        "experiment": args.experiment, "steps": args.steps, "measured_steps": args.steps - args.warmup,
        "batch_size": int(cfg.data.batch_size), "num_workers": int(cfg.data.num_workers),
        "cameras": cameras, "image_size": list(cfg.data.image_size), "precision": str(cfg.trainer.precision),
        "device": torch.cuda.get_device_name(0) if on_gpu else cpu_model(),
        "threads": torch.get_num_threads(), "cores": os.cpu_count(), "torch": torch.__version__,
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "frames_per_s": fps, "images_per_s": fps * cameras if cameras else None,
        "data_wait_fraction": stats["train/data_wait_fraction"],
        "model_gflop_per_frame": per_frame / 1e9, "achieved_tflop_per_s": achieved / 1e12,
        "peak_tflop_per_s": peak, "mfu": mfu, "overrides": args.overrides,
    }
    print(json.dumps(result))
    print()
    print("| experiment | device | batch | frames/s | images/s | data wait | GFLOP/frame (fwd+bwd) | achieved TFLOP/s "
          "| MFU |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    images = "—" if result["images_per_s"] is None else f"{result['images_per_s']:.1f}"
    print(f"| {args.experiment} | {result['device']} ({result['threads']} threads) | {result['batch_size']} | "
          f"{fps:.2f} | {images} | {100 * result['data_wait_fraction']:.1f} % | {per_frame / 1e9:.2f} | "
          f"{achieved / 1e12:.4f} | {mfu} |")


if __name__ == "__main__":
    main()
