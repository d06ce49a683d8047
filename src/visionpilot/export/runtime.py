"""The inference API for exported models: open the ONNX file, check inputs, get typed results.

    from visionpilot.export.runtime import VisionPilotRuntime

    model = VisionPilotRuntime("runs/export-int8/model.onnx")
    model.camera_names, model.image_size          # what to feed, from the file's metadata
    pred = model(images, intrinsics, extrinsics)  # uint8 (B, N, 3, H, W), (B, N, 3, 3), (B, N, 4, 4)
    pred.objects_3d.boxes                         # (B, K, 7) ego frame; pred.lanes_2d.points (B, N, S, R, 2) ...

Inputs are checked against the file's metadata *before* onnxruntime sees them, so a wrong camera count, image
size, dtype or calibration shape is an :class:`InputError` naming the expected and the found value rather than
an onnxruntime shape error deep in the graph.

For evaluation, :func:`onnx_decode` returns exactly what ``net.decode(net(...), image_size)`` returns (same keys,
shapes and dtypes, as torch tensors), so ``PerceptionEvaluator.update(batch, decoded)`` runs unchanged on ONNX
models.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

log = logging.getLogger(__name__)

ArrayLike = np.ndarray | torch.Tensor


class InputError(ValueError):
    """An input does not match what the exported model takes."""


def calibration_problems(name: str, arr: np.ndarray, atol: float = 1e-3,
                         image_size: Sequence[int] | None = None) -> list[str]:
    """What makes (B, N, 3, 3) intrinsics or (B, N, 4, 4) camera->ego extrinsics no camera calibration, if
    anything: a wrong one (transposed K, a zero matrix, K of another image size) runs and gives finite but wrong
    bird's-eye-view output.

    Intrinsics: last row [0, 0, 1], K[1, 0] = 0, fx and fy > 0, and with ``image_size`` (H, W) the principal point
    inside the image on cameras the BEV lifting uses (fx > 1 px). Extrinsics: last row [0, 0, 0, 1], an
    orthonormal rotation with determinant +1 (within ``atol``). The first offending camera is named per check.
    """
    a = np.asarray(arr, dtype=np.float64)
    problems = []

    def first(bad: np.ndarray, what: str, found: Any) -> None:
        if bad.any():
            b, n = (int(v) for v in np.argwhere(bad)[0])
            value = found(b, n)
            problems.append(f"{name}[{b}, {n}]: expected {what}, found {value}")

    if name == "intrinsics":
        first(np.abs(a[..., 2, :] - [0.0, 0.0, 1.0]).max(-1) > atol, "a last row [0, 0, 1] (a pinhole K; is it "
              "transposed?)", lambda b, n: np.round(a[b, n, 2], 4).tolist())
        first(np.abs(a[..., 1, 0]) > atol, "K[1, 0] = 0", lambda b, n: round(float(a[b, n, 1, 0]), 4))
        first((a[..., 0, 0] <= 0) | (a[..., 1, 1] <= 0), "focal lengths fx, fy > 0 (pixels)",
              lambda b, n: [round(float(a[b, n, 0, 0]), 3), round(float(a[b, n, 1, 1]), 3)])
        if image_size is not None:
            # K of the camera's full resolution with frames resized to the model's input: a valid pinhole K that
            # projects every voxel outside the image. Only slots with fx > 1 px: the lifting skips the others
            # (collate's identity padding, lane datasets without calibration), as models/view_transform.py does.
            h, w = image_size
            cx, cy = a[..., 0, 2], a[..., 1, 2]
            first((a[..., 0, 0] > 1.0) & ((cx < 0) | (cx > w) | (cy < 0) | (cy > h)),
                  f"the principal point inside the input image, 0 <= cx <= {w} and 0 <= cy <= {h} (K for the "
                  f"input pixels: scale a full-resolution K's first two rows by the resize)",
                  lambda b, n: f"(cx, cy) = ({float(a[b, n, 0, 2]):.1f}, {float(a[b, n, 1, 2]):.1f})")
    else:
        first(np.abs(a[..., 3, :] - [0.0, 0.0, 0.0, 1.0]).max(-1) > atol, "a last row [0, 0, 0, 1] (a camera->ego "
              "transform)", lambda b, n: np.round(a[b, n, 3], 4).tolist())
        rot = a[..., :3, :3]
        gram = np.abs(np.einsum("...ji,...jk->...ik", rot, rot) - np.eye(3)).max((-2, -1))
        det = np.linalg.det(rot)
        first((gram > atol) | (np.abs(det - 1.0) > atol), "a rotation (orthonormal, determinant +1) in [:3, :3]",
              lambda b, n: f"R^T R - I up to {gram[b, n]:.3g}, det {det[b, n]:.4g}")
    return problems


@dataclass(frozen=True)
class Lanes2D:
    """Per-camera row-anchor lanes. S slots (ego-relative, left to right), R row anchors."""

    exist: np.ndarray  #: (B, N, S) existence probability
    types: np.ndarray  #: (B, N, S) int64 index into ``lane_types``
    points: np.ndarray  #: (B, N, S, R, 2) (u, v) pixels of the input image
    points_valid: np.ndarray  #: (B, N, S, R) bool


@dataclass(frozen=True)
class Objects2D:
    """Per-camera top-K 2D detections, best first (padding: score 0, class -1)."""

    scores: np.ndarray  #: (B, N, K)
    classes: np.ndarray  #: (B, N, K) int64 index into ``object_classes``
    boxes: np.ndarray  #: (B, N, K, 4) x1, y1, x2, y2 pixels


@dataclass(frozen=True)
class Objects3D:
    """Top-K 3D detections in the ego frame, best first; threshold the scores downstream."""

    boxes: np.ndarray  #: (B, K, 7) x, y, z, length, width, height, yaw (metres, radians)
    scores: np.ndarray  #: (B, K)
    classes: np.ndarray  #: (B, K) int64 index into ``object_classes``


@dataclass(frozen=True)
class LanesBEV:
    """BEV lane lines as fixed slots of ego-frame polylines, plus the per-type segmentation."""

    points: np.ndarray  #: (B, S, X, 3) ego frame, one point per BEV row
    valid: np.ndarray  #: (B, S, X) bool
    scores: np.ndarray  #: (B, S)
    types: np.ndarray  #: (B, S) int64 index into ``lane_types``
    seg_prob: np.ndarray  #: (B, T, X, Y) probability per lane type on the BEV grid (metadata ``bev_grid``)


#: Typed views: attribute of :class:`Predictions` -> (output-key prefix, dataclass).
_GROUPS: dict[str, tuple[str, type]] = {
    "lanes_2d": ("lanes_2d.", Lanes2D),
    "objects_2d": ("objects_2d.", Objects2D),
    "objects_3d": ("bev.objects_", Objects3D),
    "lanes_bev": ("bev.lanes_", LanesBEV),
}


@dataclass(frozen=True)
class Predictions:
    """One batch of results. ``outputs`` holds every graph output by name (the ``net.decode`` keys); the typed
    views are None when the model has no such head."""

    outputs: dict[str, np.ndarray]
    lanes_2d: Lanes2D | None = None
    objects_2d: Objects2D | None = None
    objects_3d: Objects3D | None = None
    lanes_bev: LanesBEV | None = None

    @classmethod
    def from_outputs(cls, outputs: dict[str, np.ndarray]) -> Predictions:
        views = {}
        for attr, (prefix, kind) in _GROUPS.items():
            names = [f.name for f in fields(kind)]
            if all(prefix + n in outputs for n in names):
                views[attr] = kind(**{n: outputs[prefix + n] for n in names})
        return cls(outputs=outputs, **views)


def _numpy(value: ArrayLike) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        # numpy has no bfloat16: a bf16 calibration tensor (a model run under autocast) is widened, not a TypeError
        return (value.float() if value.dtype == torch.bfloat16 else value).numpy()
    return np.asarray(value)


def _shape(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ")"


class VisionPilotRuntime:
    """An exported visionpilot model in onnxruntime, with input checks and typed results.

    Args:
        model: path of the ``.onnx`` file, or an open ``onnxruntime.InferenceSession`` of one.
        providers: onnxruntime execution providers (default: CPU).
        threads: intra-op threads (None: onnxruntime's default, all cores).
    """

    def __init__(self, model: str | Path | ort.InferenceSession, providers: Sequence[str] | None = None,
                 threads: int | None = None) -> None:
        if isinstance(model, ort.InferenceSession):
            self.session, self.name = model, "ONNX model"
        else:
            path = Path(model)
            if not path.is_file():
                raise FileNotFoundError(f"ONNX model not found: {path}")
            options = ort.SessionOptions()
            if threads:
                options.intra_op_num_threads = int(threads)
            self.session = ort.InferenceSession(str(path), options,
                                                providers=list(providers or ["CPUExecutionProvider"]))
            self.name = str(path)
        self.metadata = _decode_metadata(self.session.get_modelmeta().custom_metadata_map)
        parity = self.metadata.get("parity")
        if isinstance(parity, dict) and parity.get("passed") is False:
            log.warning("%s: this export FAILED its parity gate (%s): its outputs differ from the PyTorch model "
                        "beyond tolerance: %s", self.name,
                        "accepted with parity.fail=false" if parity.get("accepted") else "kept for inspection",
                        "; ".join(parity.get("failures") or []) or "see its export.json")
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        if "images" not in self.inputs:
            raise ValueError(f"{self.name}: expected a graph input 'images', found {sorted(self.inputs)}; not a "
                             f"visionpilot export")
        shape, kind = self.inputs["images"].shape, self.inputs["images"].type  # ['batch', N, 3, H, W], uint8
        # Another network's graph may call its input 'images' too (YOLOv8's: float (1, 3, 640, 640)): an IndexError
        # here, or an onnxruntime type error at the first call.
        if kind != "tensor(uint8)" or len(shape) != 5 or shape[2] != 3 or not all(isinstance(d, int) for d in shape[1:]):
            raise ValueError(f"{self.name}: expected graph input 'images' uint8 (batch, N, 3, H, W) with fixed N, H "
                             f"and W, found {kind} {list(shape)}; not a visionpilot export")
        names = self.metadata.get("camera_names")
        self.camera_names: list[str] = list(names) if names else [f"cam{i}" for i in range(shape[1])]
        size = self.metadata.get("input_size") or shape[3:5]
        self.image_size: tuple[int, int] = (int(size[0]), int(size[1]))
        # Inputs are checked against the metadata: where it disagrees with the graph (set on another graph, edited),
        # inputs that pass the checks fail in onnxruntime with a shape error deep in the graph.
        problems = []
        if len(self.camera_names) != shape[1]:
            problems.append(f"field 'camera_names': expected {shape[1]} cameras, found {len(self.camera_names)} "
                            f"({', '.join(self.camera_names)})")
        if self.image_size != (shape[3], shape[4]):
            problems.append(f"field 'input_size': expected {list(shape[3:5])}, found {list(self.image_size)}")
        if problems:
            raise ValueError(f"{self.name}: the metadata disagrees with the graph (input 'images' {list(shape)}): "
                             + "; ".join(problems))
        self.object_classes: list[str] = list(self.metadata.get("object_classes") or [])
        self.lane_types: list[str] = list(self.metadata.get("lane_types") or [])
        self.output_names: list[str] = [o.name for o in self.session.get_outputs()]

    @property
    def num_cameras(self) -> int:
        return len(self.camera_names)

    @property
    def needs_calibration(self) -> bool:
        """Whether the graph reads intrinsics/extrinsics (models with a BEV branch)."""
        return "intrinsics" in self.inputs or "extrinsics" in self.inputs

    def check_inputs(self, images: ArrayLike, intrinsics: ArrayLike | None = None,
                     extrinsics: ArrayLike | None = None) -> dict[str, np.ndarray]:
        """The onnxruntime feed, or an :class:`InputError` listing every mismatch (expected vs found)."""
        imgs = _numpy(images)
        n, (h, w) = self.num_cameras, self.image_size
        problems = []
        if imgs.ndim != 5:
            problems.append(f"images: expected 5 dims (B, N, 3, H, W) = (B, {n}, 3, {h}, {w}), found "
                            f"{imgs.ndim} dims {_shape(imgs.shape)}")
        else:
            if imgs.shape[1] != n:
                problems.append(f"images: expected {n} cameras in dim 1 ({', '.join(self.camera_names)}), found "
                                f"{imgs.shape[1]}")
            if imgs.shape[2] != 3:
                problems.append(f"images: expected 3 channels (RGB) in dim 2, found {imgs.shape[2]}")
            if tuple(imgs.shape[3:]) != (h, w):
                problems.append(f"images: expected H x W = {h} x {w} (the exported input size), found "
                                f"{imgs.shape[3]} x {imgs.shape[4]}")
        if imgs.dtype != np.uint8:
            hint = (" (for 0..1 floats: (x * 255).round().clip(0, 255).astype(uint8))"
                    if np.issubdtype(imgs.dtype, np.floating) else "")
            problems.append(f"images: expected dtype uint8 (RGB 0..255; the graph normalises), found {imgs.dtype}"
                            + hint)
        if imgs.ndim == 5 and imgs.shape[0] == 0:
            problems.append("images: expected at least one frame in dim 0 (B >= 1), found B = 0")
        feed = {"images": np.ascontiguousarray(imgs)}
        batch = imgs.shape[0] if imgs.ndim == 5 else None
        for name, value, size in (("intrinsics", intrinsics, 3), ("extrinsics", extrinsics, 4)):
            if value is None:
                if name in self.inputs:
                    problems.append(f"{name}: this model has a BEV branch and needs calibration; expected "
                                    f"(B, {n}, {size}, {size}) float32, found None")
                continue
            arr = _numpy(value)
            expected = (batch if batch is not None else "B", n, size, size)
            if arr.ndim != 4 or tuple(arr.shape[1:]) != (n, size, size) or (batch is not None and arr.shape[0] != batch):
                problems.append(f"{name}: expected shape ({', '.join(map(str, expected))}), found {_shape(arr.shape)}")
            elif not np.issubdtype(arr.dtype, np.floating):
                problems.append(f"{name}: expected a float dtype (float32), found {arr.dtype}")
            elif not np.isfinite(arr).all():
                problems.append(f"{name}: expected finite values, found NaN or Inf")
            else:
                problems += calibration_problems(name, arr, image_size=(h, w))
            if name in self.inputs:
                feed[name] = np.ascontiguousarray(arr, dtype=np.float32)
        if problems:
            raise InputError(f"{self.name}: inputs do not match the model:\n  " + "\n  ".join(problems))
        return feed

    def run(self, images: ArrayLike, intrinsics: ArrayLike | None = None,
            extrinsics: ArrayLike | None = None) -> Predictions:
        """Check the inputs, run the graph, return :class:`Predictions`.

        Args:
            images: (B, N, 3, H, W) uint8 RGB, cameras in :attr:`camera_names` order, size :attr:`image_size`.
            intrinsics: (B, N, 3, 3) for the input pixels (required when :attr:`needs_calibration`).
            extrinsics: (B, N, 4, 4) camera -> ego.
        """
        feed = self.check_inputs(images, intrinsics, extrinsics)
        return Predictions.from_outputs(dict(zip(self.output_names, self.session.run(self.output_names, feed))))

    __call__ = run


def _decode_metadata(props: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in props.items():
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def onnx_decode(model: VisionPilotRuntime | ort.InferenceSession | str | Path,
                batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Decoded results of an exported model for a collated batch, as ``net.decode(net(...), image_size)`` gives
    them: the same ``"<head>.<result>"`` keys, shapes and dtypes (bool masks, int64 classes), torch CPU tensors.

    Args:
        model: a runtime, an onnxruntime session of an exported file, or its path (opened per call: pass a
            runtime when calling in a loop).
        batch: the batch contract's ``images`` (uint8), ``intrinsics`` and ``extrinsics``.
    """
    runtime = model if isinstance(model, VisionPilotRuntime) else VisionPilotRuntime(model)
    pred = runtime.run(batch["images"], batch.get("intrinsics"), batch.get("extrinsics"))
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in pred.outputs.items()}


def load_runtime(path: str | Path, threads: int | None = None) -> VisionPilotRuntime:
    """Open an exported model once (for :func:`onnx_decode` in a loop)."""
    return VisionPilotRuntime(path, threads=threads)
