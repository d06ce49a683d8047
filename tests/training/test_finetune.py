"""Fine-tuning: what each strategy freezes, adapters, region deltas (save -> merge is exact), replay, and the run."""

from __future__ import annotations

import json
import operator
from pathlib import Path

import hydra
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

import visionpilot.cli.finetune  # noqa: F401  (registers the open config node finetune.yaml uses)
from visionpilot.data.replay import MixedBatchSampler, ReplayDataModule
from visionpilot.data.sources.synthetic import SyntheticSource
from visionpilot.evaluation.cross_region import load_eval_model
from visionpilot.paths import config_dir
from visionpilot.training import finetune as ft
from visionpilot.training.checkpoints import load_checkpoint
from visionpilot.training.finetune import (
    STRATEGIES,
    FinetuneCallback,
    LoRALinear,
    add_adapters,
    apply_strategy,
    delta_dtype,
    finetune,
    load_model,
    merge_delta,
    read_delta_metadata,
    round_changed,
    save_delta,
    write_checkpoint,
)

TINY = ["rig=front1", "data.image_size=[64,176]", "data.source.scenes_per_region=3", "data.source.frames_per_scene=2",
        "data.num_workers=0", "data.persistent_workers=false", "data.batch_size=2", "data.regions=[us,gb]"]


def _train_cfg(tmp_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("train", overrides=[f"paths.output_dir={tmp_path}", *TINY, *overrides])


def _base(tmp_path: Path, *overrides: str) -> Path:
    """A stand-alone base checkpoint (random weights) as visionpilot-train would store it."""
    cfg = _train_cfg(tmp_path / "base", *overrides)
    torch.manual_seed(0)
    net = hydra.utils.instantiate(cfg.model.net)
    meta = {"camera_names": ["CAM_FRONT"], "image_size": [64, 176], "regions": ["us"], "frame_counts": {"us": 4}}
    return write_checkpoint(tmp_path / "base.ckpt", net, cfg, meta)


def _inputs(b: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    k = torch.tensor([[100.0, 0, 88], [0, 100.0, 26], [0, 0, 1]])
    ext = torch.eye(4)
    ext[:3, :3] = torch.tensor([[0.0, 0, 1], [-1, 0, 0], [0, -1, 0]])  # camera looking along ego +x
    ext[2, 3] = 1.5
    return (torch.randint(0, 256, (b, 1, 3, 64, 176), dtype=torch.uint8, generator=g),
            k.expand(b, 1, 3, 3).clone(), ext.expand(b, 1, 4, 4).clone())


def _perturb_trainable(net: nn.Module, frozen_norms: list[nn.Module]) -> None:
    """Stand-in for training: move every trainable tensor and run a train-mode forward (BatchNorm statistics)."""
    with torch.no_grad():
        for p in net.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.01)
    net.train()
    FinetuneCallback(frozen_norms, {}).on_train_batch_start(None, None, None, 0)  # type: ignore[arg-type]
    net(*_inputs())


def _expected(net: nn.Module, name: str, strategy: str) -> bool:
    owner = net.get_submodule(name.rsplit(".", 1)[0])
    head = name.startswith(("heads.", "bev."))
    return {"full": True, "heads": head or name.startswith("neck."),
            "norm": head or isinstance(owner, nn.BatchNorm2d | nn.GroupNorm | nn.LayerNorm),
            "adapter": head or name.startswith("neck.") or ".adapter_" in name
            or (name.startswith("backbone.") and isinstance(owner, nn.Conv2d) and owner.groups > 1)}[strategy]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_each_strategy_freezes_exactly_what_it_says(tmp_path: Path, strategy: str) -> None:
    cfg = _train_cfg(tmp_path, "model/bev=tiny")
    net = hydra.utils.instantiate(cfg.model.net)
    if strategy == "adapter":
        add_adapters(net, rank=4, block_rank=2)
    report = apply_strategy(net, strategy)
    wrong = [n for n, p in net.named_parameters() if p.requires_grad != _expected(net, n, strategy)]
    assert not wrong, f"{strategy}: requires_grad wrong for {wrong[:5]}"
    if strategy == "adapter":  # RegNet's 3x3 group convolutions train; without grouped_convs only the adapters
        assert any(n.endswith(".f.b.0.weight") for n in report.trainable)
        bare = set(apply_strategy(net, strategy, grouped_convs=False).trainable)
        assert bare == {n for n in report.trainable if ".f.b.0." not in n}
        report = apply_strategy(net, strategy)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == set(report.trainable) and any(n.startswith("bev.") for n in trainable)
    # Frozen norm layers keep their statistics through a train-mode forward (the callback puts them in eval).
    before = {k: v.clone() for k, v in net.state_dict().items() if "running_mean" in k}
    net.train()
    FinetuneCallback(report.frozen_norms, {}).on_train_batch_start(None, None, None, 0)  # type: ignore[arg-type]
    net(*_inputs())
    after = net.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    backbone_moved = {k for k in moved if k.startswith("backbone.")}
    assert bool(backbone_moved) == (strategy in ("full", "norm")), sorted(backbone_moved)[:3]
    assert any(k.startswith("bev.") for k in moved)  # trainable norm layers still adapt their statistics


def test_adapters_start_as_identity_and_apply_strategy_rejects_missing_adapters(tmp_path: Path) -> None:
    net = hydra.utils.instantiate(_train_cfg(tmp_path).model.net).eval()
    with pytest.raises(ValueError, match="no adapters"):
        apply_strategy(net, "adapter")
    with torch.no_grad():
        before = net(*_inputs())
        add_adapters(net, rank=4, block_rank=2)
        after = net(*_inputs())
    assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ValueError, match="already has adapters"):
        add_adapters(net)
    with pytest.raises(ValueError, match="unknown fine-tuning strategy 'bias'"):
        apply_strategy(net, "bias")


