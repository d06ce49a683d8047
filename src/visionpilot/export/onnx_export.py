"""The network as the vehicle runs it: one ONNX graph from uint8 camera frames and calibration to decoded results.

Graph contract (opset 17, default ONNX domain only):

- inputs ``images`` uint8 (B, N, 3, H, W) RGB (normalisation is inside the graph), ``intrinsics`` float32
  (B, N, 3, 3) and ``extrinsics`` float32 (B, N, 4, 4) camera -> ego. ``B`` is dynamic; ``N``, ``H``, ``W`` are
  the checkpoint's camera count and input size. A model without a BEV branch never reads the calibration, and the
  exporter drops unused inputs: its graph takes ``images`` only (the metadata's ``inputs`` lists what it takes).
- outputs: the fixed-size results of ``HydraNet.decode`` under the same keys (``lanes_2d.points``,
  ``objects_2d.boxes``, ``bev.objects_boxes``, ``bev.lanes_points``, ``bev.lanes_seg_prob``, ...), so a consumer
  needs no Python post-processing and ``visionpilot.export.runtime.onnx_decode`` returns exactly what
  ``net.decode`` does.

The export first builds a *full* graph that also returns every raw head output as ``raw/<head>.<output>``; parity
checks compare those against PyTorch (the 1e-4 criterion is on raw outputs), and quantisation calibrates on the
full graph. :func:`strip_raw_outputs` then removes them (and any node that only fed them) for the shipped file.
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import Tensor, nn

from visionpilot.utils.io import write_atomic

#: Graph input names, in order.
INPUT_NAMES: tuple[str, ...] = ("images", "intrinsics", "extrinsics")
#: Prefix of the raw head outputs in the full (parity / calibration) graph.
RAW_PREFIX = "raw/"
#: ONNX domains a vehicle runtime must provide: the default one only (no custom ops).
DEFAULT_DOMAINS = ("", "ai.onnx")

#: One-line descriptions written into the graph outputs' ``doc_string`` (shapes: B batch, N cameras).
OUTPUT_DOCS: dict[str, str] = {
    "lanes_2d.exist": "(B, N, S) lane-slot existence probability",
    "lanes_2d.types": "(B, N, S) int64 lane type index (metadata lane_types)",
    "lanes_2d.points": "(B, N, S, R, 2) (u, v) input-image pixels per row anchor",
    "lanes_2d.points_valid": "(B, N, S, R) bool: the row anchor is crossed by the lane",
    "objects_2d.scores": "(B, N, K) detection score, best first",
    "objects_2d.classes": "(B, N, K) int64 class index (metadata object_classes), -1 padding",
    "objects_2d.boxes": "(B, N, K, 4) x1, y1, x2, y2 input-image pixels",
    "bev.objects_boxes": "(B, K, 7) x, y, z, length, width, height, yaw in the ego frame (metres, radians)",
    "bev.objects_scores": "(B, K) detection score, best first",
    "bev.objects_classes": "(B, K) int64 class index (metadata object_classes)",
    "bev.lanes_points": "(B, S, X, 3) ego-frame lane-line points per BEV row",
    "bev.lanes_valid": "(B, S, X) bool: point is real (row crossed, slot score above threshold)",
    "bev.lanes_scores": "(B, S) lane-slot score",
    "bev.lanes_types": "(B, S) int64 lane type index (metadata lane_types)",
    "bev.lanes_seg_prob": "(B, T, X, Y) BEV lane-line probability per lane type",
}


class ExportWrapper(nn.Module):
    """HydraNet forward + decode as one traceable function with a fixed output order.

    Args:
        net: the network (eval mode).
        image_size: (H, W) the graph is built for (image heads decode to pixels of this size).
        num_cameras: N, the camera slots of the graph.
        raw_outputs: also return the raw head outputs (after the decoded ones).
    """

    def __init__(self, net: nn.Module, image_size: Sequence[int], num_cameras: int, raw_outputs: bool = True) -> None:
        super().__init__()
        self.net = net
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.num_cameras = int(num_cameras)
        self.raw_outputs = raw_outputs
        with torch.no_grad():  # one dry run to learn the output keys (they depend on the configured heads)
            raw = net(*example_inputs(self.num_cameras, self.image_size, batch=1))
            decoded = net.decode(raw, self.image_size)
        self.decoded_keys: list[str] = list(decoded)
        self.raw_keys: list[str] = list(raw) if raw_outputs else []
        # Every dim but the batch is fixed by the configuration; written into the graph's output types because
        # the exporter leaves some (top-k sizes, BEV rows) symbolic.
        shapes = {**decoded, **{RAW_PREFIX + k: v for k, v in raw.items()}}
        self.output_shapes: dict[str, tuple[int, ...]] = {k: tuple(shapes[k].shape[1:]) for k in self.output_names}

    @property
    def output_names(self) -> list[str]:
        """Graph output names: decoded keys, then ``raw/<key>``."""
        return self.decoded_keys + [RAW_PREFIX + k for k in self.raw_keys]

    def forward(self, images: Tensor, intrinsics: Tensor, extrinsics: Tensor) -> tuple[Tensor, ...]:
        raw = self.net(images, intrinsics, extrinsics)
        decoded = self.net.decode(raw, self.image_size)
        return tuple(decoded[k] for k in self.decoded_keys) + tuple(raw[k] for k in self.raw_keys)


def example_inputs(num_cameras: int, image_size: Sequence[int], batch: int = 2,
                   seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Random uint8 images and a plausible ring of cameras (for tracing; values do not matter to the graph)."""
    height, width = int(image_size[0]), int(image_size[1])
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, num_cameras, 3, height, width), dtype=torch.uint8, generator=g)
    k = torch.tensor([[0.8 * width, 0.0, width / 2], [0.0, 0.8 * width, height / 2], [0.0, 0.0, 1.0]])
    extr = torch.eye(4).repeat(num_cameras, 1, 1)
    for i in range(num_cameras):  # camera i looks along ego yaw 2*pi*i/N (camera z forward -> ego x forward)
        yaw = torch.tensor(2 * torch.pi * i / num_cameras)
        c, s = torch.cos(yaw), torch.sin(yaw)
        forward, left = torch.stack([c, s, torch.tensor(0.0)]), torch.stack([-s, c, torch.tensor(0.0)])
        extr[i, :3, :3] = torch.stack([-left, torch.tensor([0.0, 0.0, -1.0]), forward], dim=1)  # x right, y down
        extr[i, :3, 3] = torch.tensor([1.0, 0.0, 1.5])
    return images, k.expand(batch, num_cameras, 3, 3).clone(), extr.expand(batch, num_cameras, 4, 4).clone()


