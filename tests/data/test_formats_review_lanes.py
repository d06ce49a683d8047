"""CULane and TuSimple readers on malformed files: errors name the file, line and field; skip mode drops one frame."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from visionpilot.data.frame import Frame
from visionpilot.data.sources._common import FormatError
from visionpilot.data.sources.culane import CULaneSource
from visionpilot.data.sources.synthetic import SyntheticSource
from visionpilot.data.sources.tusimple import TuSimpleSource
from visionpilot.data.writers import write_culane, write_tusimple
from visionpilot.data.writers.tusimple import TRAIN_FILE

CULANE_SIZE, TUSIMPLE_SIZE = (59, 164), (72, 128)


def _frames(region: str) -> list[Frame]:
    src = SyntheticSource("front1", regions=[region], scenes_per_region=1, frames_per_scene=2, image_size=(90, 160))
    return [src.load(i) for i in range(len(src))]


@pytest.fixture(scope="module")
def culane_frames() -> list[Frame]:
    return _frames("cn")


@pytest.fixture(scope="module")
def tusimple_frames() -> list[Frame]:
    return _frames("us")


def test_a_culane_label_file_that_is_not_text_names_the_file(culane_frames: list[Frame], tmp_path: Path) -> None:
    root = write_culane(culane_frames, tmp_path, image_size=CULANE_SIZE)
    label = root / "driver_synthetic_cn/syn-cn-0000.MP4/00030.lines.txt"
    label.write_bytes(b"10.5 58 12.0 57 \n\xff\xfe garbage\n")  # a corrupt download
    with pytest.raises(FormatError, match=r"CULane label file .*00030.lines.txt: byte offset 17: must be UTF-8 "
                                          r"text, found byte 0xff"):
        CULaneSource(root, image_size=CULANE_SIZE).load(1)
    src = CULaneSource(root, image_size=CULANE_SIZE, on_error="skip")  # found while indexing, that frame dropped
    assert [r.frame_id for r in src.index()] == ["driver_synthetic_cn/syn-cn-0000.MP4/00000"]
    assert "00030.lines.txt: byte offset 17" in src.skipped["examples"][0]["error"]
    (root / "list" / "train.txt").write_bytes(b"/driver_synthetic_cn/syn-cn-0000.MP4/00000.jpg\n\xe9\n")
    with pytest.raises(FormatError, match=r"CULane list file .*list/train.txt: byte offset 47: must be UTF-8 text"):
        CULaneSource(root, image_size=CULANE_SIZE).index()


def test_a_tusimple_line_that_is_not_text_names_file_and_line(tusimple_frames: list[Frame], tmp_path: Path) -> None:
    root = write_tusimple(tusimple_frames, tmp_path, image_size=TUSIMPLE_SIZE)
    good = (root / TRAIN_FILE).read_bytes().splitlines()
    (root / TRAIN_FILE).write_bytes(good[0] + b"\n" + good[1][:20] + b"\xff" + good[1][21:] + b"\n")
    with pytest.raises(FormatError, match=rf"{TRAIN_FILE}: line 2: column 21: must be UTF-8 text, found byte 0xff"):
        TuSimpleSource(root, image_size=TUSIMPLE_SIZE).index()
    src = TuSimpleSource(root, image_size=TUSIMPLE_SIZE, on_error="skip")  # only that line is dropped
    assert len(src.index()) == 1 and src.skipped["skipped"] == 1


def test_a_tusimple_lane_value_that_is_not_a_number_is_named(tusimple_frames: list[Frame], tmp_path: Path) -> None:
    root = write_tusimple(tusimple_frames, tmp_path, image_size=TUSIMPLE_SIZE)
    row = json.loads((root / TRAIN_FILE).read_text().splitlines()[0])
    lane = list(row["lanes"][0])
    lane[3] = float("nan")  # json writes NaN, which Python's json reads back
    (root / TRAIN_FILE).write_text(json.dumps({**row, "lanes": [lane]}) + "\n")
    # The count is right (one value per h_sample); the message names the value, not a count equal to the expected.
    with pytest.raises(FormatError, match=rf"{TRAIN_FILE}: line 1: field 'lanes\[0\]\[3\]' must be a finite number "
                                          r"\(x in pixels, -2 = no point\), found nan"):
        TuSimpleSource(root, image_size=TUSIMPLE_SIZE).index()


def test_culane_gt_lists_hold_the_official_splits(culane_frames: list[Frame], tmp_path: Path) -> None:
    """list/train_gt.txt and val_gt.txt (image, lane mask, 4 existence flags per line; what CULane codebases train
    from) are the train and val splits, so the split manifest accepts them."""
    from visionpilot.data.splits import splits_for_source

    root = write_culane(culane_frames, tmp_path, splits={"syn-cn-0000": "val"}, image_size=CULANE_SIZE)
    for split in ("train", "val"):
        images = (root / "list" / f"{split}.txt").read_text().split()
        (root / "list" / f"{split}_gt.txt").write_text(
            "".join(f"{im} /laneseg_label_w16{im[:-len('.jpg')]}.png 1 1 1 0\n" for im in images))
    src = CULaneSource(root, lists=["train_gt", "val_gt"], image_size=CULANE_SIZE)
    assert {src.official_split(r.scene_id) for r in src.index()} == {"val"} and len(src) == 2
    assert src.load(0, with_images=False).meta["list"] == "val"
    manifest = splits_for_source(src, {"train": 0.8, "val": 0.1, "test": 0.1})
    assert manifest.splits["val"]["cn"] == ["driver_synthetic_cn/syn-cn-0000.MP4"]
