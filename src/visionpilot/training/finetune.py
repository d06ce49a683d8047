"""Per-country fine-tuning: strategies (what trains), low-rank adapters, and region deltas.

A global model is fine-tuned where a country's data lives and only weights travel back, so a fine-tune is described
by *what it changed*. Strategies decide what trains (``requires_grad``); everything else is frozen, and frozen
normalisation layers are kept in eval mode so their running statistics do not drift either:

==========  =====================================================================================================
``full``    every parameter (except backbone stages the model config freezes, ``backbone.frozen_stages``)
``heads``   the neck, the image heads and the BEV branch; the backbone is frozen
``norm``    every normalisation layer (affine weights, and BatchNorm statistics adapt) plus heads and BEV branch
``adapter`` low-rank residual adapters in the backbone (after every residual block and after every tapped stage),
            the backbone's grouped/depthwise (spatial) convolutions, the neck, heads and BEV branch; the rest of
            the backbone is frozen. Head layers too large to ship densely (linear layers of at least
            ``head_min_params`` weights, e.g. the row-anchor lane classifier) train as a low-rank update
            (:class:`LoRALinear`) instead, so the delta stays small
==========  =====================================================================================================

A **region delta** is a safetensors file with only the tensors that differ from the base network (state-dict keys
of the plain ``nn.Module``, adapters included; floating-point ones in half precision by default, exactly: see
:func:`round_changed`) and, in its header metadata, the base checkpoint's SHA-256, the
region, the strategy, the adapter settings and the frame counts. :func:`merge_delta` puts it back onto the base
(and refuses any other base); :func:`load_model` loads a checkpoint, a delta, or ``base.ckpt+delta.safetensors``.
"""

from __future__ import annotations

import inspect
import json
import logging
import operator
import signal
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf
from safetensors import safe_open
from safetensors.torch import load_file, save
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from visionpilot.data.datamodule import has_val_frames
from visionpilot.data.regions import GLOBAL, resolve_regions
from visionpilot.data.replay import replay_datamodule
from visionpilot.governance import governance_kwargs
from visionpilot.governance.provenance import build_lineage, checkpoint_lineage, merge_lineage, parent_record
from visionpilot.training.checkpoints import LoadedCheckpoint, file_sha256, load_checkpoint, split_model_spec
from visionpilot.training.fault_tolerance import (
    AtomicCheckpointIO,
    check_resume,
    final_validation_missing,
    install_atomic_io,
    read_checkpoint_to_check,
    remove_earlier_checkpoints,
    resolve_ckpt_path,
    starts_over,
    with_previous_metrics,
)
from visionpilot.training.module import flatten_dotted, model_signature, under_prefix
from visionpilot.utils.io import write_atomic, write_json_atomic
from visionpilot.utils.machine import keep_freed_memory

log = logging.getLogger(__name__)

STRATEGIES = ("full", "heads", "norm", "adapter")
#: ``format`` field of a region delta's metadata.
DELTA_FORMAT = "visionpilot.region_delta/1"
#: Normalisation layers the ``norm`` strategy trains (BatchNorm/InstanceNorm via ``_NormBase``, GroupNorm, LayerNorm).
NORM_TYPES: tuple[type[nn.Module], ...] = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
_HEAD_PREFIXES = ("heads.", "bev.")


def _unwrap(net: nn.Module) -> nn.Module:
    return getattr(net, "_orig_mod", net)  # torch.compile wrapper


# --- adapters ----------------------------------------------------------------------------------------------------

#: Adapter defaults, one place for the Python API and for strategy configs that leave a key out; they match
#: configs/strategy/adapter.yaml (the region study in docs/benchmarks.md): stage adapters of rank 16 with a 3x3
#: down-projection, block adapters of rank 24. The Python API's ``block_rank`` defaults to None instead, so networks
#: stored before block adapters existed (their config has no ``block_rank``) rebuild as they were trained.
ADAPTER_RANK, ADAPTER_KERNEL_SIZE, ADAPTER_BLOCK_RANK, HEAD_MIN_PARAMS = 16, 3, 24, 65536
#: Whether the ``adapter`` strategy also trains the backbone's grouped/depthwise convolutions (adapter.yaml).
ADAPTER_GROUPED_CONVS = True
#: The functions fx records for a residual connection (``out = f(x) + shortcut``, ``out += identity``).
_ADDS = (operator.add, operator.iadd, torch.add)


