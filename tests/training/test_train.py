"""visionpilot-train end to end on tiny settings: every model config and backbone, overfitting, NaN losses, resume."""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from lightning.pytorch.utilities.model_summary import ModelSummary

from visionpilot.paths import config_dir
from visionpilot.training.callbacks import TimeBudget
from visionpilot.training.fault_tolerance import resolve_ckpt_path
from visionpilot.training.flops import count_flops
from visionpilot.training.module import NonFiniteLossError
from visionpilot.training.train import build, train

TINY = ["data.image_size=[64,176]", "data.source.scenes_per_region=3", "data.source.frames_per_scene=2",
        "data.num_workers=0", "data.persistent_workers=false", "data.batch_size=2", "logger=csv"]


def _cfg(tmp_path: Path, overrides: list[str], base: list[str] = TINY):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name="train", overrides=[f"paths.output_dir={tmp_path}", *base, *overrides])


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny", "small", "base"])
def test_every_model_config_runs_fast_dev_run(tmp_path: Path, model: str) -> None:
    metrics, objects = train(_cfg(tmp_path, [f"model={model}", "model/bev=tiny", "rig=front1", "region=de",
                                             "debug=fdr"]))
    assert metrics["train/steps"] == 1 and "val/loss" in metrics
    # Decode shapes are fixed: the same for two different batches (different object and lane counts).
    net = objects["model"].net.eval()
    dm = objects["datamodule"]
    shapes = []
    for loader in (dm.val_dataloader(), dm.test_dataloader()):  # two different scenes
        batch = next(iter(loader))
        with torch.no_grad():
            decoded = net.decode(net(batch["images"], batch["intrinsics"], batch["extrinsics"]), (64, 176))
        shapes.append({k: tuple(v.shape[1:]) for k, v in decoded.items()})
    assert shapes[0] == shapes[1]
    assert {"lanes_2d.points", "objects_2d.boxes", "bev.objects_boxes", "bev.lanes_points"} <= set(shapes[0])
    # Lightning's model summary counts the forward FLOPs of one frame of the rig (it printed "Total FLOPs: 0").
    module = objects["model"]
    (example,) = module.example_input_array
    assert example["images"].shape[:2] == (1, 1)
    with torch.no_grad():
        assert ModelSummary(module).total_flops == count_flops(lambda: net(*example.values())) > 0


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["regnety_400mf", "regnety_800mf", "resnet18", "resnet34", "resnet50",
                                      "efficientnet_b0", "mobilenet_v3_large"])
def test_every_backbone_runs_fast_dev_run(tmp_path: Path, backbone: str) -> None:
    metrics, _ = train(_cfg(tmp_path, [f"model/backbone={backbone}", "rig=front1", "region=de", "debug=fdr"]))
    assert metrics["train/steps"] == 1 and torch.isfinite(torch.tensor(metrics["train/loss"]))


@pytest.mark.slow
@pytest.mark.parametrize(("experiment", "cameras", "regions"), [
    ("demo", 6, ["cn", "de", "gb", "in", "sg", "us"]), ("region_study", 1, ["us", "de", "cn"])])
def test_experiment_configs_run_fast_dev_run(tmp_path: Path, experiment: str, cameras: int,
                                             regions: list[str]) -> None:
    metrics, objects = train(_cfg(tmp_path, [f"experiment={experiment}", "debug=fdr"]))
    assert metrics["train/steps"] == 1 and torch.isfinite(torch.tensor(metrics["train/loss"]))
    assert len(objects["datamodule"].camera_names) == cameras
    assert sorted(objects["datamodule"].selected_regions) == sorted(regions)
    # The 2D lane head runs on the rig's lane cameras only (nuscenes6: CAM_FRONT, CAM_BACK; front1: its one).
    assert objects["model"].net.head_cameras == ({"lanes_2d": [1, 4]} if cameras == 6 else {"lanes_2d": [0]})


