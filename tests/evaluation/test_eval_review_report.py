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
