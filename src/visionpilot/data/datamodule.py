"""The Lightning datamodule: any :class:`FrameSource`, split by scene per region, transformed and collated.

Splits are built over *all* regions of the source and only then filtered by ``regions``, so a scene lands in the
same split whether a run trains globally or fine-tunes on one country: a country's test scenes are never in any
model's training set.

Augmentation is deterministic per ``(seed, epoch, index)``: :class:`EpochSampler` yields ``(epoch, index)`` pairs,
and Lightning calls its ``set_epoch`` at every epoch start. Carrying the epoch inside the index (rather than in the
dataset object) keeps it right in persistent workers, which never see later changes to the dataset object.

Loaders are resumable mid-epoch: :class:`ResumableDataLoader` counts the frames it has handed out and implements
Lightning's stateful-loader interface (``state_dict`` / ``load_state_dict``), so a checkpoint taken mid-epoch records
the sampler's epoch and position and a restart continues with the next unseen frame of the same permutation. Under
DDP the sampler gives every rank its own slice of the permutation (docs/scale_out.md).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch.distributed as dist
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset, Sampler

from visionpilot.data.balance import BALANCE_MODES, class_balanced_indices
from visionpilot.data.cache import CACHE_MODES, FrameCache
from visionpilot.data.collate import collate_frames
from visionpilot.data.frame import Frame
from visionpilot.data.sources.base import FrameRef, FrameSource
from visionpilot.data.splits import SplitManifest, make_splits, normalise_fractions
from visionpilot.data.transforms import FrameTransform, as_size, build_transform, child_seeds
from visionpilot.data.vocab import OBJECT_CLASSES
from visionpilot.governance.anonymise import AnonymiseFirst
from visionpilot.governance.audit import Governance, GovernanceReport

log = logging.getLogger(__name__)

TransformSpec = Mapping[str, Any] | FrameTransform | Callable[..., Frame] | None


def _plain(value: Any) -> Any:
    """Hydra hands over DictConfig/ListConfig; keep plain containers so everything pickles and logs cleanly."""
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


class FrameDataset(Dataset):
    """Frames of a source, selected by ref, passed through a transform seeded per ``(seed, epoch, index)``.

    Indexing takes an ``int`` (epoch :attr:`epoch`) or an ``(epoch, index)`` pair from :class:`EpochSampler`.
    Frames in ``cache`` (``data.cache=ram``) are read from it instead of the source.
    """

    def __init__(self, source: FrameSource, refs: Sequence[FrameRef], transform: TransformSpec = None,
                 seed: int = 0, cache: FrameCache | None = None) -> None:
        self.source = source
        self.refs = list(refs)
        self.transform = transform
        self.seed = int(seed)
        self.cache = cache
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.refs)

    def item_seed(self, epoch: int, index: int) -> int:
        return child_seeds(self.seed, 1, int(epoch), int(index))[0]

    def __getitem__(self, item: int | tuple[int, int]) -> Frame:
        epoch, index = item if isinstance(item, tuple) else (self.epoch, item)
        source_index = self.refs[index].index
        frame = self.cache.get(source_index) if self.cache is not None else None
        if frame is None:
            frame = self.source.load(source_index)
        if self.transform is None:
            return frame
        return self.transform(frame, self.item_seed(epoch, index))


def _round_robin(groups: Sequence[Sequence[int]]) -> list[int]:
    """The first item of every group, then every second item, ...: ``[[0, 1, 2], [3], [4, 5]] -> [0, 3, 4, 1, 5, 2]``."""
    return [g[i] for i in range(max(map(len, groups), default=0)) for g in groups if i < len(g)]


def spread_order(refs: Sequence[FrameRef]) -> list[int]:
    """An evaluation order whose every prefix spreads over regions and scenes.

    Round-robin over regions, and within a region over its scenes (each scene's frames in time order). A metric over
    the whole split does not depend on the order; a run that evaluates a prefix (``trainer.limit_val_batches``,
    ``limit_batches``) then sees every region and many scenes, instead of the first region's first scenes — with
    frames stored region-major, 20 batches of the demo's val split used to cover four of its six regions.
    """
    by_region: dict[str, dict[str, list[int]]] = {}
    for i, ref in enumerate(refs):
        by_region.setdefault(ref.region, {}).setdefault(ref.scene_id, []).append(i)
    return _round_robin([_round_robin(list(scenes.values())) for scenes in by_region.values()])


class EpochSampler(Sampler):
    """Yields ``(epoch, index)``; shuffled by ``(seed, epoch)`` when ``shuffle``. Lightning calls ``set_epoch``.

    Args:
        length: frames in the dataset.
        shuffle: permute by ``(seed, epoch)``.
        seed: permutation seed.
        distributed: when ``torch.distributed`` is initialised, yield only this rank's slice ``order[rank::world]``
            (checked at iteration time, so one sampler serves a single process and DDP alike).
        pad: with ``distributed``, repeat the first frames so every rank gets the same count (training needs equal
            step counts on all ranks; evaluation does not, and is exact without padding).
        order: the unshuffled order of the dataset's indices (default ``0 .. length - 1``); evaluation loaders pass
            :func:`spread_order`.

    Resumable: :meth:`load_state_dict` makes the next iteration start ``consumed`` frames into this rank's order of
    the saved epoch (see :class:`ResumableDataLoader`).
    """

    def __init__(self, length: int, shuffle: bool = False, seed: int = 0, distributed: bool = False,
                 pad: bool = True, order: Sequence[int] | None = None) -> None:
        self.length, self.shuffle, self.seed = int(length), shuffle, int(seed)
        self.order = np.arange(self.length) if order is None else np.asarray(order, dtype=np.int64)
        if sorted(self.order.tolist()) != list(range(self.length)):
            raise ValueError(f"EpochSampler: order must be a permutation of 0..{self.length - 1}; got "
                             f"{len(self.order)} indices")
        self.distributed, self.pad = distributed, pad
        self.epoch = 0
        self._start = 0  # frames of this epoch already consumed before a restart (set by load_state_dict)

    def set_epoch(self, epoch: int) -> None:
        if int(epoch) != self.epoch:
            self._start = 0  # a restored position belongs to its own epoch only
        self.epoch = int(epoch)

    def replicas(self) -> tuple[int, int]:
        """(world size, rank) this sampler shards over: (1, 0) unless ``distributed`` under torch.distributed."""
        if self.distributed and dist.is_available() and dist.is_initialized():
            return dist.get_world_size(), dist.get_rank()
        return 1, 0

    def __len__(self) -> int:
        world, rank = self.replicas()
        if world == 1:
            return self.length
        if self.pad:
            return math.ceil(self.length / world)
        return len(range(rank, self.length, world))

    def epoch_order(self) -> np.ndarray:
        """The whole epoch's indices, before sharding over ranks (subclasses draw them differently)."""
        if self.shuffle:
            return self.order[np.random.default_rng([self.seed, self.epoch]).permutation(self.length)]
        return self.order

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self.epoch_order()
        world, rank = self.replicas()
        if world > 1:
            if self.pad and self.length:
                order = np.resize(order, math.ceil(self.length / world) * world)  # wraps around, as DistributedSampler
            order = order[rank::world]
        start, self._start = self._start, 0
        return iter([(self.epoch, int(i)) for i in order[start:]])

    def state_dict(self, consumed: int = 0) -> dict[str, int]:
        """The sampler's epoch and ``consumed`` frames of it (this rank's)."""
        return {"epoch": self.epoch, "consumed": int(consumed)}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.epoch = int(state["epoch"])
        self._start = int(state["consumed"])


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` whose position within the epoch is saved in Lightning checkpoints.

    Lightning saves ``state_dict()`` of every train loader that has one and calls ``load_state_dict`` before the
    first batch of a restarted fit. The state is the sampler's epoch and the frames handed out so far this epoch,
    counted where batches leave the loader (not where workers prefetch them). Lightning does not prefetch ahead of
    a loader with a length, so every counted batch is one the model trained on.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._consumed = 0

    def __iter__(self) -> Iterator[Any]:
        sampler = self.sampler
        self._consumed = getattr(sampler, "_start", 0)  # a restored epoch starts where the saved one stopped
        for batch in super().__iter__():
            self._consumed += self.batch_size or 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        if not hasattr(self.sampler, "state_dict"):
            return {}
        return {"sampler": self.sampler.state_dict(consumed=self._consumed)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "sampler" in state and hasattr(self.sampler, "load_state_dict"):
            self.sampler.load_state_dict(state["sampler"])


#: The splits each Lightning stage reads (what ``data.cache=ram`` loads for it).
_STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}


class VisionPilotDataModule(L.LightningDataModule):
    """Train/val/test loaders over a frame source, split by scene, filtered by region.

    Args:
        source: any frame source (Hydra instantiates it).
        regions: ``"global"`` (every region the source has), a code, or a list of codes.
        split_fractions: split -> fraction; default train 0.8 / val 0.1 / test 0.1.
        split_seed: seed of the scene hash (see :mod:`visionpilot.data.splits`).
        batch_size: frames per batch.
        num_workers: loader worker processes (0 = load in the main process).
        image_size: (height, width) network input; None keeps native sizes.
        train_transform: kwargs for :func:`~visionpilot.data.transforms.build_transform` (train), or a ready
            transform ``(frame, seed) -> frame``; None means the default train pipeline.
        val_transform: the same for val/test (no randomness by default: resize only).
        seed: seed of shuffling and augmentation.
        persistent_workers: keep workers alive across epochs (ignored with 0 workers).
        drop_last: drop the last incomplete train batch (kept when the train set, or a DDP rank's share of it, is
            smaller than a batch).
        pin_memory: pin batches for faster host-to-GPU copies.
        manifest_path: where ``setup`` writes the split manifest (a file, or a folder for ``manifest.json``).
        governance: the job's data governance policy (``configs/governance/``; None: the open policy). ``setup``
            enforces it on the index before any frame is read (see :meth:`enforce_governance`).
        compute_region: where the job runs (ISO code), or None (undeclared: counts as abroad).
        cache: ``"ram"``: ``setup`` loads the frames of the splits a stage needs into memory once, in parallel
            processes, and loaders read them from there (:mod:`visionpilot.data.cache`); None: loaders load every
            frame from the source each time.
        cache_workers: processes that fill the cache (None: every usable CPU).
        balance: ``"classes"``: the train split resampled once, in ``setup``, so that every object class is held by an
            equal share of its frames (CBGS, :mod:`visionpilot.data.balance`; labels read from the cache, or from the
            source without images); None: each train frame once per epoch.
    """

    def __init__(self, source: FrameSource, regions: str | Sequence[str] = "global",
                 split_fractions: Mapping[str, float] | None = None, split_seed: int = 0, batch_size: int = 4,
                 num_workers: int = 0, image_size: Sequence[int] | None = (256, 704),
                 train_transform: TransformSpec = None, val_transform: TransformSpec = None, seed: int = 0,
                 persistent_workers: bool = False, drop_last: bool = True, pin_memory: bool = False,
                 manifest_path: str | Path | None = None, governance: Mapping[str, Any] | None = None,
                 compute_region: str | None = None, cache: str | None = None,
                 cache_workers: int | None = None, balance: str | None = None) -> None:
        super().__init__()
        if cache not in CACHE_MODES:
            raise ValueError(f"{type(self).__name__}: field 'cache' must be one of {list(CACHE_MODES)} (null: no "
                             f"cache), found {cache!r}")
        if balance not in BALANCE_MODES:
            raise ValueError(f"{type(self).__name__}: field 'balance' must be one of {list(BALANCE_MODES)} (null: "
                             f"every train frame once per epoch), found {balance!r}")
        self.balance = balance
        self._balanced_train: Dataset | None = None  # the resampled train split, once built
        self.save_hyperparameters(ignore=["source", "train_transform", "val_transform"], logger=False)
        self.source = source
        self.regions = _plain(regions)
        self.split_fractions = normalise_fractions(_plain(split_fractions))
        self.split_seed = int(split_seed)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.image_size = None if image_size is None else as_size(_plain(image_size),
                                                                   "VisionPilotDataModule: field 'image_size'")
        self.train_transform = self._make_transform(_plain(train_transform), train=True)
        self.val_transform = self._make_transform(_plain(val_transform), train=False)
        self.governance = Governance.from_config(_plain(governance), compute_region)
        self.governance_report: GovernanceReport | None = None
        if self.governance.anonymiser is not None:  # first, on the source's own pixels and boxes
            self.train_transform = AnonymiseFirst(self.governance.anonymiser, self.train_transform)
            self.val_transform = AnonymiseFirst(self.governance.anonymiser, self.val_transform)
        self.seed = int(seed)
        self.persistent_workers = persistent_workers
        self.drop_last = drop_last
        self.pin_memory = pin_memory
        self.manifest_path = manifest_path
        self.manifest: SplitManifest | None = None
        self.refs: list[FrameRef] = []
        self.selected_regions: list[str] = []
        self.datasets: dict[str, Dataset] = {}
        self.frame_cache = FrameCache(cache_workers) if cache == "ram" else None

    def _make_transform(self, spec: TransformSpec, train: bool) -> Callable[..., Frame]:
        if spec is None or isinstance(spec, Mapping):
            return build_transform(self.image_size, train=train, **dict(spec or {}))
        if not callable(spec):
            raise TypeError(f"VisionPilotDataModule: field '{'train' if train else 'val'}_transform' must be a "
                            f"mapping of build_transform kwargs, a callable (frame, seed) -> frame, or None; "
                            f"found {type(spec).__name__}")
        return spec

    # -- setup ----------------------------------------------------------------------------------------------

    def build_splits(self) -> SplitManifest:
        """Scene splits of the whole source (all regions), honouring the source's official splits."""
        self.refs = self.source.index()
        return make_splits(self.refs, self.split_fractions, self.split_seed,
                           official=getattr(self.source, "official_split", None))

    def setup(self, stage: str | None = None) -> None:
        if self.manifest is None:
            self.manifest = self.build_splits()
            try:
                self.selected_regions = self.manifest.select_regions(self.regions)
                self.enforce_governance()  # residency and restricted zones, on the index: no frame has been read yet
            except BaseException:
                # A refused setup must stay refused: a manifest left behind would make the next setup() skip both.
                self.manifest, self.selected_regions = None, []
                raise
            if self.manifest_path is not None and (self.trainer is None or self.trainer.is_global_zero):
                path = self.manifest.write(self.manifest_path)
                log.info("split manifest (sha256 %s) written to %s", self.manifest.sha256[:12], path)
        for split in self.manifest.splits:
            if split not in self.datasets:
                self.datasets[split] = self.build_dataset(split)
                if len(self.datasets[split]) == 0:  # type: ignore[arg-type]
                    log.warning("split '%s' has no frames in regions %s", split, self.selected_regions)
        if self.frame_cache is not None:
            self.fill_cache(stage)
        if self.balance == "classes" and "train" in self.datasets and stage in (None, "fit"):
            self.balance_train()

    def balance_train(self) -> None:
        """Resample the train split class-balanced (CBGS; ``balance="classes"``), once."""
        ds = self.datasets["train"]
        if ds is self._balanced_train:  # Lightning sets a datamodule up once per stage
            return
        if not isinstance(ds, FrameDataset):
            raise TypeError(f"{type(self).__name__}: field 'balance' resamples a FrameDataset's refs; this "
                            f"datamodule's train split is a {type(ds).__name__}")
        classes = []
        for ref in ds.refs:
            frame = ds.cache.get(ref.index) if ds.cache is not None else None
            if frame is None:  # uncached (or not cached: too large for memory): the labels alone
                frame = self.source.load(ref.index, with_images=False)
            present = set(frame.boxes_3d.classes.tolist())
            for cam in frame.cameras:
                present.update(cam.classes_2d.tolist())
            classes.append(present)
        order = class_balanced_indices(classes, len(OBJECT_CLASSES), seed=self.seed)
        before = Counter(c for present in classes for c in present)
        after = Counter(c for i in order for c in classes[i])
        balanced = FrameDataset(self.source, [ds.refs[i] for i in order], ds.transform, seed=ds.seed, cache=ds.cache)
        self.datasets["train"] = self._balanced_train = balanced
        log.info("class-balanced train split (CBGS): %d frames -> %d; frames holding each class %s -> %s",
                 len(ds), len(balanced), {OBJECT_CLASSES[c]: before[c] for c in sorted(before)},
                 {OBJECT_CLASSES[c]: after[c] for c in sorted(after)})

    def fill_cache(self, stage: str | None) -> None:
        """Load the frames of the splits ``stage`` reads (fit: train and val; None: every split) into the cache."""
        assert self.frame_cache is not None
        splits = [s for s in (_STAGE_SPLITS.get(stage, ()) if stage else list(self.datasets)) if s in self.datasets]
        indices = {ref.index for s in splits for ref in getattr(self.datasets[s], "refs", None) or []}
        # Every DDP rank on this machine fills its own cache at the same time: each gets its share of CPUs and memory.
        share = int(getattr(self.trainer, "num_devices", 1) or 1) if self.trainer is not None else 1
        # False when they would not fit in memory (logged): those frames are loaded from the source, as uncached.
        self.frame_cache.fill(self.source, sorted(indices), f"frames of {'/'.join(splits)}", share=share)

    # -- governance -----------------------------------------------------------------------------------------

    def regions_read(self) -> list[str]:
        """Every region whose frames this datamodule may load (subclasses add e.g. replay regions)."""
        return list(self.selected_regions)

    def enforce_governance(self) -> GovernanceReport:
        """Refuse data the job may not process where it runs and drop frames inside restricted zones.

        Works on :attr:`refs` (the index) and frame positions only, so it runs before any image is read; raises
        :class:`~visionpilot.governance.ResidencyError` naming the source, region and rule. The splits stay
        those of the whole source (a zone never moves a scene to another split); excluded frames are simply
        absent from :attr:`refs`, hence from every dataset and count.
        """
        self.governance_report = self.governance.enforce(self.source, self.refs, self.regions_read())
        self.refs = self.governance_report.kept_refs
        return self.governance_report

    def build_dataset(self, split: str) -> Dataset:
        """The dataset of one split. Override to change what a split holds (e.g. mix in replay frames)."""
        assert self.manifest is not None
        refs = self.manifest.select(self.refs, split, self.selected_regions)
        transform = self.train_transform if split == "train" else self.val_transform
        return FrameDataset(self.source, refs, transform, seed=self.seed, cache=self.frame_cache)

    # -- loaders --------------------------------------------------------------------------------------------

    def collate_fn(self) -> Callable[[Sequence[Frame]], dict[str, Any]]:
        """How this datamodule's loaders batch frames (subclasses pad camera slots)."""
        return collate_frames

    def _loader(self, split: str, train: bool) -> DataLoader:
        if split not in self.datasets:
            raise RuntimeError(f"VisionPilotDataModule: no '{split}' dataset; call setup() first "
                               f"(splits: {list(self.datasets)})")
        ds = self.datasets[split]
        n = len(ds)  # type: ignore[arg-type]
        refs = getattr(ds, "refs", None)
        order = spread_order(refs) if not train and refs is not None else None
        sampler = EpochSampler(n, shuffle=train, seed=self.seed, distributed=True, pad=train, order=order)
        return ResumableDataLoader(
            ds,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=self.collate_fn(),
            pin_memory=self.pin_memory,
            # len(sampler): this rank's frames, so a DDP rank with less than a batch keeps it rather than train on none
            drop_last=train and self.drop_last and len(sampler) >= self.batch_size,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    # -- facts ----------------------------------------------------------------------------------------------

    @property
    def camera_names(self) -> list[str]:
        return self.source.camera_names

    @property
    def frame_counts(self) -> dict[str, dict[str, int]]:
        """split -> region -> frames, over the selected regions (after ``setup``)."""
        if self.manifest is None:
            raise RuntimeError("VisionPilotDataModule.frame_counts: call setup() first")
        return {split: self.split_counts(split, self.selected_regions) for split in self.manifest.splits}

    def split_counts(self, split: str, regions: Sequence[str]) -> dict[str, int]:
        """Region -> frames of ``split`` that are read: the manifest's counts less zone-excluded frames."""
        assert self.manifest is not None
        if self.governance_report is None or not self.governance_report.excluded_count:
            return self.manifest.frame_counts(split, regions)
        kept = Counter(r.region for r in self.manifest.select(self.refs, split, regions))
        return {r: kept.get(r, 0) for r in self.manifest.select_regions(regions)}


def has_val_frames(datamodule: object) -> bool:
    """Whether a set-up datamodule has a val split with frames (a final validation has something to read)."""
    val = (getattr(datamodule, "datasets", None) or {}).get("val")
    return val is not None and (not hasattr(val, "__len__") or len(val) > 0)