class ConvAdapter(nn.Module):
    """Residual low-rank adapter on a feature map: ``x + up(act(down(x)))``, channels C -> rank -> C.

    ``up`` starts at zero, so a freshly inserted adapter is the identity and fine-tuning starts exactly from the
    global model (LoRA's initialisation, applied to feature maps as in conv adapters).

    Args:
        channels: channels of the adapted feature map.
        rank: bottleneck width.
        kernel_size: of the down-projection (1: per pixel; 3 adds spatial context for 9x the down weights).
    """

    def __init__(self, channels: int, rank: int = ADAPTER_RANK, kernel_size: int = ADAPTER_KERNEL_SIZE) -> None:
        super().__init__()
        if rank < 1 or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"ConvAdapter: rank must be >= 1 and kernel_size odd, found rank={rank}, "
                             f"kernel_size={kernel_size}")
        self.down = nn.Conv2d(channels, rank, kernel_size, padding=kernel_size // 2, bias=False)
        self.act = nn.ReLU(inplace=False)
        self.up = nn.Conv2d(rank, channels, 1, bias=True)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.up(self.act(self.down(x)))  # (B, C, h, w)


class LoRALinear(nn.Linear):
    """A linear layer with a low-rank update: ``W x + b + up(down(x))`` (LoRA, Hu et al. 2021).

    A subclass of ``nn.Linear`` holding the original ``weight`` and ``bias`` under their own names, so the state-dict
    keys of the base layer do not change and a region delta stores only ``lora_down`` / ``lora_up`` (rank x (in +
    out) numbers instead of in x out). ``lora_up`` starts at zero: the wrapped layer is exactly the original.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias=bias)
        if rank < 1:
            raise ValueError(f"LoRALinear: rank must be >= 1, found {rank}")
        self.lora_down = nn.Linear(in_features, rank, bias=False)
        self.lora_up = nn.Linear(rank, out_features, bias=False)
        nn.init.zeros_(self.lora_up.weight)

    @classmethod
    def wrap(cls, layer: nn.Linear, rank: int) -> LoRALinear:
        """The same layer (its own parameter tensors, not copies) with a zero low-rank update."""
        new = cls(layer.in_features, layer.out_features, rank, bias=layer.bias is not None)
        new.to(layer.weight.device)
        new.weight, new.bias = layer.weight, layer.bias
        return new

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) + self.lora_up(self.lora_down(x))


def _graphs(body: nn.Module) -> list[fx.Graph]:
    """The fx graphs of a feature extractor (torchvision's DualGraphModule keeps one for train and one for eval)."""
    if not isinstance(body, fx.GraphModule):
        raise TypeError(f"adapters: the backbone's 'body' must be an fx GraphModule (torchvision feature extractor), "
                        f"found {type(body).__name__}")
    graphs = [getattr(body, "train_graph", None), getattr(body, "eval_graph", None)]
    graphs = [g for g in graphs if g is not None]
    return graphs or [body.graph]


def adapter_config(net: nn.Module) -> dict[str, Any] | None:
    """The adapter settings of a network (``rank``, ``kernel_size``, ``stages``, ``head_rank``,
    ``head_min_params``), or None without adapters."""
    return getattr(_unwrap(net).backbone, "adapter_config", None)


def _large_head_linears(net: nn.Module, min_params: int, rank: int) -> list[str]:
    """Names of the head / BEV-branch linear layers with at least ``min_params`` weights whose rank-``rank`` update
    (``rank x (in + out)`` weights) is smaller than the layer itself: the others ship densely for less."""
    return [name for name, m in net.named_modules() if name.startswith(_HEAD_PREFIXES)
            and type(m) is nn.Linear and m.weight.numel() >= min_params
            and rank * (m.in_features + m.out_features) < m.weight.numel()]


def _taps(graph: fx.Graph) -> dict[str, fx.Node]:
    """The feature extractor's outputs: output name -> the node that produces it."""
    return next(n for n in graph.nodes if n.op == "output").args[0]


def _residual_adds(graph: fx.Graph, last: fx.Node) -> list[fx.Node]:
    """The residual connections of a backbone graph up to (and including) node ``last``: additions of two tensors."""
    adds = []
    for node in graph.nodes:
        if node.op == "call_function" and node.target in _ADDS and len(node.args) == 2 \
                and all(isinstance(a, fx.Node) for a in node.args):
            adds.append(node)
        if node is last:
            return adds
    raise ValueError(f"_residual_adds: node {last.name} is not in the graph")


def _node_channels(body: fx.GraphModule) -> dict[str, int]:
    """Channels of every 4D tensor node of the backbone graph, by running it once on a small zero image (fx's
    ShapeProp, eval mode: BatchNorm statistics untouched). Node names are the same in the train and eval graphs."""
    training = body.training
    body.eval()
    try:
        with torch.no_grad():
            ShapeProp(body).propagate(torch.zeros(1, 3, 64, 64, device=next(body.parameters()).device))
    finally:
        body.train(training)
    graph = getattr(body, "eval_graph", body.graph)
    return {n.name: int(n.meta["tensor_meta"].shape[1]) for n in graph.nodes
            if n.meta.get("tensor_meta") is not None and len(getattr(n.meta["tensor_meta"], "shape", ())) == 4}


def _insert_after(graph: fx.Graph, node: fx.Node, module: str) -> None:
    """Route every user of ``node`` through the submodule ``module`` (``node -> module(node) -> users``)."""
    with graph.inserting_after(node):
        new = graph.call_module(module, (node,))
    node.replace_all_uses_with(new, delete_user_cb=lambda user: user is not new)


def add_adapters(net: nn.Module, rank: int = ADAPTER_RANK, kernel_size: int = ADAPTER_KERNEL_SIZE,
                 stages: Sequence[str] | None = None, head_rank: int | None = None,
                 head_min_params: int = HEAD_MIN_PARAMS, block_rank: int | None = None) -> nn.Module:
    """Insert :class:`ConvAdapter` s into the backbone graph (in place): one after each tapped stage and, with
    ``block_rank``, one after every residual block up to the last tapped stage; with ``head_rank`` turn the large
    linear layers of the heads into :class:`LoRALinear`.

    A stage adapter feeds both the neck and the following stage; a block adapter sits on the block's output
    (after the residual sum, before the block's activation: Houlsby-style serial adapters), so the adaptation
    reaches inside every stage, not only the features the neck reads. Found in the fx graph of the feature
    extractor (the residual additions), so any torchvision backbone works. The adapters are submodules
    ``backbone.body.adapter_<stage>`` and ``backbone.body.adapter_block_<add node>`` (state-dict keys
    ``backbone.body.adapter_s8.down.weight``, ``backbone.body.adapter_block_add_3.up.bias``, ...). They export to
    ONNX like the rest of the graph (convolutions and a ReLU).

    Args:
        net: a HydraNet whose backbone is a :class:`~visionpilot.models.backbones.TorchvisionBackbone`.
        rank: stage adapter bottleneck width.
        kernel_size: of the stage adapters' down-projection.
        stages: output names to adapt (``["s8", "s16", "s32"]``); default every output of the backbone.
        head_rank: rank of the low-rank update of large head layers (only where the update is smaller than the
            layer); None trains every head layer densely.
        head_min_params: a head linear layer with at least this many weights counts as large.
        block_rank: bottleneck width of the per-block adapters (1x1 down-projection); None: no block adapters.

    Returns:
        ``net`` (for Hydra: ``_target_: visionpilot.training.finetune.with_adapters``).
    """
    backbone = _unwrap(net).backbone
    if adapter_config(net) is not None:
        raise ValueError(f"add_adapters: the network already has adapters {adapter_config(net)}")
    body = backbone.body
    names = list(backbone.names)
    stages = list(stages) if stages else names
    unknown = [s for s in stages if s not in names]
    if unknown:
        raise ValueError(f"add_adapters: field 'stages' {unknown} are not backbone outputs; valid choices: {names}")
    channels = dict(zip(names, backbone.channels))
    graphs = _graphs(body)
    blocks = {id(g): _residual_adds(g, _taps(g)[names[-1]]) if block_rank else [] for g in graphs}
    if block_rank and not all(blocks.values()):
        raise ValueError(f"add_adapters: field 'block_rank' needs residual blocks, but the backbone has no residual "
                         f"additions up to its output {names[-1]}; use block_rank=null")
    block_channels = _node_channels(body) if block_rank else {}
    for stage in stages:
        body.add_submodule(f"adapter_{stage}", ConvAdapter(channels[stage], int(rank), int(kernel_size)))
    for name in dict.fromkeys(node.name for nodes in blocks.values() for node in nodes):  # graph order: seeded inits
        body.add_submodule(f"adapter_block_{name}", ConvAdapter(block_channels[name], int(block_rank), 1))
    for graph in graphs:
        for node in blocks[id(graph)]:
            _insert_after(graph, node, f"adapter_block_{node.name}")
        taps = _taps(graph)  # after the block adapters: a stage that ends in a block sum is adapted after its block's
        for stage in stages:
            _insert_after(graph, taps[stage], f"adapter_{stage}")
        graph.lint()
    # Re-assigning the active graph recompiles the module's forward.
    body.graph = body.train_graph if hasattr(body, "train_graph") and body.training else \
        getattr(body, "eval_graph", body.graph)
    config: dict[str, Any] = {"rank": int(rank), "kernel_size": int(kernel_size), "stages": stages}
    if block_rank:
        config["block_rank"] = int(block_rank)
    if head_rank:
        inner = _unwrap(net)
        for name in _large_head_linears(inner, int(head_min_params), int(head_rank)):
            parent, _, child = name.rpartition(".")
            owner = inner.get_submodule(parent)
            owner.register_module(child, LoRALinear.wrap(getattr(owner, child), int(head_rank)))
        config.update(head_rank=int(head_rank), head_min_params=int(head_min_params))
    backbone.adapter_config = config
    return net


def with_adapters(net: nn.Module, rank: int = ADAPTER_RANK, kernel_size: int = ADAPTER_KERNEL_SIZE,
                  stages: Sequence[str] | None = None, head_rank: int | None = None,
                  head_min_params: int = HEAD_MIN_PARAMS, block_rank: int | None = None) -> nn.Module:
    """Hydra target wrapping a net config, so a fine-tuned adapter checkpoint rebuilds from its stored config."""
    return add_adapters(net, rank, kernel_size, list(stages) if stages else None, head_rank, head_min_params,
                        block_rank)


# --- strategies --------------------------------------------------------------------------------------------------


def _params_of(net: nn.Module, types: type | tuple[type, ...], recurse: bool) -> set[str]:
    names = set()
    for mname, module in net.named_modules():
        if isinstance(module, types):
            names.update(f"{mname}.{p}" if mname else p for p, _ in module.named_parameters(recurse=recurse))
    return names


def _model_frozen(net: nn.Module) -> set[str]:
    """Parameters the model config itself freezes (``backbone.frozen_stages``); no strategy unfreezes them."""
    prefixes = tuple(f"backbone.body.{p}" for p in getattr(net.backbone, "_frozen_prefixes", ()))
    return {n for n, _ in net.named_parameters() if prefixes and n.startswith(prefixes)}


def _grouped_convs(net: nn.Module) -> set[str]:
    """Parameters of the backbone's grouped and depthwise convolutions: the spatial filters of RegNet's, EfficientNet's
    and MobileNet's blocks (none in ResNet), a small share of the weights (306 k of RegNetY-400MF's 3.9 M)."""
    return {f"{mname}.{p}" for mname, module in net.backbone.named_modules(prefix="backbone")
            if isinstance(module, nn.Conv2d) and module.groups > 1 for p, _ in module.named_parameters(recurse=False)}


def trainable_names(net: nn.Module, strategy: str, *, grouped_convs: bool = ADAPTER_GROUPED_CONVS) -> set[str]:
    """Parameter names a strategy trains (see the module docstring); ``grouped_convs``: whether the ``adapter``
    strategy also trains the backbone's grouped and depthwise convolutions densely."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown fine-tuning strategy '{strategy}'; valid choices: {list(STRATEGIES)}")
    net = _unwrap(net)
    names = {n for n, _ in net.named_parameters()}
    heads = {n for n in names if n.startswith(_HEAD_PREFIXES)}
    neck = {n for n in names if n.startswith("neck.")}
    if strategy == "full":
        chosen = names
    elif strategy == "heads":
        chosen = heads | neck
    elif strategy == "norm":
        chosen = heads | _params_of(net, NORM_TYPES, recurse=False)
    else:
        adapters = _params_of(net, ConvAdapter, recurse=True)
        if not adapters:
            raise ValueError("strategy 'adapter': the network has no adapters; call add_adapters(net) first")
        low_rank_bases = _params_of(net, LoRALinear, recurse=False)  # their weight and bias: only the update trains
        chosen = (heads - low_rank_bases) | adapters | neck | (_grouped_convs(net) if grouped_convs else set())
    return chosen - _model_frozen(net)


@dataclass
class StrategyReport:
    """What :func:`apply_strategy` did."""

    strategy: str
    trainable: list[str]
    frozen_norms: list[nn.Module] = field(repr=False)
    trainable_params: int = 0
    total_params: int = 0


def apply_strategy(net: nn.Module, strategy: str, *, grouped_convs: bool = ADAPTER_GROUPED_CONVS) -> StrategyReport:
    """Set ``requires_grad`` for ``strategy`` (in place) and list the norm layers that must stay in eval mode.

    A norm layer keeps updating its running statistics only if it trains: its affine parameters are trainable, or
    (without affine parameters) the strategy is ``full`` or ``norm``. ``grouped_convs``: see :func:`trainable_names`.
    """
    chosen = trainable_names(net, strategy, grouped_convs=grouped_convs)
    net = _unwrap(net)
    for name, param in net.named_parameters():
        param.requires_grad_(name in chosen)
    frozen = []
    for module in net.modules():
        if isinstance(module, nn.modules.batchnorm._NormBase):  # the norm layers with running statistics
            params = list(module.parameters())
            trains = all(p.requires_grad for p in params) if params else strategy in ("full", "norm")
            if not trains:
                frozen.append(module)
    params = dict(net.named_parameters())
    return StrategyReport(strategy, sorted(chosen), frozen, sum(params[n].numel() for n in chosen),
                          sum(p.numel() for p in params.values()))


class FinetuneCallback(L.Callback):
    """Keeps frozen norm layers in eval mode during training and stamps the fine-tune facts into checkpoints.

    Lightning puts the whole module in train mode at the start of fitting and after every validation, so the
    frozen layers are switched back before every training batch (a few dozen attribute writes). They are found by
    name when training starts: Lightning may have replaced them by then (``trainer.sync_batchnorm`` turns every
    BatchNorm into a new SyncBatchNorm module under DDP).

    With ``base_state`` and a half-precision ``delta_dtype``, the changed weights are rounded to it
    (:func:`round_changed`) before the validation at the last step, so the final metrics are those of the weights
    the region delta ships.

    Args:
        frozen_norms: from :func:`apply_strategy`.
        info: stored as ``checkpoint["visionpilot"]["finetune"]``.
        base_state: the base network's state dict (before adapters were added).
        delta_dtype: the dtype the region delta stores.
    """

    def __init__(self, frozen_norms: Iterable[nn.Module], info: Mapping[str, Any],
                 base_state: Mapping[str, Tensor] | None = None, delta_dtype: torch.dtype = torch.float32) -> None:
        self.frozen_norms = list(frozen_norms)
        self.info = dict(info)
        self.base_state = base_state
        self.delta_dtype = delta_dtype
        self._frozen_names: list[str] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Before the strategy's setup, which may swap the norm layers: remember where the frozen ones sit.
        names = {id(m): n for n, m in pl_module.named_modules()}
        self._frozen_names = [names[id(m)] for m in self.frozen_norms if id(m) in names]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._frozen_names is not None:  # the modules that run now (SyncBatchNorm after a conversion)
            self.frozen_norms = [pl_module.get_submodule(n) for n in self._frozen_names]

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.base_state is not None and 0 < trainer.max_steps <= trainer.global_step:
            round_changed(pl_module.net, self.base_state, self.delta_dtype)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        for module in self.frozen_norms:
            module.eval()

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        checkpoint.setdefault("visionpilot", {})["finetune"] = self.info


# --- region deltas -----------------------------------------------------------------------------------------------


def changed_tensors(net: nn.Module, base_state: Mapping[str, Tensor], copy: bool = True) -> dict[str, Tensor]:
    """State-dict entries of ``net`` that are new or differ (bitwise) from ``base_state`` (copies on the CPU, or with
    ``copy=False`` the network's own tensors). ``base_state`` may live on another device than ``net`` (the base is
    loaded on the CPU, the network trains on a GPU)."""
    out = {}
    for key, value in _unwrap(net).state_dict().items():
        ref = base_state.get(key)
        if ref is None or ref.shape != value.shape or ref.dtype != value.dtype \
                or not torch.equal(ref.to(value.device), value):  # torch.equal refuses tensors on two devices
            out[key] = value.detach().cpu().contiguous().clone() if copy else value
    return out


#: The keys of a delta's ``adapter`` field: :func:`add_adapters`' settings.
_ADAPTER_KEYS = tuple(name for name in inspect.signature(add_adapters).parameters if name != "net")
#: Floating-point dtypes a region delta may store its tensors in (``delta_dtype``).
DELTA_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def delta_dtype(name: str | None) -> torch.dtype:
    """The torch dtype for a ``delta_dtype`` setting (``None``: float32)."""
    if name is None:
        return torch.float32
    if str(name) not in DELTA_DTYPES:
        raise ValueError(f"field 'delta_dtype' must be one of {sorted(DELTA_DTYPES)}, found {name!r}")
    return DELTA_DTYPES[str(name)]


def _narrows(value: Tensor, dtype: torch.dtype) -> bool:
    """Whether ``dtype`` is a narrower floating-point type than ``value``'s (integer buffers never narrow)."""
    return value.is_floating_point() and torch.finfo(dtype).bits < torch.finfo(value.dtype).bits


def _narrowed(value: Tensor, dtype: torch.dtype) -> Tensor:
    """``value`` cast to ``dtype`` when that loses nothing (otherwise ``value`` as it is)."""
    if not _narrows(value, dtype):
        return value
    narrow = value.to(dtype)
    return narrow if torch.equal(narrow.to(value.dtype), value) else value


def round_changed(net: nn.Module, base_state: Mapping[str, Tensor], dtype: torch.dtype) -> int:
    """Round, in place, every floating-point tensor of ``net`` that differs from ``base_state`` to the nearest value
    ``dtype`` holds, so a delta stored in ``dtype`` reproduces ``net`` exactly; returns how many tensors the rounding
    moved (0: all of them held such values already).

    A tensor with a value outside ``dtype``'s range (float16: 65,504) is left as it is (the delta keeps it wide).
    """
    count = 0
    with torch.no_grad():
        for value in changed_tensors(net, base_state, copy=False).values():
            if not _narrows(value, dtype):
                continue
            narrow = value.to(dtype)
            if torch.equal(torch.isfinite(narrow), torch.isfinite(value)) \
                    and not torch.equal(narrow.to(value.dtype), value):  # no finite value overflowed; some moves
                value.copy_(narrow)
                count += 1
    return count


def save_delta(path: str | Path, net: nn.Module, base_state: Mapping[str, Tensor], *, base_sha256: str,
               region: str, strategy: str, frame_counts: Mapping[str, int] | None = None,
               replay_frame_counts: Mapping[str, int] | None = None, base_path: str | Path | None = None,
               extra: Mapping[str, Any] | None = None, lineage: Mapping[str, Any] | None = None,
               dtype: torch.dtype = torch.float32) -> Path:
    """Write the region delta of ``net`` against ``base_state`` (atomically) and return its path.

    Args:
        path: the ``.safetensors`` file to write.
        net: the fine-tuned network.
        base_state: the base network's state dict as loaded (before adapters were added).
        base_sha256: SHA-256 of the base checkpoint file (:func:`~visionpilot.training.checkpoints.file_sha256`).
        region: target region code.
        strategy: one of :data:`STRATEGIES`.
        frame_counts: train frames per target region.
        replay_frame_counts: train frames per replay region.
        base_path: where the base was read from (a hint for :func:`load_model`; the hash is what is checked).
        extra: more metadata (JSON-encoded).
        lineage: the delta's lineage record (:func:`visionpilot.governance.provenance.build_lineage`).
        dtype: store each floating-point tensor in this narrower dtype where that is lossless (after
            :func:`round_changed`: all of them); the delta stays exact either way.
    """
    tensors = {k: _narrowed(v, dtype) for k, v in changed_tensors(net, base_state).items()}
    meta = {
        "format": DELTA_FORMAT,
        "base_sha256": base_sha256,
        "base_path": str(Path(base_path).resolve()) if base_path else "",
        "region": str(region).lower(),
        "strategy": strategy,
        "adapter": json.dumps(adapter_config(net)),
        "frame_counts": json.dumps(dict(frame_counts or {})),
        "replay_frame_counts": json.dumps(dict(replay_frame_counts or {})),
        "num_tensors": str(len(tensors)),
        "num_params": str(sum(t.numel() for t in tensors.values())),
        "dtypes": json.dumps(sorted({str(t.dtype).removeprefix("torch.") for t in tensors.values()})),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "extra": json.dumps(dict(extra or {})),
        "lineage": json.dumps(dict(lineage) if lineage else None),
    }
    data = save(tensors, metadata=meta)  # the delta is small (a few MB): one buffer, written and synced below

    # write_atomic flushes the file and the folder entry to disk: the rename alone is atomic, not durable (a power
    # cut could leave an empty delta)
    return write_atomic(path, lambda tmp: Path(tmp).write_bytes(data))


def read_delta_metadata(path: str | Path) -> dict[str, Any]:
    """A delta's header metadata, JSON fields decoded; checks that the file is a region delta."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"region delta not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
    except Exception as err:  # not a safetensors file
        raise ValueError(f"could not read region delta {path}: {err}") from err
    if meta.get("format") != DELTA_FORMAT:
        raise ValueError(f"{path}: field 'format' must be '{DELTA_FORMAT}' (a visionpilot region delta), found "
                         f"{meta.get('format')!r}")
    if not meta.get("base_sha256"):  # what merge_delta checks the base against
        raise ValueError(f"{path}: field 'base_sha256' (the base checkpoint's SHA-256) is missing or empty; the "
                         f"delta cannot be matched to its base")
    for key in ("adapter", "frame_counts", "replay_frame_counts", "extra", "lineage", "dtypes"):
        try:
            meta[key] = json.loads(meta.get(key) or "null")
        except ValueError as err:
            raise ValueError(f"{path}: field '{key}' is not valid JSON ({err}), found {meta[key]!r}") from None
    adapter = meta["adapter"]
    unknown = sorted(set(adapter) - set(_ADAPTER_KEYS)) if isinstance(adapter, dict) else []
    if not isinstance(adapter, dict | None) or unknown:
        raise ValueError(f"{path}: field 'adapter' must be null or an object with keys from {list(_ADAPTER_KEYS)}, "
                         f"found {adapter!r}" + (f" (unknown: {unknown})" if unknown else ""))
    return meta


def merge_delta(net: nn.Module, delta_path: str | Path, base_sha256: str) -> nn.Module:
    """Apply a region delta to ``net`` in place and return it.

    ``net`` must hold the weights of the base checkpoint whose file hash is ``base_sha256`` (e.g.
    ``load_checkpoint(base).net`` and ``.sha256``); a delta made from another base is refused. Adapters recorded
    in the delta are inserted first when ``net`` has none; the delta must then hold every tensor they add (a delta
    stores all tensors the base lacks), and every tensor it holds must be one of the network's, of the same shape.
    """
    path = Path(delta_path)
    meta = read_delta_metadata(path)
    if meta["base_sha256"] != base_sha256:
        raise ValueError(
            f"{path}: this delta was fine-tuned from base checkpoint sha256 {meta['base_sha256'][:16]}... "
            f"({meta.get('base_path') or 'path unknown'}), but the base given has sha256 {base_sha256[:16]}...; "
            f"merge it onto the checkpoint it was made from")
    wanted = meta["adapter"]
    have = adapter_config(net)
    base_keys = set(_unwrap(net).state_dict())
    if wanted and have is None:
        add_adapters(net, **wanted)
    elif wanted and have != wanted:
        raise ValueError(f"{path}: field 'adapter' is {wanted}, but the network has adapters {have}")
    tensors = load_file(str(path))
    state = _unwrap(net).state_dict()
    # The tensors the base lacks (the adapters inserted above) start random or zero; only the delta can set them, and
    # save_delta stores every one of them, so a delta without some is incomplete (edited, cut, or of other code).
    missing = sorted(set(state) - base_keys - set(tensors))
    if missing:
        raise ValueError(f"{path}: the delta lacks {len(missing)} of the {len(set(state) - base_keys)} tensors the "
                         f"base does not have, e.g. {missing[:3]}; expected all of them (its field 'adapter' is "
                         f"{wanted}); merged, those adapters would run with their initial weights. Use the "
                         f"complete delta.safetensors the fine-tune wrote")
    unknown = sorted(set(tensors) - set(state))
    shapes = [f"{k}: delta {list(tensors[k].shape)}, network {list(state[k].shape)}"
              for k in sorted(set(tensors) & set(state)) if tuple(tensors[k].shape) != tuple(state[k].shape)]
    if unknown or shapes:
        raise ValueError(f"{path}: the delta does not fit this network: {len(unknown)} tensors the network does not "
                         f"have (e.g. {unknown[:3]}), {len(shapes)} of another shape (e.g. {shapes[:3]}); expected "
                         f"only the network's own tensors, of its shapes")
    with torch.no_grad():
        for key, value in tensors.items():
            state[key].copy_(value)  # state_dict() tensors share storage with the parameters and buffers
    return net


# --- loading fine-tuned models -----------------------------------------------------------------------------------


def adapter_net_config(net_config: Any, adapter: Mapping[str, Any]) -> dict[str, Any]:
    """A net config that rebuilds the network with adapters (wraps it in :func:`with_adapters`)."""
    inner = OmegaConf.to_container(net_config, resolve=True) if OmegaConf.is_config(net_config) else dict(net_config)
    return {"_target_": "visionpilot.training.finetune.with_adapters", "net": inner, **dict(adapter)}


def load_model(spec: str | Path, base: str | Path | None = None) -> LoadedCheckpoint:
    """Load a network for evaluation or export from any of:

    - a checkpoint (``.ckpt``) written by ``visionpilot-train`` or ``visionpilot-finetune``;
    - a region delta (``.safetensors``): merged onto ``base``, or onto the base path recorded in the delta;
    - ``"base.ckpt+delta.safetensors"``.

    For a delta, ``config`` is the base's with adapters (if any) in ``model.net``, ``meta["finetune"]`` the delta's
    metadata, ``path`` / ``sha256`` those of the delta file.
    """
    given_base, path = split_model_spec(spec)  # paths may contain '+' themselves
    base = given_base or base
    if path.suffix != ".safetensors":
        return load_checkpoint(path)
    meta = read_delta_metadata(path)
    base = base or meta.get("base_path")
    if not base or not Path(base).is_file():
        raise FileNotFoundError(f"{path}: base checkpoint {base or '(not recorded)'} not found; give it as "
                                f"'<base.ckpt>+{path}'")
    loaded = load_checkpoint(base)
    merge_delta(loaded.net, path, loaded.sha256)
    config = loaded.config.copy()
    if meta["adapter"]:
        config.model.net = adapter_net_config(config.model.net, meta["adapter"])
    sha256 = file_sha256(path)
    # The merged model's lineage: the delta's record with the merged base's record as its parent.
    lineage = merge_lineage(checkpoint_lineage(loaded.meta), meta.get("lineage"), base_sha256=loaded.sha256,
                            delta_sha256=sha256, base_path=loaded.path, delta_path=path)
    return LoadedCheckpoint(net=loaded.net.eval(), config=config,
                            meta={**loaded.meta, "finetune": meta, "lineage": lineage},
                            path=path, sha256=sha256, extra={"base": loaded.path})


def write_checkpoint(path: str | Path, net: nn.Module, config: Any, meta: Mapping[str, Any] | None = None) -> Path:
    """Write a stand-alone checkpoint (weights + stored config) that :func:`load_checkpoint` reads.

    Used to materialise base + delta as one file, and by tests. ``meta`` adds fields of the ``visionpilot`` entry
    (``camera_names``, ``image_size``, ``regions``, ...).
    """
    config = OmegaConf.to_container(config, resolve=True) if OmegaConf.is_config(config) else dict(config)
    ckpt = {"state_dict": {f"net.{k}": v for k, v in _unwrap(net).state_dict().items()},
            "visionpilot": {**dict(meta or {}), "config": config, "model_signature": model_signature(net)}}
    AtomicCheckpointIO().save_checkpoint(ckpt, path)  # synced to disk before the rename, as training's checkpoints
    return Path(path)


# --- the fine-tune run -------------------------------------------------------------------------------------------


def build_finetune_config(cfg: DictConfig, base: LoadedCheckpoint) -> DictConfig:
    """The run config of a fine-tune: the checkpoint's stored model and data config, pointed at the target region
    (with replay), with ``cfg.data`` / ``cfg.model`` merged on top and the fine-tune's trainer, callbacks, logger.

    This is what the fine-tuned checkpoint stores, so it rebuilds like any other (adapters included).
    """
    wanted = _plain(cfg.data.get("regions"))
    wanted = [wanted] if isinstance(wanted, str) else list(wanted or [])
    if len(wanted) != 1 or str(wanted[0]).lower() == GLOBAL:
        raise ValueError(f"visionpilot-finetune: fine-tunes on exactly one region (region=gb or data.regions=[gb]), "
                         f"found data.regions={wanted}")
    region = resolve_regions(wanted)[0]
    strategy = dict(OmegaConf.to_container(cfg.strategy, resolve=True))
    name = strategy.get("name")
    if name not in STRATEGIES:
        raise ValueError(f"field 'strategy.name': expected one of {list(STRATEGIES)}, found {name!r}")
    stored = base.config
    base_regions = [str(r) for r in (base.meta.get("regions") or [])]
    replay = _plain(cfg.replay.regions)
    if isinstance(replay, str) and replay == "base":
        if not base_regions:
            raise ValueError(f"{base.path}: field 'visionpilot.regions' is missing, so replay.regions=base cannot "
                             f"be resolved; give the replay regions, e.g. replay.regions=[us,de]")
        replay = base_regions
    if isinstance(replay, str) and replay.lower() != GLOBAL:
        replay = [replay]
    replay = [r for r in resolve_regions(replay) if r != region] if replay else []
    if float(cfg.replay.fraction) <= 0:
        replay = []
    data = OmegaConf.merge(stored.data, {"regions": [region], "replay_regions": replay,
                                         "replay_fraction": float(cfg.replay.fraction)}, _plain(cfg.get("data")) or {})
    # The replay version of the base's own datamodule (a nuScenes / CULane base keeps its root and on_error fields)
    data._target_ = replay_datamodule(data.get("_target_"), str(base.path))
    if "source" in data and "regions" in data.source:  # sources that render or filter regions need the replay ones
        data.source.regions = sorted({region, *replay})
    model = OmegaConf.merge(stored.model, _plain(cfg.get("model")) or {})
    if model.optimizer.get("lr") is None:
        model.optimizer.lr = float(stored.model.optimizer.lr) * float(strategy.get("lr_scale", 1.0))
    # The strategy's per-part multipliers (adapter: the lane head faster than the rest), unless model.lr_mult is
    # given; a part this network does not have (a model without a lane head) is left out, not an error.
    if strategy.get("lr_mult") and not (_plain(cfg.get("model")) or {}).get("lr_mult"):
        names = [name for name, _ in base.net.named_parameters()]
        model.lr_mult = {prefix: mult for prefix, mult in flatten_dotted(strategy["lr_mult"]).items()
                         if any(under_prefix(name, prefix) for name in names)}
    if name == "adapter":
        model.net = adapter_net_config(stored.model.net, _adapter_settings(strategy))
    info = {"base_checkpoint": str(Path(base.path).resolve()), "base_sha256": base.sha256, "base_regions": base_regions,
            "region": region, "strategy": name, "replay_regions": replay,
            "replay_fraction": float(cfg.replay.fraction),
            # Runs of one setting differ by seed (batch order, augmentation, replay draws); reports average them.
            "seed": None if cfg.get("seed") is None else int(cfg.seed)}
    return OmegaConf.create({
        "task_name": cfg.get("task_name", "finetune"), "seed": cfg.get("seed"), "paths": _plain(cfg.paths),
        "rig": stored.get("rig"), "data": data, "model": model, "trainer": _plain(cfg.trainer),
        "callbacks": _plain(cfg.get("callbacks")), "logger": _plain(cfg.get("logger")), "finetune": info,
        "strategy": strategy,
        # The fine-tune's own policy and compute region (where it runs), never the checkpoint's.
        "governance": _plain(cfg.get("governance")), "compute_region": cfg.get("compute_region"),
    })


def check_same_finetune(path: str | Path, info: Mapping[str, Any]) -> None:
    """A fine-tune resumes only its own checkpoints: same base checkpoint, region, strategy and seed, or an error
    naming the field (a 'heads' run must not continue from the weights of a 'full' one left in the same run dir, nor
    seed 43 from seed 42's: a multirun over seeds shares the sweep subdir unless it names the seed)."""
    loaded = read_checkpoint_to_check(path, field="resume")  # None: Lightning's own 'last' / 'hpc', a URL
    if loaded is None:
        return
    ckpt = loaded[1]
    stored = ((ckpt.get("visionpilot") if isinstance(ckpt, dict) else None) or {}).get("finetune") or {}
    keys = ("base_sha256", "region", "strategy", *(("seed",) if "seed" in stored else ()))  # older: no seed
    for key in keys:
        if stored.get(key) != info.get(key):
            hint = " (a multirun over seeds: hydra.sweep.subdir='${strategy.name}-${data.regions.0}-s${seed}')"
            raise ValueError(f"{path}: this run dir holds a fine-tune with field '{key}' = {stored.get(key)!r}, but "
                             f"this run's is {info.get(key)!r}; give another hydra.run.dir, or resume=never to "
                             f"start over here{hint if key == 'seed' else ''}")


def _plain(value: Any) -> Any:
    """A resolved plain container for config nodes (other values unchanged)."""
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _adapter_settings(strategy: Mapping[str, Any]) -> dict[str, Any]:
    head_rank, block_rank = strategy.get("head_rank"), strategy.get("block_rank", ADAPTER_BLOCK_RANK)
    return {"rank": int(strategy.get("rank", ADAPTER_RANK)),
            "kernel_size": int(strategy.get("kernel_size", ADAPTER_KERNEL_SIZE)),
            "stages": list(strategy.get("stages") or []) or None, "head_rank": int(head_rank) if head_rank else None,
            "head_min_params": int(strategy.get("head_min_params", HEAD_MIN_PARAMS)),
            "block_rank": int(block_rank) if block_rank else None}


def finetune(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Fine-tune ``cfg.ckpt_path`` on the region ``cfg.data.regions`` with ``cfg.strategy``; write the fine-tuned
    checkpoint (``checkpoints/finetuned.ckpt``), the region delta, ``metrics.json`` and ``finetune.json``.

    Returns:
        the metrics and the objects (``datamodule``, ``model``, ``trainer``, ``report``, ``config``).
    """
    from visionpilot.training.callbacks import Throughput
    from visionpilot.training.train import instantiate_list

    if not cfg.get("ckpt_path"):
        raise ValueError("visionpilot-finetune: field 'ckpt_path' is required (the global checkpoint), e.g. "
                         "ckpt_path=runs/global/checkpoints/last.ckpt")
    delta_file = cfg.get("delta_file", "delta.safetensors")
    if Path(str(delta_file)).suffix != ".safetensors":  # how load_model, the eval and the benchmark tell a delta
        raise ValueError(f"visionpilot-finetune: field 'delta_file': expected a file name ending in .safetensors "
                         f"(e.g. delta.safetensors), found {delta_file!r}")
    base = load_checkpoint(cfg.ckpt_path)
    run_cfg = build_finetune_config(cfg, base)
    if run_cfg.get("seed") is not None:
        L.seed_everything(int(run_cfg.seed), workers=True)
    torch.set_float32_matmul_precision("high")
    torch.set_flush_denormal(True)  # denormal floats make CPU convolutions orders of magnitude slower
    log.info("allocator: %s", keep_freed_memory())  # no page faults on every step's fresh tensors
    strategy = run_cfg.strategy.name
    net = base.net.train()
    base_state = {k: v.clone() for k, v in net.state_dict().items()}
    if strategy == "adapter":
        add_adapters(net, **_adapter_settings(run_cfg.strategy))
    datamodule = hydra.utils.instantiate(run_cfg.data, **governance_kwargs(run_cfg))
    module = hydra.utils.instantiate(run_cfg.model, net=net)
    module.run_config = OmegaConf.to_container(run_cfg, resolve=True)
    base_record = parent_record(checkpoint_lineage(base.meta), base.sha256, base.path)
    module.lineage_parents = [base_record]
    report = apply_strategy(net, strategy,
                            grouped_convs=bool(run_cfg.strategy.get("grouped_convs", ADAPTER_GROUPED_CONVS)))
    log.info("fine-tuning %s on %s with strategy '%s': %d of %d parameters train (%.1f%%), lr %.3g%s, replay %s",
             base.path, run_cfg.finetune.region, strategy, report.trainable_params, report.total_params,
             100.0 * report.trainable_params / max(report.total_params, 1), run_cfg.model.optimizer.lr,
             "".join(f" ({k}: x{v:g})" for k, v in (_plain(run_cfg.model.get("lr_mult")) or {}).items()),
             list(run_cfg.finetune.replay_regions) or "off")
    info = OmegaConf.to_container(run_cfg.finetune, resolve=True)
    dtype = delta_dtype(cfg.get("delta_dtype"))
    callbacks = [*instantiate_list(run_cfg.get("callbacks")),
                 FinetuneCallback(report.frozen_norms, info, base_state, dtype)]
    loggers = instantiate_list(run_cfg.get("logger"))
    trainer = hydra.utils.instantiate(run_cfg.trainer, callbacks=callbacks, logger=loggers or False)
    install_atomic_io(trainer)  # finetuned.ckpt and every other checkpoint written atomically
    # resume=auto: rerunning the command in the same run dir continues a killed fine-tune (fault_tolerance.py).
    resume = resolve_ckpt_path(cfg.get("resume", "auto"), run_cfg.paths.output_dir)
    if resume is not None:
        check_same_finetune(resume, info)
        check_resume(resume, module, field="resume")  # ckpt_path is the base here
    elif starts_over(cfg.get("resume", "auto")):  # nothing of an earlier fine-tune here may be resumed later
        remove_earlier_checkpoints(run_cfg.paths.output_dir, keep=base.path)
    try:
        trainer.fit(module, datamodule, ckpt_path=resume, weights_only=False)
    except SIGTERMException:  # as visionpilot-train: a stopped fine-tune must not exit 0 (training/train.py)
        log.warning("fine-tune stopped by SIGTERM at step %d: no delta written; rerun the same command to resume",
                    trainer.global_step)
        raise SystemExit(128 + signal.SIGTERM) from None
    # The fine-tuned model is what the delta ships: changed weights rounded to its dtype (already done before the
    # validation at max_steps, if there was one), so base + delta reproduces the checkpoint exactly.
    moved = round_changed(net, base_state, dtype)
    # As visionpilot-train (training/train.py), the final model is validated when the last validation saw an earlier
    # step (a val_check_interval that does not divide max_steps), and here also when it saw these weights before the
    # rounding (a run that max_epochs ends: the callback rounds at max_steps only), so metrics.json and finetune.json
    # describe the delta written below. A validation at the last step of rounded weights is not repeated.
    stale = module.validation_is_stale() or (moved > 0 and module.val_step is not None)
    # And a resumed fine-tune that trained nothing: it was killed during its final validation (or before writing).
    metrics_path = Path(run_cfg.paths.output_dir) / cfg.get("metrics_file", "metrics.json")
    stale = stale or (resume is not None and module.val_step is None
                      and final_validation_missing(metrics_path, trainer.global_step))
    if stale and has_val_frames(datamodule) and trainer.limit_val_batches:
        log.info("validating the fine-tuned model (step %d): the last validation saw step %s%s", trainer.global_step,
                 module.val_step, " before the rounding" if module.val_step == trainer.global_step else "")
        trainer.validate(module, datamodule, verbose=False)

    out_dir = Path(run_cfg.paths.output_dir)
    ckpt_path = out_dir / "checkpoints" / "finetuned.ckpt"
    # An earlier fine-tune's results in this run dir (resume=never) must not outlive this one's checkpoint: a job
    # that dies between the writes below would leave them describing another model beside it.
    for stale in (out_dir / cfg.get("delta_file", "delta.safetensors"), out_dir / "finetune.json"):
        stale.unlink(missing_ok=True)
    trainer.save_checkpoint(ckpt_path)
    replay_counts = getattr(datamodule, "replay_frame_counts", {})
    delta_path = save_delta(out_dir / cfg.get("delta_file", "delta.safetensors"), net, base_state,
                            base_sha256=base.sha256, region=run_cfg.finetune.region, strategy=strategy,
                            frame_counts=datamodule.frame_counts.get("train", {}), replay_frame_counts=replay_counts,
                            base_path=base.path, dtype=dtype, extra={"trainable_params": report.trainable_params,
                                                        "steps": int(trainer.global_step), "seed": info["seed"]},
                            lineage=build_lineage("region_delta", datamodule=datamodule, config=module.run_config,
                                                  base_sha256=base.sha256, parents=[base_record],
                                                  region=run_cfg.finetune.region, strategy=strategy))
    metrics = module.run_metrics()
    for cb in callbacks:
        if isinstance(cb, Throughput):
            metrics.update(cb.summary())
    metrics.update({"train/steps": float(trainer.global_step),
                    "finetune/trainable_params": float(report.trainable_params),
                    "finetune/total_params": float(report.total_params),
                    "finetune/delta_bytes": float(delta_path.stat().st_size),
                    "finetune/checkpoint_bytes": float(ckpt_path.stat().st_size)})
    if resume is not None:  # a rerun of a finished fine-tune validates nothing: keep the metrics it wrote then
        metrics = with_previous_metrics(metrics_path, metrics)
    write_json_atomic(metrics_path, metrics)
    summary = {**info, "checkpoint": str(ckpt_path), "delta": str(delta_path),
               "delta_bytes": delta_path.stat().st_size, "checkpoint_bytes": ckpt_path.stat().st_size,
               "trainable_params": report.trainable_params, "total_params": report.total_params,
               "frame_counts": datamodule.frame_counts.get("train", {}), "replay_frame_counts": replay_counts,
               "lr": float(run_cfg.model.optimizer.lr), "lr_mult": _plain(run_cfg.model.get("lr_mult")) or {},
               "steps": int(trainer.global_step), "metrics": metrics}
    write_json_atomic(out_dir / "finetune.json", summary)
    log.info("fine-tuned checkpoint %s, region delta %s (%d bytes)", ckpt_path, delta_path, summary["delta_bytes"])
    return metrics, {"datamodule": datamodule, "model": module, "trainer": trainer, "report": report,
                     "config": run_cfg, "checkpoint": ckpt_path, "delta": delta_path, "summary": summary}