@pytest.mark.parametrize(("backbone", "blocks"), [("regnety_400mf", 1 + 3 + 6 + 6), ("resnet18", 2 + 2 + 2 + 2),
                                                 ("efficientnet_b0", 9)])
def test_block_adapters_follow_every_residual_block_of_any_backbone(tmp_path: Path, backbone: str,
                                                                      blocks: int) -> None:
    # Found from the fx graph's residual additions, not from a per-backbone list: RegNetY-400MF has 1/3/6/6 blocks
    # per stage, ResNet-18 2/2/2/2, EfficientNet-B0 9 residual MBConv blocks (whose stages end in a sum, not an
    # activation); each adapter sits right after its block's sum and keeps the graph's shapes.
    net = hydra.utils.instantiate(_train_cfg(tmp_path, f"model/backbone={backbone}").model.net).eval()
    with torch.no_grad():
        before = net(*_inputs())
    add_adapters(net, rank=4, block_rank=3)
    body = net.backbone.body
    adapters = {n: m for n, m in body.named_children() if n.startswith("adapter_block_")}
    assert len(adapters) == blocks and all(m.down.out_channels == 3 for m in adapters.values())
    for graph in (body.train_graph, body.eval_graph):  # both graphs of the feature extractor route through them
        called = {n.target: n for n in graph.nodes if n.op == "call_module" and n.target in adapters}
        assert set(called) == set(adapters)
        assert all(called[name].args[0].target in (operator.add, operator.iadd) for name in adapters)
        # A stage that ends in a block's sum is adapted after that block's adapter, never on the bare sum.
        stage_inputs = [n.args[0] for n in graph.nodes if n.op == "call_module" and n.target in ("adapter_s8",
                                                                                                  "adapter_s16")]
        assert stage_inputs and all(a.op == "call_module" for a in stage_inputs)
    with torch.no_grad():
        after = net(*_inputs())
    assert all(torch.equal(before[k], after[k]) for k in before)  # zero-initialised up-projections: identity
    assert net.backbone.adapter_config["block_rank"] == 3
    net.train()
    out = net(*_inputs())  # and they train: a gradient reaches every block adapter's up-projection
    sum(v.float().mean() for v in out.values() if v.is_floating_point()).backward()
    assert all(m.up.weight.grad is not None and m.up.weight.grad.abs().sum() > 0 for m in adapters.values())