def export_onnx(net: nn.Module, image_size: Sequence[int], num_cameras: int, opset: int = 17,
                raw_outputs: bool = True) -> onnx.ModelProto:
    """Trace ``net`` (forward + decode) to an ONNX model with a dynamic batch axis, checked.

    Args:
        net: a HydraNet (put in eval mode here).
        image_size: (H, W) of the camera images the graph takes.
        num_cameras: camera slots N.
        opset: ONNX opset (17: ``GridSample`` and every op the heads use are standard there).
        raw_outputs: keep the ``raw/...`` outputs (for parity and calibration; strip them before shipping).

    Returns:
        The model (not yet written anywhere), after :func:`check_onnx`.
    """
    net = net.eval()
    wrapper = ExportWrapper(net, image_size, num_cameras, raw_outputs).eval()
    # Traced with B = 2: a batch of 1 invites the tracer to treat the batch size as a constant.
    inputs = example_inputs(num_cameras, image_size, batch=2)
    names = wrapper.output_names
    dynamic = {name: {0: "batch"} for name in (*INPUT_NAMES, *names)}
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript-exporter deprecation and tracer warnings on shape arithmetic
        # dynamo=False: the TorchScript exporter, ~10x faster to export this net than the dynamo one, same graph.
        torch.onnx.export(wrapper, inputs, buf, dynamo=False, opset_version=opset, input_names=list(INPUT_NAMES),
                          output_names=names, dynamic_axes=dynamic, do_constant_folding=True)
    model = onnx.load_from_string(buf.getvalue())
    for out in model.graph.output:
        dims = out.type.tensor_type.shape.dim
        for dim, size in zip(dims[1:], wrapper.output_shapes[out.name]):
            dim.Clear()
            dim.dim_value = size
        raw = out.name.startswith(RAW_PREFIX)
        out.doc_string = "raw head output (parity and calibration only)" if raw else OUTPUT_DOCS.get(out.name, "")
    check_onnx(model)
    return model