@pytest.mark.slow
def test_mixed_precision_trains_and_validates_in_float32(tmp_path: Path) -> None:
    """trainer=gpu trains in bf16-mixed: losses, decoding, metrics and the prediction PNGs must take the heads' bf16
    answers (the PNG callback failed on bf16 tensors at the first validation). CPU autocast runs the same path."""
    metrics, objects = train(_cfg(tmp_path, ["model/bev=tiny", "rig=front1", "region=de", "debug=fdr",
                                             "trainer.precision=bf16-mixed"]))
    assert metrics["train/steps"] == 1 and torch.isfinite(torch.tensor(metrics["train/loss"]))
    assert "val/lane_f1" in metrics and "val/bev_map" in metrics
    module = objects["model"]
    (_, decoded), *_ = module.val_examples
    floats = {k: v.dtype for k, v in decoded.items() if v.is_floating_point()}
    assert floats and set(floats.values()) == {torch.float32}, floats
    assert list((tmp_path / "plots").glob("val_*.png"))


@pytest.mark.parametrize(("native", "precision"), [(True, "bf16-mixed"), (False, "32-true")])
def test_the_demo_spends_its_minutes_by_what_the_cpu_computes_natively(tmp_path: Path, monkeypatch, native: bool,
                                                                        precision: str) -> None:
    """experiment=demo: bf16 autocast where bf16 is in hardware, float32 elsewhere (emulated bf16 is slower than
    float32); as many steps as 8 minutes hold, at most 2,000; validation at the last step either way."""
    monkeypatch.setattr("visionpilot.utils.resolvers.native_bf16", lambda: native)
    cfg = _cfg(tmp_path, ["experiment=demo"], base=[])
    assert cfg.trainer.precision == precision
    assert cfg.trainer.max_steps == cfg.trainer.val_check_interval == 2000
    assert cfg.data.cache == "ram"  # frames rendered once: the loader's rendering slowed every step by a third
    assert _cfg(tmp_path, ["experiment=demo", "debug=fdr"], base=[]).data.cache is None  # not for one batch
    budget = hydra.utils.instantiate(cfg.callbacks.time_budget)
    assert isinstance(budget, TimeBudget) and budget.minutes == 8
    # a user's choice wins over the machine's
    cfg = _cfg(tmp_path, ["experiment=demo", "trainer.precision=32-true", "trainer.max_steps=40",
                          "callbacks.time_budget=null"], base=[])
    assert (cfg.trainer.precision, cfg.trainer.max_steps, cfg.trainer.val_check_interval) == ("32-true", 40, 40)
    assert cfg.callbacks.time_budget is None
    # on a GPU the GPU decides, not the host's CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for gpu_bf16, expected in ((True, "bf16-mixed"), (False, "32-true")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True, b=gpu_bf16: b)
        cfg = _cfg(tmp_path, ["experiment=demo", "trainer=gpu"], base=[])
        assert cfg.trainer.precision == expected


class _LossRecorder(L.Callback):
    def __init__(self) -> None:
        self.history: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self.history.append({k[len("train/"):]: float(v) for k, v in trainer.callback_metrics.items()
                             if k.startswith("train/") and "." in k and not k.endswith(("_step", "_epoch"))})


@pytest.mark.slow
def test_overfit_four_frames_reduces_every_loss_term_tenfold(tmp_path: Path) -> None:
    """debug=overfit: 4 fixed frames, one batch; every loss term of every head (2D and BEV) falls >= 10x."""
    # Not TINY's data overrides: command-line values beat the debug group's, and debug=overfit must be tested as
    # a user runs it (one batch of the same 4 frames every step).
    cfg = _cfg(tmp_path, ["debug=overfit", "rig=front1", "model/bev=tiny", "data.image_size=[64,176]"],
               base=["logger=csv"])
    objects = build(cfg)
    dm = objects["datamodule"]
    dm.setup("fit")
    assert len(dm.train_dataloader()) == 1 and len(dm.train_dataloader().dataset) == 4
    recorder = _LossRecorder()
    objects["trainer"].callbacks.append(recorder)
    objects["trainer"].fit(objects["model"], objects["datamodule"])
    first, last = recorder.history[0], recorder.history[-10:]
    assert len(first) >= 12, f"expected every head's terms, found {sorted(first)}"
    ratios = {k: first[k] / max(sum(h[k] for h in last) / len(last), 1e-12) for k in first}
    slow = {k: round(r, 1) for k, r in ratios.items() if r < 10 and first[k] > 1e-3}
    assert not slow, f"loss terms that fell less than 10x: {slow} (all ratios {ratios})"


