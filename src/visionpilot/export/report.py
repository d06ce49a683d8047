"""Exports side by side: parity from each ``export.json``, metric deltas from a ``visionpilot-eval`` report.

    python -m visionpilot.export.report runs/export-fp32 runs/export-int8 --eval runs/eval-export/eval.json

The first export is the reference of the deltas. An export is matched to its ``eval.json`` model by the path of
its ``model.onnx`` (``model_info[...]["path"]``), so the evaluation may name the models anything.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

METRICS = ("lane_f1", "det_map50", "det_map", "bev_map", "bev_lane_iou")


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    return json.loads(path.read_text())


def _eval_metrics(evaluation: Mapping[str, Any], model_path: Path) -> dict[str, float] | None:
    """Overall metrics of the ``eval.json`` model whose file is ``model_path`` (None if it was not evaluated)."""
    for name, info in (evaluation.get("model_info") or {}).items():
        if info.get("path") and Path(info["path"]).resolve() == model_path.resolve():
            return dict((evaluation.get("overall") or {}).get(name) or {})
    return None


def compare_exports(export_dirs: Sequence[str | Path], eval_json: str | Path | None = None) -> str:
    """A markdown table: per export its size and parity, and (with ``eval_json``) its metrics in points with the
    difference to the first export."""
    evaluation = _read_json(Path(eval_json), "eval report") if eval_json else None
    rows, reference = [], None
    header = ["precision", "MB", "raw max abs diff", "decoded agree", "lowest agreement"]
    metrics = [m for m in METRICS if evaluation is not None]
    header += metrics
    for index, folder in enumerate(map(Path, export_dirs)):
        report = _read_json(folder / "export.json", "export report")
        parity = report["parity"]
        name, low = min(parity["agreement"].items(), key=lambda kv: kv[1])
        raw = parity.get("max_abs_diff_raw")
        # export.json stores a NaN difference (an output went non-finite) as null, which must not read as "n/a".
        broken = raw is None and any(v is None for k, v in (parity.get("max_abs_diff") or {}).items()
                                     if k.startswith("raw/"))
        raw_cell = "non-finite" if broken else "n/a" if raw is None else f"{raw:.2g}"
        row = [report["precision"], f"{report['size_mb']:.1f}", raw_cell,
               str(parity["decoded_agree"]), f"{low:.3f} ({name})"]
        if evaluation is not None:
            values = _eval_metrics(evaluation, folder / report["model"])
            if index == 0:  # the first export only: a later one would not be what the footer names
                reference = values
            for m in metrics:
                if values is None or m not in values:
                    row.append("—")
                    continue
                cell = f"{100 * values[m]:.2f}"
                if reference is not values and reference and m in reference:
                    cell += f" ({100 * (values[m] - reference[m]):+.2f})"
                row.append(cell)
        rows.append(row)
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    if evaluation is not None:
        lines.append(f"\nmetrics in points on the {evaluation.get('split', 'val')} split of "
                     f"{', '.join(evaluation.get('regions') or [])}; deltas against {rows[0][0] if rows else '—'}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Compare visionpilot-export runs: parity and metric deltas.")
    parser.add_argument("exports", nargs="+", help="export run folders (the first is the reference)")
    parser.add_argument("--eval", dest="eval_json", help="eval.json of visionpilot-eval over the exported models")
    args = parser.parse_args(argv)
    print(compare_exports(args.exports, args.eval_json))


if __name__ == "__main__":
    main()
