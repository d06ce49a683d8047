"""Shard writing and records (data/shards.py): corrupt records name what is wrong, and re-sharding into a root
leaves exactly the regions written, even after a run that died half-way."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from visionpilot.data import shards
from visionpilot.data.shards import META_FILE, decode_frame, encode_frame, read_meta, write_shards
from visionpilot.data.sources.streaming import ShardSource, StreamingFrameDataset
from visionpilot.data.splits import make_splits

CHUNK = "/shards/de/train/chunk-0-0.bin item 2"


@pytest.mark.parametrize(("field", "found"), [
    ("header", r"shard record: field 'header' is not JSON \("),
    ("arrays", r"shard record, frame 'de-000-0003': field 'arrays' is not a readable .npz \(File is not a zip file\)"),
])
def test_a_truncated_header_or_arrays_field_is_a_clear_error(frame_factory, field: str, found: str) -> None:
    """Python's 'File is not a zip file' named neither the record nor the field."""
    record = encode_frame(frame_factory(3), "png")
    record[field] = record[field][:-50]
    with pytest.raises(ValueError, match=rf"{found}.*; the shard is truncated or corrupt, re-shard"):
        decode_frame(record)


@pytest.mark.parametrize(("image_format", "found"), [
    ("raw", r"a raw image of shape \(48, 80, 3\) takes 11520 bytes, found 11420"),
    ("png", r"the png image \(\d+ bytes\) does not decode to \(48, 80, 3\), found no image"),
])
def test_a_truncated_image_names_the_record_frame_camera_expected_and_found(frame_factory, image_format: str,
                                                                           found: str) -> None:
    """A record whose image bytes were cut short failed with numpy's 'cannot reshape array of size 11420'."""
    record = encode_frame(frame_factory(3), image_format)
    record["images"] = record["images"][:-100]  # the last camera's image loses its tail
    with pytest.raises(ValueError, match=rf"{CHUNK}, frame 'de-000-0003', camera 'CAM_FRONT_RIGHT': {found}; the "
                                         rf"shard is truncated or corrupt, re-shard"):
        decode_frame(record, where=CHUNK)
    assert decode_frame(record, with_images=False).frame_id == "de-000-0003"  # labels need no image bytes


