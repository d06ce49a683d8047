"""``visionpilot-eval``: evaluate checkpoints, region deltas and ONNX models on a list of regions.

    visionpilot-eval models='{global: runs/g/checkpoints/last.ckpt, adapter-gb: runs/ft/adapter-gb/delta.safetensors}' \\
        regions=[us,de,gb] hydra.run.dir=runs/eval
    visionpilot-eval models=[runs/g/checkpoints/last.ckpt] regions=global split=test

Writes ``eval.json``, ``eval.md`` and ``cross_region.png`` (see visionpilot/evaluation/report.py) in its run dir,
and ``plots/<region>_<k>.png``: the first ``plots`` frames of each region with every model's predictions, one row
per model (withheld when the evaluation data's frames may not leave their region as images).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from visionpilot.cli.finetune import register_open_node
from visionpilot.governance import governance_kwargs
from visionpilot.paths import config_dir

log = logging.getLogger(__name__)
register_open_node()


def run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.models`` on ``cfg.regions`` and write the report; return the ``eval.json`` document."""
    import lightning as L
    import torch

    from visionpilot.data.regions import GLOBAL, is_global, resolve_regions
    from visionpilot.evaluation.cross_region import build_eval_datamodule, evaluate_matrix, load_eval_model, model_specs
    from visionpilot.evaluation.report import build_report, format_markdown, resolve_baseline, write_report
    from visionpilot.utils.machine import keep_freed_memory

    torch.set_flush_denormal(True)  # denormal floats make CPU convolutions orders of magnitude slower
    keep_freed_memory()  # no page faults on every batch's fresh tensors
    L.seed_everything(int(cfg.get("seed") or 0), verbose=False)
    plots = cfg.get("plots") or 0
    if isinstance(plots, bool) or not isinstance(plots, int) or plots < 0:
        raise ValueError(f"visionpilot-eval: field 'plots' (frames drawn per region) must be an integer >= 0, "
                         f"found {plots!r}")
    limit = cfg.get("limit_batches")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        # 0 or a negative count would evaluate nothing and still write an (empty) report
        raise ValueError(f"visionpilot-eval: field 'limit_batches' must be an integer >= 1 or null (every batch), "
                         f"found {limit!r}")
    if OmegaConf.is_missing(cfg, "models"):  # a required field: said as the other commands say it, not a traceback
        raise ValueError("visionpilot-eval: field 'models' is required: {name: path} pairs or a list of .ckpt / "
                         ".safetensors / .onnx paths, e.g. models=[runs/demo/checkpoints/last.ckpt]")
    metrics = OmegaConf.to_container(cfg.metrics) if OmegaConf.is_config(cfg.metrics) else cfg.metrics
    if isinstance(metrics, str):  # metrics=det_map50: one metric, not the letters of its name
        metrics = [metrics]
    if not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics):
        raise ValueError(f"visionpilot-eval: field 'metrics' must be a metric name or a list of them (e.g. "
                         f"[lane_f1, det_map50]), found {metrics!r}")
    specs = model_specs(OmegaConf.to_container(cfg.models, resolve=True) if OmegaConf.is_config(cfg.models)
                        else cfg.models)
    if not specs:
        raise ValueError("visionpilot-eval: field 'models' is empty; give {name: checkpoint} pairs or paths")
    # Checked before any model is loaded or evaluated: a misspelt baseline would otherwise cost the whole matrix.
    baseline = resolve_baseline(cfg.get("baseline"), list(specs))
    wanted = OmegaConf.to_container(cfg.regions) if OmegaConf.is_config(cfg.regions) else cfg.regions
    # checks the codes; "global" means every region the evaluation source has, not every registered one
    regions = GLOBAL if is_global(wanted) else resolve_regions(wanted)
    models = [load_eval_model(name, spec) for name, spec in specs.items()]
    with_config = [m for m in models if m.loaded is not None]
    ref_name = cfg.get("reference") or (with_config[0].name if with_config else None)
    reference = next((m.loaded for m in with_config if m.name == ref_name), None)
    if reference is None:
        raise ValueError(f"visionpilot-eval: field 'reference' must name a checkpoint or delta model (its stored "
                         f"config builds the data), found {ref_name!r}; models: {list(specs)}")
    out_dir = Path(cfg.paths.output_dir)
    overrides = OmegaConf.to_container(cfg.get("data") or {}, resolve=True)
    datamodule = build_eval_datamodule(reference, regions, overrides, manifest_path=out_dir / "splits.json",
                                       governance=governance_kwargs(cfg))
    log.info("evaluating %s on %s (%s split)", list(specs), regions, cfg.split)
    matrix = evaluate_matrix(models, datamodule, regions, reference, split=str(cfg.split),
                             limit_batches=cfg.get("limit_batches"), examples_per_region=plots)
    info = {m.name: {"kind": m.kind, **m.info} for m in models}
    report = build_report(matrix["results"], matrix["regions"], models=list(specs), overall=matrix["overall"],
                          split=str(cfg.split), frames=matrix["frames"], model_info=info,
                          baseline=baseline, metrics=metrics,
                          reference=ref_name, manifest_sha256=matrix["manifest_sha256"])
    paths = write_report(out_dir, report)
    images = write_plots(out_dir / "plots", matrix["examples"], datamodule, reference)
    print(format_markdown(report))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    if images:
        print(f"wrote {len(images)} prediction images (one row per model; labels solid, predictions dashed): "
              f"{out_dir / 'plots'}")
    return report


def write_plots(plots_dir: Path, examples: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]],
                datamodule: Any, reference: Any) -> list[Path]:
    """``<region>_<k>.png`` for each kept frame: every model's predictions on it, one row each.

    Nothing is written when the evaluation data's frames may not leave their region as images (the governance
    policy's decision, as for training's prediction images).
    """
    from visionpilot.viz.draw import save_rgb
    from visionpilot.viz.predictions import render_comparison

    report = getattr(datamodule, "governance_report", None)
    if report is not None and not report.frames_exportable:
        if examples:
            log.info("governance: prediction images withheld (the evaluation frames may not leave their region "
                     "as images)")
        return []
    lane_cameras = reference.config.model.get("lane_cameras")
    written = []
    for region, kept in examples.items():
        for k, (frame, decoded) in enumerate(kept):
            path = plots_dir / f"{region}_{k}.png"  # save_rgb writes atomically and makes the folder
            save_rgb(str(path), render_comparison(frame, decoded, list(datamodule.camera_names),
                                                  lane_cameras=list(lane_cameras) if lane_cameras else None))
            written.append(path)
    return written


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="eval")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
