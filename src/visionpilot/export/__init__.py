"""Deployment: ONNX export with parity checks, FP16/INT8 variants, and the onnxruntime inference API.

- :mod:`~visionpilot.export.onnx_export` — the graph: uint8 frames + calibration -> decoded results, metadata.
- :mod:`~visionpilot.export.parity` — PyTorch vs onnxruntime on real frames, per output.
- :mod:`~visionpilot.export.quantize` — FP16 conversion and INT8 static QDQ quantisation (onnxruntime's tools).
- :mod:`~visionpilot.export.runtime` — :class:`~visionpilot.export.runtime.VisionPilotRuntime` and ``onnx_decode``.
- :mod:`~visionpilot.export.pipeline` — ``export(cfg)``, the function behind ``visionpilot-export``.
- :mod:`~visionpilot.export.benchmark` — ``benchmark(cfg)``, the function behind ``visionpilot-benchmark``; with
  :mod:`~visionpilot.export.scaling` (latency vs cameras and resolution) and :mod:`~visionpilot.export.timing`.

See docs/deployment.md.
"""
