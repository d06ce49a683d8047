"""Training on several datasets at once: a source that concatenates sources, and the datamodule for real sources.

:class:`MixedSource` puts e.g. nuScenes (6 cameras, 3D boxes, map lanes) and CULane (1 camera, 2D lanes) behind one
index. Three things make that work:

- **Partial labels.** Every frame keeps its own ``labels``; the collate flags absent kinds (``has_<kind>``) and
  every loss is masked by them, so CULane frames train the 2D lane head only and nuScenes frames the rest.
- **Camera counts.** A batch has one camera-slot axis. The slot order (``cameras``, by default: cameras that every
  source has first, then the others in source order) is the same for all frames; each frame's cameras are sorted
  into it, and a source with fewer cameras fills the first slots only. :class:`SourceDataModule` pads every batch
  to all slots (:func:`collate_padded`: ``camera_mask = False``, identity calibration, black images, no labels), so
  slot ``i`` is always camera ``i`` even in a batch drawn from one small source. Each source's cameras must be a
  prefix of the slot order: with nuScenes + CULane, ``CAM_FRONT`` comes first and CULane's one camera (named
  ``CAM_FRONT``) shares the slot with nuScenes' front camera, which is also where the 2D lane head looks
  (``model.lane_cameras``).
- **Sampling weights.** ``weights`` give each source's share of the training draws, whatever its size:
  :meth:`MixedSource.sampling_weights` gives every training frame ``weight / frames of its source``, and
  :class:`SourceDataModule` draws the train loader with those weights (with replacement, reseeded each epoch).
  Validation and test see every frame once.

Frame and scene ids are prefixed with the source key (``culane:driver_23_30frame/...``) so that two datasets never
share an id; ``Frame.source`` stays the dataset's name.
"""

from __future__ import annotations

import bisect
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from visionpilot.data.collate import collate_frames
from visionpilot.data.datamodule import EpochSampler, ResumableDataLoader, VisionPilotDataModule, spread_order
from visionpilot.data.frame import Frame
from visionpilot.data.sources._common import check_on_error
from visionpilot.data.sources.base import FrameRef, FrameSource
from visionpilot.data.splits import SplitManifest

log = logging.getLogger(__name__)
SEPARATOR = ":"


def slot_order(camera_lists: Sequence[Sequence[str]]) -> list[str]:
    """Camera slots for sources with these cameras: the most shared cameras first, then by first appearance."""
    first: dict[str, int] = {}
    shared: Counter[str] = Counter()
    for names in camera_lists:
        for name in names:
            first.setdefault(name, len(first))
            shared[name] += 1
    return sorted(first, key=lambda n: (-shared[n], first[n]))