def _poison(module, term: str, at_step: int) -> None:  # noqa: ANN001
    """Make ``term`` NaN from step ``at_step`` on (monkeypatching the net's loss)."""
    original = module.net.loss

    def loss(outputs, batch):  # noqa: ANN001, ANN202
        losses = original(outputs, batch)
        if module.global_step >= at_step:
            losses[term] = losses[term] * float("nan")
        return losses

    module.net.loss = loss


def test_nan_loss_stops_with_step_and_term(tmp_path: Path) -> None:
    objects = build(_cfg(tmp_path, ["rig=front1", "region=de", "trainer.max_steps=5", "trainer.max_epochs=-1",
                                    "trainer.limit_val_batches=0"]))
    _poison(objects["model"], "objects_2d.heatmap", 2)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 2 .*'objects_2d.heatmap' = nan"):
        objects["trainer"].fit(objects["model"], objects["datamodule"])


def test_nan_loss_skip_policy_counts_and_continues(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, ["rig=front1", "region=de", "trainer.max_steps=4", "trainer.max_epochs=-1",
                          "trainer.limit_val_batches=0", "model.nan_policy=skip"])
    objects = build(cfg)
    _poison(objects["model"], "lanes_2d.exist", 0)
    objects["trainer"].fit(objects["model"], objects["datamodule"])
    assert objects["model"].skipped_batches >= 4
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert saved["visionpilot"]["skipped_batches"] == objects["model"].skipped_batches  # restored on resume


@pytest.mark.parametrize("policy", ["raise", "skip"])
def test_a_non_finite_gradient_of_a_finite_loss_never_reaches_the_weights(tmp_path: Path, policy: str) -> None:
    objects = build(_cfg(tmp_path, ["rig=front1", "region=de", "trainer.max_steps=3", "trainer.max_epochs=-1",
                                    "trainer.limit_val_batches=0", f"model.nan_policy={policy}"]))
    module = objects["model"]
    weight = module.net.heads.objects_2d.heatmap[-1].weight
    weight.register_hook(lambda g: g * float("nan") if module.global_step == 1 else g)  # an overflow at step 1
    if policy == "raise":
        with pytest.raises(NonFiniteLossError, match=r"non-finite gradient at step 1 .* of a finite loss, in 1 "
                                                     r"parameter\(s\), e.g. \['net.heads.objects_2d"):
            objects["trainer"].fit(module, objects["datamodule"])
    else:
        objects["trainer"].fit(module, objects["datamodule"])
        assert module.skipped_batches == 1 and module.trainer.global_step == 3
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_train_writes_metrics_and_resume_refuses_another_model(tmp_path: Path) -> None:
    run = tmp_path / "run"
    metrics, _ = train(_cfg(run, ["rig=front1", "region=de", "trainer.max_steps=2", "trainer.max_epochs=-1"]))
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["train/steps"] == 2 and "train/loss" in saved
    ckpt = run / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    other = _cfg(tmp_path / "other", ["rig=front1", "region=de", "model.net.neck.out_channels=16",
                                      f"ckpt_path={ckpt}", "trainer.max_steps=4", "trainer.max_epochs=-1"])
    with pytest.raises(ValueError, match=r"(?s)ckpt_path=.*last.ckpt: the checkpoint was trained with a different "
                                         r"model configuration.*differ in shape"):
        train(other)
    # Another optimizer layout: Lightning said only "a different number of parameter groups", without the file.
    other = _cfg(tmp_path / "lr", ["rig=front1", "region=de", "+model.lr_mult.backbone=0.5", f"ckpt_path={ckpt}",
                                   "trainer.max_steps=4", "trainer.max_epochs=-1"])
    with pytest.raises(ValueError, match=r"ckpt_path=.*last.ckpt: field 'model.lr_mult' is \{'backbone': 0.5\} in "
                                         r"this run but \{\} in the checkpoint"):
        train(other)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(ckpt.read_bytes()[:4096])
    other = _cfg(tmp_path / "cut", ["rig=front1", "region=de", f"ckpt_path={truncated}", "trainer.max_steps=4",
                                    "trainer.max_epochs=-1"])
    with pytest.raises(ValueError, match=r"ckpt_path=.*truncated.ckpt: cannot be read as a checkpoint .*truncated "
                                         r"or not a checkpoint"):
        train(other)


