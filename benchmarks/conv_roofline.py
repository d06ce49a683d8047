"""How close eager PyTorch and onnxruntime run the demo model's convolutions to this CPU's GEMM rate.

    python benchmarks/conv_roofline.py runs/demo/checkpoints/last.ckpt runs/export/fp32/model.onnx \
        [--int8 runs/export/int8/model.onnx] [--threads 2] [--iters 30]

Answers the question behind the issue's "onnxruntime fp32 <= 0.5 x eager" target: how much faster *could* another
runtime be on this machine? It measures, at batch 1 on the benchmark's random frames and ring of cameras:

- the machine's fp32 rate: the faster of a large dense convolution in oneDNN (3 x 3, 256 -> 256 channels at 64 x 64,
  channels-last, PyTorch) and a 2048 x 2048 x 2048 ``MatMul`` in onnxruntime (MLAS), each the best of several calls
  at the same thread count — the practical ceiling for dense convolutions (``torch.mm`` is not used: PyTorch's
  MKL sgemm takes a slower path on AMD CPUs, 195 against 413-467 GFLOP/s on the EPYC of docs/benchmarks.md);
- the model's convolution and matmul FLOPs (``torch.utils.flop_counter``, 2 per multiply-add);
- eager PyTorch (``torch.inference_mode``, freed memory kept and denormals flushed as ``visionpilot-benchmark``
  does): the whole call, and the time in its convolution kernels (``torch.profiler``);
- onnxruntime: the whole call, and the kernel time of its ``Conv`` / ``FusedConv`` (and ``QLinearConv`` in the int8
  graph) nodes (``benchmarks/onnx_profile.py``'s profiler).

and prints each backend's convolution rate as a fraction of that rate, and two floors: the latency an fp32 runtime
would reach if its convolutions ran at that rate and everything else (view transform, decode, element-wise ops)
took no time at all, and the int8 graph's latency if its convolutions ran at 4x that rate (AVX-512 VNNI's
multiply-adds per instruction against fp32 FMA's) with its float parts as measured.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).parent))
from onnx_profile import profile as ort_profile  # noqa: E402

from visionpilot.export.benchmark import DecodedNet  # noqa: E402
from visionpilot.export.onnx_export import example_inputs  # noqa: E402
from visionpilot.training.finetune import load_model  # noqa: E402
from visionpilot.training.flops import flop_counter  # noqa: E402
from visionpilot.utils.machine import keep_freed_memory  # noqa: E402

CONV_KERNELS = ("aten::mkldnn_convolution", "aten::_convolution", "aten::thnn_conv2d", "aten::_slow_conv2d_forward",
                "aten::_nnpack_spatial_convolution", "aten::mkldnn_convolution_pointwise")
ORT_CONV_OPS = ("Conv", "FusedConv", "QLinearConv", "ConvInteger", "NhwcFusedConv")


def reference_gflops(threads: int, calls: int = 8) -> dict[str, float]:
    """fp32 GFLOP/s of a large dense convolution (oneDNN) and a large matmul (onnxruntime's MLAS)."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper

    torch.set_num_threads(threads)
    conv = torch.nn.Conv2d(256, 256, 3, padding=1, bias=False).eval().to(memory_format=torch.channels_last)
    x = torch.randn(1, 256, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        conv(x)
        conv_s = min(_timed(lambda: conv(x)) for _ in range(calls))
    n = 2048
    spec = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [n, n]) for name in "ABC"]
    graph = helper.make_graph([helper.make_node("MatMul", ["A", "B"], ["C"])], "mm", spec[:2], spec[2:])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
                                   .SerializeToString(), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feed = {name: rng.standard_normal((n, n), dtype=np.float32) for name in "AB"}
    session.run(None, feed)
    mm_s = min(_timed(lambda: session.run(None, feed)) for _ in range(calls))
    return {"oneDNN conv 3x3": 2 * 256 * 256 * 9 * 64 * 64 / conv_s / 1e9, "MLAS MatMul": 2 * n**3 / mm_s / 1e9}


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def eager(net: torch.nn.Module, cameras: int, size: tuple[int, int], threads: int, iters: int) -> dict:
    """FLOPs of one batch-1 call of ``net`` (decode included) and its eager timing: whole call, convolution kernels."""
    torch.set_num_threads(threads)
    module = DecodedNet(net.eval(), size)
    feed = example_inputs(cameras, size, batch=1, seed=0)
    with torch.inference_mode():
        counter = flop_counter()
        with counter:
            module(*feed)
        flops = counter.get_flop_counts()
        conv_flops = sum(v for k, v in flops["Global"].items() if "convolution" in str(k))
        total_flops = int(counter.get_total_flops())
        for _ in range(5):
            module(*feed)
        wall = [_timed(lambda: module(*feed)) for _ in range(iters)]
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(10):
                module(*feed)
    conv_ms = sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in CONV_KERNELS) / 10 / 1e3
    return {"cameras": cameras, "size": list(size), "flops": total_flops, "conv_flops": conv_flops,
            "wall_ms": statistics.median(wall) * 1e3, "conv_ms": conv_ms}


