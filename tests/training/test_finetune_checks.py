"""Fine-tuning checks: frozen norm layers stay frozen when Lightning swaps them, a fine-tune resumes only its own
seed, and a malformed region delta is refused naming the file and the field."""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from tests.training.test_finetune import _base, _inputs, _train_cfg
from visionpilot.training import finetune as ft
from visionpilot.training.checkpoints import load_checkpoint
from visionpilot.training.finetune import FinetuneCallback, add_adapters, apply_strategy, merge_delta, save_delta


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