def test_skipped_batches_survive_a_resume_and_ddp_refuses_skipping() -> None:
    from types import SimpleNamespace

    from visionpilot.training.module import PerceptionModule

    module = PerceptionModule(torch.nn.Linear(1, 1), optimizer=None, nan_policy="skip")
    module.on_load_checkpoint({"visionpilot": {"skipped_batches": 5}})  # what on_save_checkpoint stores
    assert module.skipped_batches == 5
    module._trainer = SimpleNamespace(world_size=2)  # a DDP run's view from one rank
    with pytest.raises(ValueError, match=r"model.nan_policy=skip works in single-process training only, found 2"):
        module.setup("fit")


def test_checkpoints_are_atomic_without_the_periodic_checkpoint_callback(tmp_path: Path) -> None:
    from visionpilot.training.fault_tolerance import AtomicCheckpointIO

    objects = build(_cfg(tmp_path, ["rig=front1", "region=de", "callbacks.periodic_checkpoint=null"]))
    assert isinstance(objects["trainer"].strategy.checkpoint_io, AtomicCheckpointIO)  # epoch*.ckpt too


def test_a_run_that_max_steps_ends_inside_an_epoch_is_validated_at_its_last_step(tmp_path: Path) -> None:
    # Lightning does not validate when max_steps stops a run inside an epoch: metrics.json would describe the model
    # of an earlier step than last.ckpt. The last validation here is at step 2 of 3, so the final model is validated.
    cfg = _cfg(tmp_path, ["rig=front1", "region=de", "trainer.max_steps=3", "trainer.max_epochs=-1",
                          "trainer.val_check_interval=2", "trainer.check_val_every_n_epoch=null",
                          "data.source.frames_per_scene=8"])
    metrics, objects = train(cfg)
    assert objects["trainer"].num_training_batches > 3  # still inside the first epoch at step 3
    assert metrics["train/steps"] == 3 and metrics["val/step"] == 3
    assert json.loads((tmp_path / "metrics.json").read_text())["val/step"] == 3
    # Prediction images are named by step: both validations of the epoch keep theirs.
    assert {p.name.split("_")[1] for p in (tmp_path / "plots").glob("val_s*.png")} == {"s000002", "s000003"}


def test_a_time_budget_from_the_config_sets_the_run_length_and_its_final_validation(tmp_path: Path, caplog) -> None:
    """The demo's callbacks.time_budget through visionpilot-train: the plan replaces max_steps (here the budget
    holds far more than the upper bound's 8 steps, planned at step 6) and the validation set for the last step
    follows it."""
    budget = ["+callbacks.time_budget._target_=visionpilot.training.callbacks.TimeBudget",
              "+callbacks.time_budget.minutes=60", "+callbacks.time_budget.plan_at=[6]",
              "+callbacks.time_budget.skip_steps=2"]
    cfg = _cfg(tmp_path, ["rig=front1", "region=de", "trainer.max_steps=8", "trainer.max_epochs=-1",
                          "trainer.val_check_interval=8", "trainer.check_val_every_n_epoch=null", *budget])
    with caplog.at_level("INFO"):
        metrics, objects = train(cfg)
    assert metrics["train/steps"] == 8 and metrics["val/step"] == 8
    assert "as many steps as 60 minutes hold (<= 8)" in caplog.text
    assert "time budget 60.0 min" in caplog.text and "-> 8 steps (of at most 8" in caplog.text


