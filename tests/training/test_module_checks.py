"""The LightningModule's checks of its settings and the training callbacks' arithmetic, on tiny stand-ins."""

from __future__ import annotations

import functools
import time
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from visionpilot.training.callbacks import Throughput
from visionpilot.training.module import NonFiniteLossError, PerceptionModule


class _Net(nn.Module):
    """Two image heads with the loss-term names of the real net (``"<head>.<term>"``)."""

    def __init__(self) -> None:
        super().__init__()
        self.heads = nn.ModuleDict({"lanes_2d": nn.Linear(2, 2), "objects_2d": nn.Linear(2, 2)})

    def loss(self, outputs: dict, batch: dict) -> dict[str, torch.Tensor]:  # noqa: ARG002
        return {"lanes_2d.exist": torch.tensor(1.0), "lanes_2d.position": torch.tensor(2.0),
                "objects_2d.heatmap": torch.tensor(4.0)}


def _module(**kwargs) -> PerceptionModule:  # noqa: ANN003
    optimizer = functools.partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.01)
    return PerceptionModule(_Net(), optimizer, **kwargs)


def test_loss_weights_refuse_a_key_that_names_no_loss_term_or_head() -> None:
    module = _module(loss_weights={"lanes_2d.postion": 0.5})  # a typo: silently weighted nothing
    with pytest.raises(ValueError, match=r"field 'model.loss_weights.lanes_2d.postion': expected a loss term or a "
                                         r"head of the net.*'lanes_2d.position'.*found no such term"):
        module._total_loss(module.net.loss({}, {}))
    with pytest.raises(ValueError, match=r"field 'model.loss_weights.lanes_2d': expected a number >= 0, found 'x'"):
        _module(loss_weights={"lanes_2d": "x"})


def test_loss_weights_weigh_terms_and_heads_and_read_nested_keys() -> None:
    # A command-line override +model.loss_weights.lanes_2d.position=0.5 arrives nested.
    module = _module(loss_weights={"lanes_2d": {"position": 0.5}, "objects_2d": 0.25})
    assert float(module._total_loss(module.net.loss({}, {}))) == pytest.approx(1.0 + 0.5 * 2.0 + 0.25 * 4.0)


def _schedule(module: PerceptionModule, **trainer) -> torch.optim.lr_scheduler.LRScheduler:  # noqa: ANN003
    module._trainer = SimpleNamespace(**trainer)
    return module.configure_optimizers()["lr_scheduler"]["scheduler"]


@pytest.mark.parametrize("estimated", [float("inf"), -1])
def test_a_run_of_unknown_length_is_refused_instead_of_a_schedule_of_one_step(estimated: float) -> None:
    """max_steps=-1 with max_epochs=-1 (inf: crashed on int(inf)), or with a training set of unknown length (-1:
    a one-step schedule, so the whole run trained at min_lr_ratio * lr)."""
    with pytest.raises(ValueError, match=r"trainer.max_steps: expected a number of steps .*found -1"):
        _schedule(_module(), estimated_stepping_batches=estimated, max_steps=-1, max_epochs=-1)


def test_warmup_and_cosine_are_stepped_per_optimizer_step_down_to_min_lr_ratio() -> None:
    for warmup, warm_steps in ((0.1, 10), (10, 10), (0, 0)):
        scheduler = _schedule(_module(warmup_steps=warmup, min_lr_ratio=0.1), estimated_stepping_batches=100,
                              max_steps=100, max_epochs=-1)
        assert scheduler.get_last_lr()[0] == pytest.approx(1e-3 / max(warm_steps, 1) if warm_steps else 1e-3)
        lrs = []
        for _ in range(100):
            scheduler.optimizer.step()
            scheduler.step()
            lrs.append(scheduler.get_last_lr()[0])
        if warm_steps:
            assert lrs[warm_steps - 1] == pytest.approx(1e-3)  # the peak right after the warm-up
        assert lrs[-1] == pytest.approx(1e-4)  # min_lr_ratio * lr at max_steps
    with pytest.raises(ValueError, match=r"field 'model.warmup_steps': expected a count >= 0 .*found -5"):
        _module(warmup_steps=-5)
    for ambiguous in (1.0, 2.5):  # neither a fraction of the run nor a count (they meant 1 and 2 steps)
        with pytest.raises(ValueError, match=rf"field 'model.warmup_steps': expected a count .*found {ambiguous}"):
            _module(warmup_steps=ambiguous)
    assert _module(warmup_steps=100.0).hparams.warmup_steps == 100.0  # a whole number as a float is a count
    with pytest.raises(ValueError, match=r"field 'model.min_lr_ratio': expected a number in \[0, 1\], found 2"):
        _module(min_lr_ratio=2)


