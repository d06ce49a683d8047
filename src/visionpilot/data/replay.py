"""Replay: mix a fixed share of other-region frames into every training batch of a fine-tune.

Fine-tuning on one country forgets the others; replaying a little of the global training data in every batch
limits that. :class:`ReplayDataModule` is the datamodule with one addition: its train split holds the target
regions' train frames plus a *replay pool* (the train frames of the replay regions, so never a val/test scene of
any region), and its train loader builds every batch from ``batch_size - k`` target frames and ``k`` replay frames,
``k = round(replay_fraction * batch_size)`` (at least 1 when the fraction is positive; ``batch_size=1`` leaves no
room for it and is an error, not a fine-tune that silently replays nothing). An epoch visits every
target frame once; replay frames are drawn without replacement, cycling through the pool. Validation and test hold
the target regions only.

The source must hold the replay regions too (``data.source.regions``); ``visionpilot-finetune`` sets that up, and
picks the replay datamodule that matches the base checkpoint's (:func:`replay_datamodule`): a base trained on the
synthetic world (``VisionPilotDataModule``) fine-tunes with :class:`ReplayDataModule`, one trained on nuScenes,
CULane, TuSimple or a mixed source (``SourceDataModule``: ``root``, ``on_error``, padded camera slots) with
:class:`SourceReplayDataModule`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset, Sampler

from visionpilot.data.datamodule import EpochSampler, FrameDataset, VisionPilotDataModule, _plain
from visionpilot.data.frame import Frame
from visionpilot.data.regions import GLOBAL
from visionpilot.data.sources.mixed import SourceDataModule

log = logging.getLogger(__name__)


class ReplayMixDataset(Dataset):
    """Target frames at indices ``[0, n_target)``, replay frames after them; items ``(epoch, index)``."""

    def __init__(self, target: FrameDataset, replay: FrameDataset) -> None:
        self.target, self.replay = target, replay

    def __len__(self) -> int:
        return len(self.target) + len(self.replay)

    @property
    def refs(self) -> list[Any]:
        return [*self.target.refs, *self.replay.refs]

    def __getitem__(self, item: tuple[int, int]) -> Frame:
        epoch, index = item
        n = len(self.target)
        return self.target[(epoch, index)] if index < n else self.replay[(epoch, index - n)]


class MixedBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of ``batch_size - replay_per_batch`` target and ``replay_per_batch`` replay indices.

    Deterministic per ``(seed, epoch)``. Lightning calls ``set_epoch`` on :attr:`sampler` (the target order). Under
    ``torch.distributed`` every rank takes its slice of the target order (padded to equal lengths) and draws its own
    replay frames. Not resumable mid-epoch (fine-tunes are short; a restart repeats the epoch).

    Args:
        num_target: target frames (indices ``[0, num_target)`` of :class:`ReplayMixDataset`).
        num_replay: replay frames (the indices after them).
        batch_size: frames per batch.
        replay_per_batch: replay frames per batch, in ``[0, batch_size)``.
        seed: shuffling seed.
        drop_last: drop the last batch when it would have fewer target frames than the others.
    """

    def __init__(self, num_target: int, num_replay: int, batch_size: int, replay_per_batch: int, seed: int = 0,
                 drop_last: bool = True) -> None:
        if not 0 <= replay_per_batch < batch_size:
            raise ValueError(f"MixedBatchSampler: replay_per_batch must be in [0, {batch_size}), "
                             f"found {replay_per_batch}")
        if replay_per_batch and num_replay == 0:
            raise ValueError("MixedBatchSampler: replay frames requested but the replay pool is empty")
        self.sampler = EpochSampler(num_target, shuffle=True, seed=seed, distributed=True, pad=True)
        self.num_target, self.num_replay = int(num_target), int(num_replay)
        self.batch_size, self.k = int(batch_size), int(replay_per_batch)
        self.seed, self.drop_last = int(seed), drop_last

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        per, n = self.batch_size - self.k, len(self.sampler)  # this rank's target frames
        if self.drop_last and n >= per:
            return n // per
        return math.ceil(n / per)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch = self.sampler.epoch
        target = [i for _, i in self.sampler]
        per, batches = self.batch_size - self.k, len(self)
        rank = self.sampler.replicas()[1]
        rng = np.random.default_rng([self.seed, epoch, 1, rank])  # another stream than the target order's
        need = batches * self.k
        replay = (np.concatenate([rng.permutation(self.num_replay) for _ in range(math.ceil(need / self.num_replay))])
                  if need else np.zeros(0, dtype=np.int64))
        for b in range(batches):
            ids = target[b * per:(b + 1) * per] + [self.num_target + int(i) for i in replay[b * self.k:(b + 1) * self.k]]
            yield [(epoch, i) for i in ids]


