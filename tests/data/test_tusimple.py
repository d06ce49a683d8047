"""TuSimple loader: round trip through the writer, official test split, the official metric's inputs, bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from visionpilot.cli.data import run
from visionpilot.data.sources._common import FormatError
from visionpilot.data.sources.synthetic import SyntheticSource
from visionpilot.data.sources.tusimple import TEST_FILE, TuSimpleSource
from visionpilot.data.transforms import Resize, affine_camera
from visionpilot.data.vocab import lane_type_index
from visionpilot.data.writers import write_tusimple
from visionpilot.data.writers.tusimple import TRAIN_FILE, h_samples_for
from visionpilot.evaluation.tusimple import TuSimpleMetric
from visionpilot.geometry.polylines import interpolate_x_at_y
from visionpilot.paths import config_dir

SIZE = (72, 128)  # TuSimple's 720 x 1280, a tenth
SPLITS = {"syn-us-0002": "test"}


@pytest.fixture(scope="module")
def tusimple_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    src = SyntheticSource("front1", regions=["us"], scenes_per_region=3, frames_per_scene=2, image_size=(90, 160))
    frames = [src.load(i) for i in range(len(src))]
    root = tmp_path_factory.mktemp("tusimple")
    write_tusimple(frames, root, splits=SPLITS, image_size=SIZE)
    return root, frames


def test_round_trip_returns_the_lanes(tusimple_export: tuple[Path, list]) -> None:
    root, frames = tusimple_export
    src = TuSimpleSource(root, image_size=SIZE)
    assert len(src) == 6 and src.camera_names == ["CAM_FRONT"]
    for i, f in enumerate(frames):
        g = src.load(i)
        assert (g.frame_id, g.scene_id) == (f"{f.scene_id}/{i % 2 + 1}", f.scene_id)
        assert (g.region, g.labels, g.meta["lane_types"]) == ("us", frozenset({"lanes_2d"}), "unknown")
        assert g.meta["tusimple"]["h_samples"] == h_samples_for(SIZE[0])
        cam = f.cameras[0]
        exp = affine_camera(cam, Resize(SIZE, keep_aspect=True).affine(cam.image_size), SIZE)
        assert np.abs(g.cameras[0].image.astype(int) - exp.image.astype(int)).mean() < 6
        painted = [ln for ln in exp.lanes_2d if ln.type != lane_type_index("road_edge")]
        lanes = g.cameras[0].lanes_2d
        assert 2 <= len(lanes) <= len(painted)
        for lane in lanes:  # whole-pixel x at the h_samples of one synthetic lane
            assert lane.type == lane_type_index("white_dashed") and (np.diff(lane.points[:, 1]) > 0).all()
            err = [np.nanmax(np.abs(interpolate_x_at_y(p.points, lane.points[:, 1]) - lane.points[:, 0]))
                   for p in painted]
            assert np.nanmin(err) <= 0.5 + 1e-9


def test_official_test_split(tusimple_export: tuple[Path, list]) -> None:
    src = TuSimpleSource(tusimple_export[0], image_size=SIZE)
    assert {r.scene_id: src.official_split(r.scene_id) for r in src.index()} == {
        "syn-us-0000": None, "syn-us-0001": None, "syn-us-0002": "test"}
    assert src.load(4, with_images=False).meta["label_file"] == "test_label.json"


def test_official_metric_inputs_from_meta(tusimple_export: tuple[Path, list]) -> None:
    """What visionpilot-eval gives TuSimpleMetric: meta['tusimple'] lanes (x at h_samples, -2 absent) as GT."""
    src = TuSimpleSource(tusimple_export[0], image_size=SIZE)
    frames = [src.load(i, with_images=False) for i in range(len(src))]
    gt = [np.asarray(f.meta["tusimple"]["lanes"], dtype=np.float64) for f in frames]
    metric = TuSimpleMetric(h_samples=frames[0].meta["tusimple"]["h_samples"], image_width=SIZE[1])
    # Predictions resampled from the loaded polylines at the h_samples reproduce the GT exactly.
    h = np.asarray(frames[0].meta["tusimple"]["h_samples"], dtype=np.float64)
    preds = [np.stack([interpolate_x_at_y(ln.points, h) for ln in f.cameras[0].lanes_2d]) for f in frames]
    metric.update(preds, gt)
    out = metric.compute()
    assert float(out["tusimple_accuracy"]) == pytest.approx(1.0) and float(out["tusimple_fp"]) == 0.0


def _write_lines(root: Path, lines: list[str]) -> None:
    (root / TRAIN_FILE).write_text("".join(f"{line}\n" for line in lines))


def test_bad_input_names_file_line_and_field(tusimple_export: tuple[Path, list], tmp_path: Path) -> None:
    root = write_tusimple(tusimple_export[1], tmp_path / "t", image_size=SIZE)
    good = (root / TRAIN_FILE).read_text().splitlines()
    row = json.loads(good[1])
    _write_lines(root, [good[0], good[1][:-3]])
    with pytest.raises(FormatError, match=rf"{TRAIN_FILE}: line 2: malformed JSON at column"):
        TuSimpleSource(root, image_size=SIZE).index()
    _write_lines(root, [good[0], json.dumps({**row, "lanes": [row["lanes"][0][:-1]]})])
    with pytest.raises(FormatError, match=rf"{TRAIN_FILE}: line 2: field 'lanes\[0\]' must hold one number per "
                                          rf"h_sample \({len(row['h_samples'])}\), found {len(row['h_samples']) - 1}"):
        TuSimpleSource(root, image_size=SIZE).index()
    _write_lines(root, [good[0], json.dumps({**row, "h_samples": "all"})])
    with pytest.raises(FormatError, match=r"line 2: field 'h_samples' must be a non-empty list of numbers"):
        TuSimpleSource(root, image_size=SIZE).index()
    _write_lines(root, good)
    (root / row["raw_file"]).unlink()
    with pytest.raises(FormatError, match=rf"line 2: field 'raw_file': image file .*{row['raw_file']} not found"):
        TuSimpleSource(root, image_size=SIZE).index()
    with pytest.raises(FormatError, match=r"no label_data_\*.json or test_label.json"):
        TuSimpleSource(tmp_path).index()


@pytest.mark.parametrize("raw_file", ["/etc/clips/a/1.jpg", "clips/../../outside/1.jpg", "C:/clips/a/1.jpg",
                                      "clips\\..\\..\\outside\\1.jpg"])
def test_a_raw_file_outside_the_root_is_refused(tusimple_export: tuple[Path, list], tmp_path: Path,
                                                raw_file: str) -> None:
    root = write_tusimple(tusimple_export[1], tmp_path / "t", image_size=SIZE)
    good = (root / TRAIN_FILE).read_text().splitlines()
    outside = tmp_path / "outside" / "1.jpg"  # an image exists there: the path itself is what is refused
    outside.parent.mkdir()
    outside.write_bytes((root / json.loads(good[0])["raw_file"]).read_bytes())
    raw = str(outside) if raw_file.startswith("/") else raw_file
    _write_lines(root, [good[0], json.dumps({**json.loads(good[1]), "raw_file": raw})])
    with pytest.raises(FormatError, match=rf"{TRAIN_FILE}: line 2: field 'raw_file' must be an image path relative "
                                          rf"to the dataset root, without '\.\.' .*found {re.escape(repr(raw))}"):
        TuSimpleSource(root, image_size=SIZE).index()
    src = TuSimpleSource(root, image_size=SIZE, on_error="skip")  # skip mode drops that line only
    assert len(src.index()) == 1 and src.skipped["reasons"] == {"field 'raw_file'": 1}


def test_skip_mode_counts_and_reports(tusimple_export: tuple[Path, list], tmp_path: Path) -> None:
    root = write_tusimple(tusimple_export[1], tmp_path / "t", image_size=SIZE)
    good = (root / TRAIN_FILE).read_text().splitlines()
    _write_lines(root, [good[0], "{not json", *good[2:], json.dumps({"lanes": [], "h_samples": [1]})])
    src = TuSimpleSource(root, image_size=SIZE, on_error="skip")
    assert len(src.index()) == 5  # 6 frames, one broken line dropped (a line without raw_file holds none)
    report = src.skipped
    assert report["skipped"] == 2 and report["reasons"]["field 'raw_file'"] == 1


def test_export_action_writes_tusimple(tmp_path: Path) -> None:
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="data", overrides=[
            f"paths.output_dir={tmp_path}", "action=export", "format=tusimple", "rig=front1", "region=us",
            "data.image_size=[90,160]", "data.source.scenes_per_region=3", "data.source.frames_per_scene=1",
            "data.num_workers=0", f"export.image_size=[{SIZE[0]},{SIZE[1]}]"])
    assert run(cfg)["frames"] == 3
    assert len(TuSimpleSource(tmp_path / "tusimple", image_size=SIZE)) == 3


@pytest.mark.parametrize("on_error", ["raise", "skip"])
@pytest.mark.parametrize("test_first", [False, True])
def test_an_image_labelled_for_train_and_test_is_refused(tusimple_export: tuple[Path, list], tmp_path: Path,
                                                         on_error: str, test_first: bool) -> None:
    # Going to test silently would score the model on an image it trained on. Two files disagree, so skip mode (which
    # drops bad lines) must not pick one of them either.
    root = write_tusimple(tusimple_export[1], tmp_path / "t", splits=SPLITS, image_size=SIZE)
    train = (root / TRAIN_FILE).read_text().splitlines()
    test = (root / TEST_FILE).read_text().splitlines()
    (root / TEST_FILE).write_text("".join(f"{line}\n" for line in [*test, train[1]]))
    raw = json.loads(train[1])["raw_file"]
    files = [TEST_FILE, TRAIN_FILE] if test_first else [TRAIN_FILE, TEST_FILE]
    later, first, first_line = (TRAIN_FILE, TEST_FILE, 3) if test_first else (TEST_FILE, TRAIN_FILE, 2)
    with pytest.raises(FormatError, match=rf"{later}: line \d+: field 'raw_file' '{re.escape(raw)}' must be labelled "
                                          rf"in the train label files or in {TEST_FILE}, not both, found it in "
                                          rf"{later} and in .*{first} line {first_line}"):
        TuSimpleSource(root, label_files=files, image_size=SIZE, on_error=on_error).index()
    # Without official splits test_label.json is one more pool of hashed clips: the repeat is just dropped.
    assert len(TuSimpleSource(root, label_files=files, image_size=SIZE, official_splits=False).index()) == 6


def test_a_clip_with_frames_in_train_and_test_goes_to_test_with_a_warning(
        tusimple_export: tuple[Path, list], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = write_tusimple(tusimple_export[1], tmp_path / "t", splits=SPLITS, image_size=SIZE)
    train = (root / TRAIN_FILE).read_text().splitlines()
    test = (root / TEST_FILE).read_text().splitlines()
    _write_lines(root, [*train, test[0]])  # clip syn-us-0002: frame 1 in train, frame 2 in test
    (root / TEST_FILE).write_text(f"{test[1]}\n")
    with caplog.at_level("WARNING", logger="visionpilot.data.sources.tusimple"):
        src = TuSimpleSource(root, image_size=SIZE)
        refs = src.index()
    assert len(refs) == 6 and src.official_split("syn-us-0002") == "test"
    assert src.official_split("syn-us-0000") is None
    assert re.search(rf"1 clip\(s\) have frames in both train label files and {TEST_FILE}.*clip 'syn-us-0002': "
                     rf".*{TEST_FILE}, also in .*{TRAIN_FILE}", caplog.text)