class MixedSource(FrameSource):
    """Several sources behind one index (see the module docstring).

    Args:
        sources: source key -> source (Hydra instantiates each).
        weights: source key -> share of the training draws (default 1 each, i.e. equal shares).
        cameras: the camera slot order; None: :func:`slot_order` of the sources' cameras.
    """

    name = "mixed"

    def __init__(self, sources: Mapping[str, FrameSource], weights: Mapping[str, float] | None = None,
                 cameras: Sequence[str] | None = None) -> None:
        if not sources:
            raise ValueError("mixed source: field 'sources' must hold at least one source, found none")
        bad = [k for k in sources if SEPARATOR in k]
        if bad:
            raise ValueError(f"mixed source: source keys must not contain '{SEPARATOR}', found {bad}")
        self.sources = dict(sources)
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(self.sources))
        if unknown:
            raise ValueError(f"mixed source: field 'weights' names unknown sources {unknown}; sources: "
                             f"{list(self.sources)}")
        self.weights = {k: float(weights.get(k, 1.0)) for k in self.sources}
        # NaN passes both comparisons (and inf makes every share NaN): the sampler failed at the first epoch
        if not all(0 <= w < np.inf for w in self.weights.values()) or not any(w > 0 for w in self.weights.values()):
            raise ValueError(f"mixed source: field 'weights' must be finite and >= 0 with at least one > 0, found "
                             f"{self.weights}")
        names = {k: list(s.camera_names) for k, s in self.sources.items()}
        self.cameras = list(cameras) if cameras else slot_order(list(names.values()))
        for key, cams in names.items():
            if set(cams) != set(self.cameras[: len(cams)]) or len(set(cams)) != len(cams):
                raise ValueError(f"mixed source: the cameras of source '{key}' {cams} must fill the first "
                                 f"{len(cams)} camera slot(s) of {self.cameras} (sources with fewer cameras use the "
                                 f"first slots; collate pads the rest): set field 'cameras' to an order that starts "
                                 f"with them")
        self._keys = list(self.sources)
        self._offsets: list[int] | None = None

    def _starts(self) -> list[int]:
        if self._offsets is None:
            self._offsets = [0]
            for key in self._keys:
                self._offsets.append(self._offsets[-1] + len(self.sources[key]))
        return self._offsets

    def __len__(self) -> int:
        return self._starts()[-1]

    @property
    def camera_names(self) -> list[str]:
        return list(self.cameras)

    def locate(self, index: int) -> tuple[str, int]:
        """(source key, index in that source) of a global index."""
        starts = self._starts()
        if not 0 <= index < starts[-1]:
            raise IndexError(f"mixed source: index {index} out of range [0, {starts[-1]})")
        s = bisect.bisect_right(starts, index) - 1
        return self._keys[s], index - starts[s]

    def index(self) -> list[FrameRef]:
        refs = []
        for key, start in zip(self._keys, self._starts()):
            refs += [FrameRef(start + r.index, f"{key}{SEPARATOR}{r.frame_id}", f"{key}{SEPARATOR}{r.scene_id}",
                              r.region) for r in self.sources[key].index()]
        return refs

    def official_split(self, scene_id: str) -> str | None:
        key, _, inner = scene_id.partition(SEPARATOR)
        official = getattr(self.sources.get(key), "official_split", None)
        return official(inner) if official is not None else None

    def load(self, index: int, with_images: bool = True) -> Frame:
        key, j = self.locate(index)
        frame = self.sources[key].load(j, with_images=with_images)
        slot = {name: i for i, name in enumerate(self.cameras)}
        cams = sorted(frame.cameras, key=lambda c: slot[c.name])
        return frame.copy(frame_id=f"{key}{SEPARATOR}{frame.frame_id}", scene_id=f"{key}{SEPARATOR}{frame.scene_id}",
                          cameras=cams)

    def latlon(self, index: int) -> tuple[float, float] | None:
        key, j = self.locate(index)
        return self.sources[key].latlon(j)

    def sampling_weights(self, refs: Sequence[FrameRef]) -> np.ndarray:
        """Per-ref draw probabilities (sum 1): each source's weight shared equally by its frames among ``refs``."""
        keys = [r.frame_id.partition(SEPARATOR)[0] for r in refs]
        count = Counter(keys)
        w = np.array([self.weights[k] / count[k] for k in keys], dtype=np.float64)
        if not len(w) or w.sum() <= 0:
            raise ValueError(f"mixed source: no training frame has a positive weight (weights {self.weights}, "
                             f"frames per source {dict(count)})")
        return w / w.sum()

    @property
    def skipped(self) -> dict[str, Any]:
        """What each source's ``on_error=skip`` dropped."""
        return {k: s.skipped for k, s in self.sources.items() if hasattr(s, "skipped")}


def skip_count(skipped: Mapping[str, Any]) -> int:
    """Total count of a source's ``skipped`` report (one source's summary, or a mixed source's per-source ones)."""
    if "skipped" in skipped:
        return int(skipped["skipped"])
    return sum(skip_count(v) for v in skipped.values() if isinstance(v, Mapping))


class WeightedEpochSampler(EpochSampler):
    """Yields ``(epoch, index)``: ``length`` draws with replacement, ``P(index) = weights[index]``, seeded by
    ``(seed, epoch)``. Lightning calls ``set_epoch`` at every epoch start. Sharded over DDP ranks and resumable
    mid-epoch like :class:`~visionpilot.data.datamodule.EpochSampler` (each rank takes its slice of the draws)."""

    def __init__(self, weights: np.ndarray, length: int | None = None, seed: int = 0,
                 distributed: bool = True) -> None:
        self.weights = np.asarray(weights, dtype=np.float64) / np.sum(weights)
        super().__init__(len(self.weights) if length is None else int(length), shuffle=True, seed=seed,
                         distributed=distributed, pad=True)

    def epoch_order(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch, 1])
        return rng.choice(len(self.weights), size=self.length, replace=True, p=self.weights)


