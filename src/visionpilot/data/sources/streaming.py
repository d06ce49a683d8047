"""Reading shards (``data/shards.py``) back into Frames: a source for random access and a streaming datamodule.

``data=streaming data.root=<dir or URL>`` trains from the shards of ``visionpilot-data action=shard``:

- :class:`ShardSource` is a :class:`~visionpilot.data.sources.base.FrameSource` over the shards of the selected
  regions (it opens only their prefixes): ``index()`` reads each prefix's ``frames.json`` (and refuses a prefix
  missing chunks, as a partial copy of a root is), ``load(i)`` one record. It makes shards usable everywhere a source
  is (``visionpilot-data action=stats data=streaming``).
- :class:`StreamingDataModule` trains and validates through litdata's ``StreamingDataLoader``: chunks are read in
  sequence (a shuffled chunk order, then items shuffled within a window), downloaded ahead into a bounded local
  cache for URLs, split between DDP ranks and loader workers by litdata, and the loader's position is saved in
  every checkpoint, so a restarted run continues mid-epoch with the next unseen frame. Several regions are read
  as one :class:`litdata.CombinedStreamingDataset` (every frame once per epoch, regions interleaved at random).
  Augmentation is seeded per ``(seed, epoch, frame id)``, as the in-memory datamodule seeds it per index.
"""

from __future__ import annotations

import bisect
import logging
import os
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from litdata import CombinedStreamingDataset, StreamingDataLoader, StreamingDataset
from litdata.streaming.sampler import ChunkedIndex
from torch.utils.data import DataLoader, Dataset

from visionpilot.data.collate import collate_frames
from visionpilot.data.datamodule import FrameDataset, VisionPilotDataModule, _plain
from visionpilot.data.frame import Frame
from visionpilot.data.regions import GLOBAL
from visionpilot.data.shards import FRAMES_FILE, META_FILE, decode_frame, is_url, join, read_json, read_meta
from visionpilot.data.sources.base import FrameRef, FrameSource
from visionpilot.data.sources.mixed import MixedSource
from visionpilot.data.splits import SplitManifest
from visionpilot.data.transforms import child_seeds
from visionpilot.governance.audit import GovernanceReport
from visionpilot.governance.policy import ResidencyError

log = logging.getLogger(__name__)
_LITDATA_INDEX = "index.json"  # litdata's list of a prefix's chunks (written by optimize)


def frame_seed(seed: int, epoch: int, frame_id: str) -> int:
    """Augmentation seed of a frame in an epoch: stable across runs, ranks, workers and restarts."""
    return child_seeds(seed, 1, int(epoch), zlib.crc32(frame_id.encode()))[0]