class ReplayDataModule(VisionPilotDataModule):
    """:class:`~visionpilot.data.datamodule.VisionPilotDataModule` whose train batches mix in replay frames.

    Args:
        *args, **kwargs: as for the base datamodule (``regions`` are the fine-tune's target regions).
        replay_regions: ``"global"`` (every other region of the source), a list of codes, or None / ``[]`` (off).
            Target regions in the list are ignored.
        replay_fraction: share of every train batch taken from the replay pool, in [0, 1).
    """

    def __init__(self, *args: Any, replay_regions: str | Sequence[str] | None = None, replay_fraction: float = 0.25,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not 0.0 <= float(replay_fraction) < 1.0:
            raise ValueError(f"ReplayDataModule: field 'replay_fraction' must be in [0, 1), found {replay_fraction}")
        self.replay_regions = _plain(replay_regions)
        self.replay_fraction = float(replay_fraction)
        self.selected_replay: list[str] = []

    @property
    def replay_per_batch(self) -> int:
        if self.replay_fraction <= 0 or not self.selected_replay:
            return 0
        return min(max(1, round(self.replay_fraction * self.batch_size)), self.batch_size - 1)

    def _resolve_replay(self) -> list[str]:
        assert self.manifest is not None
        spec = self.replay_regions
        if spec is None or spec == [] or spec == "":
            return []
        if isinstance(spec, str) and spec.lower() == GLOBAL:
            chosen = self.manifest.regions
        else:
            chosen = self.manifest.select_regions(spec)  # raises, naming the valid codes, if the source lacks one
        chosen = [r for r in chosen if r not in self.selected_regions]
        if chosen and self.replay_fraction > 0 and self.batch_size < 2:
            # Every batch holds at least one target frame: no replay frame would be drawn, yet the replay regions
            # would be ruled on and recorded in the lineage as replayed.
            raise ValueError(f"ReplayDataModule: field 'batch_size' is {self.batch_size}, which leaves no room for "
                             f"replay: every train batch holds at least one target-region frame, so replay_fraction="
                             f"{self.replay_fraction} of replay regions {chosen} would replay nothing. Set batch_size "
                             f">= 2 (visionpilot-finetune: data.batch_size=2 or more), or turn replay off with "
                             f"replay_fraction=0 (replay.fraction=0) or replay_regions=[] (replay.regions=null)")
        return chosen

    def regions_read(self) -> list[str]:
        # Replay frames are read too: governance must rule on them before setup loads any frame (but not when no
        # replay frame is read: a job must not be refused for data it never touches).
        replay = self._resolve_replay() if self.replay_fraction > 0 else []
        return [*super().regions_read(), *replay]

    def build_dataset(self, split: str) -> Dataset:
        target = super().build_dataset(split)
        if split != "train":
            return target
        self.selected_replay = self._resolve_replay()
        if not self.selected_replay or self.replay_fraction <= 0:
            return target
        assert self.manifest is not None
        refs = self.manifest.select(self.refs, "train", self.selected_replay)
        # Another augmentation seed than the target frames': the two datasets share item indices.
        replay = FrameDataset(self.source, refs, self.train_transform, seed=self.seed + 7919,
                              cache=self.frame_cache)
        log.info("replay: %d frames of %s, %d of every %d frames per batch", len(refs), self.selected_replay,
                 self.replay_per_batch, self.batch_size)
        return ReplayMixDataset(target, replay)  # type: ignore[arg-type]

    def train_dataloader(self) -> DataLoader:
        ds = self.datasets.get("train")
        if not isinstance(ds, ReplayMixDataset):
            return super().train_dataloader()
        sampler = MixedBatchSampler(len(ds.target), len(ds.replay), self.batch_size, self.replay_per_batch,
                                    seed=self.seed, drop_last=self.drop_last)
        return DataLoader(ds, batch_sampler=sampler, num_workers=self.num_workers, collate_fn=self.collate_fn(),
                          pin_memory=self.pin_memory,
                          persistent_workers=self.persistent_workers and self.num_workers > 0)

    @property
    def replay_frame_counts(self) -> dict[str, int]:
        """Train frames per replay region (after ``setup``)."""
        if self.manifest is None or not self.selected_replay or self.replay_fraction <= 0:
            return {}
        return self.split_counts("train", self.selected_replay)


class SourceReplayDataModule(ReplayDataModule, SourceDataModule):
    """:class:`ReplayDataModule` for real and mixed sources: replay on top of
    :class:`~visionpilot.data.sources.mixed.SourceDataModule` (its ``root`` / ``roots`` / ``on_error`` fields, the
    frames ``on_error=skip`` dropped reported, every batch padded to the source's camera slots). The replay train
    loader draws target and replay frames uniformly, not by a mixed source's ``sampling_weights``."""


#: Datamodule ``_target_`` a base checkpoint stores -> the replay datamodule a fine-tune of it uses.
REPLAY_DATAMODULES = {
    "visionpilot.data.datamodule.VisionPilotDataModule": "visionpilot.data.replay.ReplayDataModule",
    "visionpilot.data.sources.mixed.SourceDataModule": "visionpilot.data.replay.SourceReplayDataModule",
}


def replay_datamodule(target: str | None, where: str) -> str:
    """The replay datamodule's ``_target_`` for a base trained with datamodule ``target`` (None: the plain one)."""
    plain = plain_datamodule(target)
    if plain not in REPLAY_DATAMODULES:
        raise ValueError(f"{where}: field 'data._target_': fine-tuning replays frames through one of "
                         f"{sorted(REPLAY_DATAMODULES)} (or their replay versions), found {target!r}; replay reads "
                         f"frames through a frame source, not from shards: give the source's datamodule and source "
                         f"(data._target_=... data.source=..., as configs/data/ has them)")
    return REPLAY_DATAMODULES[plain]


def plain_datamodule(target: str | None) -> str:
    """The datamodule without replay for a stored ``_target_`` (evaluation, a fine-tune of a fine-tune)."""
    if target is None:
        return "visionpilot.data.datamodule.VisionPilotDataModule"
    return {replay: plain for plain, replay in REPLAY_DATAMODULES.items()}.get(target, target)
