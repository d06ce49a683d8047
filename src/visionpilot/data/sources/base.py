"""What every dataset source provides.

A source is an indexable collection of frames. Its :meth:`FrameSource.index` lists cheap per-frame references
(id, scene, region) without touching images, so splits, region filters and audits never decode a pixel.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from visionpilot.data.frame import Frame


@dataclass(frozen=True)
class FrameRef:
    """A cheap reference to one frame of a source."""

    index: int
    frame_id: str
    scene_id: str
    region: str


class FrameSource(ABC):
    """An indexable collection of :class:`~visionpilot.data.frame.Frame` objects."""

    #: Short name written into every frame's ``source`` field.
    name: str = "source"

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def index(self) -> list[FrameRef]:
        """One reference per frame, in index order; must not read images."""

    @abstractmethod
    def load(self, index: int, with_images: bool = True) -> Frame:
        """The frame at ``index``; ``with_images=False`` may skip decoding/rendering pixels (images are None)."""

    def latlon(self, index: int) -> tuple[float, float] | None:
        """(latitude, longitude) of frame ``index`` if known, for restricted-zone checks (governance/zones.py).

        The default reads the label-only frame; sources that know positions without loading a frame override it.
        """
        return self.load(index, with_images=False).latlon

    @property
    def camera_names(self) -> list[str]:
        """Camera names in the order frames carry them."""
        return self.load(0, with_images=False).camera_names

    def __getitem__(self, index: int) -> Frame:
        return self.load(index)