class ShardSource(FrameSource):
    """The frames of a shard root (``visionpilot-data action=shard`` output), limited to ``regions``.

    Args:
        root: the shard folder or URL (holding ``visionpilot.json``).
        regions: ``"global"`` (every sharded region), a code, or a list of codes.
        cache_dir: where chunks of a URL are cached (None: litdata's default).
        max_cache_size: bound of that cache (e.g. ``"50GB"``).
        storage_options: object-store client options (e.g. ``{"endpoint_url": ...}``).
    """

    name = "shards"

    def __init__(self, root: str | os.PathLike[str], regions: str | Sequence[str] = GLOBAL,
                 cache_dir: str | None = None, max_cache_size: str | int = "50GB",
                 storage_options: Mapping[str, Any] | None = None) -> None:
        self.root = str(root).rstrip("/")
        self.cache_dir, self.max_cache_size = cache_dir, max_cache_size
        self.storage_options = dict(_plain(storage_options) or {})
        self.meta = read_meta(self.root, self.storage_options)
        self.name = str(self.meta.get("source", self.name))
        # Shards of a mixed source: the dataset name of each member key (frame ids are '<key>:<id>'), which
        # governance rules frames by; without them a rule for one member would not apply to its streamed frames.
        self.member_names: dict[str, str] | None = self.meta.get("members")
        if self.name == MixedSource.name and self.member_names is None:
            raise ValueError(f"{join(self.root, META_FILE)}: field 'members' is missing: these shards of a mixed source "
                             "were written before its members' names were recorded, so data-residency rules cannot "
                             "tell its datasets apart; re-shard with visionpilot-data action=shard")
        m = self.meta["manifest"]
        self.manifest = SplitManifest(seed=int(m["seed"]), fractions=dict(m["fractions"]), splits=m["splits"],
                                      counts=m.get("counts", {}))
        self.regions = self.select_regions(_plain(regions))
        # (region, split, frames) of every non-empty prefix read, in a fixed order: the global index runs through them.
        self.parts = [(r, s, int(self.meta["frames"][r].get(s, 0))) for r in self.regions
                      for s in self.manifest.splits if int(self.meta["frames"][r].get(s, 0))]
        self._starts = [0]
        for *_, n in self.parts:
            self._starts.append(self._starts[-1] + n)
        self._scene_split = {scene: split for (_, scene), split in self.manifest.scene_splits().items()}
        self._refs: list[FrameRef] | None = None
        self._datasets: dict[int, StreamingDataset] = {}

    def select_regions(self, regions: str | Sequence[str] | None) -> list[str]:
        """Resolve a region selection against the sharded regions (an unsharded one is an error naming the file)."""
        have = list(self.meta["regions"])
        if regions is None or (isinstance(regions, str) and regions.lower() == GLOBAL):
            return have
        # Each region once: a repeat ([gb, GB]) would read its prefixes, hence every frame of it, twice.
        wanted = list(dict.fromkeys(str(r).lower() for r in ([regions] if isinstance(regions, str) else regions)))
        if GLOBAL in wanted:
            return have
        missing = [r for r in wanted if r not in have]
        if missing:
            raise ValueError(f"{join(self.root, META_FILE)}: field 'regions' holds {have}, but the selection asks "
                             f"for {missing}; shard those regions or select among {have}")
        return wanted

    def prefix(self, region: str, split: str) -> str:
        return join(self.root, region, split)

    def frames(self, region: str, split: str) -> int:
        return int(self.meta["frames"].get(region, {}).get(split, 0))

    def __len__(self) -> int:
        return self._starts[-1]

    @property
    def camera_names(self) -> list[str]:
        return list(self.meta["camera_names"])

    def official_split(self, scene_id: str) -> str | None:
        """The split the scene was sharded into: a datamodule built on this source reproduces the stored splits."""
        return self._scene_split.get(scene_id)

    def index(self) -> list[FrameRef]:
        if self._refs is None:
            refs: list[FrameRef] = []
            for (region, split, n), start in zip(self.parts, self._starts):
                rows = self._prefix_rows(region, split, n)
                refs += [FrameRef(start + k, fid, scene, region) for k, (fid, scene) in enumerate(rows)]
            self._refs = refs
        return list(self._refs)

    def _prefix_rows(self, region: str, split: str, n: int) -> list[list[str]]:
        """The ``[frame_id, scene_id]`` rows of a prefix, once its ``frames.json``, litdata's ``index.json`` and (local
        roots) every chunk that index names hold the ``n`` frames the metadata says. A root copied or synced in part
        fails here, at setup, rather than at its first missing chunk mid-epoch (litdata's wait timeout)."""
        prefix = self.prefix(region, split)
        advice = "the shards are incomplete (a partial copy of the root?): copy the root again or re-shard"

        def read(name: str) -> Any:
            path = join(prefix, name)
            try:
                return read_json(path, self.storage_options)
            except FileNotFoundError:
                raise FileNotFoundError(f"{path} not found, but {join(self.root, META_FILE)} says {prefix} holds {n} "
                                        f"frames; {advice}") from None

        rows = read(FRAMES_FILE)["frames"]
        if len(rows) != n:
            raise ValueError(f"{join(prefix, FRAMES_FILE)}: field 'frames' lists {len(rows)} frames, but {META_FILE} "
                             f"says {n}; {advice}")
        chunks = read(_LITDATA_INDEX)["chunks"]
        items = sum(int(c["chunk_size"]) for c in chunks)
        if items != n:
            raise ValueError(f"{join(prefix, _LITDATA_INDEX)}: field 'chunks' holds {items} frames, but {META_FILE} "
                             f"says {n}; {advice}")
        if not is_url(prefix):  # an object store would take a request per chunk; litdata names a missing one there
            for c in chunks:
                path = os.path.join(prefix, c["filename"])
                size = os.path.getsize(path) if os.path.isfile(path) else None
                if size is None or size < int(c["chunk_bytes"]):
                    raise FileNotFoundError(f"{path}: a chunk of {c['chunk_bytes']} bytes in {_LITDATA_INDEX}, found "
                                            f"{'no file' if size is None else f'{size} bytes'}; {advice}")
        return rows

    def dataset(self, part: int) -> StreamingDataset:
        """litdata's dataset of one prefix (no shuffling; opened once)."""
        if part not in self._datasets:
            region, split, _ = self.parts[part]
            self._datasets[part] = StreamingDataset(self.prefix(region, split), cache_dir=self.cache_dir,
                                                    max_cache_size=self.max_cache_size,
                                                    storage_options=self.storage_options)
        return self._datasets[part]

    def load(self, index: int, with_images: bool = True) -> Frame:
        if not 0 <= index < len(self):
            raise IndexError(f"shard source {self.root}: index {index} out of range [0, {len(self)})")
        part = bisect.bisect_right(self._starts, index) - 1
        item = index - self._starts[part]
        region, split, _ = self.parts[part]
        return decode_frame(self.dataset(part)[item], with_images=with_images,
                            where=f"{self.prefix(region, split)} item {item}")

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_datasets"] = {}  # open readers stay in their process; loader workers open their own
        return state