def test_a_truncated_raw_image_in_a_shard_is_a_clear_error(tmp_path: Path, source_factory,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    src = source_factory({"de": 2}, frames_per_scene=2)
    refs = src.index()

    def truncated(*args: Any) -> dict[str, Any]:
        record = encode_frame(src.load(args[-1]), "raw")
        return {**record, "images": record["images"][:-7]}

    monkeypatch.setattr(shards, "_record", truncated)
    write_shards(src, refs, make_splits(refs, {"train": 1.0}), ["de"], tmp_path / "shards", image_format="raw")
    with pytest.raises(ValueError, match=r"shards/de/train item 0, frame 'de-000-0000', camera 'CAM_FRONT_RIGHT': a "
                                         r"raw image of shape \(48, 80, 3\) takes 11520 bytes, found 11513"):
        ShardSource(tmp_path / "shards").load(0)
    with pytest.raises(ValueError, match=r"shards/de/train item 0, frame 'de-000-0000', camera 'CAM_FRONT_RIGHT'"):
        StreamingFrameDataset(str(tmp_path / "shards" / "de" / "train"))[0]  # the training loaders' reader


def _shard(src: Any, regions: list[str], root: Path | str, fractions: dict[str, float] | None = None) -> dict:
    refs = src.index()
    return write_shards(src, refs, make_splits(refs, fractions), regions, root, chunk_bytes="40KB")


def test_resharding_leaves_exactly_the_regions_and_splits_written(tmp_path: Path, source_factory) -> None:
    """A region (or split) not written again stayed on disk, travelling with the root wherever it was copied."""
    src, root = source_factory({"de": 4, "gb": 4}, frames_per_scene=1), tmp_path / "shards"
    _shard(src, ["de", "gb"], root)
    assert (root / "de" / "train" / "index.json").is_file() and (root / "gb" / "val" / "index.json").is_file()
    _shard(src, ["gb"], root, {"train": 0.75, "test": 0.25})
    assert sorted(p.name for p in root.iterdir()) == ["gb", META_FILE]
    assert sorted(p.name for p in (root / "gb").iterdir()) == ["test", "train"]  # no val split any more
    assert read_meta(root)["regions"] == ["gb"] and {r.region for r in ShardSource(root).index()} == {"gb"}


@pytest.mark.parametrize(("entry", "found"), [
    ("notes.txt", r"holds \['notes.txt'\], which are not shards"),
    ("nuscenes/samples/CAM_FRONT/a.jpg", r"holds \['nuscenes/'\], which are not shards"),
    ("gb/train/sweeps/a.jpg", r"holds \['gb/'\], which are not shards"),
])
def test_a_root_that_holds_other_things_is_refused_and_left_alone(tmp_path: Path, source_factory, entry: str,
                                                                  found: str) -> None:
    src, root = source_factory({"gb": 2}, frames_per_scene=1), tmp_path / "out"
    _shard(src, ["gb"], root)
    (root / entry).parent.mkdir(parents=True, exist_ok=True)
    (root / entry).write_text("not a shard")
    with pytest.raises(FileExistsError, match=rf"{root}: {found}; expected an empty folder or an earlier shard root"):
        _shard(src, ["gb"], root)
    assert (root / entry).is_file() and read_meta(root)["regions"] == ["gb"]  # nothing removed


def test_metadata_of_something_else_is_refused(tmp_path: Path, source_factory) -> None:
    root = tmp_path / "out"
    root.mkdir()
    (root / META_FILE).write_text('{"format": "other-tool"}')
    with pytest.raises(FileExistsError, match=rf"{root / META_FILE}: expected the metadata of visionpilot shards "
                                              rf"\(field 'format' 'visionpilot-shards'\), found format 'other-tool'"):
        _shard(source_factory({"gb": 2}), ["gb"], root)


class FakeStore:
    """An object store in a local folder (``s3://bucket/key`` -> ``<folder>/bucket/key``): objects, no listing;
    a delete removes the keys under a prefix of one listing page (``page`` keys, as litdata's S3 delete does with
    S3's 1,000); ``die_on_delete`` kills the job at that delete."""

    def __init__(self, folder: Path, page: int = 1000) -> None:
        self.folder, self.die_on_delete, self.page = folder, -1, page

    def local(self, url: str) -> Path:
        return self.folder / url.removeprefix("s3://")

    def exists(self, url: str) -> bool:
        return self.local(url).is_file()

    def upload_file(self, local: str, url: str) -> None:
        self.local(url).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(local, self.local(url))

    def download_file(self, url: str, local: str) -> None:
        if not self.exists(url):  # as botocore's ClientError
            raise RuntimeError("An error occurred (404) when calling the HeadObject operation: Not Found")
        shutil.copy(self.local(url), local)

    def delete_file_or_directory(self, url: str) -> None:
        self.die_on_delete -= 1
        if self.die_on_delete == 0:
            raise KeyboardInterrupt
        for path in self._under(url)[:self.page]:
            path.unlink()

    def is_empty(self, url: str) -> bool:
        return not self._under(url)

    def _under(self, url: str) -> list[Path]:
        prefix = url.removeprefix("s3://")
        return [path for path in sorted(self.folder.rglob("*"))
                if path.is_file() and path.relative_to(self.folder).as_posix().startswith(prefix)]

    def keys(self) -> list[str]:
        return sorted(p.relative_to(self.folder).as_posix() for p in self.folder.rglob("*") if p.is_file())


def test_a_reshard_of_a_url_killed_half_way_leaves_the_next_run_what_to_clear(tmp_path: Path, source_factory,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """An object store cannot be listed: the regions of the earlier run, whose metadata goes first, are recorded
    before anything is removed, so a run killed while clearing them does not leave one behind for good."""
    import litdata

    store = FakeStore(tmp_path / "store")

    def optimize(fn: Any, inputs: list[int], output_dir: str, **kwargs: Any) -> None:  # litdata's upload, faked
        (store.local(output_dir) / "chunk-0-0.bin").parent.mkdir(parents=True, exist_ok=True)
        (store.local(output_dir) / "chunk-0-0.bin").write_bytes(b"".join(fn(i)["images"] for i in inputs))
        (store.local(output_dir) / "index.json").write_text("{}")

    monkeypatch.setattr(shards, "_provider", lambda url, options: store)
    monkeypatch.setattr(litdata, "optimize", optimize)
    src, root = source_factory({"de": 2, "gb": 2}, frames_per_scene=1), "s3://bucket/shards"
    _shard(src, ["de", "gb"], root, {"train": 1.0})
    assert store.keys() == ["bucket/shards/de/train/chunk-0-0.bin", "bucket/shards/de/train/frames.json",
                            "bucket/shards/de/train/index.json", "bucket/shards/gb/train/chunk-0-0.bin",
                            "bucket/shards/gb/train/frames.json", "bucket/shards/gb/train/index.json",
                            f"bucket/shards/{META_FILE}"]
    store.die_on_delete = 2  # the metadata goes, then the job dies clearing de
    with pytest.raises(KeyboardInterrupt):
        _shard(src, ["gb"], root, {"train": 1.0})
    assert not store.exists(f"{root}/{META_FILE}")  # unreadable; de's chunks are still there
    _shard(src, ["gb"], root, {"train": 1.0})
    assert store.keys() == ["bucket/shards/gb/train/chunk-0-0.bin", "bucket/shards/gb/train/frames.json",
                            "bucket/shards/gb/train/index.json", f"bucket/shards/{META_FILE}"]


def test_a_url_without_shards_is_the_same_clear_error_as_a_folder(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """An object store's client raised its own error (botocore's 'ClientError: ... (404)') for a missing
    visionpilot.json, not the message that says what data.root must be."""
    monkeypatch.setattr(shards, "_provider", lambda url, options: FakeStore(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"s3://bucket/elsewhere/visionpilot.json not found: data.root must be "
                                                r"the 'out' of visionpilot-data action=shard"):
        read_meta("s3://bucket/elsewhere")


def test_clearing_a_url_prefix_deletes_past_one_listing_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """litdata's S3 delete removes one listing (S3: at most 1,000 keys); a region of more chunks kept the rest
    through a re-shard. The store here lists 2 keys a page: 5 chunks take 3 deletes, and the neighbours stay."""
    store = FakeStore(tmp_path / "store", page=2)
    for key in [*(f"de/train/chunk-{i}.bin" for i in range(5)), "dev/keep.bin", META_FILE]:
        store.local(f"s3://b/root/{key}").parent.mkdir(parents=True, exist_ok=True)
        store.local(f"s3://b/root/{key}").write_bytes(b"x")
    monkeypatch.setattr(shards, "_provider", lambda url, options: store)
    shards.remove_tree("s3://b/root/de")
    assert store.keys() == ["b/root/dev/keep.bin", f"b/root/{META_FILE}"]

    class Undeletable(FakeStore):
        def delete_file_or_directory(self, url: str) -> None:  # e.g. credentials without delete permission
            pass

    stuck = Undeletable(tmp_path / "store")
    monkeypatch.setattr(shards, "_provider", lambda url, options: stuck)
    monkeypatch.setattr(shards, "_MAX_DELETE_PASSES", 3)
    with pytest.raises(RuntimeError, match=r"s3://b/root/dev/: objects are still there after 3 deletes"):
        shards.remove_tree("s3://b/root/dev")
