"""cross_region.png when every cell holds the same value (one model on one region): a readable scale."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from visionpilot.evaluation.report import build_report, plot_matrix


def test_heatmap_of_one_value_has_a_readable_scale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    figures = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: (figures.append(fig), close(fig)))
    plot_matrix(build_report({"global": {"us": {"lane_f1": 0.5}}}, ["us"]), tmp_path / "m.png")
    ax = figures[0].axes[0]
    low, high = ax.images[0].get_clim()
    # The colour bar spans a readable range around the value (it spanned 50 .. 50.000001, ticks "0 .. 10" x 1e-7).
    assert high - low >= 0.5 and low < 50.0 < high
    assert [t.get_text() for t in ax.texts] == ["50.0"] and ax.texts[0].get_color() == "white"  # was black on dark


def test_heatmap_of_an_error_is_in_its_unit_and_bright_where_it_is_low(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    figures = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: (figures.append(fig), close(fig)))
    results = {"global": {"us": {"bev_ate": 0.4}, "gb": {"bev_ate": 0.9}}}
    plot_matrix(build_report(results, ["us", "gb"], metrics=["bev_ate"]), tmp_path / "m.png")
    ax = figures[0].axes[0]
    assert ax.get_title() == "BEV translation error (m, lower is better)"  # was "(x100)" over cells of 40.0
    assert [t.get_text() for t in ax.texts] == ["0.400", "0.900"]
    # Bright is better in every panel: the low error (us) bright under black text, the high one dark under white.
    assert ax.images[0].get_cmap().name == "viridis_r"
    assert [t.get_color() for t in ax.texts] == ["black", "white"]