def report(refs: dict[str, float], e: dict, onnx: dict[str, dict], threads: int) -> str:
    """The table and the floors. ``onnx``: ``{"fp32": profile, "int8": profile}`` (either may be missing) from
    ``onnx_profile.profile``; their wall times are with onnxruntime's profiler on (a little slower than without)."""
    peak = max(refs.values())
    rows = [("torch-eager fp32", e["wall_ms"], e["conv_ms"])]
    rows += [(f"onnxruntime {precision}", r["wall_ms"], sum(v for op, v in r["by_op"].items() if op in ORT_CONV_OPS))
             for precision, r in onnx.items()]
    conv_gflop = e["conv_flops"] / 1e9
    lines = [f"{e['cameras']} cameras at {e['size'][0]} x {e['size'][1]}, batch 1, {threads} threads, torch "
             f"{torch.__version__}",
             f"model: {e['flops'] / 1e9:.2f} GFLOP per call (convolutions {conv_gflop:.2f}); fp32 reference rate of "
             f"this machine: " + ", ".join(f"{k} {v:.0f}" for k, v in refs.items()) + " GFLOP/s", "",
             "| backend | wall ms | conv kernels ms | conv GFLOP/s | of the reference rate | other ms | wall / eager |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for label, wall, conv_ms in rows:
        rate = conv_gflop / (conv_ms / 1e3) if conv_ms else float("nan")
        lines.append(f"| {label} | {wall:.1f} | {conv_ms:.1f} | {rate:.0f} | {rate / peak:.0%} | {wall - conv_ms:.1f} "
                     f"| {wall / e['wall_ms']:.2f} |")
    floor = conv_gflop / peak * 1e3
    lines += ["", f"fp32 floor (convolutions at the reference rate, nothing else): {floor:.1f} ms = "
                  f"{floor / e['wall_ms']:.2f} x eager"]
    if "fp32" in onnx and "int8" in onnx:
        int8 = onnx["int8"]
        other = int8["wall_ms"] - sum(v for op, v in int8["by_op"].items() if op in ORT_CONV_OPS)
        int8_floor = conv_gflop / (4 * peak) * 1e3 + other
        lines.append(f"int8 floor (convolutions at 4x the reference rate, its other parts as measured): "
                     f"{int8_floor:.1f} ms = {int8_floor / onnx['fp32']['wall_ms']:.2f} x onnxruntime fp32")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ckpt", help="the checkpoint (PyTorch eager)")
    parser.add_argument("onnx", type=Path, help="its fp32 export")
    parser.add_argument("--int8", type=Path, help="its int8 export")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=30)
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    keep_freed_memory()
    refs = reference_gflops(args.threads)
    loaded = load_model(args.ckpt)
    e = eager(loaded.net, len(loaded.camera_names) or 1, loaded.image_size, args.threads, args.iters)
    del loaded
    onnx = {precision: ort_profile(path, args.threads, 1, 5, args.iters)
            for precision, path in (("fp32", args.onnx), ("int8", args.int8)) if path is not None}
    print(report(refs, e, onnx, args.threads))


if __name__ == "__main__":
    main()
