"""The procedural synthetic multi-camera, multi-region driving world (the embedded default data source)."""

from visionpilot.data.sources.synthetic.source import RenderOutput, SyntheticSource

__all__ = ["RenderOutput", "SyntheticSource"]
