"""``data.cache=ram``: frames loaded once into memory, in parallel; loaders give exactly the uncached batches."""

from __future__ import annotations

import logging
import pickle

import numpy as np
import pytest
import torch

import visionpilot.data.cache as cache_module
from visionpilot.data.cache import FrameCache
from visionpilot.data.datamodule import VisionPilotDataModule
from visionpilot.data.replay import ReplayDataModule
from visionpilot.data.sources.streaming import StreamingDataModule
from visionpilot.data.sources.synthetic import SyntheticSource

AUGMENT = {"flip_p": 0.5, "scale_range": (0.8, 1.2), "photometric_p": 0.5}


class CountingSource(SyntheticSource):
    """The synthetic world, counting the frames this process loads."""

    loads = 0

    def load(self, index, with_images=True):
        type(self).loads += 1
        return super().load(index, with_images)


@pytest.fixture
def source() -> CountingSource:
    CountingSource.loads = 0
    return CountingSource(rig="front1", regions=["de", "us"], scenes_per_region=5, frames_per_scene=2,
                          image_size=(32, 88))


def _dm(source, **kwargs) -> VisionPilotDataModule:
    dm = VisionPilotDataModule(source, image_size=(32, 88), batch_size=2, train_transform=AUGMENT, **kwargs)
    dm.setup("fit")
    return dm


def _batches(loader, epoch: int | None = None) -> list[dict]:
    if epoch is not None:
        loader.sampler.set_epoch(epoch)
    return list(loader)


def _assert_equal(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]) if isinstance(x[k], torch.Tensor) else x[k] == y[k], k


def test_cached_loaders_give_the_uncached_batches_without_loading_a_frame(source) -> None:
    plain = _dm(source)
    cached = _dm(source, cache="ram", cache_workers=2)
    train_val = len(plain.datasets["train"]) + len(plain.datasets["val"])
    assert len(cached.frame_cache) == train_val  # fit reads train and val; test is not loaded
    CountingSource.loads = 0
    for epoch in (0, 1):  # the second epoch reads every cached frame a second time: still the uncached batches
        _assert_equal(_batches(cached.train_dataloader(), epoch), _batches(plain.train_dataloader(), epoch))
    _assert_equal(_batches(cached.val_dataloader()), _batches(plain.val_dataloader()))
    loads_uncached = len(plain.datasets["train"]) * 2 + len(plain.datasets["val"])
    assert CountingSource.loads == loads_uncached  # every one of them by the uncached datamodule
    cached.setup("test")  # a later stage adds its split
    assert len(cached.frame_cache) == train_val + len(cached.datasets["test"])
    _assert_equal(_batches(cached.test_dataloader()), _batches(plain.test_dataloader()))


def test_parallel_fill_stores_what_the_source_loads(source) -> None:
    indices = [r.index for r in source.index()]
    serial, parallel = FrameCache(workers=1), FrameCache(workers=2)
    assert serial.fill(source, indices) and parallel.fill(source, indices)
    assert parallel.frames == serial.frames and len(serial) == len(indices)
    assert serial.nbytes == sum(len(pickle.dumps(source.load(i), protocol=pickle.HIGHEST_PROTOCOL)) for i in indices)
    assert parallel.fill(source, indices[:3])  # nothing left to load
    assert parallel.get(len(source) + 5) is None


def test_a_transform_that_changes_its_frame_cannot_change_the_cache(source) -> None:
    cache = FrameCache(workers=1)
    cache.fill(source, [0])
    frame = cache.get(0)
    original = frame.cameras[0].image.copy()
    frame.cameras[0].image[:] = 0  # a transform writing into its input
    frame.cameras.clear()
    again = cache.get(0)
    assert len(again.cameras) == 1 and np.array_equal(again.cameras[0].image, original)


def test_a_cache_too_large_for_memory_is_not_built_and_says_so(source, monkeypatch, caplog) -> None:
    monkeypatch.setattr(cache_module, "available_memory", lambda: 1000)  # bytes
    plain = _dm(source)
    with caplog.at_level(logging.WARNING, logger="visionpilot.data.cache"):
        cached = _dm(source, cache="ram")
    assert len(cached.frame_cache) == 0
    assert "data.cache=ram" in caplog.text and "more than 50 % of the 0 MB of memory available" in caplog.text
    _assert_equal(_batches(cached.train_dataloader(), 0), _batches(plain.train_dataloader(), 0))


def test_ddp_ranks_on_one_machine_each_take_their_share_of_the_memory(source, monkeypatch, caplog) -> None:
    """Every rank fills a cache of its own at the same time: what fits one process can overcommit the machine."""
    frame_bytes = len(pickle.dumps(source.load(0), protocol=pickle.HIGHEST_PROTOCOL))  # every frame's size, nearly
    plain = _dm(source)
    n = len(plain.datasets["train"]) + len(plain.datasets["val"])
    monkeypatch.setattr(cache_module, "available_memory", lambda: 3 * n * frame_bytes)  # 50 % of it: 1.5x the frames

    def cached(ranks: int) -> int:
        dm = VisionPilotDataModule(source, image_size=(32, 88), batch_size=2, cache="ram", cache_workers=1)
        dm.trainer = type("Trainer", (), {"num_devices": ranks})()  # what Lightning sets before setup
        dm.setup("fit")
        return len(dm.frame_cache)

    assert cached(1) == n
    with caplog.at_level(logging.WARNING, logger="visionpilot.data.cache"):
        assert cached(2) == 0
    assert "shared by 2 processes" in caplog.text


def test_bad_cache_settings_are_refused_by_name(source, tmp_path) -> None:
    with pytest.raises(ValueError, match=r"VisionPilotDataModule: field 'cache' must be one of \[None, 'ram'\] "
                                         r"\(null: no cache\), found 'disk'"):
        VisionPilotDataModule(source, cache="disk")
    with pytest.raises(ValueError, match=r"field 'cache_workers' must be a positive integer or null, found 0"):
        VisionPilotDataModule(source, cache="ram", cache_workers=0)
    with pytest.raises(ValueError, match=r"StreamingDataModule: field 'cache' must be null .* found 'ram'"):
        StreamingDataModule(tmp_path / "no-shards", cache="ram")


def test_replay_frames_are_cached_too() -> None:
    source = CountingSource(rig="front1", regions=["gb", "us"], scenes_per_region=3, frames_per_scene=2,
                            image_size=(32, 88))
    dm = ReplayDataModule(source, regions=["gb"], replay_regions=["us"], replay_fraction=0.5, batch_size=2,
                          image_size=(32, 88), cache="ram", cache_workers=1)
    dm.setup("fit")
    replay = dm.datasets["train"].replay
    assert replay.refs and all(r.index in dm.frame_cache for r in replay.refs)
    CountingSource.loads = 0
    assert {r for b in dm.train_dataloader() for r in b["region"]} == {"gb", "us"}
    assert CountingSource.loads == 0
