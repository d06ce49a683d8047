"""visionpilot: camera-only driving perception — multi-camera HydraNet, bird's-eye vector space, per-country
fine-tuning, ONNX export and benchmarks."""

__version__ = "0.1.0"

from visionpilot.utils.resolvers import register as _register_resolvers

_register_resolvers()  # before any config is composed: every entry point imports the package first
