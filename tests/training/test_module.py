"""The LightningModule's optimiser: parameter groups by weight decay and per-part learning-rate multipliers."""

from __future__ import annotations

import functools
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from visionpilot.training.module import PerceptionModule


def _net() -> nn.Module:
    net = nn.Module()
    net.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    net.backbone2 = nn.Conv2d(4, 4, 1)  # shares a prefix with "backbone" but is not inside it
    net.heads = nn.ModuleDict({"lanes_2d": nn.Linear(4, 2), "objects_2d": nn.Linear(4, 2)})
    return net


def _module(**kwargs) -> PerceptionModule:
    optimizer = functools.partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.01)
    return PerceptionModule(_net(), optimizer, warmup_steps=0, **kwargs)


def _optimizer(module: PerceptionModule) -> torch.optim.Optimizer:
    module._trainer = SimpleNamespace(estimated_stepping_batches=10)  # what configure_optimizers reads of it
    return module.configure_optimizers()["optimizer"]


def test_lr_mult_scales_the_learning_rate_of_each_part_by_its_longest_prefix() -> None:
    module = _module(lr_mult={"backbone": 0.5, "heads.lanes_2d": 2.0, "heads": 0.25})
    module.net.backbone[1].weight.requires_grad_(False)  # frozen parameters stay out of every group
    optimizer = _optimizer(module)
    lr_of = {id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}
    net = module.net
    assert lr_of[id(net.backbone[0].weight)] == (5e-4, 0.01)
    assert lr_of[id(net.backbone[0].bias)] == (5e-4, 0.0)       # no decay on biases and norms, at its part's lr
    assert lr_of[id(net.backbone[1].bias)] == (5e-4, 0.0)
    assert id(net.backbone[1].weight) not in lr_of
    assert lr_of[id(net.backbone2.weight)] == (1e-3, 0.01)      # "backbone" does not reach "backbone2"
    assert lr_of[id(net.heads.lanes_2d.weight)] == (2e-3, 0.01)  # the longer prefix wins over "heads"
    assert lr_of[id(net.heads.objects_2d.weight)] == (2.5e-4, 0.01)
    assert all("lr_mult" not in g for g in optimizer.param_groups)
    # The schedule starts from each group's own lr.
    assert sorted(g["initial_lr"] for g in optimizer.param_groups) == sorted(g["lr"] for g in optimizer.param_groups)


def test_lr_mult_reads_nested_keys_as_dotted_prefixes() -> None:
    # A command-line override model.lr_mult.heads.lanes_2d=2 arrives nested.
    module = _module(lr_mult={"heads": {"lanes_2d": 2.0}})
    lr_of = {id(p): g["lr"] for g in _optimizer(module).param_groups for p in g["params"]}
    lanes = {id(p) for p in module.net.heads.lanes_2d.parameters()}
    assert {lr for key, lr in lr_of.items() if key in lanes} == {2e-3}
    assert {lr for key, lr in lr_of.items() if key not in lanes} == {1e-3}


def test_without_lr_mult_there_are_two_groups_decay_and_no_decay() -> None:
    groups = _optimizer(_module()).param_groups
    assert [(g["lr"], g["weight_decay"], len(g["params"])) for g in groups] == [(1e-3, 0.01, 4), (1e-3, 0.0, 6)]


def test_lr_mult_refuses_a_prefix_that_names_no_parameter_and_a_non_positive_value() -> None:
    with pytest.raises(ValueError, match=r"model.lr_mult.backbon'.*no parameter.*\['backbone', 'backbone2', 'heads'\]"):
        _optimizer(_module(lr_mult={"backbon": 0.5}))
    with pytest.raises(ValueError, match=r"model.lr_mult.heads.*positive number, found 0"):
        _module(lr_mult={"heads": 0})