def check_onnx(model: onnx.ModelProto) -> onnx.ModelProto:
    """``onnx.checker`` (full) and strict shape inference; raises with the checker's message. Returns the inferred
    model. Also refuses custom-domain ops, which a stock vehicle runtime would not have."""
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    custom = sorted({f"{n.domain}::{n.op_type}" for n in model.graph.node if n.domain not in DEFAULT_DOMAINS})
    if custom:
        raise ValueError(f"exported graph uses ops outside the default ONNX domain: {custom}; expected standard ops "
                         f"only (a vehicle runtime has no custom ops)")
    return inferred


def strip_raw_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy without the ``raw/...`` outputs and without the nodes and initializers only they needed."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    keep = [o for o in graph.output if not o.name.startswith(RAW_PREFIX)]
    del graph.output[:]
    graph.output.extend(keep)
    # Backward reachability from the outputs (written out: onnx.utils.Extractor re-runs shape inference and drops
    # the model's metadata, and this needs ten lines).
    needed = {o.name for o in graph.output}
    nodes = []
    for node in reversed(graph.node):
        if any(name in needed for name in node.output):
            nodes.append(node)
            needed.update(name for name in node.input if name)
    nodes.reverse()
    del graph.node[:]
    graph.node.extend(nodes)
    inits = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    infos = [v for v in graph.value_info if v.name in needed]
    del graph.value_info[:]
    graph.value_info.extend(infos)
    return out


def set_metadata(model: onnx.ModelProto, metadata: Mapping[str, Any]) -> onnx.ModelProto:
    """Write ``metadata_props`` (strings as they are, everything else as JSON), replacing keys already there."""
    props = {p.key: p.value for p in model.metadata_props}
    for key, value in metadata.items():
        props[key] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    del model.metadata_props[:]
    for key in sorted(props):
        model.metadata_props.add(key=key, value=props[key])
    return model


def read_metadata(model: onnx.ModelProto | str | Path) -> dict[str, Any]:
    """``metadata_props`` back as Python values (JSON decoded where it parses)."""
    if not isinstance(model, onnx.ModelProto):
        path = Path(model)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {path}")
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as err:  # protobuf's DecodeError does not say which file
            raise ValueError(f"{path}: not a readable ONNX model ({type(err).__name__}: {err})") from err
    out: dict[str, Any] = {}
    for p in model.metadata_props:
        try:
            out[p.key] = json.loads(p.value)
        except json.JSONDecodeError:
            out[p.key] = p.value
    return out


def save_onnx_atomic(model: onnx.ModelProto, path: str | Path) -> Path:
    """Write the model through a temporary file in the same folder, flushed to disk, and an atomic rename.

    On disk before the rename (as export.json, written after it, is): else a power cut can leave an empty model.onnx
    beside the report that vouches for it (write_atomic flushes every file it writes).
    """
    return write_atomic(path, lambda tmp: onnx.save_model(model, tmp))


def graph_io(model: onnx.ModelProto) -> dict[str, list[dict[str, Any]]]:
    """Inputs and outputs with element type and shape (dynamic dims by name), for ``export.json``."""
    def describe(values: Sequence[onnx.ValueInfoProto]) -> list[dict[str, Any]]:
        rows = []
        for v in values:
            t = v.type.tensor_type
            shape = [d.dim_param or d.dim_value for d in t.shape.dim]
            rows.append({"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
                         "shape": shape})
        return rows
    return {"inputs": describe(model.graph.input), "outputs": describe(model.graph.output)}
