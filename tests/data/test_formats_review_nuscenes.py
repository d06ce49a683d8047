"""nuScenes reader against the published format: the unannotated test version, and malformed token references.

Fixtures are the hand-written tables and map of ``test_nuscenes.py`` (nuScenes' published CAM_FRONT calibration).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.data.test_nuscenes import _hand_map, _hand_source, _hand_tables, _write_hand
from visionpilot.data.sources._common import FormatError


def test_the_test_version_without_annotations_has_no_box_labels(tmp_path: Path) -> None:
    """v1.0-test ships ``sample_annotation.json`` as ``[]`` (annotations withheld): its boxes are unknown, not empty,
    so the box losses and metrics must not see these frames as frames without objects. Its map lanes still count."""
    tables = _hand_tables()
    tables["sample_annotation"], tables["instance"] = [], []
    root = _write_hand(tmp_path / "test", tables)
    (root / "v1.0-mini").rename(root / "v1.0-test")
    src = _hand_source(root)
    assert src.version == "v1.0-test" and src.official_split("scene-0103") == "test"
    frame = src.load(0, with_images=False)
    assert frame.labels == {"lanes_3d", "lanes_2d"} and len(frame.boxes_3d) == 0
    # An annotated version keeps its box labels, on frames with and without boxes alike.
    annotated = _hand_source(_write_hand(tmp_path / "mini"), min_points=10**6).load(0, with_images=False)
    assert annotated.labels == {"boxes_3d", "boxes_2d", "lanes_3d", "lanes_2d"} and len(annotated.boxes_3d) == 0


def _table(table: str, token: str, field: str, value: Any) -> Callable[[], tuple[dict, dict]]:
    def make() -> tuple[dict, dict]:
        tables = _hand_tables()
        next(r for r in tables[table] if r["token"] == token)[field] = value
        return tables, _hand_map()
    return make


def _map(change: Callable[[dict], None]) -> Callable[[], tuple[dict, dict]]:
    def make() -> tuple[dict, dict]:
        lane_map = _hand_map()
        change(lane_map)
        return _hand_tables(), lane_map
    return make


# A reference field holding a JSON list or object, or a record that is not an object: each is a format error naming
# the file, the token or record, and the field (it was a TypeError / AttributeError naming nothing).
BAD_REFERENCES = {
    "sample.scene_token": (_table("sample", "sa1", "scene_token", ["sc0"]),
                           r"sample.json \(token 'sa1'\): field 'scene_token' must name a row of .*scene.json, "
                           r"found \['sc0'\]"),
    "sample_data.calibrated_sensor_token": (
        _table("sample_data", "sd-CAM_FRONT-1", "calibrated_sensor_token", ["cs-CAM_FRONT"]),
        r"sample_data.json \(token 'sd-CAM_FRONT-1'\): field 'calibrated_sensor_token' must name a row of "
        r".*calibrated_sensor.json, found \['cs-CAM_FRONT'\]"),
    "calibrated_sensor.sensor_token": (
        _table("calibrated_sensor", "cs-CAM_FRONT", "sensor_token", {"token": "sen-cam"}),
        r"calibrated_sensor.json \(token 'cs-CAM_FRONT'\): field 'sensor_token' must name a row of .*sensor.json, "
        r"found \{'token': 'sen-cam'\}"),
    "map node record": (_map(lambda m: m["node"].__setitem__(1, [0.0, 1.85])),
                        r"boston-seaport.json: layer 'node', record #1: field 'token' must be a string, found "
                        r"\[0.0, 1.85\]"),
    "map node without token": (_map(lambda m: m["node"][1].pop("token") and m["node"][1].update(x="east")),
                               r"boston-seaport.json: layer 'node', record #1: field 'token' must be a string"),
    "map line.node_tokens": (_map(lambda m: m["line"][0]["node_tokens"].append(["n-ld-4"])),
                             r"layer 'line', token 'line-ld': field 'node_tokens' must list at least 2 node "
                             r"tokens, found \[.*\['n-ld-4'\]\]"),
    "map lane_divider.line_token": (_map(lambda m: m["lane_divider"][0].update(line_token=["line-ld"])),
                                    r"layer 'lane_divider', token 'ld0': field 'line_token' must name a record of "
                                    r"layer 'line', found \['line-ld'\]"),
    "map segment node_token": (
        _map(lambda m: m["lane_divider"][0]["lane_divider_segments"][1].update(node_token=["n-ld-2"])),
        r"token 'ld0': field 'lane_divider_segments\[1\].node_token' must be a node of the divider's line, found "
        r"\['n-ld-2'\]"),
    "map segment_type": (
        _map(lambda m: m["lane_divider"][0]["lane_divider_segments"][1].update(segment_type=["NIL"])),
        r"token 'ld0': field 'lane_divider_segments\[1\].segment_type': segment_type must be a string such as "
        r"'DOUBLE_DASHED_WHITE', found \['NIL'\]"),
}


@pytest.mark.parametrize("case", sorted(BAD_REFERENCES))
def test_a_malformed_reference_is_a_format_error_naming_file_token_and_field(tmp_path: Path, case: str) -> None:
    make, message = BAD_REFERENCES[case]
    tables, lane_map = make()
    root = _write_hand(tmp_path, tables, lane_map)
    with pytest.raises(FormatError, match=message):
        src = _hand_source(root)
        src.index()
        src.load(0, with_images=False)
    # on_error=skip drops what the bad row or record touches (both samples share the calibrated_sensor row) and
    # reports it, instead of stopping the load.
    src = _hand_source(root, on_error="skip")
    frames = [src.load(i, with_images=False) for i in range(len(src.index()))]
    assert len(src.skips) >= 1 and len(frames) == (0 if case == "calibrated_sensor.sensor_token" else
                                                   1 if case.startswith("sample") else 2)


def test_a_table_that_is_not_text_names_the_file(tmp_path: Path) -> None:
    root = _write_hand(tmp_path)
    (root / "v1.0-mini" / "scene.json").write_bytes(b'[{"token": "sc0", "name": "scene-\xff"}]')  # a corrupt file
    with pytest.raises(FormatError, match=r"nuScenes table 'scene': .*v1.0-mini/scene.json: byte offset 33: must be "
                                          r"UTF-8 text, found byte 0xff"):
        _hand_source(root).index()


def test_a_token_repeated_in_a_table_is_an_error_naming_both_rows(tmp_path: Path) -> None:
    """Tables merged by hand (v1.0-mini's scenes are copies of trainval's, tokens and all) repeat rows: each repeat
    was read again, a second box of the same object (and the last row won every token lookup)."""
    tables = _hand_tables()
    tables["sample_annotation"].append(dict(tables["sample_annotation"][0]))
    root = _write_hand(tmp_path, tables)
    for on_error in ("raise", "skip"):  # the table itself is malformed: no frame can be trusted to drop alone
        with pytest.raises(FormatError, match=r"sample_annotation.json: row 8: field 'token' must be unique in the "
                                              r"table, found 'ann-car-0' again \(first in row 0\)"):
            _hand_source(root, on_error=on_error).index()


@pytest.mark.parametrize("filename", ["absolute", "samples/CAM_FRONT/../../../outside.jpg"])
def test_an_image_path_outside_the_root_is_refused(tmp_path: Path, filename: str) -> None:
    """``sample_data.filename`` is relative to the dataset root, as CULane's lists and TuSimple's raw_file are: an
    absolute path or one climbing out with '..' read an image outside the dataset (it was read silently)."""
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(b"")  # a file exists there: the path itself is what is refused
    filename = str(outside) if filename == "absolute" else filename
    tables = _hand_tables()
    next(r for r in tables["sample_data"] if r["token"] == "sd-CAM_FRONT-0")["filename"] = filename
    root = _write_hand(tmp_path / "root", tables)
    with pytest.raises(FormatError, match=r"sample_data.json \(token 'sd-CAM_FRONT-0'\): field 'filename' must be a "
                                          r"file path relative to the dataset root, without '\.\.', found "
                                          + re.escape(repr(filename))):
        _hand_source(root).index()
    src = _hand_source(root, on_error="skip")  # skip mode drops that sample only
    assert [r.frame_id for r in src.index()] == ["sa1"] and src.skipped["reasons"] == {"field 'filename'": 1}