def test_adapter_trains_large_head_layers_as_a_low_rank_update(tmp_path: Path) -> None:
    base_path = _base(tmp_path, "model/bev=tiny", "model.net.heads.lanes_2d.classifier=mlp")
    base = load_checkpoint(base_path)
    net = base.net.eval()
    base_state = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        before = net(*_inputs())
    large = {n for n, m in net.named_modules() if n.startswith(("heads.", "bev.")) and isinstance(m, nn.Linear)
             and m.weight.numel() >= 4096}
    assert large  # the row-anchor lane head's MLP
    add_adapters(net, rank=4, head_rank=2, head_min_params=4096)
    wrapped = {n for n, m in net.named_modules() if isinstance(m, LoRALinear)}
    assert wrapped == large
    with torch.no_grad():  # a zero update: exactly the base network
        after = net(*_inputs())
    assert all(torch.equal(before[k], after[k]) for k in before)
    report = apply_strategy(net, "adapter", grouped_convs=False)  # the backbone's share aside: heads compared
    trainable = set(report.trainable)
    for name in wrapped:  # the layer itself is frozen, its update trains; the rest of the heads train densely
        assert {f"{name}.lora_down.weight", f"{name}.lora_up.weight"} <= trainable
        assert f"{name}.weight" not in trainable and f"{name}.bias" not in trainable
    assert any(n.startswith("bev.") and n.endswith("weight") for n in trainable)
    _perturb_trainable(net, report.frozen_norms)
    delta = save_delta(tmp_path / "delta.safetensors", net, base_state, base_sha256=base.sha256, region="gb",
                       strategy="adapter", base_path=base_path)
    with safe_open(str(delta), framework="pt") as f:
        keys = set(f.keys())
    assert all(f"{n}.weight" not in keys and f"{n}.lora_up.weight" in keys for n in wrapped)
    assert read_delta_metadata(delta)["adapter"]["head_rank"] == 2
    net.eval()
    with torch.no_grad():  # merging onto the base rebuilds the low-rank layers from the delta's settings
        expected, got = net(*_inputs()), load_model(delta).net(*_inputs())
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    # Dense head training would ship every weight of those layers.
    dense = load_checkpoint(base_path).net
    dense_state = {k: v.clone() for k, v in dense.state_dict().items()}
    add_adapters(dense, rank=4)
    _perturb_trainable(dense, apply_strategy(dense, "adapter", grouped_convs=False).frozen_norms)
    dense_delta = save_delta(tmp_path / "dense.safetensors", dense, dense_state, base_sha256=base.sha256,
                             region="gb", strategy="adapter")
    assert delta.stat().st_size < 0.7 * dense_delta.stat().st_size
    # A rank whose update would outweigh the layer leaves it dense: the low-rank form must save something.
    huge = load_checkpoint(base_path).net
    name = sorted(large)[0]
    layer = huge.get_submodule(name)
    add_adapters(huge, rank=4, head_rank=-(-layer.weight.numel() // (layer.in_features + layer.out_features)),
                 head_min_params=4096)
    assert not isinstance(huge.get_submodule(name), LoRALinear)


@pytest.mark.parametrize("strategy", ["adapter", "norm"])
def test_delta_save_then_merge_reproduces_the_finetuned_outputs_exactly(tmp_path: Path, strategy: str) -> None:
    base_path = _base(tmp_path)
    base = load_checkpoint(base_path)
    net = base.net
    base_state = {k: v.clone() for k, v in net.state_dict().items()}
    if strategy == "adapter":
        add_adapters(net, rank=4, block_rank=2)
    report = apply_strategy(net, strategy)
    _perturb_trainable(net, report.frozen_norms)
    delta = save_delta(tmp_path / "delta.safetensors", net, base_state, base_sha256=base.sha256, region="gb",
                       strategy=strategy, frame_counts={"gb": 4}, replay_frame_counts={"us": 4}, base_path=base_path)
    meta = read_delta_metadata(delta)
    assert meta["base_sha256"] == base.sha256 and meta["region"] == "gb" and meta["strategy"] == strategy
    assert meta["frame_counts"] == {"gb": 4} and meta["replay_frame_counts"] == {"us": 4}
    with safe_open(str(delta), framework="pt") as f:
        keys = set(f.keys())
    changed = {k for k, v in net.state_dict().items() if k not in base_state or not torch.equal(v, base_state[k])}
    assert keys == changed and all(k.startswith(("heads.", "backbone.body.adapter_", "backbone.", "neck."))
                                   for k in keys)
    if strategy == "adapter":  # adapters (block adapters included), grouped convolutions, neck and heads travel
        assert all(k.startswith(("heads.", "neck.", "backbone.body.adapter_")) or _expected(net, k, "adapter")
                   for k in keys)
        assert any(k.startswith("backbone.") and ".f.b.0." in k for k in keys)
        assert any(k.startswith("backbone.body.adapter_block_") for k in keys)
        assert meta["adapter"]["block_rank"] == 2
    net.eval()
    with torch.no_grad():
        expected = net(*_inputs())
        for merged in (merge_delta(load_checkpoint(base_path).net, delta, base.sha256).eval(),
                       load_model(f"{base_path}+{delta}").net, load_model(delta).net):
            got = merged(*_inputs())
            assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_merge_refuses_a_delta_of_another_base(tmp_path: Path) -> None:
    base_path = _base(tmp_path)
    base = load_checkpoint(base_path)
    state = {k: v.clone() for k, v in base.net.state_dict().items()}
    _perturb_trainable(base.net, apply_strategy(base.net, "heads").frozen_norms)
    delta = save_delta(tmp_path / "d.safetensors", base.net, state, base_sha256=base.sha256, region="gb",
                       strategy="heads")
    with pytest.raises(ValueError, match=r"fine-tuned from base checkpoint sha256 .* but the base given has sha256"):
        merge_delta(load_checkpoint(base_path).net, delta, "0" * 64)
    (tmp_path / "other.safetensors").write_bytes(b"not a delta")
    with pytest.raises(ValueError, match="could not read region delta"):
        merge_delta(base.net, tmp_path / "other.safetensors", base.sha256)


def test_mixed_batch_sampler_puts_the_replay_share_in_every_batch() -> None:
    sampler = MixedBatchSampler(num_target=10, num_replay=7, batch_size=4, replay_per_batch=1, seed=3)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == 3  # 10 target frames, 3 per batch, last partial batch dropped
        assert all(sum(i >= 10 for _, i in b) == 1 and len(b) == 4 and all(e == epoch for e, _ in b) for b in batches)
        targets = [i for b in batches for _, i in b if i < 10]
        assert len(set(targets)) == 9  # each target frame at most once per epoch
    assert list(sampler) == batches  # deterministic per (seed, epoch)
    with pytest.raises(ValueError, match="replay_per_batch"):
        MixedBatchSampler(10, 7, 4, 4)


def test_replay_datamodule_mixes_other_regions_into_train_batches_only() -> None:
    source = SyntheticSource(rig="front1", regions=["de", "gb", "us"], scenes_per_region=3, frames_per_scene=2,
                             image_size=(64, 176))
    dm = ReplayDataModule(source, regions=["gb"], replay_regions=["us", "gb"], replay_fraction=0.25, batch_size=4,
                          image_size=(64, 176), train_transform={"flip": "off", "photometric_p": 0.0})
    dm.setup("fit")
    assert dm.selected_replay == ["us"] and dm.replay_per_batch == 1
    assert dm.replay_frame_counts == {"us": dm.manifest.frame_counts("train", ["us"])["us"]}
    for batch in dm.train_dataloader():
        assert sorted(batch["region"]).count("us") == 1 and set(batch["region"]) <= {"gb", "us"}
    assert {r for b in dm.val_dataloader() for r in b["region"]} == {"gb"}
    with pytest.raises(ValueError, match="replay_fraction"):
        ReplayDataModule(source, regions=["gb"], replay_fraction=1.0)


def test_replay_with_a_batch_of_one_frame_is_an_error_naming_the_fields() -> None:
    """``batch_size=1`` left no room for a replay frame: nothing was replayed, yet the replay regions were ruled on
    and the lineage recorded their frames as replayed."""
    source = SyntheticSource(rig="front1", regions=["gb", "us"], scenes_per_region=3, frames_per_scene=2,
                             image_size=(32, 88))
    kwargs = {"regions": ["gb"], "replay_regions": ["us"], "image_size": (32, 88)}
    dm = ReplayDataModule(source, replay_fraction=0.25, batch_size=1, **kwargs)
    with pytest.raises(ValueError, match=r"ReplayDataModule: field 'batch_size' is 1, which leaves no room for replay: "
                                         r".* replay_fraction=0.25 of replay regions \['us'\] would replay nothing\. "
                                         r"Set batch_size >= 2 \(visionpilot-finetune: data.batch_size=2 or more\), "
                                         r"or turn replay off with replay_fraction=0 \(replay.fraction=0\)"):
        dm.setup("fit")
    assert dm.governance_report is None and not dm.datasets  # raised before governance and before any dataset
    off = ReplayDataModule(source, replay_fraction=0.0, batch_size=1, **kwargs)  # replay off: a batch of one is fine
    off.setup("fit")
    assert off.replay_frame_counts == {} and {g.region for g in off.governance_report.groups} == {"gb"}
    two = ReplayDataModule(source, replay_fraction=0.25, batch_size=2, **kwargs)
    two.setup("fit")
    assert two.replay_per_batch == 1 and set(two.replay_frame_counts) == {"us"}


@pytest.mark.slow
def test_finetune_run_writes_checkpoint_delta_and_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base_path = _base(tmp_path)
    # The weights are rounded to the delta's dtype before the validation at the last step (so its metrics are those
    # of the weights the delta ships), and again, a no-op then, before the files are written.
    trainers, rounded_at = [], []
    monkeypatch.setattr(FinetuneCallback, "on_fit_start", lambda self, trainer, module: trainers.append(trainer))

    def spy(net: torch.nn.Module, base_state: dict, dtype: torch.dtype) -> int:
        rounded_at.append((trainers[0].global_step, trainers[0].validating))
        return round_changed(net, base_state, dtype)

    monkeypatch.setattr(ft, "round_changed", spy)
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("finetune", overrides=[
            f"paths.output_dir={tmp_path / 'ft'}", f"ckpt_path={base_path}", "region=gb", "strategy=adapter",
            "strategy.rank=4", "trainer.max_steps=2", "trainer.limit_val_batches=1", "data.num_workers=0",
            "data.persistent_workers=false", "callbacks.progress_bar=null", "logger=csv", "seed=7"])
    metrics, objects = finetune(cfg)
    out = tmp_path / "ft"
    summary = json.loads((out / "finetune.json").read_text())
    # The seed is recorded wherever the run's results travel (reports average runs that differ only by it).
    assert summary["seed"] == 7 and read_delta_metadata(out / "delta.safetensors")["extra"]["seed"] == 7
    assert load_eval_model("adapter-gb", out / "delta.safetensors").info["seed"] == 7
    assert load_eval_model("tuned", out / "checkpoints" / "finetuned.ckpt").info["seed"] == 7
    assert metrics["train/steps"] == 2 and "val/gb/lane_f1" in json.loads((out / "metrics.json").read_text())
    assert rounded_at == [(2, True), (2, False)]
    assert summary["region"] == "gb" and summary["replay_regions"] == ["us"] and summary["strategy"] == "adapter"
    assert summary["delta_bytes"] < 0.1 * summary["checkpoint_bytes"]
    # The strategy's learning rates reach the optimiser: lr_scale x the base's 2e-3, the lane head at lr_mult x that.
    strategy = OmegaConf.load(config_dir() / "strategy" / "adapter.yaml")
    lr = strategy.lr_scale * 2e-3
    assert objects["config"].model.optimizer.lr == pytest.approx(lr) and summary["lr"] == pytest.approx(lr)
    lane_params = {id(p) for p in objects["model"].net.heads.lanes_2d.parameters() if p.requires_grad}
    lrs = {(id(p) in lane_params, round(g["initial_lr"], 12)) for g in objects["trainer"].optimizers[0].param_groups
           for p in g["params"]}
    assert lrs == {(True, round(lr * strategy.lr_mult["heads.lanes_2d"], 12)), (False, round(lr, 12))}
    # The fine-tuned checkpoint rebuilds from its own stored config (adapters included) and equals base + delta.
    tuned = load_checkpoint(out / "checkpoints" / "finetuned.ckpt")
    assert tuned.meta["finetune"]["base_sha256"] == load_checkpoint(base_path).sha256
    merged = load_model(out / "delta.safetensors").net
    with torch.no_grad():
        a, b = tuned.net(*_inputs()), merged(*_inputs())
    assert all(torch.equal(a[k], b[k]) for k in a)
    # The delta ships half precision (finetune.yaml's delta_dtype); the fine-tuned weights were rounded to it.
    dtypes = {t.dtype for t in load_file(out / "delta.safetensors").values()}
    assert torch.float16 in dtypes and torch.float32 not in dtypes
    assert read_delta_metadata(out / "delta.safetensors")["dtypes"] == sorted(str(d)[6:] for d in dtypes)
    assert OmegaConf.select(tuned.config, "model.net._target_").endswith("with_adapters")
    # The strategy config's block adapters are built, recorded and rebuilt on both paths.
    block_rank = OmegaConf.load(config_dir() / "strategy" / "adapter.yaml").block_rank
    assert tuned.config.model.net.block_rank == block_rank == read_delta_metadata(out / "delta.safetensors")[
        "adapter"]["block_rank"]
    assert any(n.startswith("backbone.body.adapter_block_") for n, _ in merged.named_parameters())
    # Starting over in the finished run dir (resume=never) and dying between the new checkpoint and the new delta
    # (disk full): the earlier run's delta and summary must not be left beside the new checkpoint.
    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ft, "save_delta", disk_full)
    cfg.resume = "never"
    with pytest.raises(OSError, match="No space left"):
        finetune(cfg)
    assert (out / "checkpoints" / "finetuned.ckpt").is_file()
    assert not (out / "delta.safetensors").exists() and not (out / "finetune.json").exists()


