"""Writers into an existing root: an export that dies half-way leaves no root that a loader reads as complete."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from visionpilot.data.frame import Frame
from visionpilot.data.sources._common import FormatError
from visionpilot.data.sources.culane import CULaneSource
from visionpilot.data.sources.nuscenes import NuScenesSource
from visionpilot.data.sources.synthetic import SyntheticSource
from visionpilot.data.sources.tusimple import EXPORT_STATUS, TEST_FILE, TuSimpleSource
from visionpilot.data.writers import tusimple as tusimple_writer
from visionpilot.data.writers import write_culane, write_nuscenes, write_tusimple

FORMATS: dict[str, tuple[str, str, Callable, Callable]] = {
    # format: (rig, region, writer, loader); each loader's refusal names the index file it starts from
    "nuscenes": ("nuscenes6", "us", write_nuscenes, NuScenesSource),
    "culane": ("front1", "cn", lambda frames, root: write_culane(frames, root, image_size=(59, 164)), CULaneSource),
    "tusimple": ("front1", "us", lambda frames, root: write_tusimple(frames, root, image_size=(72, 128)),
                 TuSimpleSource),
}


def _frames(rig: str, region: str, seed: int) -> list[Frame]:
    src = SyntheticSource(rig, regions=[region], scenes_per_region=2, frames_per_scene=2, image_size=(90, 160),
                          seed=seed)
    return [src.load(i) for i in range(len(src))]


def _dies_after(frames: list[Frame], n: int) -> Iterator[Frame]:
    yield from frames[:n]
    raise KeyboardInterrupt  # the job killed while writing images


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_a_reexport_that_dies_half_way_is_not_read_as_complete(tmp_path: Path, fmt: str) -> None:
    rig, region, write, source = FORMATS[fmt]
    write(_frames(rig, region, seed=0), tmp_path)
    assert len(source(tmp_path).index()) == 4  # the first export reads
    with pytest.raises(KeyboardInterrupt):
        write(_dies_after(_frames(rig, region, seed=7), 2), tmp_path)  # new images over half of the old ones
    with pytest.raises(FormatError, match=r"not found|found none|no label_data|did not finish"):
        source(tmp_path).index()
    write(_frames(rig, region, seed=7), tmp_path)  # finishing the export makes the root whole again
    assert len(source(tmp_path).index()) == 4


def test_a_tusimple_reexport_without_a_test_split_leaves_no_old_test_labels(tmp_path: Path) -> None:
    frames = _frames("front1", "us", seed=0)
    write_tusimple(frames, tmp_path, splits={frames[-1].scene_id: "test"}, image_size=(72, 128))
    write_tusimple(frames, tmp_path, image_size=(72, 128))  # every scene in train now
    assert sorted(p.name for p in tmp_path.glob("*.json")) == ["label_data_synthetic.json", EXPORT_STATUS]
    assert len(TuSimpleSource(tmp_path).index()) == 4  # each image once, not also from a stale test_label.json


def test_a_tusimple_export_killed_between_its_label_files_is_refused(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    frames = _frames("front1", "us", seed=0)
    splits = {frames[-1].scene_id: "test"}
    write_tusimple(frames, tmp_path, splits=splits, image_size=(72, 128))
    assert len(TuSimpleSource(tmp_path).index()) == 4
    write_text = tusimple_writer.write_text_atomic

    def dies_at_the_test_labels(path: Path, text: str) -> Path:
        if Path(path).name == TEST_FILE:
            raise KeyboardInterrupt  # killed after the train labels were written
        return write_text(path, text)

    monkeypatch.setattr(tusimple_writer, "write_text_atomic", dies_at_the_test_labels)
    with pytest.raises(KeyboardInterrupt):
        write_tusimple(frames, tmp_path, splits=splits, image_size=(72, 128))
    assert (tmp_path / "label_data_synthetic.json").is_file() and not (tmp_path / TEST_FILE).exists()
    with pytest.raises(FormatError, match=rf"{EXPORT_STATUS}: field 'status' must be 'complete', found 'writing': "
                                          r"the export into root .* did not finish"):
        TuSimpleSource(tmp_path).index()
    monkeypatch.undo()
    write_tusimple(frames, tmp_path, splits=splits, image_size=(72, 128))  # finishing it makes the root whole
    src = TuSimpleSource(tmp_path)
    assert len(src.index()) == 4 and src.official_split(frames[-1].scene_id) == "test"


def test_a_tusimple_export_missing_a_label_file_it_lists_is_refused(tmp_path: Path) -> None:
    frames = _frames("front1", "us", seed=0)
    write_tusimple(frames, tmp_path, splits={frames[-1].scene_id: "test"}, image_size=(72, 128))
    (tmp_path / TEST_FILE).unlink()
    with pytest.raises(FormatError, match=rf"{EXPORT_STATUS}: field 'label_files' lists \['label_data_synthetic.json', "
                                          rf"'{TEST_FILE}'\], but \['{TEST_FILE}'\] not found"):
        TuSimpleSource(tmp_path).index()


def test_a_culane_reexport_leaves_no_stale_test_scenarios(tmp_path: Path) -> None:
    frames = _frames("front1", "cn", seed=0)
    write_culane(frames, tmp_path, splits={frames[-1].scene_id: "test"}, image_size=(59, 164))
    scenarios = tmp_path / "list" / "test_split"
    scenarios.mkdir()
    (scenarios / "test8_night.txt").write_text("".join(f"{line}\n" for line in
                                                       (tmp_path / "list" / "test.txt").read_text().split()))
    assert {CULaneSource(tmp_path, image_size=(59, 164)).load(i, with_images=False).meta.get("category")
            for i in (2, 3)} == {"night"}
    write_culane(frames, tmp_path, image_size=(59, 164))  # every scene in train now, with new images
    src = CULaneSource(tmp_path, image_size=(59, 164))
    assert not scenarios.exists()
    assert [src.load(i, with_images=False).meta.get("category") for i in range(len(src))] == [None] * 4


def test_a_nuscenes_reexport_without_lanes_reads_none_of_the_old_lanes(tmp_path: Path) -> None:
    frames = _frames("nuscenes6", "us", seed=0)
    write_nuscenes(frames, tmp_path)
    assert all(NuScenesSource(tmp_path).load(i, with_images=False).lanes_3d for i in range(4))
    # The same scenes again without lanes: their poses are the earlier frames', so a map left behind lies on them.
    write_nuscenes([f.copy(lanes_3d=[], labels=f.labels - {"lanes_3d", "lanes_2d"}) for f in frames], tmp_path)
    src = NuScenesSource(tmp_path)
    assert [src.load(i, with_images=False).lanes_3d for i in range(4)] == [[]] * 4


def test_a_nuscenes_2d_box_of_no_3d_box_leaves_the_3d_visibilities_alone(tmp_path: Path) -> None:
    frame = _frames("nuscenes6", "us", seed=0)[0]
    last = len(frame.boxes_3d) - 1
    cams = []
    for c in frame.cameras:  # the last 3D box 10 % visible wherever it is seen, plus a 2D-only box (id -1)
        vis = np.where(c.box_ids_2d == last, 0.1, c.visibility_2d)
        cams.append(replace(c, boxes_2d=np.vstack([c.boxes_2d, [[1.0, 1.0, 9.0, 9.0]]]).astype(np.float32),
                            classes_2d=np.append(c.classes_2d, 0), box_ids_2d=np.append(c.box_ids_2d, -1),
                            visibility_2d=np.append(vis, 1.0).astype(np.float32)))
    assert any(last in c.box_ids_2d for c in frame.cameras)
    write_nuscenes([frame.copy(cameras=cams)], tmp_path)
    rows = json.loads((tmp_path / "v1.0-mini" / "sample_annotation.json").read_text())
    assert len(rows) == last + 1 and rows[-1]["visibility_token"] == "1"  # 0-40 %, not the 2D-only box's 100 %
