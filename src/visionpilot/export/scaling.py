"""Latency against the number of cameras and the input resolution, for ``visionpilot-benchmark``.

An exported file has a fixed camera count and image size, so each point of the sweep is the checkpoint's network
built for that rig: on ``onnxruntime-cpu`` (the default: what the vehicle runs) the network is exported at every
point (``export_onnx``, the TorchScript exporter, a few seconds each) into its own session; on
``torch-eager`` it is called directly. Same weights everywhere, batch 1, random frames and a ring of N cameras;
all points are timed round-robin, like the benchmark rows.

What to expect: the image trunk (backbone, neck, image heads) and the camera -> BEV sampling are per camera, the
BEV encoder, BEV heads and the decode are per frame; so latency = fixed + per-camera x N, a straight line. The
fit's R^2 says how straight; its intercept is the per-frame part and its slope the cost of one more camera.
Against resolution only the per-camera part grows (with the pixels); the BEV grid does not change.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from visionpilot.export.onnx_export import example_inputs, export_onnx
from visionpilot.export.timing import time_interleaved, timed_session_options

log = logging.getLogger(__name__)
BACKENDS = ("onnxruntime-cpu", "torch-eager")


def linear_fit(x: Sequence[float], y: Sequence[float]) -> dict[str, float | None]:
    """Least-squares ``y = intercept + slope * x`` and its R^2 (None with fewer than two points)."""
    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(xs) < 2 or np.ptp(xs) == 0:
        return {"intercept": None, "slope": None, "r2": None}
    slope, intercept = np.polyfit(xs, ys, 1)
    resid = ys - (intercept + slope * xs)
    total = float(((ys - ys.mean()) ** 2).sum())
    return {"intercept": float(intercept), "slope": float(slope),
            "r2": float(1.0 - (resid**2).sum() / total) if total > 0 else 1.0}


def _runner(net: nn.Module, cameras: int, size: Sequence[int], backend: str, threads: int,
            seed: int) -> Callable[[], Any]:
    from visionpilot.export.benchmark import DecodedNet

    images, intrinsics, extrinsics = example_inputs(cameras, size, batch=1, seed=seed)
    if backend == "torch-eager":
        module = DecodedNet(net, size).eval()

        def run() -> Any:
            with torch.inference_mode():
                return module(images, intrinsics, extrinsics)
        return run
    model = export_onnx(net, size, cameras, raw_outputs=False)
    options = timed_session_options(threads)  # no spinning: many sessions, timed in turn
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    feed = {k: v.numpy() for k, v in zip(("images", "intrinsics", "extrinsics"), (images, intrinsics, extrinsics))
            if k in names}
    return lambda: session.run(None, feed)


def scaling_sweep(net: nn.Module, base_cameras: int, base_size: Sequence[int], cameras: Sequence[int],
                  sizes: Sequence[Sequence[int]], backend: str = "onnxruntime-cpu", threads: int = 1,
                  warmup: int = 2, iters: int = 10, seed: int = 0) -> dict[str, Any]:
    """Latency vs cameras (at ``base_size``) and vs resolution (at ``base_cameras``), with linear fits.

    Every point is built first, then all are timed round-robin (as the benchmark's rows are), so that a burst of
    load from other jobs does not bend one point of the line.
    """
    if backend not in BACKENDS:
        raise ValueError(f"scaling.backend must be one of {list(BACKENDS)}, found '{backend}'")
    if iters < 1:  # no samples, no percentiles: an IndexError after every point was built
        raise ValueError(f"scaling.iters must be >= 1, found {iters}")
    net = net.eval()
    log.info("scaling: %s, cameras %s at %s, sizes %s at %d cameras", backend, list(cameras), list(base_size),
             [list(s) for s in sizes], base_cameras)
    plan = [(int(n), tuple(base_size)) for n in cameras] + [(int(base_cameras), tuple(s)) for s in sizes]
    points: list[dict[str, Any]] = []
    runs: dict[int, Callable[[], Any]] = {}
    for i, (n, (height, width)) in enumerate(plan):
        points.append({"cameras": n, "height": int(height), "width": int(width),
                       "megapixels": n * int(height) * int(width) / 1e6, "p50_ms": None, "p90_ms": None,
                       "status": "ok"})
        try:
            run = _runner(net, n, (int(height), int(width)), backend, threads, seed)
            for _ in range(max(warmup, 1)):  # at least one call: torch-eager fails there, not while building
                run()
            runs[i] = run  # timed only once it ran: a failure in the timed calls would end the whole sweep
        except Exception as err:  # e.g. a size the network cannot take: record it, keep sweeping
            log.warning("scaling point %d cameras at %dx%d failed: %s", n, height, width, err)
            points[i]["status"] = f"error: {type(err).__name__}: {err}"[:240]
    order = list(runs)
    for i, seconds in zip(order, time_interleaved([runs[i] for i in order], iters)):
        p50, p90 = np.percentile(np.asarray(seconds) * 1000.0, [50, 90])
        points[i].update(p50_ms=float(p50), p90_ms=float(p90), per_camera_ms=float(p50) / points[i]["cameras"])
    by_cameras, by_size = points[:len(cameras)], points[len(cameras):]

    def fit(group: Sequence[Mapping[str, Any]], key: str) -> dict[str, float | None]:
        ok = [p for p in group if p["p50_ms"] is not None]
        return linear_fit([p[key] for p in ok], [p["p50_ms"] for p in ok])

    cam_fit, size_fit = fit(by_cameras, "cameras"), fit(by_size, "megapixels")
    return {"backend": backend, "precision": "fp32", "batch": 1, "threads": threads, "iters": iters,
            "base_cameras": base_cameras, "base_size": [int(base_size[0]), int(base_size[1])],
            "cameras": by_cameras, "resolution": by_size,
            "cameras_fit": {"fixed_ms": cam_fit["intercept"], "per_camera_ms": cam_fit["slope"], "r2": cam_fit["r2"]},
            "resolution_fit": {"fixed_ms": size_fit["intercept"], "ms_per_megapixel": size_fit["slope"],
                               "r2": size_fit["r2"]}}


def plot_scaling(scaling: Mapping[str, Any], path: str | Path) -> Path:
    """Two panels: p50 latency vs cameras and vs megapixels per frame, measured points and the linear fits."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    panels = ((axes[0], scaling["cameras"], "cameras", scaling["cameras_fit"], "per_camera_ms",
               f"cameras (at {scaling['base_size'][0]}x{scaling['base_size'][1]})"),
              (axes[1], scaling["resolution"], "megapixels", scaling["resolution_fit"], "ms_per_megapixel",
               f"megapixels per frame ({scaling['base_cameras']} cameras)"))
    for ax, points, key, fit, slope_key, label in panels:
        ok = [p for p in points if p["p50_ms"] is not None]
        x = np.array([p[key] for p in ok], dtype=float)
        ax.plot(x, [p["p50_ms"] for p in ok], "o", label="p50")
        ax.plot(x, [p["p90_ms"] for p in ok], "x", color="grey", label="p90")
        if fit[slope_key] is not None and len(x):
            xs = np.linspace(0, x.max(), 20)
            ax.plot(xs, fit["fixed_ms"] + fit[slope_key] * xs, "-", alpha=0.6,
                    label=f"{fit['fixed_ms']:.1f} + {fit[slope_key]:.1f} x  (R² {fit['r2']:.3f})")
        if key == "megapixels":
            for p in ok:
                ax.annotate(f"{p['height']}x{p['width']}", (p[key], p["p50_ms"]), fontsize=7,
                            textcoords="offset points", xytext=(4, -10))
        ax.set_xlabel(label)
        ax.set_ylabel("latency, ms (batch 1)")
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    threads = scaling["threads"]
    fig.suptitle(f"{scaling['backend']}, fp32, {threads} thread{'s' * (threads != 1)}")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def scaling_markdown(scaling: Mapping[str, Any]) -> str:
    """The sweep as two tables with the fits."""
    def cell(v: Any, fmt: str = ".1f") -> str:
        return "—" if v is None else format(v, fmt)

    threads, (height, width) = scaling["threads"], scaling["base_size"]
    lines = [f"Latency vs cameras ({scaling['backend']}, fp32, batch 1, {height}x{width}, {threads} "
             f"thread{'s' * (threads != 1)}, p50 of {scaling['iters']}):", "",
             "| cameras | p50 ms | p90 ms | ms per camera |", "| ---: | ---: | ---: | ---: |"]
    lines += [f"| {p['cameras']} | {cell(p['p50_ms'])} | {cell(p['p90_ms'])} | {cell(p.get('per_camera_ms'))} |"
              for p in scaling["cameras"]]
    f = scaling["cameras_fit"]
    if f["r2"] is not None:
        lines += ["", f"fit: {f['fixed_ms']:.1f} ms + {f['per_camera_ms']:.1f} ms x cameras, R² = {f['r2']:.4f}"]
    lines += ["", f"Latency vs resolution ({scaling['base_cameras']} cameras):", "",
              "| H x W | megapixels / frame | p50 ms | p90 ms | ms per camera |", "| --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {p['height']}x{p['width']} | {p['megapixels']:.2f} | {cell(p['p50_ms'])} | {cell(p['p90_ms'])} | "
              f"{cell(p.get('per_camera_ms'))} |" for p in scaling["resolution"]]
    f = scaling["resolution_fit"]
    if f["r2"] is not None:
        lines += ["", f"fit: {f['fixed_ms']:.1f} ms + {f['ms_per_megapixel']:.1f} ms x megapixels, R² = {f['r2']:.4f}"]
    failed = [p for p in scaling["cameras"] + scaling["resolution"] if p["status"] != "ok"]
    lines += [f"- {p['cameras']} cameras at {p['height']}x{p['width']}: {p['status']}" for p in failed]
    return "\n".join(lines)