def test_half_precision_delta_is_exact_after_rounding_and_keeps_what_float16_cannot_hold(tmp_path: Path) -> None:
    base_path = _base(tmp_path)
    base = load_checkpoint(base_path)
    net = base.net
    base_state = {k: v.clone() for k, v in net.state_dict().items()}
    add_adapters(net, rank=4, block_rank=2)
    _perturb_trainable(net, apply_strategy(net, "adapter").frozen_norms)
    huge = next(n for n, p in net.named_parameters() if p.requires_grad and n.startswith("heads."))
    with torch.no_grad():
        net.get_parameter(huge).view(-1)[0] = 1e6  # beyond float16's range (65,504)
    unrounded = save_delta(tmp_path / "wide.safetensors", net, base_state, base_sha256=base.sha256, region="gb",
                           strategy="adapter", dtype=torch.float16)
    assert "float16" not in read_delta_metadata(unrounded)["dtypes"]  # nothing narrows losslessly before rounding
    assert round_changed(net, base_state, torch.float16) > 0
    assert net.get_parameter(huge).view(-1)[0] == 1e6  # left wide, not turned into inf
    delta = save_delta(tmp_path / "half.safetensors", net, base_state, base_sha256=base.sha256, region="gb",
                       strategy="adapter", dtype=torch.float16)
    dtypes = {k: t.dtype for k, t in load_file(delta).items()}
    assert dtypes[huge] == torch.float32
    assert all(d == torch.float16 for k, d in dtypes.items() if k != huge and d.is_floating_point)
    assert delta.stat().st_size < 0.6 * unrounded.stat().st_size
    net.eval()
    with torch.no_grad():
        expected, got = net(*_inputs()), merge_delta(load_checkpoint(base_path).net, delta, base.sha256).eval()(
            *_inputs())
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    with pytest.raises(ValueError, match="field 'delta_dtype' must be one of .* found 'half'"):
        delta_dtype("half")


