"""FP16 conversion and INT8 static quantisation of the exported graph, with onnxruntime's own tools.

Both keep two *float islands* in fp32, found by the TorchScript exporter's scope names:

- the decode (every node outside ``/net/``: sigmoid, top-k, arg-max, box and lane arithmetic): 8-bit box corners
  would be 0.7 px steps on a 176 px image and 0.4 m steps on a +-50 m grid, and its cost is negligible;
- the view transform's geometry (nodes directly in ``/net/bev/view_transform/``, not in its conv submodules): the
  projection of every voxel through the calibration, ``GridSample`` and the camera average. Sampling
  coordinates need more than 8 bits, and this is where the calibration inputs enter the graph.

INT8 also keeps the *output layers* in float: the layers that produce the raw head outputs (the heads' last 1x1
convs and the lane head's last linear layer), found by walking back from each ``raw/`` output through reshapes.
Their inputs are still int8 activations; only their own outputs — logits, box sizes, offsets, which the decode
reads directly — are not rounded to 256 levels. They are a few thin 1x1 convs, a negligible share of the time.

Everything else — backbone, neck, head trunks, BEV encoder: the convolutions, where the time goes — is quantised.

INT8 settings and why (x86 CPUs, onnxruntime's CPU execution provider):

- QDQ format: onnxruntime fuses ``DequantizeLinear -> Conv -> QuantizeLinear`` into its integer kernels (the
  recommended format since ORT 1.11); the file stays a standard ONNX graph any runtime can read.
- activations ``QUInt8`` (asymmetric), weights ``QInt8`` (symmetric, per output channel): the U8S8 pair is what
  x86 integer dot products take natively (``VPMADDUBSW``, and ``VPDPBUSD`` with VNNI multiply unsigned by
  signed bytes), and asymmetric uint8 spends all 256 levels on post-ReLU activations, which are non-negative.
  Per-channel weights keep thin BatchNorm-folded channels from being rounded to zero by a wide neighbour.
- ``reduce_range`` (7-bit weights): off by default. Without VNNI (AVX2 / AVX-512 before Cascade Lake),
  ``VPMADDUBSW`` adds pairs of u8 x s8 products into int16 and can saturate; 7-bit weights avoid that. Turn it on
  when the vehicle's CPU lacks VNNI (``grep -o 'avx512_vnni\\|avx_vnni' /proc/cpuinfo`` prints nothing).
- calibration: frames of the target region (the datamodule of the checkpoint's config), ranges by the 99.999th
  percentile of each tensor's histogram. MinMax lets one outlying activation set a tensor's range for every
  frame: on the demo model, MinMax over 128 calibration frames instead of 32 collapsed the 2D detections (13 % of
  confident boxes kept), and percentile at 32 frames agrees better with fp32 than MinMax (docs/deployment.md).
- the FPN (``/net/neck/``, ``keep_float`` in configs/export.yaml) stays fp32: its top-down additions of
  upsampled and lateral maps were where 8 bits moved the 2D detections most (confident fp32 boxes with an int8
  box at IoU >= 0.5: 66 % -> 76 % kept in fp32), at no measurable latency cost (its convs are 32 channels wide).
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)

from visionpilot.export.onnx_export import DEFAULT_DOMAINS, RAW_PREFIX

log = logging.getLogger(__name__)

#: Scope of the network inside the exported wrapper (onnx_export.ExportWrapper.net).
NET_SCOPE = "/net/"
#: Scope whose own nodes (not its submodules') are the calibration geometry.
GEOMETRY_SCOPE = "/net/bev/view_transform/"

QUANT_TYPES = {"QUInt8": QuantType.QUInt8, "QInt8": QuantType.QInt8}
CALIBRATION_METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                       "percentile": CalibrationMethod.Percentile}
#: Highest opset INT8 takes: ``quant_pre_process``'s symbolic shape inference loses the shape of an opset-18
#: ``ReduceMax`` (axes as an input) and fails with a TypeError (onnxruntime 1.32).
INT8_MAX_OPSET = 17


def float_islands(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes that stay fp32 (decode and calibration geometry; see the module docstring)."""
    names = [n.name for n in model.graph.node]
    if not any(name.startswith(NET_SCOPE) for name in names):
        raise ValueError(f"no node is named under '{NET_SCOPE}': the graph was not exported by "
                         f"visionpilot.export.onnx_export (its scope names tell the decode from the network)")
    return [name for name in names if not name.startswith(NET_SCOPE)
            or (name.startswith(GEOMETRY_SCOPE) and "/" not in name[len(GEOMETRY_SCOPE):])]


