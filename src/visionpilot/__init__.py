"""visionpilot: camera-only driving perception — multi-camera HydraNet, bird's-eye vector space, per-country
fine-tuning, ONNX export and benchmarks."""

__version__ = "0.1.0"