def test_a_run_killed_during_its_final_validation_validates_when_rerun_without_training(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # last.ckpt at max_steps is written when training ends, before the final validation and metrics.json: a run
    # killed in between resumed at max_steps, trained nothing, and wrote a metrics.json without validation figures.
    args = ["rig=front1", "region=de", "trainer.max_steps=2", "trainer.max_epochs=-1",
            "callbacks.prediction_images=null"]
    first, _ = train(_cfg(tmp_path, args))
    (tmp_path / "metrics.json").unlink()  # killed during the final validation
    metrics, objects = train(_cfg(tmp_path, args))
    assert objects["model"].train_start_step is None  # resumed at max_steps: the training loop did not start
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["val/step"] == saved["val/step"] == 2 and saved["train/steps"] == 2
    assert saved["val/loss"] == pytest.approx(first["val/loss"])  # the same weights, validated again
    # A rerun of a finished run (its metrics.json holds the last step's validation) still validates nothing.
    monkeypatch.setattr(L.Trainer, "validate", lambda *args, **kwargs: pytest.fail("validated a finished run"))
    rerun, _ = train(_cfg(tmp_path, args))
    assert rerun["val/loss"] == saved["val/loss"]


def test_starting_over_leaves_nothing_of_the_earlier_run_to_resume(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # ckpt_path=never kept the earlier run's checkpoints until this one wrote its own: killed before that and rerun
    # with ckpt_path=auto, it resumed the earlier run (a warning at most, for changed data settings).
    args = ["rig=front1", "region=de", "trainer.max_steps=2", "trainer.max_epochs=-1",
            "callbacks.prediction_images=null"]
    train(_cfg(tmp_path, args))
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    monkeypatch.setattr(L.Trainer, "fit", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))  # killed
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tmp_path, [*args, "ckpt_path=never", "data.regions=[gb]"]))
    assert resolve_ckpt_path("auto", tmp_path) is None  # the rerun starts over too


def test_metrics_json_holds_the_last_validation_and_says_when_it_was_a_subset(tmp_path: Path, monkeypatch) -> None:
    """A metric the last validation could not compute (NaN) must not keep an earlier validation's value; a validation
    on part of the split (trainer.limit_val_batches) is labelled with its frame count and ``val/subset``."""
    from visionpilot.training.module import PerceptionModule

    build_evaluator = PerceptionModule.build_evaluator
    calls = []

    def stub(self, regions):  # noqa: ANN001, ANN202
        evaluator = build_evaluator(self, regions)
        compute = evaluator.compute
        calls.append(1)
        nan = len(calls) > 1
        evaluator.compute = lambda: {**compute(), "lane_f1": float("nan") if nan else 0.5}
        return evaluator

    monkeypatch.setattr(PerceptionModule, "build_evaluator", stub)
    cfg = _cfg(tmp_path, ["rig=front1", "region=de", "trainer.max_steps=2", "trainer.max_epochs=-1",
                          "callbacks.prediction_images=null"])
    metrics, objects = train(cfg)
    assert len(calls) == 2  # one validation per (one-batch) epoch
    assert "val/lane_f1" not in metrics and "val/lane_precision" in metrics
    frames = len(objects["datamodule"].datasets["val"])
    assert (metrics["val/frames"], metrics["val/subset"]) == (frames, 0.0)
    assert "val/lane_f1" not in json.loads((tmp_path / "metrics.json").read_text())

    monkeypatch.setattr(PerceptionModule, "build_evaluator", build_evaluator)
    metrics, _ = train(_cfg(tmp_path / "subset", ["rig=front1", "region=de", "trainer.max_steps=1",
                                                  "trainer.max_epochs=-1", "trainer.limit_val_batches=1", "trainer.val_check_interval=1",
                                                  "callbacks.prediction_images=null", "data.source.frames_per_scene=4"]))
    assert (metrics["val/frames"], metrics["val/subset"]) == (2, 1.0)


@pytest.mark.slow
def test_the_lane_head_runs_on_the_lane_cameras_in_training_and_after_loading(tmp_path: Path) -> None:
    """nuscenes6: the 2D lane head on CAM_FRONT and CAM_BACK (slots 1 and 4) in training, and again in the net that
    load_checkpoint rebuilds (export, evaluation and benchmarks time what training trained)."""
    from visionpilot.training.checkpoints import load_checkpoint
    run = tmp_path / "run"
    _, objects = train(_cfg(run, ["rig=nuscenes6", "region=de", "trainer.max_steps=1", "trainer.max_epochs=-1",
                                  "trainer.limit_val_batches=1"]))
    assert objects["model"].net.head_cameras == {"lanes_2d": [1, 4]}
    loaded = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert loaded.camera_names[1] == "CAM_FRONT" and loaded.net.head_cameras == {"lanes_2d": [1, 4]}
    every = load_checkpoint(run / "checkpoints" / "last.ckpt", config_overrides={"model.lane_cameras": None})
    assert every.net.head_cameras == {}
    with pytest.raises(ValueError, match=r"last.ckpt: model.lane_cameras': \['CAM_X'\] are not cameras of the data"):
        load_checkpoint(run / "checkpoints" / "last.ckpt", config_overrides={"model.lane_cameras": ["CAM_X"]})
