"""Models: backbones, necks, heads (one per file) and the multi-camera :class:`HydraNet` that wires them.

Everything here is a plain ``torch.nn.Module`` that imports and runs without Lightning, and exports to ONNX
opset 17 with decoding inside the graph.
"""

from visionpilot.models.backbones import BACKBONES, TorchvisionBackbone
from visionpilot.models.necks import FPN
from visionpilot.models.net import HydraNet

__all__ = ["BACKBONES", "FPN", "HydraNet", "TorchvisionBackbone"]