class _NormNet(nn.Module):
    """A BatchNorm before two heads; ``lanes_nan``: the lane term is NaN on every batch."""

    def __init__(self, lanes_nan: bool = False) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(2)
        self.heads = nn.ModuleDict({"objects_2d": nn.Linear(2, 1), "lanes_2d": nn.Linear(2, 1)})
        self.lanes_nan = lanes_nan

    def forward(self, images: torch.Tensor, intrinsics: torch.Tensor, extrinsics: torch.Tensor) -> dict:  # noqa: ARG002
        x = self.bn(images)
        return {"objects_2d.score": self.heads["objects_2d"](x), "lanes_2d.score": self.heads["lanes_2d"](x)}

    def loss(self, outputs: dict, batch: dict) -> dict[str, torch.Tensor]:  # noqa: ARG002
        lanes = outputs["lanes_2d.score"].pow(2).mean()
        return {"objects_2d.heatmap": outputs["objects_2d.score"].pow(2).mean(),
                "lanes_2d.exist": lanes * float("nan") if self.lanes_nan else lanes}


class _NormFrames(Dataset):
    """Frames of two values; ``inf_frame`` holds an Inf (a corrupt image)."""

    def __init__(self, inf_frame: int | None = None) -> None:
        self.inf_frame = inf_frame

    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int) -> dict:
        images = torch.tensor([float(i), float("inf") if i == self.inf_frame else -float(i)])
        return {"images": images, "intrinsics": torch.zeros(1), "extrinsics": torch.zeros(1), "frame_id": f"f{i}"}


def _fit_norm_net(net: _NormNet, frames: _NormFrames, **kwargs) -> tuple[PerceptionModule, L.Trainer]:  # noqa: ANN003
    module = PerceptionModule(net, functools.partial(torch.optim.AdamW, lr=1e-2), warmup_steps=0, **kwargs)
    trainer = L.Trainer(accelerator="cpu", max_steps=3, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, DataLoader(frames, batch_size=2))
    return module, trainer


def test_a_skipped_batch_leaves_no_trace_in_the_running_statistics() -> None:
    """nan_policy=skip skipped the update of a batch with an Inf activation, but its forward had already made every
    BatchNorm running mean Inf and variance NaN, and so every later validation and checkpoint."""
    module, trainer = _fit_norm_net(_NormNet(), _NormFrames(inf_frame=2), nan_policy="skip")
    bn = module.net.bn
    assert module.skipped_batches == 1 and trainer.global_step == 3
    assert torch.isfinite(bn.running_mean).all() and torch.isfinite(bn.running_var).all()
    # Frames 0, 1 and 4, 5 only (means +-0.5 and +-4.5, momentum 0.1 from 0).
    assert int(bn.num_batches_tracked) == 2
    assert bn.running_mean.tolist() == pytest.approx([0.9 * 0.1 * 0.5 + 0.1 * 4.5, -(0.9 * 0.1 * 0.5 + 0.1 * 4.5)])


@pytest.mark.parametrize("nan_policy", ["raise", "skip"])
def test_a_non_finite_term_weighted_zero_neither_stops_nor_skips_training(nan_policy: str) -> None:
    """A term weighted 0 is not part of the loss, but its NaN stopped the run (or, skipping, skipped every batch)."""
    module, trainer = _fit_norm_net(_NormNet(lanes_nan=True), _NormFrames(), nan_policy=nan_policy,
                                    loss_weights={"lanes_2d": 0})
    assert trainer.global_step == 3 and module.skipped_batches == 0


def test_finite_gradients_whose_norm_overflows_are_named_as_such() -> None:
    """Their sum of squares overflows float32, so the norm is Inf with no Inf gradient: the error said "in 0
    parameter(s), e.g. []"."""
    net = _NormNet()
    net.heads["objects_2d"].weight.register_hook(lambda g: torch.full_like(g, 1e30))
    with pytest.raises(NonFiniteLossError, match=r"every gradient finite but their norm overflowing, e\.g\. "
                                                 r"\['net\.heads\.objects_2d\.weight'"):
        _fit_norm_net(net, _NormFrames())


# --- Throughput -------------------------------------------------------------------------------------------------
class _Frames(Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"images": torch.zeros(2)}


