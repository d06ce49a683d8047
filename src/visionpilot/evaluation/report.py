"""Reports of the cross-region matrix: ``eval.json``, ``eval.md`` (tables), ``cross_region.png`` (heatmaps), and
the gains table of the region workflow.

``eval.json`` (stable fields; more may be added)::

    {"models": [...], "regions": [...], "results": {model: {region: {metric: value}}},
     "overall": {model: {metric: value}}, "split": "val", "frames": {region: n}, "primary_metrics": [...],
     "model_info": {model: {...}}, "gains": [...], "gains_excluded": {model: why}, "strategies": [...],
     "baseline": "global" or null, "units": {metric: {"scale", "unit", "higher_is_better", "digits"}}}

Metric names are those of ``metrics.json`` without ``val/`` (``lane_f1``, ``det_map50``, ...). Scores (F1, AP, IoU,
values in [0, 1], higher is better) are shown in points (x100); the nuScenes TP errors (``bev_ate`` in metres,
``bev_ase`` as 1 - IoU, ``bev_aoe`` in radians) and the lane match counts in their own units (:data:`UNITS`), and
errors are better lower. Every gain and change is an *improvement* over the baseline — fine-tuned minus baseline
for a score, baseline minus fine-tuned for an error — so that positive is better for every metric and the worst
change elsewhere is the largest degradation, whichever way the metric points. A fine-tuned model's *target*
region comes from its delta or checkpoint (``finetune.region``), else from its name ``<strategy>-<region>``
(``adapter-gb``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from visionpilot.utils.io import write_atomic, write_json_atomic, write_text_atomic

#: The headline metric of each task, in display order (heatmap panels, gains).
PRIMARY_METRICS: tuple[str, ...] = ("lane_f1", "det_map50", "bev_map", "bev_lane_iou")
LABELS = {"lane_f1": "lane F1", "det_map50": "2D mAP@0.5", "det_map": "2D mAP", "det_map75": "2D mAP@0.75",
          "bev_map": "BEV mAP", "bev_lane_iou": "BEV lane IoU", "bev_lane_f1": "BEV lane F1",
          "bev_ate": "BEV translation error", "bev_ase": "BEV scale error", "bev_aoe": "BEV orientation error"}


@dataclass(frozen=True)
class MetricUnit:
    """How a metric is shown (``scale`` x value, ``digits`` decimals, in ``unit``) and which way is better."""

    scale: float = 100.0
    unit: str = "points"
    higher_is_better: bool = True
    digits: int = 1


#: Scores in [0, 1] (F1, precision, recall, AP, IoU): points, higher is better. Every metric not in UNITS is one.
POINTS = MetricUnit()
#: The metrics the evaluator computes that are not scores: nuScenes TP errors (detection_bev.py; 1 when a class
#: has no match) and lane match counts (lane_2d.py). Errors to the millimetre / milliradian: their changes are small.
UNITS: dict[str, MetricUnit] = {
    "bev_ate": MetricUnit(1.0, "m", higher_is_better=False, digits=3),
    "bev_ase": MetricUnit(1.0, "1 - IoU", higher_is_better=False, digits=3),
    "bev_aoe": MetricUnit(1.0, "rad", higher_is_better=False, digits=3),
    "lane_tp": MetricUnit(1.0, "count", higher_is_better=True, digits=0),
    "lane_fp": MetricUnit(1.0, "count", higher_is_better=False, digits=0),
    "lane_fn": MetricUnit(1.0, "count", higher_is_better=False, digits=0),
}

#: The model the gains table compares with when ``baseline`` is not given (and only if one is named so).
DEFAULT_BASELINE = "global"

Results = Mapping[str, Mapping[str, Mapping[str, float]]]
log = logging.getLogger(__name__)

#: The strategy other strategies' gains are a share of (the per-strategy table; docs/finetuning.md).
REFERENCE_STRATEGY = "full"


def _value(results: Results, model: str, region: str, metric: str) -> float:
    value = results.get(model, {}).get(region, {}).get(metric)
    return float("nan") if value is None else float(value)


def metric_unit(metric: str) -> MetricUnit:
    """The unit and direction of ``metric`` (:data:`POINTS` unless listed in :data:`UNITS`)."""
    return UNITS.get(metric, POINTS)


def _fmt(value: float | None, metric: str, signed: bool = False) -> str:
    """``value`` of ``metric`` in its display unit (x100 for points)."""
    if value is None or math.isnan(value):
        return "—"
    unit = metric_unit(metric)
    return f"{unit.scale * value:+.{unit.digits}f}" if signed else f"{unit.scale * value:.{unit.digits}f}"


def _unit_note(metric: str) -> str:
    """``m, lower is better``: the unit and direction of a metric, said where it is not in points."""
    unit = metric_unit(metric)
    return f"{unit.unit}, {'higher' if unit.higher_is_better else 'lower'} is better"


def resolve_baseline(baseline: str | None, models: Sequence[str]) -> str | None:
    """The model the gains table compares with.

    ``None`` (the default) means the model named :data:`DEFAULT_BASELINE` when there is one, and no gains table
    otherwise: models are often named something else, and that must not fail the evaluation. A name given
    explicitly must be a model: skipping it silently hid typos behind a report without gains.
    """
    if baseline is None:
        return DEFAULT_BASELINE if DEFAULT_BASELINE in models else None
    if str(baseline) not in models:
        raise ValueError(f"field 'baseline': expected the name of an evaluated model ({', '.join(models)}), found "
                         f"{baseline!r}; leave it null to compare with the model named '{DEFAULT_BASELINE}' when "
                         "there is one")
    return str(baseline)


def present_metrics(results: Results, wanted: Sequence[str] = PRIMARY_METRICS) -> list[str]:
    """The metrics of ``wanted`` that some model has on some region, in ``wanted`` order."""
    have = {m for per_region in results.values() for values in per_region.values() for m in values}
    return [m for m in wanted if m in have]


def target_region(name: str, info: Mapping[str, Any] | None, regions: Sequence[str]) -> str | None:
    """The region a model was fine-tuned on: recorded in its file, else parsed from ``<strategy>-<region>``."""
    region = (info or {}).get("region")
    if region:
        return str(region).lower()
    head, _, tail = name.rpartition("-")
    return tail.lower() if head and tail.lower() in regions else None


def gains_table(results: Results, regions: Sequence[str], baseline: str, targets: Mapping[str, str | None],
                metrics: Sequence[str]) -> list[dict[str, Any]]:
    """Per fine-tuned model and metric: the gain on its target over ``baseline`` (zero-shot), and the change on
    every other region, as improvements (:func:`metric_unit`: baseline minus fine-tuned for an error, so a lower
    error is a positive gain), in the metric's own units (not scaled to points).

    Returns:
        rows ``{"model", "region", "metric", "baseline", "value", "gain", "changes": {region: change},
        "worst_other": the smallest change over the other regions, i.e. the largest degradation}``.
    """
    rows = []
    if baseline not in results:
        return rows
    for model, target in targets.items():
        if model == baseline or not target or target not in regions:
            continue
        for metric in metrics:
            sign = 1.0 if metric_unit(metric).higher_is_better else -1.0
            changes = {r: sign * (_value(results, model, r, metric) - _value(results, baseline, r, metric))
                       for r in regions}
            others = [v for r, v in changes.items() if r != target and not math.isnan(v)]
            rows.append({"model": model, "region": target, "metric": metric,
                         "baseline": _value(results, baseline, target, metric),
                         "value": _value(results, model, target, metric), "gain": changes[target],
                         "changes": changes, "worst_other": min(others) if others else float("nan")})
    return rows


def strategy_table(gains: Sequence[Mapping[str, Any]], model_info: Mapping[str, Mapping[str, Any]],
                   reference: str = REFERENCE_STRATEGY) -> list[dict[str, Any]]:
    """Per target region, fine-tuning strategy and metric, over every model fine-tuned that way (one per seed, say):
    the mean gain, its range, the worst change on another region, and the mean gain as a share of the
    ``reference`` strategy's mean gain on the same target and metric — how docs/finetuning.md compares strategies
    (an adapter should reach >= 80 % of ``full``'s gain). A share of the mean gains (not a mean of per-seed shares)
    stays finite when one run of the reference gains little. Models without a recorded strategy are left out.

    Returns:
        rows ``{"region", "strategy", "metric", "models", "runs", "gain_mean", "gain_min", "gain_max",
        "worst_other", "share"}`` in first-seen order; ``share`` is NaN without a ``reference`` row whose mean gain
        is positive, and ``runs`` counts the models with a value (a model without one is listed, not averaged).
    """
    groups: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for row in gains:
        strategy = (model_info.get(row["model"]) or {}).get("strategy")
        if strategy:
            groups.setdefault((row["region"], str(strategy), row["metric"]), []).append(row)
    rows = []
    for (region, strategy, metric), members in groups.items():
        values = [float(r["gain"]) for r in members if not math.isnan(float(r["gain"]))]
        worst = [float(r["worst_other"]) for r in members if not math.isnan(float(r["worst_other"]))]
        rows.append({"region": region, "strategy": strategy, "metric": metric,
                     "models": [r["model"] for r in members], "runs": len(values),
                     "gain_mean": sum(values) / len(values) if values else float("nan"),
                     "gain_min": min(values, default=float("nan")), "gain_max": max(values, default=float("nan")),
                     "worst_other": min(worst, default=float("nan"))})
    means = {(r["region"], r["strategy"], r["metric"]): r["gain_mean"] for r in rows}
    for row in rows:
        ref = means.get((row["region"], reference, row["metric"]), float("nan"))
        row["share"] = row["gain_mean"] / ref if ref > 0 else float("nan")
    return rows


def build_report(results: Results, regions: Sequence[str], *, models: Sequence[str] | None = None,
                 overall: Mapping[str, Mapping[str, float]] | None = None, split: str = "val",
                 frames: Mapping[str, int] | None = None, model_info: Mapping[str, Mapping[str, Any]] | None = None,
                 baseline: str | None = None, metrics: Sequence[str] = PRIMARY_METRICS,
                 **extra: Any) -> dict[str, Any]:
    """The ``eval.json`` document (see the module docstring).

    ``baseline``: the model gains are measured against; None: the one named ``global``, if any
    (:func:`resolve_baseline`; a name that is no model raises).
    """
    models = list(models or results)
    baseline = resolve_baseline(baseline, models)
    regions = [str(r).lower() for r in regions]
    info = {m: dict((model_info or {}).get(m, {})) for m in models}
    primary = present_metrics(results, metrics)
    missing = [m for m in metrics if m not in primary]
    if missing:  # legitimately (a source without 3D boxes has no bev_map), or a misspelt name: say which
        have = sorted({m for per_region in results.values() for values in per_region.values() for m in values})
        log.warning("eval: metrics %s are not computed for any model on these regions; left out of the tables "
                    "and plots (computed: %s)", missing, ", ".join(have) or "none")
    targets = {m: target_region(m, info[m], regions) for m in models}
    excluded = not_fine_tuned_from(baseline, info, targets) if baseline else {}
    for model, why in excluded.items():
        log.warning("gains: %s is left out of the gains table: %s", model, why)
    tuned = {m: t for m, t in targets.items() if m not in excluded}
    gains = gains_table(results, regions, baseline, tuned, primary) if baseline else []
    if baseline is None and any(targets.values()):
        log.info("gains: no gains table: no model is named %r (set baseline=<model> to compare with another)",
                 DEFAULT_BASELINE)
    return {"models": models, "regions": regions, "results": {m: dict(results[m]) for m in models},
            "overall": dict(overall or {}), "split": split, "frames": dict(frames or {}),
            "primary_metrics": primary, "model_info": info, "baseline": baseline if baseline in results else None,
            "targets": targets, "gains": gains, "gains_excluded": excluded, "strategies": strategy_table(gains, info),
            "units": {m: asdict(metric_unit(m)) for m in primary}, **extra}


def not_fine_tuned_from(baseline: str, info: Mapping[str, Mapping[str, Any]],
                        targets: Mapping[str, str | None]) -> dict[str, str]:
    """Fine-tuned models whose recorded base checkpoint (``base_sha256``) is not the ``baseline`` checkpoint
    evaluated here (``sha256``): their difference from it is not their fine-tune's gain. Model -> why; models or
    baselines without the hashes (older files, ONNX) are not judged."""
    base = info.get(baseline) or {}
    if base.get("kind") != "checkpoint" or not base.get("sha256"):
        return {}
    out = {}
    for model, target in targets.items():
        tuned_from = (info.get(model) or {}).get("base_sha256")
        if model != baseline and target and tuned_from and tuned_from != base["sha256"]:
            out[model] = f"fine-tuned from {tuned_from[:12]}, not from {baseline!r} ({base['sha256'][:12]})"
    return out


def format_markdown(report: Mapping[str, Any]) -> str:
    """``eval.md``: one model x region table per primary metric, then the gains table."""
    models, regions, results = report["models"], report["regions"], report["results"]
    frames = report.get("frames") or {}
    units = ("Values in points (metric x 100)." if all(metric_unit(m) == POINTS for m in report["primary_metrics"])
             else "Scores in points (metric x 100), higher is better; other metrics in the unit and direction in "
                  "their table's title.")
    lines = [f"# Cross-region evaluation ({report.get('split', 'val')} split)", "",
             f"{units} Frames per region: " + ", ".join(f"{r} {frames.get(r, '?')}" for r in regions) + ".", ""]
    for metric in report["primary_metrics"]:
        # The default (score) tables keep their titles: the line above says "points" once for all of them.
        note = "" if metric_unit(metric) == POINTS else f", {_unit_note(metric)}"
        lines += [f"## {LABELS.get(metric, metric)} (`{metric}`{note})", "",
                  "| model | " + " | ".join(regions) + " |", "| --- |" + " ---: |" * len(regions)]
        for model in models:
            target = (report.get("targets") or {}).get(model)
            cells = [(f"**{_fmt(_value(results, model, r, metric), metric)}**" if r == target else
                      _fmt(_value(results, model, r, metric), metric)) for r in regions]
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
        lines.append("")
    if report.get("gains"):
        lines += gains_markdown(report["gains"], regions, report.get("baseline") or "baseline")
    elif not report.get("baseline") and any((report.get("targets") or {}).values()):
        lines += [f"No gains table: no model is named `{DEFAULT_BASELINE}`; set `baseline=<model>` to compare the "
                  "fine-tuned models with another.", ""]
    if report.get("gains_excluded"):
        lines += ["Not in the gains table: " + "; ".join(f"{m} ({why})" for m, why in
                                                         report["gains_excluded"].items()) + ".", ""]
    if report.get("strategies"):
        lines += strategies_markdown(report["strategies"])
    info = report.get("model_info") or {}
    if info:
        lines += ["## Models", "", "| model | kind | strategy | region | seed | file | MB |",
                  "| --- | --- | --- | --- | ---: | --- | ---: |"]
        for model in models:
            i = info.get(model, {})
            size = f"{i['bytes'] / 1e6:.2f}" if i.get("bytes") else "—"
            seed = "—" if i.get("seed") is None else i["seed"]
            lines.append(f"| {model} | {i.get('kind', '—')} | {i.get('strategy') or '—'} | {i.get('region') or '—'} "
                         f"| {seed} | `{i.get('path', '')}` | {size} |")
        lines.append("")
    return "\n".join(lines)


def gains_markdown(gains: Sequence[Mapping[str, Any]], regions: Sequence[str], baseline: str) -> list[str]:
    """The gains table: zero-shot ``baseline`` vs fine-tuned on the target, and the change on every region."""
    if all(metric_unit(row["metric"]) == POINTS for row in gains):
        title, delta = "(points)", f"Δ: fine-tuned minus `{baseline}` on each region"
    else:  # errors are better lower: their Δ is flipped so that a gain is an improvement for every metric
        title = "(improvements)"
        delta = (f"Δ: the improvement over `{baseline}` on each region — fine-tuned minus `{baseline}` for scores "
                 f"(points), `{baseline}` minus fine-tuned for errors (lower is better; unit after the metric), so "
                 "positive is better for every metric")
    lines = [f"## Gains over `{baseline}` {title}", "",
             f"Target: the region the model was fine-tuned on (zero-shot for `{baseline}`). {delta}; *worst other*: "
             "the largest loss on a region other than the target.", "",
             f"| model | metric | target | {baseline} | fine-tuned | gain | worst other | "
             + " | ".join(f"Δ{r}" for r in regions) + " |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: |" + " ---: |" * len(regions)]
    for row in gains:
        metric = row["metric"]
        deltas = [(f"**{_fmt(row['changes'][r], metric, True)}**" if r == row["region"] else
                   _fmt(row["changes"][r], metric, True)) for r in regions]
        lines.append(f"| {row['model']} | {_metric_cell(metric)} | {row['region']} | {_fmt(row['baseline'], metric)} | "
                     f"{_fmt(row['value'], metric)} | {_fmt(row['gain'], metric, True)} | "
                     f"{_fmt(row['worst_other'], metric, True)} | " + " | ".join(deltas) + " |")
    return [*lines, ""]


def strategies_markdown(rows: Sequence[Mapping[str, Any]], reference: str = REFERENCE_STRATEGY) -> list[str]:
    """The per-strategy table: mean gain over the runs of each strategy on each target, and its share of
    ``reference``'s."""
    points = all(metric_unit(row["metric"]) == POINTS for row in rows)
    lines = [f"## Gains per strategy ({'points' if points else 'improvements'}, mean over runs)", "",
             f"Runs: models fine-tuned with that strategy on that target (e.g. one per seed). *of {reference}*: the "
             f"mean gain as a share of the `{reference}` strategy's mean gain on the same target and metric. "
             "*worst other*: the largest loss on another region over all the runs."
             + ("" if points else " Gains are improvements: an error's is its decrease (unit after the metric)."),
             "",
             f"| target | strategy | metric | runs | mean gain | min / max | of {reference} | worst other |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for row in sorted(rows, key=lambda r: (r["region"], r["strategy"] != reference, r["strategy"])):
        share = "—" if math.isnan(row["share"]) else f"{100 * row['share']:.1f} %"
        metric = row["metric"]
        lines.append(f"| {row['region']} | {row['strategy']} | {_metric_cell(metric)} | {row['runs']} | "
                     f"{_fmt(row['gain_mean'], metric, True)} | {_fmt(row['gain_min'], metric, True)} / "
                     f"{_fmt(row['gain_max'], metric, True)} | {share} | {_fmt(row['worst_other'], metric, True)} |")
    return [*lines, ""]


def _metric_cell(metric: str) -> str:
    """The metric column of the gains tables: the name, and the unit of a metric not in points."""
    unit = metric_unit(metric)
    return metric if unit == POINTS else f"{metric} ({unit.unit})"


def plot_matrix(report: Mapping[str, Any], path: str | Path) -> Path:
    """``cross_region.png``: one heatmap (model x evaluation region) per primary metric; targets outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    models, regions, results = report["models"], report["regions"], report["results"]
    metrics = list(report["primary_metrics"]) or ["lane_f1"]
    targets = report.get("targets") or {}
    width = 1.2 + 0.75 * len(regions)
    fig, axes = plt.subplots(1, len(metrics), figsize=(width * len(metrics), 1.3 + 0.45 * len(models)),
                             squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        unit = metric_unit(metric)
        grid = np.array([[unit.scale * _value(results, m, r, metric) for r in regions] for m in models])
        finite = grid[np.isfinite(grid)]
        vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if vmax - vmin < 1e-6:
            # One value (one model on one region, say): a scale of +-5 in the last shown digit (+-0.5 points), not
            # a 1e-6 one whose colour bar reads 0..10 (x 1e-7, offset) beside cells of 50.0 and whose cells sit at
            # its dark end under black text.
            pad = 5.0 * 10.0 ** -unit.digits
            vmin, vmax = vmin - pad, vmax + pad
        # Bright is better in every panel: an error's colour map runs the other way.
        cmap = "viridis" if unit.higher_is_better else "viridis_r"
        image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
        for i, model in enumerate(models):
            for j, region in enumerate(regions):
                value = grid[i, j]
                text = "—" if not np.isfinite(value) else f"{value:.{unit.digits}f}"
                shade = (value - vmin) / (vmax - vmin)  # 0: the low end, dark for a score, bright for an error
                light = np.isfinite(value) and (shade if unit.higher_is_better else 1.0 - shade) < 0.6
                ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if light else "black")
                if targets.get(model) == region:
                    ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
        ax.set_xticks(range(len(regions)), regions)
        ax.set_yticks(range(len(models)), models)
        ax.set_xlabel("evaluation region")
        ax.set_title(f"{LABELS.get(metric, metric)} ({'x100' if unit == POINTS else _unit_note(metric)})")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(f"Cross-region matrix ({report.get('split', 'val')} split; red: fine-tuning target)", fontsize=10)
    fig.tight_layout()
    try:
        path = write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        plt.close(fig)
    return path


def write_report(out_dir: str | Path, report: Mapping[str, Any]) -> dict[str, Path]:
    """Write ``eval.json``, ``eval.md`` and ``cross_region.png`` into ``out_dir``."""
    out_dir = Path(out_dir)
    return {"json": write_json_atomic(out_dir / "eval.json", report),
            "markdown": write_text_atomic(out_dir / "eval.md", format_markdown(report)),
            "png": plot_matrix(report, out_dir / "cross_region.png")}
