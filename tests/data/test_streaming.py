"""Shards (data/shards.py) and streaming (data/sources/streaming.py): exact round trips, region prefixes, resumable
streaming loaders, and the shard -> train path through the real configs."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from visionpilot.data.frame import Frame
from visionpilot.data.shards import decode_frame, encode_frame, read_meta, write_shards
from visionpilot.data.sources.streaming import ShardSource, StreamingDataModule, StreamingFrameDataset
from visionpilot.data.splits import make_splits
from visionpilot.paths import config_dir


def assert_same(a: Any, b: Any, where: str = "frame") -> None:
    """Exactly equal, arrays by dtype, shape and value (``==`` is not enough for dataclasses holding arrays)."""
    if dataclasses.is_dataclass(a):
        assert type(a) is type(b), where
        for f in dataclasses.fields(a):
            assert_same(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape, \
            f"{where}: {a.dtype}{a.shape} vs {getattr(b, 'dtype', type(b))}{getattr(b, 'shape', '')}"
        assert np.array_equal(a, b), where
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b), f"{where}: {a!r} vs {b!r}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


def _identity(frame: Frame, seed: int) -> Frame:
    return frame


@pytest.fixture
def shards(tmp_path: Path, source_factory) -> tuple[Any, Path]:
    src = source_factory({"de": 4, "gb": 3}, frames_per_scene=2)
    refs = src.index()
    write_shards(src, refs, make_splits(refs, seed=0), ["de", "gb"], tmp_path / "shards", chunk_bytes="40KB")
    return src, tmp_path / "shards"


def _dm(root: Path, **kwargs: Any) -> StreamingDataModule:
    kwargs = {"image_size": None, "batch_size": 2, "train_transform": _identity, "val_transform": _identity,
              "drop_last": False, **kwargs}
    dm = StreamingDataModule(root, **kwargs)
    dm.setup("fit")
    return dm


@pytest.mark.parametrize("image_format", ["png", "raw"])
def test_record_round_trip_is_exact(frame_factory, image_format: str) -> None:
    frame = frame_factory(3, scene_id="gb-001", region="gb")
    frame.meta = {"weather": "rain", "h_samples": [160, 170]}
    frame.latlon = (51.5, -0.12)
    assert_same(frame, decode_frame(encode_frame(frame, image_format)))
    labels_only = frame_factory(4, with_images=False, labels=("boxes_3d",))
    assert_same(labels_only, decode_frame(encode_frame(labels_only, image_format)))


def test_jpeg_records_are_close(frame_factory) -> None:
    frame = frame_factory(2)
    raw, jpg = encode_frame(frame, "raw"), encode_frame(frame, "jpeg", jpeg_quality=90)
    back = decode_frame(jpg)
    assert len(jpg["images"]) < len(raw["images"])
    for a, b in zip(frame.cameras, back.cameras):
        assert np.abs(a.image.astype(int) - b.image.astype(int)).mean() < 6
    with pytest.raises(ValueError, match="must be one of"):
        encode_frame(frame, "webp")


def test_shard_then_stream_returns_identical_frames(shards: tuple[Any, Path]) -> None:
    src, root = shards
    meta = read_meta(root)
    assert meta["regions"] == ["de", "gb"] and sum(meta["frames"]["de"].values()) == 8
    by_id = {r.frame_id: src.load(r.index) for r in src.index()}
    # Random access: every frame, byte for byte.
    shard_src = ShardSource(root)
    refs = shard_src.index()
    assert sorted(r.frame_id for r in refs) == sorted(by_id)
    for ref in refs:
        assert_same(by_id[ref.frame_id], shard_src.load(ref.index), ref.frame_id)
        assert ref.region == by_id[ref.frame_id].region
    # Streaming: every frame of every prefix exactly once, identical, in a shuffled order.
    streamed = []
    for region, split, n in shard_src.parts:
        ds = StreamingFrameDataset(shard_src.prefix(region, split), shuffle=True, seed=1)
        frames = list(ds)
        assert len(frames) == n
        streamed += frames
    assert sorted(f.frame_id for f in streamed) == sorted(by_id)
    for frame in streamed:
        assert_same(by_id[frame.frame_id], frame, frame.frame_id)
    # The datamodule keeps the stored scene splits.
    dm = _dm(root)
    assert dm.manifest.sha256 == meta["manifest"]["sha256"]
    train_ids = [i for b in dm.train_dataloader() for i in b["frame_id"]]
    assert sorted(train_ids) == sorted(r.frame_id for r in dm.manifest.select(src.index(), "train"))


def test_region_filter_reads_only_that_regions_prefix(shards: tuple[Any, Path]) -> None:
    _, root = shards
    shutil.rmtree(root / "de")  # anything that touched de's prefix would now fail
    dm = _dm(root, regions=["gb"])
    assert dm.selected_regions == ["gb"] and set(dm.frame_counts["train"]) == {"gb"}
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        assert {r for b in loader for r in b["region"]} <= {"gb"}
    assert {r.region for r in ShardSource(root, regions="gb").index()} == {"gb"}
    # A region named twice is read once (its frames were indexed, counted and streamed twice).
    assert ShardSource(root, regions=["gb", "GB"]).index() == ShardSource(root, regions="gb").index()
    with pytest.raises(ValueError, match=r"visionpilot.json: field 'regions' holds \['de', 'gb'\].*\['us'\]"):
        ShardSource(root, regions=["us"])
    with pytest.raises(FileNotFoundError, match="data.root must be the 'out' of visionpilot-data action=shard"):
        ShardSource(root / "gb")


@pytest.mark.parametrize("damage", ["chunk missing", "chunk truncated", "index.json missing", "frames.json missing"])
def test_a_root_copied_in_part_is_refused_at_setup(shards: tuple[Any, Path], damage: str) -> None:
    """A root copied or synced in part (its metadata, not every chunk) passed setup: training stopped at the first
    missing chunk, mid-epoch, on litdata's wait timeout (which calls it "not a missing object")."""
    _, root = shards
    chunk = sorted(root.glob("*/*/chunk-*.bin"))[-1]
    prefix = chunk.parent
    if damage == "chunk missing":
        chunk.unlink()
    elif damage == "chunk truncated":
        chunk.write_bytes(chunk.read_bytes()[:-100])
    else:
        (prefix / damage.split()[0]).unlink()
    where, file = re.escape(str(prefix)), re.escape(str(chunk))
    message = {"chunk missing": rf"{file}: a chunk of \d+ bytes in index.json, found no file",
               "chunk truncated": rf"{file}: a chunk of \d+ bytes in index.json, found \d+ bytes"}.get(
        damage, rf"{where}/{damage.split()[0]} not found, but .*visionpilot.json says {where} holds \d+ frames")
    with pytest.raises((FileNotFoundError, ValueError),
                       match=message + r"; the shards are incomplete \(a partial copy of the root\?\)"):
        _dm(root)


