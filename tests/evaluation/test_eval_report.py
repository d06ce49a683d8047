"""Cross-region reports: the eval.json contract, markdown tables, gains, and the heatmap PNG."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import pytest

from visionpilot.evaluation.report import (
    build_report,
    format_markdown,
    gains_table,
    present_metrics,
    target_region,
    write_report,
)

REGIONS = ["us", "de", "gb"]
RESULTS = {
    "global": {"us": {"lane_f1": 0.80, "det_map50": 0.50}, "de": {"lane_f1": 0.78, "det_map50": 0.52},
               "gb": {"lane_f1": 0.55, "det_map50": 0.40}},
    "adapter-gb": {"us": {"lane_f1": 0.79, "det_map50": 0.51}, "de": {"lane_f1": 0.785, "det_map50": 0.50},
                   "gb": {"lane_f1": 0.70, "det_map50": 0.47}},
    "full-gb": {"us": {"lane_f1": 0.81, "det_map50": 0.50}, "de": {"lane_f1": 0.77, "det_map50": 0.52},
                "gb": {"lane_f1": 0.74, "det_map50": float("nan")}},
}


def test_target_region_from_file_facts_or_name() -> None:
    assert target_region("adapter-gb", None, REGIONS) == "gb"
    assert target_region("my-model", {"region": "DE"}, REGIONS) == "de"
    assert target_region("global", {}, REGIONS) is None
    assert target_region("run-xx", {}, REGIONS) is None  # not an evaluation region


def test_gains_table_reports_target_gain_and_change_elsewhere() -> None:
    rows = gains_table(RESULTS, REGIONS, "global", {"adapter-gb": "gb", "full-gb": "gb", "global": None},
                       ["lane_f1", "det_map50"])
    assert [(r["model"], r["metric"]) for r in rows] == [("adapter-gb", "lane_f1"), ("adapter-gb", "det_map50"),
                                                         ("full-gb", "lane_f1"), ("full-gb", "det_map50")]
    lane = rows[0]
    assert lane["region"] == "gb" and lane["gain"] == pytest.approx(0.15)
    assert lane["changes"]["us"] == pytest.approx(-0.01) and lane["worst_other"] == pytest.approx(-0.01)
    assert rows[1]["worst_other"] == pytest.approx(-0.02)
    assert math.isnan(rows[3]["gain"])  # a missing value stays missing, it is not a zero
    assert gains_table(RESULTS, REGIONS, "nobody", {"adapter-gb": "gb"}, ["lane_f1"]) == []


def test_report_json_md_png(tmp_path: Path) -> None:
    report = build_report(RESULTS, REGIONS, split="val", frames={"us": 40, "de": 40, "gb": 30},
                          model_info={"adapter-gb": {"kind": "delta", "strategy": "adapter", "region": "gb",
                                                     "bytes": 800_000, "path": "a/delta.safetensors"}})
    assert present_metrics(RESULTS) == ["lane_f1", "det_map50"] == report["primary_metrics"]
    paths = write_report(tmp_path, report)
    data = json.loads(paths["json"].read_text())
    # The documented contract (shared/DESIGN.md): models, regions, results[model][region][metric].
    assert data["models"] == ["global", "adapter-gb", "full-gb"] and data["regions"] == REGIONS
    assert data["results"]["adapter-gb"]["gb"]["lane_f1"] == 0.70
    assert data["results"]["full-gb"]["gb"]["det_map50"] is None  # NaN is not JSON
    assert data["targets"] == {"global": None, "adapter-gb": "gb", "full-gb": "gb"} and len(data["gains"]) == 4
    md = paths["markdown"].read_text()
    assert "| adapter-gb | 79.0 | 78.5 | **70.0** |" in md
    assert "## Gains over `global` (points)" in md and "| adapter-gb | lane_f1 | gb | 55.0 | 70.0 | +15.0 | -1.0 |" in md
    assert format_markdown(report) == md
    image = cv2.imread(str(paths["png"]))
    assert image is not None and image.shape[0] > 100 and image.shape[1] > 2 * image.shape[0] // 2
