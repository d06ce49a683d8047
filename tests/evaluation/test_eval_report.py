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
    strategy_table,
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


def test_gains_only_against_the_base_a_model_was_fine_tuned_from(caplog: pytest.LogCaptureFixture) -> None:
    # adapter-gb was fine-tuned from another checkpoint than the one evaluated as 'global': its difference from
    # 'global' is not its fine-tune's gain, so it stays in the matrix but not in the gains table.
    info = {"global": {"kind": "checkpoint", "sha256": "a" * 64},
            "adapter-gb": {"kind": "delta", "region": "gb", "base_sha256": "b" * 64},
            "full-gb": {"kind": "checkpoint", "region": "gb", "base_sha256": "a" * 64}}
    with caplog.at_level("WARNING"):
        report = build_report(RESULTS, REGIONS, model_info=info)
    assert {r["model"] for r in report["gains"]} == {"full-gb"}
    assert report["gains_excluded"] == {"adapter-gb": f"fine-tuned from {'b' * 12}, not from 'global' ({'a' * 12})"}
    assert "adapter-gb" in caplog.text and report["targets"]["adapter-gb"] == "gb"
    assert "Not in the gains table: adapter-gb (fine-tuned from bbbbbbbbbbbb" in format_markdown(report)
    # Without the hashes (older files) nothing can be checked: gains as before.
    assert len(build_report(RESULTS, REGIONS)["gains"]) == 4


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


def _run(gb_lane: float, gb_det: float, us_lane: float = 0.80) -> dict[str, dict[str, float]]:
    return {"us": {"lane_f1": us_lane, "det_map50": 0.50}, "gb": {"lane_f1": gb_lane, "det_map50": gb_det}}


def test_strategy_table_averages_runs_and_compares_with_full() -> None:
    # Two seeds of full and adapter on gb, one heads run on us' neighbour de, one model with no strategy recorded.
    results = {"global": _run(0.50, 0.40), "full-1": _run(0.80, 0.50), "full-2": _run(0.70, 0.46),
               "adapter-1": _run(0.76, 0.45, us_lane=0.79), "adapter-2": _run(0.68, 0.43),
               "heads-de": {"us": {"lane_f1": 0.70, "det_map50": 0.30}, "de": {"lane_f1": 0.9, "det_map50": 0.5}},
               "mystery": _run(0.99, 0.99)}
    info = {"full-1": {"strategy": "full"}, "full-2": {"strategy": "full"}, "adapter-1": {"strategy": "adapter"},
            "adapter-2": {"strategy": "adapter"}, "heads-de": {"strategy": "heads"}}
    targets = {"full-1": "gb", "full-2": "gb", "adapter-1": "gb", "adapter-2": "gb", "heads-de": "de",
               "mystery": "gb"}
    gains = gains_table(results, ["us", "de", "gb"], "global", targets, ["lane_f1", "det_map50"])
    rows = {(r["region"], r["strategy"], r["metric"]): r for r in strategy_table(gains, info)}
    assert set(rows) == {(t, s, m) for t, s in [("gb", "full"), ("gb", "adapter"), ("de", "heads")]
                         for m in ("lane_f1", "det_map50")}  # "mystery" has no strategy: left out
    full, adapter = rows["gb", "full", "lane_f1"], rows["gb", "adapter", "lane_f1"]
    assert full["models"] == ["full-1", "full-2"] and full["runs"] == 2
    assert full["gain_mean"] == pytest.approx(0.25) and full["share"] == pytest.approx(1.0)
    assert (adapter["gain_min"], adapter["gain_max"]) == (pytest.approx(0.18), pytest.approx(0.26))
    assert adapter["share"] == pytest.approx(0.22 / 0.25)  # the share of the mean gains
    assert adapter["worst_other"] == pytest.approx(-0.01)  # adapter-1 on us
    assert rows["gb", "adapter", "det_map50"]["share"] == pytest.approx(0.04 / 0.08)
    assert math.isnan(rows["de", "heads", "lane_f1"]["share"])  # no full run on de to compare with
    # A run without a value is listed but not averaged; a reference that gained nothing gives no share.
    results["adapter-2"]["gb"]["lane_f1"] = float("nan")
    results["full-1"]["gb"]["det_map50"] = results["full-2"]["gb"]["det_map50"] = 0.40
    gains = gains_table(results, ["us", "de", "gb"], "global", targets, ["lane_f1", "det_map50"])
    rows = {(r["region"], r["strategy"], r["metric"]): r for r in strategy_table(gains, info)}
    assert rows["gb", "adapter", "lane_f1"]["runs"] == 1 and len(rows["gb", "adapter", "lane_f1"]["models"]) == 2
    assert rows["gb", "adapter", "lane_f1"]["gain_mean"] == pytest.approx(0.26)
    assert math.isnan(rows["gb", "adapter", "det_map50"]["share"])


def test_report_shows_strategy_table_and_seeds(tmp_path: Path) -> None:
    info = {"adapter-gb": {"kind": "delta", "strategy": "adapter", "region": "gb", "seed": 43},
            "full-gb": {"kind": "delta", "strategy": "full", "region": "gb", "seed": 43}}
    report = build_report(RESULTS, REGIONS, model_info=info)
    md = format_markdown(report)
    assert "## Gains per strategy (points, mean over runs)" in md
    # full first within a target; adapter's lane gain +15.0 of full's +19.0
    lines = [line for line in md.splitlines() if line.startswith("| gb | ")]
    assert lines[0].startswith("| gb | full | lane_f1 | 1 | +19.0 |")
    assert "| gb | adapter | lane_f1 | 1 | +15.0 | +15.0 / +15.0 | 78.9 % | -1.0 |" in md
    assert "| gb | adapter | det_map50 | 1 | +7.0 | +7.0 / +7.0 | — | -2.0 |" in md  # full's det value is missing
    assert "| adapter-gb | delta | adapter | gb | 43 |" in md
    data = json.loads(write_report(tmp_path, report)["json"].read_text())
    assert [(r["strategy"], r["metric"]) for r in data["strategies"]][:2] == [("adapter", "lane_f1"),
                                                                            ("adapter", "det_map50")]


