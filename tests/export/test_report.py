"""The export comparison table: parity per export, metric deltas against the first one, matched by file path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from visionpilot.export.report import compare_exports, main


def _export(folder: Path, precision: str, raw: float | None, low: float) -> Path:
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"")
    report = {"precision": precision, "size_mb": 5.25, "model": "model.onnx",
              "parity": {"max_abs_diff_raw": raw, "decoded_agree": True,
                         "agreement": {"lanes_2d.points": 1.0, "objects_2d.boxes": low}}}
    (folder / "export.json").write_text(json.dumps(report))
    return folder


def test_table_has_parity_and_metric_deltas(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    fp32 = _export(tmp_path / "fp32", "fp32", 1e-5, 1.0)
    int8 = _export(tmp_path / "int8", "int8", None, 0.97)
    evaluation = {"split": "val", "regions": ["gb", "us"],
                  "model_info": {"a": {"path": str(fp32 / "model.onnx")}, "b": {"path": str(int8 / "model.onnx")},
                                 "torch": {"path": "x.ckpt"}},
                  "overall": {"a": {"lane_f1": 0.5, "det_map50": 0.25}, "b": {"lane_f1": 0.495, "det_map50": 0.26}}}
    (tmp_path / "eval.json").write_text(json.dumps(evaluation))
    table = compare_exports([fp32, int8], tmp_path / "eval.json")
    lines = table.splitlines()
    assert lines[0].startswith("| precision | MB | raw max abs diff | decoded agree | lowest agreement | lane_f1 |")
    assert lines[2].startswith("| fp32 | 5.2 | 1e-05 | True | 1.000 (lanes_2d.points) | 50.00 | 25.00 |")
    assert "| int8 | 5.2 | n/a | True | 0.970 (objects_2d.boxes) | 49.50 (-0.50) | 26.00 (+1.00) |" in lines[3]
    assert "deltas against fp32" in table
    main([str(fp32), str(int8)])  # without an evaluation: parity only
    assert "| fp32 |" in capsys.readouterr().out


def test_a_non_finite_raw_difference_is_not_shown_as_not_applicable(tmp_path: Path) -> None:
    """export.json keeps a NaN difference as null (strict JSON); the table showed it as "n/a", like an export
    without raw outputs, where it means an output went NaN or Inf."""
    broken = _export(tmp_path / "broken", "fp16", None, 0.5)
    report = json.loads((broken / "export.json").read_text())
    report["parity"]["max_abs_diff"] = {"raw/lanes_2d.exist": None, "raw/objects_2d.size": 1e-3, "lanes_2d.exist": None}
    (broken / "export.json").write_text(json.dumps(report))
    clean = _export(tmp_path / "clean", "fp32", 1e-5, 1.0)
    lines = compare_exports([clean, broken]).splitlines()
    assert lines[3].startswith("| fp16 | 5.2 | non-finite | True |"), lines[3]


def test_missing_report_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="export report not found"):
        compare_exports([tmp_path])


def test_deltas_are_against_the_first_export_only(tmp_path: Path) -> None:
    # The first export (the named reference) was not evaluated: no row may show a delta against another export
    # while the footer says the deltas are against the first.
    fp32 = _export(tmp_path / "fp32", "fp32", 1e-5, 1.0)
    fp16 = _export(tmp_path / "fp16", "fp16", None, 0.99)
    int8 = _export(tmp_path / "int8", "int8", None, 0.97)
    evaluation = {"model_info": {"h": {"path": str(fp16 / "model.onnx")}, "q": {"path": str(int8 / "model.onnx")}},
                  "overall": {"h": {"lane_f1": 0.5}, "q": {"lane_f1": 0.49}}}
    (tmp_path / "eval.json").write_text(json.dumps(evaluation))
    lines = compare_exports([fp32, fp16, int8], tmp_path / "eval.json").splitlines()
    assert lines[4].startswith("| int8 |") and "| 49.00 |" in lines[4], lines[4]