def test_strategy_learning_rates_reach_the_run_config_unless_the_command_line_sets_them(tmp_path: Path) -> None:
    base = load_checkpoint(_base(tmp_path))

    def run_config(*overrides: str):
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose("finetune", overrides=[f"paths.output_dir={tmp_path / 'ft'}", f"ckpt_path={base.path}",
                                                 "region=gb", *overrides])
        return ft.build_finetune_config(cfg, base)

    strategy = OmegaConf.load(config_dir() / "strategy" / "adapter.yaml")
    adapter = run_config("strategy=adapter")
    assert adapter.model.optimizer.lr == pytest.approx(strategy.lr_scale * base.config.model.optimizer.lr)
    assert OmegaConf.to_container(adapter.model.lr_mult) == OmegaConf.to_container(strategy.lr_mult)
    own = run_config("strategy=adapter", "+model.lr_mult={backbone: 0.1}", "model.optimizer.lr=1e-4")
    assert OmegaConf.to_container(own.model.lr_mult) == {"backbone": 0.1} and own.model.optimizer.lr == 1e-4
    assert not run_config("strategy=full").model.get("lr_mult")  # full: one learning rate for every weight
    # A part the network does not have is left out (here a strategy naming a head this model lacks).
    odd = run_config("strategy=adapter", "+strategy.lr_mult.heads.traffic_lights=3.0")
    assert OmegaConf.to_container(odd.model.lr_mult) == OmegaConf.to_container(strategy.lr_mult)


