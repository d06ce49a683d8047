"""visionpilot-data: stats and previews for every rig and region, composed from the real configs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
from hydra import compose, initialize_config_dir

from visionpilot.cli.data import run
from visionpilot.data.regions import REGIONS
from visionpilot.data.vocab import LANE_TYPES, OBJECT_CLASSES
from visionpilot.paths import config_dir

SMALL = ["data.image_size=[64,176]", "data.source.scenes_per_region=3", "data.source.frames_per_scene=2",
         "data.num_workers=0"]


def _compose(tmp_path: Path, overrides: list[str]):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name="data", overrides=[f"paths.output_dir={tmp_path}", *SMALL, *overrides])


@pytest.mark.parametrize("rig", ["front1", "nuscenes6", "surround8"])
def test_stats_every_region(tmp_path: Path, rig: str) -> None:
    out = run(_compose(tmp_path, ["action=stats", f"rig={rig}", "region=global", "split=all"]))
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert sorted(stats["regions"]) == sorted(REGIONS)
    manifest = json.loads((tmp_path / "splits.json").read_text())
    for code, r in stats["regions"].items():
        assert r["frames"] == 6 and r["scenes"] == 3  # 3 scenes x 2 frames, every split
        assert set(r["objects_3d"]) == set(OBJECT_CLASSES) and set(r["lanes_3d"]) == set(LANE_TYPES)
        assert sum(r["lanes_3d"].values()) > 0
        assert sum(len(manifest["splits"][s].get(code, [])) for s in manifest["splits"]) == 3
    assert stats["camera_names"] == out["stats"]["camera_names"]
    assert len(stats["camera_names"]) == {"front1": 1, "nuscenes6": 6, "surround8": 8}[rig]


@pytest.mark.parametrize("rig", ["front1", "nuscenes6", "surround8"])
def test_preview_every_region(tmp_path: Path, rig: str) -> None:
    out = run(_compose(tmp_path, ["action=preview", f"rig={rig}", "region=global", "split=all",
                                  "frames_per_region=1"]))
    paths = sorted(out["previews"])
    assert {p.parent.name for p in paths} == set(REGIONS)
    image = cv2.imread(str(paths[0]))
    assert image is not None and image.shape[0] > 64 and image.shape[1] > 176


def test_one_region_and_a_region_list(tmp_path: Path) -> None:
    run(_compose(tmp_path / "gb", ["action=stats", "region=gb", "split=all"]))
    assert list(json.loads((tmp_path / "gb" / "stats.json").read_text())["regions"]) == ["gb"]
    run(_compose(tmp_path / "two", ["action=stats", "data.regions=[us,de]", "split=all"]))
    assert sorted(json.loads((tmp_path / "two" / "stats.json").read_text())["regions"]) == ["de", "us"]


def test_bad_action_and_region_name_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown action 'nope'.*'preview'.*'stats'"):
        run(_compose(tmp_path, ["action=nope"]))
    with pytest.raises(Exception, match=r"unknown region 'xx'.*valid choices"):
        run(_compose(tmp_path, ["action=stats", "data.regions=[xx]"]))


def test_console_script_with_hydra_run_dir(tmp_path: Path) -> None:
    """The installed entry point, as a user types it."""
    exe = Path(sys.executable).parent / "visionpilot-data"
    subprocess.run([str(exe), "action=stats", "region=jp", "rig=front1", f"hydra.run.dir={tmp_path}", *SMALL],
                   check=True, capture_output=True, text=True)
    assert json.loads((tmp_path / "stats.json").read_text())["regions"]["jp"]["frames"] > 0
    assert (tmp_path / ".hydra" / "config.yaml").is_file()


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_preview_needs_a_positive_frame_count(tmp_path: Path, value: str) -> None:
    # frames_per_region <= 0 used to "write 0 preview images" and exit 0.
    with pytest.raises(ValueError, match=rf"field 'frames_per_region' must be a positive integer, found '?{value}'?"):
        run(_compose(tmp_path, ["action=preview", "region=gb", "rig=front1", f"frames_per_region={value}"]))
    assert not (tmp_path / "splits.json").exists()  # refused before any work


def test_stats_table_counts_2d_lanes_and_boxes() -> None:
    # A lane benchmark (CULane, TuSimple) has 2D lanes only: the console table must not show it with zero lanes.
    from visionpilot.data.inspect import format_stats_table
    from visionpilot.data.vocab import LANE_TYPES, OBJECT_CLASSES

    region = {"frames": 3, "scenes": 1, "objects_3d": dict.fromkeys(OBJECT_CLASSES, 0),
              "boxes_2d": {**dict.fromkeys(OBJECT_CLASSES, 0), "car": 2}, "lanes_3d": dict.fromkeys(LANE_TYPES, 0),
              "lanes_2d": {**dict.fromkeys(LANE_TYPES, 0), LANE_TYPES[0]: 7, LANE_TYPES[1]: 4}}
    head, rule, row = format_stats_table({"regions": {"us": region}}).splitlines()
    assert head.endswith("| 2D boxes | 3D lanes | 2D lanes |") and rule.count("---") == head.count("|") - 1
    assert row.endswith("| 2 | 0 | 11 |")


@pytest.mark.parametrize(("override", "message"), [
    ("export.image_size=[590]", r"field 'export.image_size' must be \(height, width\) in pixels, two positive "
                                r"integers, or null .*, found \[590\]"),
    ("export.image_size=[0,1640]", r"field 'export.image_size' .*, found \[0, 1640\]"),
    ("export.image_size=590", r"field 'export.image_size' .*, found 590"),
    ("export.camera=CAM_BACK", r"field 'export.camera' must be one of the data's cameras \['CAM_FRONT'\], "
                               r"found 'CAM_BACK'"),
])
def test_export_refuses_bad_options_before_touching_an_earlier_export(tmp_path: Path, override: str,
                                                                      message: str) -> None:
    # They failed inside the writer ("not enough values to unpack", "'int' object is not iterable", or at the first
    # frame), after it had deleted the earlier export's split lists from the same folder.
    export = ["action=export", "format=culane", "region=cn", "rig=front1"]
    run(_compose(tmp_path, [*export, "export.image_size=[59,164]"]))
    lists = sorted(p.name for p in (tmp_path / "culane" / "list").glob("*.txt"))
    assert lists
    with pytest.raises(ValueError, match=rf"action=export format=culane: {message}"):
        run(_compose(tmp_path, [*export, override]))
    assert sorted(p.name for p in (tmp_path / "culane" / "list").glob("*.txt")) == lists