class _SlowValidation(L.LightningModule):
    """Instant training steps and a slow validation: the run never waits for data."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 1)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:  # noqa: ARG002
        return self.layer(batch["images"]).sum()

    def validation_step(self, batch: dict, batch_idx: int) -> None:  # noqa: ARG002
        time.sleep(0.1)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Frames(), batch_size=1)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_Frames(), batch_size=1)


def test_throughput_does_not_count_validation_as_waiting_for_data(tmp_path) -> None:  # noqa: ANN001
    throughput = Throughput(warmup_steps=0)
    trainer = L.Trainer(accelerator="cpu", max_steps=8, val_check_interval=2, limit_val_batches=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[throughput], default_root_dir=tmp_path)
    trainer.fit(_SlowValidation())
    summary = throughput.summary()
    assert throughput.frames == 8
    # Three mid-epoch validations of 0.2 s each used to count as data wait (0.99 of the time) and as time per frame.
    assert summary["train/data_wait_fraction"] < 0.5, summary
    assert summary["train/frames_per_s"] > 8 / 0.6, summary


class _SlowSave(L.Callback):
    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        time.sleep(0.1)


def test_throughput_does_not_count_periodic_checkpoints_as_waiting_for_data(tmp_path) -> None:  # noqa: ANN001
    from lightning.pytorch.callbacks import ModelCheckpoint

    throughput = Throughput(warmup_steps=0)
    trainer = L.Trainer(accelerator="cpu", max_steps=8, limit_val_batches=0, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                        callbacks=[throughput, _SlowSave(), ModelCheckpoint(tmp_path, every_n_train_steps=2,
                                                                            save_top_k=-1)])
    trainer.fit(_SlowValidation())
    summary = throughput.summary()
    assert len(list(tmp_path.glob("*.ckpt"))) == 4 and throughput.frames == 8
    # Four saves of 0.1 s each between steps counted as data wait (0.99 of the time) and as time per frame.
    assert summary["train/data_wait_fraction"] < 0.5, summary
    assert summary["train/frames_per_s"] > 8 / 0.4, summary


def test_throughput_waits_for_the_gpu_before_reading_the_clock(monkeypatch) -> None:  # noqa: ANN001
    """CUDA steps are queued, not done, when Lightning's batch-end hook runs: unsynchronised, the GPU's time on them
    was counted as the next wait for data. A measured step is synchronised at both ends, and so is the step before it
    (its end starts the wait); one step in ``cuda_every`` is measured, so training keeps its CPU/GPU overlap."""
    from types import SimpleNamespace

    clock = iter(range(1000))
    monkeypatch.setattr(time, "perf_counter", lambda: float(next(clock)))
    synced: list[int] = []
    meter = Throughput(warmup_steps=2, cuda_every=3)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: synced.append(meter._steps))
    gpu, batch = SimpleNamespace(device=torch.device("cuda", 1)), {"images": torch.zeros(3, 2)}
    for step in range(9):
        meter.on_train_batch_start(None, gpu, batch, step)
        meter.on_train_batch_end(None, gpu, None, batch, step)
    # Steps 2, 5 and 8 measured: synchronised at the end of steps 1, 4 and 7 (when the counter already names the
    # next step) and at their own start and end; no other step waits for the GPU.
    assert synced == [2, 2, 2, 5, 5, 5, 8, 8, 8] and meter.frames == 9
    # Clock reads per step: start, end (+1 where the next step is measured); each measured step: wait 1, busy 1.
    assert meter.wait == meter.busy == 3.0
    cpu = Throughput(warmup_steps=2)
    for step in range(9):
        cpu.on_train_batch_start(None, SimpleNamespace(device=torch.device("cpu")), batch, step)
        cpu.on_train_batch_end(None, SimpleNamespace(device=torch.device("cpu")), None, batch, step)
    assert len(synced) == 9 and cpu.frames == 21  # every step after the warm-up, no sync
    with pytest.raises(ValueError, match="field 'cuda_every' must be a positive integer, found 0"):
        Throughput(cuda_every=0)


def test_optimized_metric_that_training_did_not_produce_is_an_error(monkeypatch, tmp_path) -> None:  # noqa: ANN001
    """A sweeper's objective with a typo was returned as None after the whole training, with no word why."""
    from omegaconf import OmegaConf

    from visionpilot.cli.train import main

    metrics = {"val/lane_f1": 0.5, "val/loss": 1.0, "train/loss": 2.0}
    monkeypatch.setattr("visionpilot.training.train.train", lambda cfg: (metrics, {}))
    cfg = OmegaConf.create({"paths": {"output_dir": str(tmp_path)}, "optimized_metric": "val/lane_f1"})
    assert main.__wrapped__(cfg) == 0.5
    cfg.optimized_metric = "val/lane_f"
    with pytest.raises(ValueError, match=r"field 'optimized_metric': expected a key of metrics.json, one of "
                                         r"\['train/loss', 'val/lane_f1', 'val/loss'\]; found 'val/lane_f'"):
        main.__wrapped__(cfg)


def test_compile_keeps_the_checkpoint_keys_so_a_run_resumes_with_or_without_it() -> None:
    """model.compile=true stored the weights as ``net._orig_mod.*``: resuming with compile=false (or a compiled run
    from a plain checkpoint) failed in Lightning's strict load. The compile itself is lazy: nothing compiles here."""
    compiled, plain = _module(compile=True), _module()
    compiled.setup("fit")
    assert set(compiled.state_dict()) == set(plain.state_dict())
    # A checkpoint written by a compiled run before this fix still loads, into either.
    old = {"state_dict": {k.replace("net.", "net._orig_mod.", 1): v for k, v in plain.state_dict().items()}}
    for module in (compiled, plain):
        module.on_load_checkpoint(old)
        module.load_state_dict(old["state_dict"])