def test_a_requested_metric_no_model_has_is_named(caplog: pytest.LogCaptureFixture) -> None:
    # metrics=[lane_f11]: a misspelt name used to drop its table and panel without a word.
    with caplog.at_level("WARNING"):
        report = build_report(RESULTS, REGIONS, metrics=["lane_f1", "lane_f11"])
    assert report["primary_metrics"] == ["lane_f1"]
    assert "['lane_f11'] are not computed" in caplog.text and "computed: det_map50, lane_f1" in caplog.text


# BEV translation error (metres, lower is better) beside a score: full-gb lowers the error on gb by 0.2 m, raises
# it on us by 0.05 m and lowers it on de by 0.02 m.
ERRORS = {"global": {"us": {"lane_f1": 0.80, "bev_ate": 0.50}, "de": {"lane_f1": 0.78, "bev_ate": 0.60},
                     "gb": {"lane_f1": 0.55, "bev_ate": 0.80}},
          "full-gb": {"us": {"lane_f1": 0.81, "bev_ate": 0.55}, "de": {"lane_f1": 0.77, "bev_ate": 0.58},
                      "gb": {"lane_f1": 0.74, "bev_ate": 0.60}}}


def test_error_metrics_gain_as_improvements_with_the_worst_other_a_degradation() -> None:
    rows = gains_table(ERRORS, REGIONS, "global", {"full-gb": "gb"}, ["lane_f1", "bev_ate"])
    lane, ate = rows
    assert lane["gain"] == pytest.approx(0.19) and lane["worst_other"] == pytest.approx(-0.01)  # scores as before
    # A lower error is a gain; the worst other region is where the error rose most (us), not where it fell least.
    assert ate["gain"] == pytest.approx(0.20) and ate["changes"]["de"] == pytest.approx(0.02)
    assert ate["worst_other"] == pytest.approx(-0.05) == ate["changes"]["us"]
    assert ate["baseline"] == pytest.approx(0.80) and ate["value"] == pytest.approx(0.60)  # raw values, metres


def test_error_metrics_are_shown_in_their_units_not_points(tmp_path: Path) -> None:
    report = build_report(ERRORS, REGIONS, metrics=["lane_f1", "bev_ate"],
                          model_info={"full-gb": {"strategy": "full", "region": "gb"}})
    assert report["units"]["bev_ate"] == {"scale": 1.0, "unit": "m", "higher_is_better": False, "digits": 3}
    assert report["units"]["lane_f1"]["unit"] == "points"
    md = format_markdown(report)
    assert "Scores in points (metric x 100), higher is better; other metrics in the unit and direction" in md
    assert "## lane F1 (`lane_f1`)" in md and "| full-gb | 81.0 | 77.0 | **74.0** |" in md  # scores unchanged
    assert "## BEV translation error (`bev_ate`, m, lower is better)" in md
    assert "| full-gb | 0.550 | 0.580 | **0.600** |" in md  # metres, not "55.0"
    assert "## Gains over `global` (improvements)" in md and "`global` minus fine-tuned for errors" in md
    assert "| full-gb | lane_f1 | gb | 55.0 | 74.0 | +19.0 | -1.0 |" in md
    assert "| full-gb | bev_ate (m) | gb | 0.800 | 0.600 | +0.200 | -0.050 | -0.050 | +0.020 | **+0.200** |" in md
    assert "| gb | full | bev_ate (m) | 1 | +0.200 | +0.200 / +0.200 | 100.0 % | -0.050 |" in md
    # Score-only reports keep their wording (docs and earlier reports quote it).
    plain = format_markdown(build_report(ERRORS, REGIONS, metrics=["lane_f1"]))
    assert "Values in points (metric x 100). Frames per region:" in plain
    assert "## Gains over `global` (points)" in plain and "Δ: fine-tuned minus `global` on each region;" in plain


def test_an_explicit_baseline_must_name_a_model() -> None:
    with pytest.raises(ValueError, match=r"field 'baseline': expected the name of an evaluated model \(global, "
                                         r"adapter-gb, full-gb\), found 'glbal'"):
        build_report(RESULTS, REGIONS, baseline="glbal")
    assert build_report(RESULTS, REGIONS, baseline="adapter-gb")["baseline"] == "adapter-gb"


def test_the_default_baseline_is_global_when_there_is_one(caplog: pytest.LogCaptureFixture) -> None:
    assert build_report(RESULTS, REGIONS)["baseline"] == "global"
    # Models not named global (the common case outside the region workflow): no gains table, no error, a note.
    renamed = {"base" if m == "global" else m: v for m, v in RESULTS.items()}
    with caplog.at_level("INFO"):
        report = build_report(renamed, REGIONS)
    assert report["baseline"] is None and report["gains"] == []
    assert "no model is named 'global'" in caplog.text
    assert "No gains table: no model is named `global`; set `baseline=<model>`" in format_markdown(report)
    assert len(build_report(renamed, REGIONS, baseline="base")["gains"]) == 4