def test_streaming_loader_resumes_mid_epoch(shards: tuple[Any, Path]) -> None:
    _, root = shards
    full = [list(b["frame_id"]) for b in _dm(root, batch_size=1).train_dataloader()]
    assert len(full) >= 4
    loader = _dm(root, batch_size=1).train_dataloader()
    it = iter(loader)
    seen = [list(next(it)["frame_id"]) for _ in range(2)]
    state = loader.state_dict()
    restarted = _dm(root, batch_size=1).train_dataloader()  # as in a new process
    restarted.load_state_dict(state)
    rest = [list(b["frame_id"]) for b in restarted]
    assert seen + rest == full


def _compose(name: str, tmp_path: Path, overrides: list[str]):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name=name, overrides=[f"paths.output_dir={tmp_path}", *overrides])


@pytest.mark.slow
def test_a_reshard_that_dies_half_way_leaves_no_readable_root(shards: tuple[Any, Path],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import litdata

    src, root = shards
    refs = src.index()
    optimize, calls = litdata.optimize, []

    def dies_after_one_prefix(**kwargs: Any) -> None:  # as if the job were killed after the first prefix
        calls.append(kwargs["output_dir"])
        if len(calls) > 1:
            raise KeyboardInterrupt
        optimize(**kwargs)

    monkeypatch.setattr(litdata, "optimize", dies_after_one_prefix)
    with pytest.raises(KeyboardInterrupt):
        write_shards(src, refs, make_splits(refs, seed=1), ["de", "gb"], root, chunk_bytes="40KB")
    # The old metadata would have described the old splits over a mix of old and new chunks: it is gone.
    with pytest.raises(FileNotFoundError, match=r"visionpilot.json not found: .* written last, so a shard run that "
                                                r"did not finish leaves none"):
        ShardSource(root)
    assert not (root / "de" / "val" / "frames.json").exists()  # the prefix being written when it died


def test_shard_action_then_train_from_shards(tmp_path: Path) -> None:
    from visionpilot.cli.data import run
    from visionpilot.training.checkpoints import load_checkpoint
    from visionpilot.training.train import train

    out = tmp_path / "shards"
    small = ["rig=front1", "data.image_size=[64,176]", "data.num_workers=0"]
    done = run(_compose("data", tmp_path / "shard", ["action=shard", f"out={out}", "data.regions=[de,gb]",
                                                     "data.source.scenes_per_region=3",
                                                     "data.source.frames_per_scene=2", *small]))
    assert done["frames"] == 12 and sorted(p.name for p in out.iterdir()) == ["de", "gb", "visionpilot.json"]
    stats = run(_compose("data", tmp_path / "stats", ["action=stats", "data=streaming", f"data.root={out}",
                                                      "split=all", *small]))["stats"]
    assert sorted(stats["regions"]) == ["de", "gb"]
    run_dir = tmp_path / "train"
    metrics, _ = train(_compose("train", run_dir, [
        "data=streaming", f"data.root={out}", "region=gb", *small, "data.batch_size=2", "logger=csv",
        "trainer.max_steps=2", "trainer.max_epochs=-1", "trainer.limit_val_batches=1",
        "callbacks.prediction_images=null", "callbacks.progress_bar=null"]))
    assert metrics["train/steps"] == 2 and "val/loss" in metrics
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    loader_state = ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert loader_state and "num_samples_yielded" in loader_state[0]  # litdata's resumable position
    loaded = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert loaded.meta["regions"] == ["gb"]
    assert json.loads((run_dir / "splits.json").read_text())["sha256"] == loaded.meta["manifest_sha256"]