#: Ops that only move data; walking back from an output through them finds the layer that computed it.
_LAYOUT_OPS = {"Reshape", "Split", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Slice", "Concat"}


def output_layers(model: onnx.ModelProto, prefix: str = RAW_PREFIX) -> list[str]:
    """Names of the nodes that must stay float for the ``raw/`` outputs to reach the decode unrounded: the layers
    that compute them (through layout-only ops, a ``Concat``'s every input and a ``ReduceMean``; through an
    ``Add``, both summands' layers: a fine-tuned head's low-rank update and the layer it updates), e.g. the heads'
    last convs; the layout ops on the way, and every node that reads one of those tensors (a ``Softmax`` inside the
    network over the BEV lane positions, say). Left out, onnxruntime puts a QuantizeLinear/DequantizeLinear pair
    on the tensor a layout op or a reader takes, and the logits reach ``ArgMax`` and ``Softmax`` in 256 levels."""
    producer = {out: node for node in model.graph.node for out in node.output}
    found: list[str] = []
    tensors: set[str] = set()  # every tensor from the computing layers to the raw outputs
    stack = [o.name for o in model.graph.output if o.name.startswith(prefix)]
    seen: set[str] = set()
    while stack:
        name = stack.pop()
        node = producer.get(name)
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        tensors.update(node.output)
        if node.op_type == "Concat":  # every input is data (e.g. the lane head's column and "absent" logits)
            found.append(node.name)
            stack.extend(node.input)
        elif node.op_type in _LAYOUT_OPS or node.op_type == "ReduceMean":  # ReduceMean: a pooled layer output
            found.append(node.name)
            stack.extend(node.input[:1])  # the data input (the others are shapes / split sizes / indices)
        elif node.op_type == "Add":  # a layer's bias, or a low-rank update (LoRALinear): W x + up(down(x))
            found.append(node.name)
            stack.extend(node.input)  # weights are initializers without a producer: only computed inputs follow
        elif node.op_type != "Constant":
            found.append(node.name)
    readers = [n.name for n in model.graph.node if n.name not in seen and any(i in tensors for i in n.input)]
    return found + readers


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """FP16 weights and activations, fp32 graph inputs and outputs, float islands kept fp32.

    Uses onnxruntime's converter (``onnxruntime.transformers.float16``) with its default block list of ops that
    have no fp16 kernels or lose too much in fp16, then repairs two things it leaves: a tensor read by several
    fp32 nodes gets one identical ``Cast`` per reader (same node and output name: invalid ONNX), and the casts
    are appended at the end of the node list (not topologically sorted, which ``onnx.checker`` requires).
    """
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    half = convert_float_to_float16(model, keep_io_types=True, op_block_list=list(DEFAULT_OP_BLOCK_LIST),
                                    node_block_list=float_islands(model))
    _drop_duplicate_nodes(half.graph)
    OnnxModel.graph_topological_sort(half.graph, is_deterministic=True)
    return half


def _drop_duplicate_nodes(graph: onnx.GraphProto) -> None:
    """Remove nodes that repeat an earlier node exactly (same op, inputs, outputs, attributes), and repeated
    ``value_info`` entries."""
    seen: set[bytes] = set()
    keep = []
    for node in graph.node:
        key = node.SerializeToString(deterministic=True)
        if key not in seen:
            seen.add(key)
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)
    infos, names = [], set()
    for info in graph.value_info:
        if info.name not in names:
            names.add(info.name)
            infos.append(info)
    del graph.value_info[:]
    graph.value_info.extend(infos)


