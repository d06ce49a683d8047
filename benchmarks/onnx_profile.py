"""Where an exported model's time goes in onnxruntime: per part of the network and per operator type.

    python benchmarks/onnx_profile.py runs/export/fp32/model.onnx runs/export/int8/model.onnx [--threads 2]
        [--iters 30] [--warmup 5] [--batch 1]

Runs each file with onnxruntime's own profiler (``SessionOptions.enable_profiling``; the session options of
``visionpilot-benchmark``: all graph optimisations, no spin-waiting, denormals as zero) on the same random frames
and ring of cameras the benchmark feeds, and sums the kernel time of every node over the timed calls (the warm-up
calls are dropped). Nodes are grouped by the exporter's scope names, which survive onnxruntime's fusions (a fused
``Conv`` + ``Relu`` or an int8 ``QLinearConv`` keeps the name of the node it started from):

- ``backbone``, ``neck``, ``<head>``, ``bev/<part>``: ``/net/...`` scopes (``bev/view_transform`` is the
  calibration geometry, the projection and ``GridSample`` of the lift, plus its own convs); ``net``: the net's own
  ops (folding the cameras into the batch, normalising the uint8 images);
- ``decode``: every node outside ``/net/`` (the exported decode: sigmoids, top-k, box and lane arithmetic);
- ``quantize`` (int8): the ``QuantizeLinear`` / ``DequantizeLinear`` nodes onnxruntime could not fuse, wherever
  they sit; they are the price of the float islands' borders.

The shares are of the summed kernel time, which is less than the wall time of a call (the profiler does not count
the time between kernels); the table prints both.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnxruntime as ort

from visionpilot.export.onnx_export import example_inputs, read_metadata
from visionpilot.export.timing import timed_session_options

QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}


def part_of(node: str, op: str) -> str:
    """The network part a node belongs to, from its exporter scope name (see the module docstring)."""
    if op in QUANT_OPS or node.endswith(("_QuantizeLinear", "_DequantizeLinear")):
        return "quantize"
    if not node.startswith("/net/"):
        return "decode"
    scope = node[len("/net/"):].split("/")
    if len(scope) == 1:  # the net's own ops: camera folding, image normalisation
        return "net"
    if scope[0] == "bev" and len(scope) > 2:
        return f"bev/{scope[1]}"
    return scope[0]


def profile(path: Path, threads: int, batch: int, warmup: int, iters: int) -> dict:
    meta = read_metadata(path)
    if "input_size" not in meta or not meta.get("camera_names"):
        raise ValueError(f"{path}: metadata 'input_size' and 'camera_names' expected, found keys {sorted(meta)}; "
                         f"not a visionpilot-export file (visionpilot-benchmark times any ONNX model)")
    cameras = len(meta["camera_names"])
    size = [int(s) for s in meta["input_size"]]
    options = timed_session_options(threads)  # visionpilot-benchmark's
    options.enable_profiling = True
    trace_dir = tempfile.mkdtemp(prefix="ort_profile_")
    options.profile_file_prefix = os.path.join(trace_dir, path.parent.name)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    feed = {k: v.numpy() for k, v in zip(("images", "intrinsics", "extrinsics"),
                                         example_inputs(cameras, size, batch, seed=0)) if k in names}
    wall = []
    for i in range(warmup + iters):
        start = time.perf_counter()
        session.run(None, feed)
        if i >= warmup:
            wall.append(time.perf_counter() - start)
    trace = json.loads(Path(session.end_profiling()).read_text())
    shutil.rmtree(trace_dir, ignore_errors=True)
    runs = [e for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"]
    if len(runs) != warmup + iters:
        raise RuntimeError(f"{path}: the profile holds {len(runs)} runs, expected {warmup + iters}")
    timed_from = runs[warmup]["ts"]
    by_part: dict[str, float] = defaultdict(float)
    by_op: dict[str, float] = defaultdict(float)
    by_part_op: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for event in trace:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time") or event["ts"] < timed_from:
            continue
        node, op = event["name"][: -len("_kernel_time")], event["args"].get("op_name", "?")
        part, ms = part_of(node, op), event["dur"] / 1e3 / iters
        by_part[part] += ms
        by_op[op] += ms
        by_part_op[part][op] += ms
    return {"file": str(path), "label": str(meta.get("precision", "?")), "wall_ms": float(np.median(wall) * 1e3),
            "kernel_ms": sum(by_part.values()), "by_part": dict(by_part), "by_op": dict(by_op),
            "by_part_op": {part: dict(ops) for part, ops in by_part_op.items()}}


def table(results: list[dict], key: str, top: int | None = None) -> str:
    totals: dict[str, float] = defaultdict(float)
    for r in results:
        for name, ms in r[key].items():
            totals[name] += ms / r["kernel_ms"]
    rows = sorted(totals, key=totals.get, reverse=True)[:top]
    head = "| " + ("part" if key == "by_part" else "operator") + " | " + " | ".join(
        f"{r['label']} ms | {r['label']} %" for r in results) + " |"
    lines = [head, "| --- |" + " ---: | ---: |" * len(results)]
    for name in rows:
        cells = []
        for r in results:
            ms = r[key].get(name, 0.0)
            cells.append(f"{ms:.2f} | {100 * ms / r['kernel_ms']:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| **sum of kernels** (per call) | " + " | ".join(
        f"{r['kernel_ms']:.1f} | 100" for r in results) + " |")
    lines.append("| wall time per call (median) | " + " | ".join(f"{r['wall_ms']:.1f} | —" for r in results) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", type=Path, help="exported ONNX files (visionpilot-export)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--top", type=int, default=15, help="operator types to list")
    parser.add_argument("--json", type=Path, help="also write the per-part and per-operator times here")
    args = parser.parse_args()
    for path in args.models:
        if not path.is_file():
            parser.error(f"{path}: no such ONNX file")
    try:
        results = [profile(p, args.threads, args.batch, args.warmup, args.iters) for p in args.models]
    except ValueError as err:
        parser.error(str(err))
    labels = [r["label"] for r in results]
    for r, path in zip(results, args.models):
        if labels.count(r["label"]) > 1:  # two files of one precision: tell them apart by their folders
            r["label"] = f"{path.parent.name}/{r['label']}"
    print(f"onnxruntime {ort.__version__}, {args.threads} threads, batch {args.batch}, {args.iters} calls after "
          f"{args.warmup} warm-up calls; ms per call summed over the nodes of each part\n")
    print(table(results, "by_part") + "\n")
    print(table(results, "by_op", args.top))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
