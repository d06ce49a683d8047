"""frames.jsonl: what a loader read, one JSON object per frame (visionpilot-data action=dump)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from visionpilot.cli.data import run
from visionpilot.data.dump import frame_record, write_frames_jsonl
from visionpilot.data.sources.culane import CULaneSource
from visionpilot.data.sources.nuscenes import NuScenesSource
from visionpilot.data.sources.synthetic import SyntheticSource
from visionpilot.data.vocab import LANE_TYPES, OBJECT_CLASSES
from visionpilot.data.writers import write_culane, write_nuscenes
from visionpilot.paths import config_dir


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("dump")
    nus = SyntheticSource("nuscenes6", regions=["sg"], scenes_per_region=1, frames_per_scene=2, image_size=(90, 160))
    write_nuscenes((nus.load(i) for i in range(len(nus))), base / "nuscenes")
    cul = SyntheticSource("front1", regions=["cn"], scenes_per_region=1, frames_per_scene=2, image_size=(90, 160))
    write_culane((cul.load(i) for i in range(len(cul))), base / "culane", image_size=(59, 164))
    return {"nuscenes": base / "nuscenes", "culane": base / "culane"}


def test_nuscenes_records_hold_what_the_loader_read(exports: dict[str, Path], tmp_path: Path) -> None:
    src = NuScenesSource(exports["nuscenes"])
    assert write_frames_jsonl(src, src.index(), tmp_path / "frames.jsonl") == 2
    lines = (tmp_path / "frames.jsonl").read_text().splitlines()
    for i, line in enumerate(lines):
        rec, frame = json.loads(line), src.load(i, with_images=False)
        assert (rec["id"], rec["region"], rec["scene"], rec["source"]) == (frame.frame_id, "sg", "syn-sg-0000",
                                                                           "nuscenes")
        assert [c["name"] for c in rec["cameras"]] == frame.camera_names and rec["cameras"][1]["name"] == "CAM_FRONT"
        cam = rec["cameras"][0]
        assert (cam["width"], cam["height"]) == (160, 90)
        np.testing.assert_allclose(cam["intrinsics"], frame.cameras[0].intrinsics, atol=1e-6)
        np.testing.assert_allclose(cam["extrinsics"], frame.cameras[0].extrinsics, atol=1e-6)
        b = frame.boxes_3d
        assert [r["class"] for r in rec["boxes_3d"]] == [OBJECT_CLASSES[k] for k in b.classes]
        np.testing.assert_allclose([r["center"] for r in rec["boxes_3d"]], b.centers, atol=1e-4)
        np.testing.assert_allclose([r["size"] for r in rec["boxes_3d"]], b.sizes, atol=1e-4)  # [l, w, h]
        np.testing.assert_allclose([r["yaw"] for r in rec["boxes_3d"]], b.yaws, atol=1e-6)
        assert set(rec["boxes_2d"]) == set(frame.camera_names)
        front = frame.cameras[1]
        np.testing.assert_allclose([r["box"] for r in rec["boxes_2d"]["CAM_FRONT"]], front.boxes_2d.reshape(-1, 4),
                                   atol=1e-2)
        assert [ln["type"] for ln in rec["lanes"]] == [LANE_TYPES[ln.type] for ln in frame.lanes_3d]
        np.testing.assert_allclose(rec["lanes"][0]["points"], frame.lanes_3d[0].points, atol=1e-4)
        assert len(rec["lanes_2d"]["CAM_FRONT"]) == len(front.lanes_2d)


def test_absent_label_kinds_are_null_not_empty(exports: dict[str, Path]) -> None:
    src = CULaneSource(exports["culane"], image_size=(59, 164))
    rec = frame_record(src.load(0, with_images=False))
    assert rec["boxes_3d"] is None and rec["boxes_2d"] is None and rec["lanes"] is None
    assert rec["labels"] == ["lanes_2d"] and list(rec["lanes_2d"]) == ["CAM_FRONT"]
    assert rec["cameras"] == [{"name": "CAM_FRONT", "width": 164, "height": 59,
                               "intrinsics": [[1.0, 0.0, 82.0], [0.0, 1.0, 29.5], [0.0, 0.0, 1.0]],
                               "extrinsics": [[0.0, 0.0, 1.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 0.0],
                                              [0.0, 0.0, 0.0, 1.0]]}]
    assert all(len(ln["points"][0]) == 2 for ln in rec["lanes_2d"]["CAM_FRONT"])


def _dump(tmp_path: Path, overrides: list[str]) -> list[dict]:
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="data", overrides=[f"paths.output_dir={tmp_path}", "action=dump", "split=all",
                                                     "data.num_workers=0", *overrides])
    out = run(cfg)
    lines = [json.loads(line) for line in (tmp_path / "frames.jsonl").read_text().splitlines()]
    assert out["count"] == len(lines)
    return lines


def test_dump_action_for_any_source(exports: dict[str, Path], tmp_path: Path) -> None:
    culane = _dump(tmp_path / "c", ["data=culane", f"data.root={exports['culane']}", "data.source.image_size=[59,164]"])
    assert [r["id"] for r in culane] == ["driver_synthetic_cn/syn-cn-0000.MP4/00000",
                                        "driver_synthetic_cn/syn-cn-0000.MP4/00030"]
    synthetic = _dump(tmp_path / "s", ["rig=front1", "region=de", "data.image_size=[48,80]",
                                       "data.source.scenes_per_region=3", "data.source.frames_per_scene=1"])
    assert len(synthetic) == 3 and {r["region"] for r in synthetic} == {"de"}
    assert all(r["boxes_3d"] is not None and r["lanes"] is not None for r in synthetic)
