"""Fine-tuning checks: frozen norm layers stay frozen when Lightning swaps them, a fine-tune resumes only its own
seed and nothing of a run it started over from, a malformed or incomplete region delta or a checkpoint whose
weights do not fit its stored config is refused naming the file and the field, the rounding at the last validation
works with the network on a GPU and the base on the CPU, and the final metrics are those of the rounded model the
delta ships."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import hydra
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

import visionpilot.cli.finetune  # noqa: F401  (registers the open config node finetune.yaml uses)
from tests.training.test_finetune import _base, _inputs, _perturb_trainable, _train_cfg
from visionpilot.paths import config_dir
from visionpilot.training import finetune as ft
from visionpilot.training.checkpoints import file_sha256, load_checkpoint, split_model_spec
from visionpilot.training.finetune import (
    FinetuneCallback,
    add_adapters,
    apply_strategy,
    merge_delta,
    read_delta_metadata,
    save_delta,
)


@pytest.mark.parametrize("strategy", ["heads", "adapter"])
def test_frozen_norms_stay_frozen_after_lightning_converts_them_to_sync_batchnorm(tmp_path: Path,
                                                                                  strategy: str) -> None:
    # trainer.sync_batchnorm=true (trainer=gpu_ddp) makes Lightning's DDP strategy replace every BatchNorm by a new
    # SyncBatchNorm module after the callbacks' setup and before training: the frozen backbone's layers must still
    # be kept in eval mode, so their statistics do not move (the delta would carry them, the features drift).
    net = hydra.utils.instantiate(_train_cfg(tmp_path, "model/bev=tiny").model.net)
    if strategy == "adapter":
        add_adapters(net, rank=4, block_rank=2)
    report = apply_strategy(net, strategy)
    module = nn.Module()
    module.net = net  # stands for the LightningModule (pl_module.net)
    callback = FinetuneCallback(report.frozen_norms, {})
    callback.setup(None, module, "fit")  # type: ignore[arg-type]
    torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)  # what DDPStrategy.setup does (in place below the root)
    assert any(isinstance(m, nn.SyncBatchNorm) for m in net.modules())
    before = {k: v.clone() for k, v in net.state_dict().items() if k.startswith("backbone.") and "running_" in k}
    callback.on_train_start(None, module)  # type: ignore[arg-type]
    module.train()
    callback.on_train_batch_start(None, module, None, 0)  # type: ignore[arg-type]
    net(*_inputs())
    after = net.state_dict()
    moved = sorted(k for k in before if not torch.equal(before[k], after[k]))
    assert not moved, f"{strategy}: frozen backbone BatchNorm statistics moved: {moved[:3]}"


def test_a_finetune_resumes_only_a_run_of_its_own_seed(tmp_path: Path) -> None:
    # `visionpilot-finetune -m ... seed=42,43` puts both seeds in one sweep subdir (<strategy>-<region>): the second
    # must not continue the first's finished checkpoint (no step trained, seed 42's weights shipped as seed 43's).
    info = {"base_sha256": "ab" * 32, "region": "gb", "strategy": "heads", "seed": 42}
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}, "visionpilot": {"finetune": info}}, path)
    ft.check_same_finetune(path, info)  # the same run: resumes
    with pytest.raises(ValueError, match=r"field 'seed' = 42, but this run's is 43"):
        ft.check_same_finetune(path, {**info, "seed": 43})
    older = {k: v for k, v in info.items() if k != "seed"}  # checkpoints written before the seed was recorded
    torch.save({"state_dict": {}, "visionpilot": {"finetune": older}}, path)
    ft.check_same_finetune(path, {**info, "seed": 43})


def test_a_delta_with_a_malformed_header_is_refused_naming_the_file_and_the_field(tmp_path: Path) -> None:
    base_path = _base(tmp_path)
    base = load_checkpoint(base_path)
    state = {k: v.clone() for k, v in base.net.state_dict().items()}
    add_adapters(base.net, rank=4)
    with torch.no_grad():
        base.net.backbone.body.adapter_s8.up.weight.add_(0.01)
    delta = save_delta(tmp_path / "d.safetensors", base.net, state, base_sha256=base.sha256, region="gb",
                       strategy="adapter", base_path=base_path)
    with safe_open(str(delta), framework="pt") as f:
        meta = dict(f.metadata())
    tensors = load_file(delta)

    def edited(name: str, **changes: str | None) -> Path:
        fields = {k: v for k, v in {**meta, **changes}.items() if v is not None}
        save_file(tensors, str(tmp_path / name), metadata=fields)
        return tmp_path / name

    cases = {"no_base.safetensors": ({"base_sha256": None}, r"field 'base_sha256' .*missing"),
             "bad_json.safetensors": ({"adapter": "{rank: 4"}, r"field 'adapter' .*not valid JSON"),
             "bad_key.safetensors": ({"adapter": '{"rank": 4, "kernel": 3}'}, r"field 'adapter' .*'kernel'")}
    for name, (changes, message) in cases.items():
        path = edited(name, **changes)
        with pytest.raises(ValueError, match=message) as err:
            merge_delta(load_checkpoint(base_path).net, path, base.sha256)
        assert name in str(err.value)


def test_resuming_from_an_unreadable_checkpoint_names_the_file(tmp_path: Path) -> None:
    info = {"base_sha256": "ab" * 32, "region": "gb", "strategy": "heads", "seed": 42}
    path = tmp_path / "last.ckpt"
    path.write_bytes(b"PK\x03\x04 cut off")  # a checkpoint write that was interrupted, given as resume=<path>
    with pytest.raises(ValueError, match=r"last\.ckpt: cannot be read as a checkpoint"):
        ft.check_same_finetune(path, info)
    with pytest.raises(FileNotFoundError, match=r"resume=.*missing\.ckpt: no such checkpoint file"):
        ft.check_same_finetune(tmp_path / "missing.ckpt", info)
    ft.check_same_finetune("last", info)  # Lightning's own 'last' / 'hpc' are left to Lightning, as check_resume does


def test_a_checkpoint_whose_weights_do_not_fit_its_stored_config_is_refused_naming_the_file(tmp_path: Path) -> None:
    # A checkpoint written by another version of the model code (a head whose layers changed since): loading it, for
    # a fine-tune's base or one of visionpilot-eval's models, must say which file, which tensor, and both shapes.
    ckpt = torch.load(_base(tmp_path), weights_only=False)
    key = next(k for k in ckpt["state_dict"] if k.startswith("net.heads.") and k.endswith(".weight"))
    ckpt["state_dict"][key] = torch.zeros(3, 3)
    torch.save(ckpt, tmp_path / "older.ckpt")
    with pytest.raises(ValueError, match=r"older\.ckpt: field 'state_dict' does not fit the network its stored config "
                                         rf"(?s:.*){re.escape(key[4:])}: checkpoint \[3, 3\], this model \[") as err:
        load_checkpoint(tmp_path / "older.ckpt")
    assert "ckpt_path" not in str(err.value)  # not a training run's advice
    ckpt["visionpilot"]["config"]["model"]["net"]["_target_"] = "visionpilot.models.gone.Net"  # a class moved since
    torch.save(ckpt, tmp_path / "moved.ckpt")
    with pytest.raises(ValueError, match=r"moved\.ckpt: field 'visionpilot.config.model.net' does not build a network"):
        load_checkpoint(tmp_path / "moved.ckpt")


def test_a_finetune_that_cannot_resume_its_run_dir_names_resume_not_the_base_checkpoint(tmp_path: Path) -> None:
    # In visionpilot-finetune ckpt_path is the base; the checkpoint of the run dir comes from `resume`. Rerunning with
    # another model setting (strategy.rank=8 after rank 4) must name resume= and say how to start over, not advise
    # to "start without ckpt_path" (the base, which a fine-tune cannot do without).
    base = _base(tmp_path)
    ckpts = tmp_path / "ft" / "checkpoints"
    ckpts.mkdir(parents=True)
    info = {"base_sha256": file_sha256(base), "region": "gb", "strategy": "heads", "seed": 42}
    torch.save({"global_step": 2, "state_dict": {},
                "visionpilot": {"finetune": info, "model_signature": {"heads.gone.weight": [4, 4]}}}, ckpts / "last.ckpt")
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("finetune", overrides=[f"paths.output_dir={tmp_path / 'ft'}", f"ckpt_path={base}", "region=gb",
                                             "strategy=heads", "seed=42", "data.num_workers=0", "logger=csv",
                                             "data.persistent_workers=false", "callbacks.progress_bar=null"])
    with pytest.raises(ValueError, match=r"^resume=.*last\.ckpt: (?s:.*)heads\.gone\.weight(?s:.*)resume=never to "
                                         r"start over here") as err:
        ft.finetune(cfg)
    assert "ckpt_path" not in str(err.value)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names the synced files through /proc")
def test_deltas_and_checkpoints_reach_the_disk_before_they_replace_the_previous_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The rename makes a write atomic, not durable: without fsync a power cut right after it can leave an empty
    # delta.safetensors (or base + delta checkpoint) where a whole one was, beside a finetune.json that was synced.
    synced, real_fsync = [], os.fsync

    def fsync(fd: int) -> None:
        synced.append(Path(os.readlink(f"/proc/self/fd/{fd}")).name)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    base_path = _base(tmp_path)  # write_checkpoint
    assert any(name.startswith(".base.ckpt.") for name in synced)
    base = load_checkpoint(base_path)
    state = {k: v.clone() for k, v in base.net.state_dict().items()}
    with torch.no_grad():
        next(p for n, p in base.net.named_parameters() if n.startswith("heads.")).add_(0.01)
    synced.clear()
    delta = save_delta(tmp_path / "d.safetensors", base.net, state, base_sha256=base.sha256, region="gb",
                       strategy="heads")
    assert any(name.startswith(".d.safetensors.") for name in synced) and tmp_path.name in synced  # file, folder
    assert read_delta_metadata(delta)["region"] == "gb" and len(load_file(delta)) == 1


class _OnOtherDevice(torch.Tensor):
    """Stands for a tensor on another device than the network's, so CPU-only CI covers a GPU fine-tune (the base's
    state stays on the CPU, the network trains on the GPU): ``torch.equal`` with it raises as CUDA's kernel does,
    ``.to(device)`` brings it over."""

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func is torch.equal:
            raise RuntimeError("Expected all tensors to be on the same device, but found at least two devices")
        if func is torch.Tensor.to:
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **(kwargs or {})).as_subclass(torch.Tensor)
        return super().__torch_function__(func, types, args, kwargs)


def _rounds_at_the_last_validation(net: nn.Module, base_state: dict[str, torch.Tensor]) -> None:
    trainer = SimpleNamespace(max_steps=2, global_step=2)  # the validation at the last step
    FinetuneCallback([], {}, base_state, torch.float16).on_validation_start(trainer, SimpleNamespace(net=net))
    changed = [v for k, v in net.state_dict().items()
               if k not in base_state or not torch.equal(v.cpu(), base_state[k].to("cpu"))]  # adapters are new
    assert changed and all(torch.equal(v, v.half().float()) for v in changed)  # rounded to what the delta ships


def test_the_last_validation_rounds_a_network_trained_on_another_device_than_the_base() -> None:
    # finetune() keeps the base's state dict on the CPU; the trainer moves the network to the GPU; the rounding before
    # the last validation compared the two with torch.equal, which refuses tensors on two devices: every GPU
    # fine-tune crashed at its last step.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8))
    base_state = {k: v.clone().as_subclass(_OnOtherDevice) for k, v in net.state_dict().items()}
    with torch.no_grad():
        net[0].weight.add_(torch.randn(8, 8) * 0.01)
    _rounds_at_the_last_validation(net, base_state)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_the_last_validation_rounds_a_network_on_the_gpu(tmp_path: Path) -> None:
    base = load_checkpoint(_base(tmp_path))
    base_state = {k: v.clone() for k, v in base.net.state_dict().items()}  # on the CPU, as finetune() keeps it
    add_adapters(base.net, rank=4, block_rank=2)
    apply_strategy(base.net, "adapter")
    with torch.no_grad():
        for p in base.net.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.01)
    _rounds_at_the_last_validation(base.net.cuda(), base_state)


def test_a_finetune_validates_the_rounded_final_model_unless_its_last_validation_did(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # trainer.val_check_interval=2 with max_steps=3: Lightning's last validation is at step 2 and none follows at
    # step 3, so metrics.json and finetune.json described step 2's unrounded weights beside a delta of step 3. As
    # visionpilot-train does, the final model is validated once more (rounded to the delta's float16 first); a run
    # whose last validation was at max_steps (rounded by the callback) is not validated twice; one that max_epochs
    # ends (the callback rounds at max_steps only) is validated again after the rounding.
    base = _base(tmp_path)
    validated: list[tuple[int, bool]] = []  # (step, every changed weight already rounded to float16)
    original = FinetuneCallback.on_validation_start

    def spy(self: FinetuneCallback, trainer: Any, module: Any) -> None:
        original(self, trainer, module)
        changed = ft.changed_tensors(module.net, self.base_state).values()
        validated.append((trainer.global_step, all(torch.equal(v, v.half().float()) for v in changed
                                                   if v.is_floating_point())))

    monkeypatch.setattr(FinetuneCallback, "on_validation_start", spy)

    def run(name: str, *overrides: str) -> tuple[dict[str, float], dict[str, Any]]:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose("finetune", overrides=[
                f"paths.output_dir={tmp_path / name}", f"ckpt_path={base}", "region=gb", "strategy=heads",
                "trainer.val_check_interval=2", "trainer.limit_val_batches=1", "data.num_workers=0",
                "data.persistent_workers=false", "callbacks.progress_bar=null", "callbacks.prediction_images=null",
                "logger=csv", *overrides])
        metrics, _ = ft.finetune(cfg)
        return metrics, json.loads((tmp_path / name / "finetune.json").read_text())

    metrics, summary = run("uneven", "trainer.max_steps=3")
    assert validated == [(2, False), (3, True)]
    assert metrics["val/step"] == summary["metrics"]["val/step"] == summary["steps"] == 3
    assert json.loads((tmp_path / "uneven" / "metrics.json").read_text())["val/step"] == 3
    validated.clear()
    metrics, summary = run("even", "trainer.max_steps=2")
    assert validated == [(2, True)] and metrics["val/step"] == summary["steps"] == 2
    validated.clear()
    metrics, summary = run("epochs", "trainer.max_steps=-1", "trainer.max_epochs=1", "trainer.val_check_interval=1.0",
                           "trainer.check_val_every_n_epoch=1")
    steps = summary["steps"]
    assert validated == [(steps, False), (steps, True)] and metrics["val/step"] == steps


def _heads_finetune_cfg(tmp_path: Path, *overrides: str) -> DictConfig:
    """A quick heads-only GB fine-tune of a tiny base into ``tmp_path/ft`` (one val batch, no loader workers)."""
    base = _base(tmp_path)
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("finetune", overrides=[
            f"paths.output_dir={tmp_path / 'ft'}", f"ckpt_path={base}", "region=gb", "strategy=heads",
            "trainer.limit_val_batches=1", "data.num_workers=0", "data.persistent_workers=false",
            "callbacks.progress_bar=null", "callbacks.prediction_images=null", "logger=csv", *overrides])


def test_a_finetune_killed_during_its_final_validation_validates_when_rerun(tmp_path: Path) -> None:
    # last.ckpt at max_steps is written before the final validation: a fine-tune killed during it resumed at
    # max_steps, trained nothing, and described its delta without validation figures.
    cfg = _heads_finetune_cfg(tmp_path, "trainer.max_steps=2")
    first, _ = ft.finetune(cfg)
    for name in ("metrics.json", "finetune.json", "delta.safetensors", "checkpoints/finetuned.ckpt"):
        (tmp_path / "ft" / name).unlink()  # killed during the final validation: none of these written yet
    metrics, objects = ft.finetune(cfg)
    assert objects["model"].train_start_step is None  # resumed at max_steps: the training loop did not start
    assert metrics["val/step"] == objects["summary"]["metrics"]["val/step"] == objects["summary"]["steps"] == 2
    assert json.loads((tmp_path / "ft" / "metrics.json").read_text())["val/gb/lane_f1"] == first["val/gb/lane_f1"]


def test_starting_over_leaves_nothing_of_the_earlier_finetune_to_resume(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # resume=never kept the earlier fine-tune's checkpoints until the new one ended: killed before that and rerun
    # with resume=auto, it resumed the one with the most steps, the earlier run's (the same base, region, strategy
    # and seed), and shipped its weights as the new fine-tune.
    import lightning as L

    from visionpilot.training.fault_tolerance import resolve_ckpt_path

    ft.finetune(_heads_finetune_cfg(tmp_path, "trainer.max_steps=2"))
    run_dir = tmp_path / "ft"
    assert {p.name for p in (run_dir / "checkpoints").glob("*.ckpt")} == {"last.ckpt", "finetuned.ckpt"}

    def killed(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        raise KeyboardInterrupt  # the new run dies before its first checkpoint

    monkeypatch.setattr(L.Trainer, "fit", killed)
    with pytest.raises(KeyboardInterrupt):
        ft.finetune(_heads_finetune_cfg(tmp_path, "trainer.max_steps=3", "model.optimizer.lr=1e-4", "resume=never"))
    assert resolve_ckpt_path("auto", run_dir) is None  # the rerun starts over too
    assert (run_dir / "delta.safetensors").exists()  # the earlier run's delta stays until a new one replaces it
    # A base kept among the run dir's checkpoints (a fine-tune of a fine-tune) is not removed.
    cfg = _heads_finetune_cfg(tmp_path, "resume=never")
    cfg.ckpt_path = str(run_dir / "checkpoints" / "base.ckpt")
    os.replace(tmp_path / "base.ckpt", cfg.ckpt_path)
    with pytest.raises(KeyboardInterrupt):
        ft.finetune(cfg)
    assert [p.name for p in (run_dir / "checkpoints").glob("*.ckpt")] == ["base.ckpt"]


def _adapter_delta(tmp_path: Path) -> tuple[Path, str, dict[str, torch.Tensor]]:
    """An adapter delta (stage and block adapters, low-rank head updates) of a tiny base: path, base hash, tensors."""
    base_path = _base(tmp_path, "model.net.heads.lanes_2d.classifier=mlp")  # an MLP lane head: large linear layers
    base = load_checkpoint(base_path)
    state = {k: v.clone() for k, v in base.net.state_dict().items()}
    add_adapters(base.net, rank=4, block_rank=2, head_rank=2, head_min_params=4096)
    with torch.no_grad():
        base.net.backbone.body.adapter_s8.up.weight.add_(0.01)
    delta = save_delta(tmp_path / "d.safetensors", base.net, state, base_sha256=base.sha256, region="gb",
                       strategy="adapter", base_path=base_path)
    return base_path, base.sha256, load_file(delta)


def test_an_adapter_delta_missing_adapter_tensors_is_refused_naming_the_file_and_the_tensors(tmp_path: Path) -> None:
    # Every tensor the adapters add is new to the base, so save_delta stores all of them (even an unchanged
    # zero-initialised `up`). A delta without some (edited, cut short, written by other code) merged silently and the
    # network ran with randomly initialised adapter weights.
    base_path, sha256, tensors = _adapter_delta(tmp_path)
    with safe_open(str(tmp_path / "d.safetensors"), framework="pt") as f:
        meta = dict(f.metadata())
    adapter_keys = sorted(k for k in tensors if ".adapter_" in k or ".lora_" in k)
    assert any(".adapter_block_" in k for k in adapter_keys) and any(".lora_" in k for k in adapter_keys)
    gone = [k for k in adapter_keys if k.endswith("down.weight")]
    save_file({k: v for k, v in tensors.items() if k not in gone}, str(tmp_path / "cut.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match=rf"cut\.safetensors: the delta lacks {len(gone)} of the "
                                         rf"{len(adapter_keys)} tensors the base does not have, e\.g\. "
                                         rf"\[{re.escape(repr(gone[0]))}(?s:.*)expected all of them") as err:
        merge_delta(load_checkpoint(base_path).net, tmp_path / "cut.safetensors", sha256)
    assert "'rank': 4" in str(err.value)  # what was expected: the adapters its header records
    merge_delta(load_checkpoint(base_path).net, tmp_path / "d.safetensors", sha256)  # the whole delta merges


def test_a_delta_tensor_of_another_shape_or_name_is_refused_naming_both_shapes(tmp_path: Path) -> None:
    base_path, sha256, tensors = _adapter_delta(tmp_path)
    with safe_open(str(tmp_path / "d.safetensors"), framework="pt") as f:
        meta = dict(f.metadata())
    key = "backbone.body.adapter_s8.up.weight"
    save_file({**tensors, key: tensors[key][:-1].contiguous(), "heads.gone.weight": torch.zeros(2)},
              str(tmp_path / "odd.safetensors"), metadata=meta)
    shape = list(tensors[key].shape)
    with pytest.raises(ValueError, match=rf"odd\.safetensors: the delta does not fit this network: 1 tensors the "
                                         rf"network does not have \(e\.g\. \['heads\.gone\.weight'\]\), 1 of another "
                                         rf"shape (?s:.*){re.escape(key)}: delta \[{shape[0] - 1}, "
                                         rf"(?s:.*)network \[{shape[0]}, "):
        merge_delta(load_checkpoint(base_path).net, tmp_path / "odd.safetensors", sha256)


def test_model_paths_with_plus_signs_load_whole_or_as_base_plus_delta(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Run folders named after their settings hold '+' (lr+aug): 'base+delta' was split at the last '+' of the text,
    # so a delta in such a folder, or named with a '+', could not be loaded either alone or with its base.
    folder = tmp_path / "lr+aug"
    base_path = _base(folder)
    base = load_checkpoint(base_path)
    state = {k: v.clone() for k, v in base.net.state_dict().items()}
    _perturb_trainable(base.net, apply_strategy(base.net, "heads").frozen_norms)
    delta = save_delta(folder / "ft+gb.safetensors", base.net, state, base_sha256=base.sha256, region="gb",
                       strategy="heads", base_path=base_path)
    base.net.eval()
    with torch.no_grad():
        expected = base.net(*_inputs())
        for spec in (delta, f"{base_path}+{delta}"):
            loaded = ft.load_model(spec)
            got = loaded.net(*_inputs())
            assert loaded.path == delta and all(torch.equal(expected[k], got[k]) for k in expected)
    with pytest.raises(FileNotFoundError, match=r"not found: no such file, and no split at a '\+' .*'.*missing"
                                                r"\.ckpt' \(missing\) \+ '.*ft\+gb\.safetensors' \(found\)"):
        ft.load_model(f"{tmp_path / 'missing.ckpt'}+{delta}")
    # Readable two ways (the whole text a file, and also a base and a delta): an error, not a guess.
    monkeypatch.chdir(tmp_path)
    for name in ("a", "b.safetensors", "a+b.safetensors"):
        Path(name).write_bytes(b"")
    with pytest.raises(ValueError, match=r"'a\+b\.safetensors' is ambiguous: it reads as 'a\+b\.safetensors' or as "
                                         r"'a' \+ 'b\.safetensors'"):
        split_model_spec("a+b.safetensors")
    # Nothing on disk to decide (naming models before checking them): the last '+', as a delta named without one.
    assert split_model_spec("runs/x+y/delta.safetensors", must_exist=False) == (Path("runs/x"),
                                                                               Path("y/delta.safetensors"))


def test_a_delta_file_name_that_no_loader_reads_as_a_delta_is_refused_before_training(tmp_path: Path) -> None:
    # load_model, the benchmark and the eval tell a delta by its .safetensors suffix: a delta written as gb.bin
    # was read as a checkpoint ("could not read checkpoint gb.bin: ...") after the whole fine-tune had run.
    cfg = _heads_finetune_cfg(tmp_path, "trainer.max_steps=1", "delta_file=gb.bin")
    with pytest.raises(ValueError, match=r"field 'delta_file': expected a file name ending in \.safetensors .*, "
                                         r"found 'gb\.bin'"):
        ft.finetune(cfg)
    assert not (tmp_path / "ft" / "checkpoints").exists()  # refused before training
