"""visionpilot-eval: checkpoints and region deltas on two regions write eval.json, eval.md and cross_region.png."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import hydra
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from visionpilot.cli.eval import run
from visionpilot.evaluation.cross_region import build_eval_datamodule, load_eval_model, model_specs
from visionpilot.export.pipeline import build_datamodule
from visionpilot.paths import config_dir
from visionpilot.training.checkpoints import load_checkpoint
from visionpilot.training.finetune import add_adapters, apply_strategy, save_delta, write_checkpoint

SMALL = ["rig=front1", "data.image_size=[64,176]", "data.source.scenes_per_region=3",
         "data.source.frames_per_scene=2", "data.num_workers=0", "data.persistent_workers=false", "data.batch_size=2"]


def _base(tmp_path: Path, *overrides: str) -> Path:
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.output_dir={tmp_path / 'base'}", *SMALL, "data.regions=[us]",
                                          *overrides])
    torch.manual_seed(0)
    net = hydra.utils.instantiate(cfg.model.net)
    return write_checkpoint(tmp_path / "base.ckpt", net, cfg, {"camera_names": ["CAM_FRONT"],
                                                               "image_size": [64, 176], "regions": ["us"]})


def _adapter_delta(tmp_path: Path, base_path: Path) -> Path:
    base = load_checkpoint(base_path)
    state = {k: v.clone() for k, v in base.net.state_dict().items()}
    add_adapters(base.net, rank=4, block_rank=2)
    apply_strategy(base.net, "adapter")
    with torch.no_grad():
        for p in base.net.parameters():
            if p.requires_grad:
                p.add_(0.01)
    return save_delta(tmp_path / "adapter-gb" / "delta.safetensors", base.net, state, base_sha256=base.sha256,
                      region="gb", strategy="adapter", base_path=base_path)


def _eval_cfg(tmp_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("eval", overrides=[f"paths.output_dir={tmp_path / 'eval'}", "data.num_workers=0",
                                          "data.batch_size=2", *overrides])


def test_eval_two_regions_writes_json_md_png(tmp_path: Path) -> None:
    base = _base(tmp_path)
    delta = _adapter_delta(tmp_path, base)
    report = run(_eval_cfg(tmp_path, f"models={{global: '{base}', adapter-gb: '{delta}'}}", "regions=[us,gb]",
                           "split=val+test"))
    out = tmp_path / "eval"
    data = json.loads((out / "eval.json").read_text())
    manifest = json.loads((out / "splits.json").read_text())
    assert data["frames"] == {r: sum(manifest["counts"][s][r]["frames"] for s in ("val", "test")) for r in ("gb", "us")}
    assert data["models"] == ["global", "adapter-gb"] and data["regions"] == ["gb", "us"]
    for model in data["models"]:
        for region in data["regions"]:
            assert {"lane_f1", "det_map50", "det_map"} <= set(data["results"][model][region])
    assert data["model_info"]["adapter-gb"]["kind"] == "delta" and data["targets"]["adapter-gb"] == "gb"
    assert {(g["model"], g["metric"]) for g in data["gains"]} == {("adapter-gb", "lane_f1"),
                                                                  ("adapter-gb", "det_map50")}
    md = (out / "eval.md").read_text()
    assert "| model | gb | us |" in md and "## Gains over `global`" in md
    assert cv2.imread(str(out / "cross_region.png")) is not None
    assert report["models"] == data["models"] and report["split"] == "val+test"
    # plots=2 (the default): each region's first two frames, both models' predictions in one image, a row each
    assert sorted(p.name for p in (out / "plots").iterdir()) == ["gb_0.png", "gb_1.png", "us_0.png", "us_1.png"]
    image = cv2.imread(str(out / "plots" / "gb_0.png"))
    assert image.shape[0] == 2 * (20 + 64) + 22  # two rows (a name strip over front1's 64-px camera), one legend


@pytest.mark.parametrize("plots", ["-1", "two"])
def test_eval_refuses_a_bad_plot_count_before_loading_anything(tmp_path: Path, plots: str) -> None:
    with pytest.raises(ValueError, match=r"field 'plots' \(frames drawn per region\) must be an integer >= 0, "
                                         r"found (-1|'two')"):
        run(_eval_cfg(tmp_path, f"models=[{tmp_path / 'missing.ckpt'}]", "regions=[us]", f"plots={plots}"))


def test_eval_asks_for_models_by_name_and_evaluates_every_region_by_default(tmp_path: Path) -> None:
    # Without models= it was omegaconf's MissingMandatoryValue traceback; without regions= the same, where a user of
    # a cross-region matrix expects every region of the data.
    with pytest.raises(ValueError, match=r"visionpilot-eval: field 'models' is required: .* "
                                         r"e\.g\. models=\[runs/demo/checkpoints/last\.ckpt\]"):
        run(_eval_cfg(tmp_path))
    assert _eval_cfg(tmp_path, "models=[a.ckpt]").regions == "global"


def test_eval_refuses_models_of_another_input_size(tmp_path: Path) -> None:
    base = _base(tmp_path)
    with pytest.raises(ValueError, match=r"model 'base' .* field 'image_size' is \[64, 176\], but the evaluation "
                                         r"data has \[64, 160\]"):
        run(_eval_cfg(tmp_path, f"models=['{base}']", "regions=[us]", "baseline=null", "data.image_size=[64,160]",
                      "reference=base"))


def test_model_specs_names_and_onnx_without_runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert model_specs(["runs/g/checkpoints/last.ckpt", "runs/ft/adapter-gb/delta.safetensors", "m.onnx"]) == {
        "g": "runs/g/checkpoints/last.ckpt", "adapter-gb": "runs/ft/adapter-gb/delta.safetensors", "m": "m.onnx"}
    with pytest.raises(ValueError, match="two models would be named 'g'"):
        model_specs(["runs/g/checkpoints/last.ckpt", "runs/g/checkpoints/best.ckpt"])
    # A run folder with '+' in its name (settings): named by the delta's folder, not by what follows its '+'.
    base, delta = tmp_path / "lr+aug" / "checkpoints" / "last.ckpt", tmp_path / "ft+gb" / "delta.safetensors"
    for path in (base, delta):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"")
    assert list(model_specs([f"{base}+{delta}"])) == ["ft+gb"]
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"")
    # An installation without the export: no submodule to import, and none already bound on the package.
    monkeypatch.setitem(sys.modules, "visionpilot.export.runtime", None)
    if "visionpilot.export" in sys.modules:
        monkeypatch.delattr(sys.modules["visionpilot.export"], "runtime", raising=False)
    with pytest.raises(RuntimeError, match="needs visionpilot.export.runtime"):
        load_eval_model("m", onnx)


@pytest.mark.slow
def test_onnx_model_scores_like_its_checkpoint(tmp_path: Path) -> None:
    onnx_export = pytest.importorskip("visionpilot.export.onnx_export")
    base = _base(tmp_path)
    model = onnx_export.export_onnx(load_checkpoint(base).net, (64, 176), 1, raw_outputs=False)
    path = onnx_export.save_onnx_atomic(model, tmp_path / "global.onnx")
    report = run(_eval_cfg(tmp_path, f"models={{global: '{base}', global-onnx: '{path}'}}", "regions=[us]",
                           "limit_batches=2"))
    torch_metrics, onnx_metrics = report["results"]["global"]["us"], report["results"]["global-onnx"]["us"]
    assert report["model_info"]["global-onnx"]["kind"] == "onnx"
    for key in ("lane_f1", "det_map50"):
        assert onnx_metrics[key] == pytest.approx(torch_metrics[key], abs=0.02)


def test_eval_refuses_a_baseline_that_names_no_model_before_loading_anything(tmp_path: Path) -> None:
    # It was skipped silently: a misspelt baseline gave a report without gains after evaluating every model.
    with pytest.raises(ValueError, match=r"field 'baseline': expected the name of an evaluated model \(base\), "
                                         r"found 'glbal'"):
        run(_eval_cfg(tmp_path, f"models=[{tmp_path / 'base.ckpt'}]", "regions=[us]", "baseline=glbal"))


def test_eval_baseline_defaults_to_the_model_named_global_if_any(tmp_path: Path) -> None:
    # null, not "global": an explicit name must be a model, and most evaluations have no model named global.
    assert _eval_cfg(tmp_path, "models=[a.ckpt]", "regions=[us]").baseline is None


def test_eval_takes_one_metric_name_as_a_one_metric_list(tmp_path: Path) -> None:
    # metrics=det_map50 was iterated letter by letter: no metric "d", "e", ... so the report had no table at all.
    base = _base(tmp_path)
    report = run(_eval_cfg(tmp_path, f"models=['{base}']", "regions=[us]", "metrics=det_map50", "plots=0",
                           "limit_batches=1"))
    assert report["primary_metrics"] == ["det_map50"]
    assert "det_map50" in (tmp_path / "eval" / "eval.md").read_text()


def test_eval_refuses_metrics_that_are_not_names_before_loading_anything(tmp_path: Path) -> None:
    # metrics=null failed in the report, after every model had been evaluated.
    with pytest.raises(ValueError, match=r"field 'metrics' must be a metric name or a list of them .*found None"):
        run(_eval_cfg(tmp_path, f"models=[{tmp_path / 'missing.ckpt'}]", "regions=[us]", "metrics=null"))


@pytest.mark.parametrize("split", ["val+val", "train", "val+", ""])
def test_a_split_other_than_val_test_or_both_once_is_refused_before_reading(split: str) -> None:
    # val+val evaluated every val frame twice: frame counts doubled, the metrics of a duplicated set
    from visionpilot.evaluation.cross_region import evaluate_matrix

    with pytest.raises(ValueError, match=r"field 'split': expected 'val', 'test' or 'val\+test'"):
        evaluate_matrix([], None, [], None, split=split)  # refused before the data module is touched


def test_a_training_runs_frame_cache_is_not_loaded_to_evaluate_or_export(tmp_path: Path) -> None:
    """The matrix reads each frame once and an export a few: ``data.cache=ram`` stored by the training run would only
    add a pass over every frame of the splits (all of them, for the export's setup)."""
    base = load_checkpoint(_base(tmp_path, "data.cache=ram"))
    assert base.config.data.cache == "ram"
    overrides = OmegaConf.to_container(_eval_cfg(tmp_path).data, resolve=True)
    assert build_eval_datamodule(base, ["us"], overrides).frame_cache is None
    exported = build_datamodule(base, ["us"], batch_size=2)
    assert exported.frame_cache is None and exported.datasets