class FrameReader(CalibrationDataReader):
    """Feeds calibration frames (graph input name -> array) to onnxruntime's calibrator, one frame at a time.

    Batches are split into frames: the percentile and entropy calibrators stack every run's tensors, and a last
    batch smaller than the others (26 frames in batches of 4) made that stack ragged ("inhomogeneous shape").
    """

    def __init__(self, feeds: Iterable[Mapping[str, np.ndarray]]) -> None:
        self._feeds = [{k: v[i:i + 1] for k, v in feed.items()} for feed in feeds
                       for i in range(len(next(iter(feed.values()))))]
        self._it = iter(self._feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        item = next(self._it, None)
        return None if item is None else dict(item)

    def rewind(self) -> None:
        self._it = iter(self._feeds)


def quantize_int8(model: onnx.ModelProto, feeds: Sequence[Mapping[str, np.ndarray]], *,
                  activation_type: str = "QUInt8", weight_type: str = "QInt8", per_channel: bool = True,
                  reduce_range: bool = False, calibrate_method: str = "percentile",
                  op_types: Sequence[str] | None = None, keep_output_layers: bool = True,
                  keep_float: Sequence[str] = (), extra_options: Mapping[str, Any] | None = None) -> onnx.ModelProto:
    """Static QDQ INT8 quantisation calibrated on ``feeds``.

    Args:
        model: the fp32 graph from :func:`~visionpilot.export.onnx_export.export_onnx`.
        feeds: calibration batches as graph-input dicts (``images`` uint8, calibration float32).
        activation_type, weight_type: ``QUInt8`` / ``QInt8`` (see the module docstring for the x86 choice).
        per_channel: per-output-channel weight scales.
        reduce_range: 7-bit weights, for CPUs without VNNI.
        calibrate_method: ``minmax``, ``entropy`` or ``percentile``.
        op_types: op types to quantise (None: every type onnxruntime can quantise).
        keep_output_layers: keep the layers that produce the raw outputs in float (see the module docstring).
        keep_float: node-name prefixes (the exporter's module scopes, e.g. ``/net/backbone/body/stem/``) also kept
            in float, for layers that a sensitivity study shows lose too much in 8 bits.
        extra_options: passed to ``quantize_static`` (e.g. ``{"CalibMovingAverage": True}``).
    """
    if not feeds:
        raise ValueError("INT8 calibration needs at least one batch of frames, found none")
    for name, table in (("activation_type", QUANT_TYPES), ("weight_type", QUANT_TYPES),
                        ("calibrate_method", CALIBRATION_METHODS)):
        value = {"activation_type": activation_type, "weight_type": weight_type,
                 "calibrate_method": calibrate_method}[name]
        if value not in table:
            raise ValueError(f"quantize: field '{name}' must be one of {sorted(table)}, found '{value}'")
    # Checked before calibrating: an op type no node has quantised nothing, silently with minmax (an fp32 graph
    # labelled int8), or failed in the percentile calibrator ("Histogram has not been collected").
    graph_ops = {n.op_type for n in model.graph.node}
    unknown = [t for t in op_types or [] if t not in graph_ops]
    if unknown:
        raise ValueError(f"quantize: field 'op_types' has {unknown}, which no node of the graph has; expected op "
                         f"types of the graph, e.g. {sorted(graph_ops & {'Conv', 'Gemm', 'MatMul'})}")
    opset = next((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), None)
    if opset is not None and opset > INT8_MAX_OPSET:
        raise ValueError(f"quantize: INT8 needs a graph of opset <= {INT8_MAX_OPSET} (onnxruntime's symbolic shape "
                         f"inference fails on opset-18 reductions), found opset {opset}; export with opset=17")
    with tempfile.TemporaryDirectory(prefix="vp-quant-") as tmp:
        src, pre, dst = Path(tmp, "fp32.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "int8.onnx")
        onnx.save_model(model, src)
        # Shape inference (symbolic + ONNX) so the quantiser knows every tensor's type and rank. No graph
        # optimisation here: it would rename and fuse nodes and lose the scope names the float islands rely on.
        quant_pre_process(str(src), str(pre), skip_optimization=True)
        prepared = onnx.load(str(pre))
        islands = float_islands(prepared)
        heads = output_layers(prepared) if keep_output_layers else []
        kept = [n.name for n in prepared.graph.node if any(n.name.startswith(p) for p in keep_float)]
        unmatched = [p for p in keep_float if not any(name.startswith(p) for name in kept)]
        if unmatched:
            raise ValueError(f"quantize: field 'keep_float' has prefixes {unmatched} that name no node of the graph "
                             f"(node names look like '{prepared.graph.node[len(prepared.graph.node) // 2].name}')")
        options = {"ActivationSymmetric": False, "WeightSymmetric": True, **dict(extra_options or {})}
        with warnings.catch_warnings():
            # The calibrator also measures tensors of excluded nodes (decode, geometry), e.g. constant or all-zero
            # ones whose scale is then 0 / 0; those parameters are never used (no QuantizeLinear is inserted there).
            warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"onnxruntime\.quantization")
            quantize_static(
                str(pre), str(dst), FrameReader(feeds), quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(op_types) if op_types else None, per_channel=per_channel,
                reduce_range=reduce_range, activation_type=QUANT_TYPES[activation_type],
                weight_type=QUANT_TYPES[weight_type], nodes_to_exclude=islands + heads + kept,
                calibrate_method=CALIBRATION_METHODS[calibrate_method], extra_options=options,
            )
        quantized = onnx.load(str(dst))
    docs = {o.name: o.doc_string for o in model.graph.output}  # the quantiser drops what each output is
    for out in quantized.graph.output:
        out.doc_string = docs.get(out.name, out.doc_string)
    log.info("INT8: %d nodes kept in fp32 (decode, geometry), %d output layers and %d keep_float nodes in fp32, "
             "%d QuantizeLinear nodes", len(islands), len(heads), len(kept),
             sum(n.op_type == "QuantizeLinear" for n in quantized.graph.node))
    return quantized