def test_a_finetune_does_not_take_the_base_runs_frame_cache_unless_asked(tmp_path: Path) -> None:
    """A short fine-tune reads fewer frames than ``data.cache=ram`` would load (every replay frame with them); and
    the base's class-balanced sampling (``data.balance=classes``), which the replay datamodule refuses, is off."""
    base = load_checkpoint(_base(tmp_path, "data.cache=ram", "data.balance=classes"))
    assert base.config.data.cache == "ram" and base.config.data.balance == "classes"

    def run_config(*overrides: str):
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose("finetune", overrides=[f"paths.output_dir={tmp_path / 'ft'}", f"ckpt_path={base.path}",
                                                 "region=gb", *overrides])
        return ft.build_finetune_config(cfg, base)

    assert run_config().data.cache is None and run_config().data.balance is None
    assert run_config("data.cache=ram").data.cache == "ram"


def test_rerunning_a_finetune_in_its_run_dir_resumes_it_and_refuses_another_strategy(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    base_path = _base(tmp_path)

    def cfg(*overrides: str):
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            return compose("finetune", overrides=[
                f"paths.output_dir={tmp_path / 'ft'}", f"ckpt_path={base_path}", "region=gb", "strategy=heads",
                "trainer.limit_val_batches=1", "data.num_workers=0", "data.persistent_workers=false",
                "callbacks.progress_bar=null", "logger=csv", *overrides])

    finetune(cfg("trainer.max_steps=2"))  # as if killed after step 2: its last.ckpt is in the run dir
    with caplog.at_level("INFO", logger="visionpilot.training.fault_tolerance"):
        metrics, objects = finetune(cfg("trainer.max_steps=4"))
    assert "ckpt_path=auto: resuming from" in caplog.text  # README: rerunning in the same run dir resumes
    assert metrics["train/steps"] == 4 and objects["summary"]["steps"] == 4
    rerun, _ = finetune(cfg("trainer.max_steps=4"))  # finished: resumes at step 4, trains and validates nothing
    assert rerun["train/steps"] == 4 and rerun["val/gb/lane_f1"] == metrics["val/gb/lane_f1"]  # its metrics kept
    with pytest.raises(ValueError, match=r"holds a fine-tune with field 'strategy' = 'heads', but this run's is "
                                         r"'full'; give another hydra.run.dir, or resume=never"):
        finetune(cfg("strategy=full", "trainer.max_steps=4"))
    metrics, _ = finetune(cfg("strategy=full", "trainer.max_steps=1", "resume=never"))
    assert metrics["train/steps"] == 1


def test_a_finetune_stopped_by_sigterm_exits_143_without_a_delta(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import lightning as L
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    def stopped(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        raise SIGTERMException  # what Lightning raises after the batch during which SIGTERM arrived

    monkeypatch.setattr(L.Trainer, "fit", stopped)
    base = _base(tmp_path)
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("finetune", overrides=[f"paths.output_dir={tmp_path / 'ft'}", f"ckpt_path={base}",
                                             "region=gb", "strategy=heads", "data.num_workers=0", "logger=csv",
                                             "data.persistent_workers=false", "callbacks.progress_bar=null"])
    with pytest.raises(SystemExit) as stop:
        finetune(cfg)
    assert stop.value.code == 143 and not (tmp_path / "ft" / "delta.safetensors").exists()