class SourceDataModule(VisionPilotDataModule):
    """:class:`~visionpilot.data.datamodule.VisionPilotDataModule` for real and mixed sources.

    Adds what their configs need: the fields ``root`` / ``roots`` / ``on_error`` that the source config interpolates
    (so ``data.root=/data/nuscenes`` and ``data.on_error=skip`` work on the command line), a report of the frames
    ``on_error=skip`` dropped, batches that always hold every camera slot of the source (:func:`collate_padded`),
    and a train loader drawn by the source's ``sampling_weights`` when it has them.

    Args:
        source: the frame source.
        root: dataset folder of a single-dataset source (used by the source config).
        roots: dataset folders by source key (mixed sources).
        on_error: ``raise`` or ``skip`` (used by the source config).
        **kwargs: everything :class:`VisionPilotDataModule` takes.
    """

    def __init__(self, source: FrameSource, root: str | Path | None = None,
                 roots: Mapping[str, str | Path] | None = None, on_error: str = "raise", **kwargs: Any) -> None:
        super().__init__(source, **kwargs)
        self.root = None if root is None else str(root)
        self.roots = {k: str(v) for k, v in dict(roots or {}).items()}
        self.on_error = check_on_error(on_error, "datamodule")

    def build_splits(self) -> SplitManifest:
        manifest = super().build_splits()
        skipped = getattr(self.source, "skipped", None)
        if skipped and skip_count(skipped):
            log.warning("%s: on_error=skip dropped %d frame(s)/record(s): %s", self.source.name, skip_count(skipped),
                        skipped)
        return manifest

    def collate_fn(self) -> Any:
        # Every batch has all camera slots (see _loader).
        return partial(collate_padded, num_cameras=len(self.source.camera_names))

    def _loader(self, split: str, train: bool) -> DataLoader:
        # As the parent's, plus: every batch has all camera slots (a batch drawn only from a 1-camera source still
        # has the mixed source's N slots, so slot i is always camera_names[i]), and the train split is drawn by the
        # source's sampling weights when it has them.
        if split not in self.datasets:
            raise RuntimeError(f"SourceDataModule: no '{split}' dataset; call setup() first "
                               f"(splits: {list(self.datasets)})")
        ds = self.datasets[split]
        n = len(ds)  # type: ignore[arg-type]
        weights_of = getattr(self.source, "sampling_weights", None)
        if train and weights_of is not None and n:
            weights = weights_of(ds.refs)  # type: ignore[attr-defined]
            sampler: EpochSampler = WeightedEpochSampler(weights, n, seed=self.seed)
        else:  # evaluation: every prefix spreads over the sources' regions and scenes (limit_val_batches)
            sampler = EpochSampler(n, shuffle=train, seed=self.seed, distributed=True, pad=train,
                                   order=None if train else spread_order(ds.refs))  # type: ignore[attr-defined]
        # As the parent's: sharded over DDP ranks by the sampler, position saved in checkpoints; drop_last only when
        # this rank has a full batch (len(sampler): its share of the frames).
        return ResumableDataLoader(
            ds, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
            collate_fn=self.collate_fn(),
            pin_memory=self.pin_memory, drop_last=train and self.drop_last and len(sampler) >= self.batch_size,
            persistent_workers=self.persistent_workers and self.num_workers > 0)


#: Batch keys with a camera axis (dim 1), and the value their padded slots get (see data/collate.py).
_CAMERA_KEYS: dict[str, float | int | bool] = {
    "images": 0, "intrinsics": 0.0, "extrinsics": 0.0, "camera_mask": False, "boxes_2d": 0.0,
    "boxes_2d_classes": -1, "boxes_2d_mask": False, "lanes_2d": 0.0, "lanes_2d_valid": False, "lanes_2d_types": -1}


def collate_padded(frames: Sequence[Frame], num_cameras: int) -> dict[str, Any]:
    """:func:`~visionpilot.data.collate.collate_frames` with the camera axis padded to ``num_cameras`` slots.

    Padded slots are filled as the collate fills them: black images, identity calibration, no labels, masks False.
    """
    batch = collate_frames(frames)
    n = batch["camera_mask"].shape[1]
    if n >= num_cameras:
        return batch
    for key, fill in _CAMERA_KEYS.items():
        t = batch[key]
        pad = torch.full((t.shape[0], num_cameras - n, *t.shape[2:]), fill, dtype=t.dtype)
        if key in ("intrinsics", "extrinsics"):
            pad[...] = torch.eye(t.shape[-1], dtype=t.dtype)
        batch[key] = torch.cat([t, pad], dim=1)
    return batch