class StreamingFrameDataset(StreamingDataset):
    """litdata's ``StreamingDataset`` over one prefix, yielding transformed :class:`Frame` objects.

    Args:
        input_dir: a ``<root>/<region>/<split>`` prefix (folder or URL).
        frame_transform: ``(frame, seed) -> frame`` (the datamodule's train or val transform), or None.
        seed: shuffling and augmentation seed.
        shuffle: shuffle chunks, then items within a window (train).
        drop_last: None: litdata's rule (drop uneven tails under DDP, so every rank takes the same steps).
        cache_dir, max_cache_size, storage_options: as for :class:`ShardSource`.
    """

    def __init__(self, input_dir: str, frame_transform: Callable[..., Frame] | None = None, seed: int = 0,
                 shuffle: bool = False, drop_last: bool | None = None, cache_dir: str | None = None,
                 max_cache_size: str | int = "50GB", storage_options: Mapping[str, Any] | None = None) -> None:
        super().__init__(input_dir, cache_dir=cache_dir, shuffle=shuffle, drop_last=drop_last, seed=int(seed),
                         max_cache_size=max_cache_size, storage_options=dict(storage_options or {}))
        self.frame_transform = frame_transform
        self.frame_seed = int(seed)

    def __getitem__(self, index: ChunkedIndex | int) -> Frame:  # type: ignore[override]
        item = index.index if isinstance(index, ChunkedIndex) else index
        where = f"{self.input_dir.url or self.input_dir.path} item {item}"
        frame = decode_frame(super().__getitem__(index), where=where)
        if self.frame_transform is None:
            return frame
        return self.frame_transform(frame, frame_seed(self.frame_seed, self.current_epoch, frame.frame_id))


class StreamingDataModule(VisionPilotDataModule):
    """Train/val/test loaders streaming from shards (see the module docstring).

    Args:
        root: the shard folder or URL (``out`` of ``visionpilot-data action=shard``).
        regions: ``"global"`` (every sharded region), a code, or a list: only those prefixes are read.
        cache_dir, max_cache_size, storage_options: as for :class:`ShardSource`.
        **kwargs: :class:`~visionpilot.data.datamodule.VisionPilotDataModule` arguments (batch size, workers, image
            size, transforms, seed, ...). Split fractions do not apply: the shards hold their splits.
    """

    def __init__(self, root: str | os.PathLike[str], regions: str | Sequence[str] = GLOBAL,
                 cache_dir: str | None = None, max_cache_size: str | int = "50GB",
                 storage_options: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        kwargs.pop("split_fractions", None)
        kwargs.pop("split_seed", None)
        if kwargs.get("cache") is not None:
            raise ValueError(f"StreamingDataModule: field 'cache' must be null for streamed shards (litdata keeps "
                             f"the chunks it reads under cache_dir itself), found {kwargs['cache']!r}")
        source = ShardSource(root, regions, cache_dir, max_cache_size, storage_options)
        # "global" means every sharded region (the stored manifest may know regions that were not sharded).
        super().__init__(source, regions=source.regions, **kwargs)
        self.root = source.root
        if self.persistent_workers and self.num_workers:
            # litdata hands every new iteration (epoch) its state through fresh workers.
            log.info("streaming data: persistent_workers is ignored (litdata restarts workers each epoch)")
            self.persistent_workers = False

    def build_splits(self) -> SplitManifest:
        """The manifest the shards were cut with (never recomputed: the shards already hold the splits)."""
        self.refs = self.source.index()
        return self.source.manifest  # type: ignore[attr-defined]

    def enforce_governance(self) -> GovernanceReport:
        """As the base datamodule; frames inside restricted zones cannot be skipped here (litdata streams whole
        prefixes), so shards holding any are refused: re-shard with the policy (``action=shard governance=...``
        writes no such frame)."""
        report = super().enforce_governance()
        if report.excluded_count:
            zones = sorted({z for g in report.groups for z in g.excluded})
            raise ResidencyError(f"{join(self.root, META_FILE)}: the shards hold {report.excluded_count} frames inside "
                                 f"restricted zones {zones} of governance policy '{report.policy.name}'; streaming "
                                 f"cannot skip them. Re-shard with the policy: visionpilot-data action=shard "
                                 f"governance={report.policy.name} ...")
        return report

    def build_dataset(self, split: str) -> Dataset:
        src: ShardSource = self.source  # type: ignore[assignment]
        regions = [r for r in self.selected_regions if src.frames(r, split)]
        train = split == "train"
        transform = self.train_transform if train else self.val_transform
        if not regions:
            return FrameDataset(src, [], transform, seed=self.seed)  # an empty split (e.g. val fraction 0)
        datasets = [StreamingFrameDataset(src.prefix(r, split), transform, seed=self.seed, shuffle=train,
                                          drop_last=None if train else False, cache_dir=src.cache_dir,
                                          max_cache_size=src.max_cache_size, storage_options=src.storage_options)
                    for r in regions]
        if len(datasets) == 1:
            return datasets[0]
        return CombinedStreamingDataset(datasets, seed=self.seed, iterate_over_all=True)

    def _loader(self, split: str, train: bool) -> DataLoader:
        ds = self.datasets.get(split)
        if ds is None or isinstance(ds, FrameDataset):
            return super()._loader(split, train)
        n = len(ds)  # type: ignore[arg-type]
        return StreamingDataLoader(ds, batch_size=self.batch_size, num_workers=self.num_workers,
                                   collate_fn=collate_frames, pin_memory=self.pin_memory,
                                   drop_last=train and self.drop_last and n >= self.batch_size)
