"""visionpilot-train's and visionpilot-finetune's entry points: what they print and what they return to a sweeper.
The training itself is replaced by a stub returning fixed metrics."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from visionpilot.cli import finetune, train

METRICS = {"val/gb/lane_f1": 0.5, "val/lane_f1": 0.5, "val/loss": 1.0}
SUMMARY = {"strategy": "adapter", "trainable_params": 10, "total_params": 100, "delta": "delta.safetensors",
           "delta_bytes": 1000, "checkpoint_bytes": 10000}


@pytest.fixture
def stubbed(monkeypatch: pytest.MonkeyPatch) -> None:
    objects = {"config": OmegaConf.create({"finetune": {"region": "gb"}}), "summary": SUMMARY}
    monkeypatch.setattr("visionpilot.training.train.train", lambda cfg: (METRICS, {}))
    monkeypatch.setattr("visionpilot.training.finetune.finetune", lambda cfg: (METRICS, objects))


@pytest.mark.usefixtures("stubbed")
def test_run_dir_line_names_the_files_the_run_wrote(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The line said metrics.json (and "delta") whatever metrics_file / delta_file named.
    cfg = OmegaConf.create({"paths": {"output_dir": str(tmp_path)}, "metrics_file": "scores.json",
                            "delta_file": "gb.safetensors", "optimized_metric": None})
    train.main.__wrapped__(cfg)
    assert f"run dir: {tmp_path} (scores.json, checkpoints/, plots/)" in capsys.readouterr().out
    finetune.main.__wrapped__(cfg)
    assert (f"run dir: {tmp_path} (checkpoints/finetuned.ckpt, gb.safetensors, scores.json, finetune.json)"
            in capsys.readouterr().out)


@pytest.mark.usefixtures("stubbed")
def test_optimized_metric_that_the_fine_tune_did_not_produce_is_an_error(tmp_path: Path) -> None:
    # As in visionpilot-train: a sweeper's objective with a typo was returned as None after the whole fine-tune.
    cfg = OmegaConf.create({"paths": {"output_dir": str(tmp_path)}, "optimized_metric": "val/gb/lane_f1"})
    assert finetune.main.__wrapped__(cfg) == 0.5
    cfg.optimized_metric = "val/gb/lane_f"
    with pytest.raises(ValueError, match=r"field 'optimized_metric': expected a key of metrics.json, one of "
                                         r"\['val/gb/lane_f1', 'val/lane_f1', 'val/loss'\]; found 'val/gb/lane_f'"):
        finetune.main.__wrapped__(cfg)
