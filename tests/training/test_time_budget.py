"""TimeBudget: a run's length, and its learning-rate schedule, set by a wall-clock budget (on a simulated clock)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from tests.training.test_module_checks import _NormFrames, _NormNet
from visionpilot.training.callbacks import TimeBudget
from visionpilot.training.module import PerceptionModule

LR, MIN_RATIO = 1e-2, 0.05


class _Lr(L.Callback):
    """The learning rate each optimiser step used."""

    def __init__(self) -> None:
        self.used: dict[int, float] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        self.used[trainer.global_step] = trainer.optimizers[0].param_groups[0]["lr"]


def _fit(tmp_path: Path, max_steps: int, seconds_per_step: float | Callable[[int], float] | None,
         minutes: float = 1.0, ckpt_path: str | None = None, save_every: int | None = None,
         max_epochs: int = -1, **budget_kwargs: Any) -> tuple[L.Trainer, TimeBudget | None, _Lr]:
    """A real PerceptionModule (warm-up 5 %, cosine to 5 %) on a tiny net; the budget's clock reads
    ``global_step * seconds_per_step``, or ``seconds_per_step(global_step)`` when it is a function of the step
    (None: no budget)."""
    module = PerceptionModule(_NormNet(), functools.partial(torch.optim.AdamW, lr=LR), warmup_steps=0.05,
                              min_lr_ratio=MIN_RATIO)
    lr = _Lr()
    callbacks: list[L.Callback] = [lr]
    budget = None
    if seconds_per_step is not None:
        budget = TimeBudget(minutes=minutes, **budget_kwargs)
        callbacks.append(budget)
    if save_every:
        callbacks.append(ModelCheckpoint(tmp_path, every_n_train_steps=save_every, save_top_k=-1,
                                         filename="s{step}", auto_insert_metric_name=False))
    interval = {"val_check_interval": max_steps, "check_val_every_n_epoch": None} if max_steps > 0 else {}
    trainer = L.Trainer(accelerator="cpu", max_steps=max_steps, max_epochs=max_epochs, **interval,
                        limit_val_batches=0, logger=False, enable_checkpointing=bool(save_every),
                        enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
                        default_root_dir=tmp_path)
    if budget is not None:
        elapsed = seconds_per_step if callable(seconds_per_step) else lambda step: step * seconds_per_step
        budget.clock = lambda: elapsed(trainer.global_step)
    trainer.fit(module, DataLoader(_NormFrames(), batch_size=2), ckpt_path=ckpt_path, weights_only=False)
    return trainer, budget, lr


def test_the_run_is_as_long_as_the_budget_holds_and_its_schedule_ends_with_it(tmp_path: Path) -> None:
    # 0.5 s per step and one minute: 120 steps of the configured 1,000.
    trainer, budget, lr = _fit(tmp_path, max_steps=1000, seconds_per_step=0.5)
    assert trainer.global_step == budget.planned_steps == 120
    assert trainer.val_check_batch == 120  # val_check_interval=${trainer.max_steps}: still the last step
    # The cosine reached its end at the last step, not at step 1,000 ...
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(LR * MIN_RATIO)
    # ... and from the first plan on, the steps used the rates of a 120-step run.
    _, _, fixed = _fit(tmp_path / "fixed", max_steps=120, seconds_per_step=None)
    assert len(fixed.used) == 120
    assert [lr.used[s] for s in range(21, 120)] == pytest.approx([fixed.used[s] for s in range(21, 120)])
    assert lr.used[10] < fixed.used[10]  # before it: the warm-up of the configured 1,000 steps


def test_the_configured_steps_stay_the_upper_bound(tmp_path: Path) -> None:
    trainer, budget, _ = _fit(tmp_path, max_steps=40, seconds_per_step=0.001)
    assert trainer.global_step == budget.planned_steps == 40


def test_an_epoch_limited_run_is_bounded_by_its_epochs(tmp_path: Path) -> None:
    # 3 batches per epoch: 30 epochs are 90 steps, fewer than the budget's 120.
    trainer, budget, _ = _fit(tmp_path, max_steps=-1, max_epochs=30, seconds_per_step=0.5)
    assert trainer.global_step == budget.planned_steps == 90
    trainer, budget, _ = _fit(tmp_path / "long", max_steps=-1, max_epochs=100, seconds_per_step=0.5)
    assert trainer.global_step == budget.planned_steps == 120
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(LR * MIN_RATIO)


def test_a_budget_spent_before_the_plan_stops_at_the_plan(tmp_path: Path) -> None:
    trainer, budget, _ = _fit(tmp_path, max_steps=1000, seconds_per_step=10.0)
    assert trainer.global_step == budget.planned_steps == 20


def _two_speeds(before: float, after: float, switch: int = 100) -> Callable[[int], float]:
    """Seconds elapsed at a step: ``before`` per step up to ``switch``, then ``after``."""
    return lambda step: before * min(step, switch) + after * max(step - switch, 0)


def test_a_plan_made_on_a_busy_machine_is_corrected_when_it_is_quiet_again(tmp_path: Path) -> None:
    # Another job halves the speed for the first 100 steps (0.5 s per step instead of 0.25): the plan at step 20
    # is 240 steps in two minutes; from step 120 the re-measurement sees 0.25 s per step with 65 s left.
    trainer, budget, lr = _fit(tmp_path, max_steps=1000, seconds_per_step=_two_speeds(0.5, 0.25), minutes=2.0,
                               plan_at=[20], replan_every=20)
    assert trainer.global_step == budget.planned_steps == 120 + 260
    assert budget.clock() == pytest.approx(120.0)  # the budget spent to the second, not 55 s of it unused
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(LR * MIN_RATIO)  # the cosine ends with it
    # From the re-plan on, the steps use the rates of a 380-step run (stretched, not restarted: no second warm-up).
    _, _, fixed = _fit(tmp_path / "fixed", max_steps=380, seconds_per_step=None)
    assert [lr.used[s] for s in range(121, 380)] == pytest.approx([fixed.used[s] for s in range(121, 380)])


def test_a_machine_that_slows_down_still_ends_within_the_budget(tmp_path: Path) -> None:
    trainer, budget, _ = _fit(tmp_path, max_steps=1000, seconds_per_step=_two_speeds(0.25, 0.5), minutes=2.0,
                              plan_at=[20], replan_every=20)
    # Planned 480 steps at 0.25 s; at step 120, 85 s left at 0.5 s per step.
    assert trainer.global_step == budget.planned_steps == 120 + 170
    assert budget.clock() == pytest.approx(120.0)
    # Without re-plans the run keeps its first plan and overruns the budget by two thirds.
    trainer, budget, _ = _fit(tmp_path / "fixed", max_steps=1000, seconds_per_step=_two_speeds(0.25, 0.5),
                              minutes=2.0, plan_at=[20], replan_every=0)
    assert trainer.global_step == 480 and budget.clock() == pytest.approx(25 + 380 * 0.5)


def test_small_changes_of_speed_leave_the_length_alone(tmp_path: Path) -> None:
    # 4 % faster from step 100: a re-plan would add 5 steps (2 %), under replan_change=0.05.
    speeds = _two_speeds(0.5, 0.48)
    trainer, budget, _ = _fit(tmp_path, max_steps=1000, seconds_per_step=speeds, minutes=2.0, plan_at=[20],
                              replan_every=20, round_to=1)
    assert trainer.global_step == budget.planned_steps == 240
    trainer, budget, _ = _fit(tmp_path / "any", max_steps=1000, seconds_per_step=speeds, minutes=2.0, plan_at=[20],
                              replan_every=20, round_to=1, replan_change=0.0)
    assert trainer.global_step == 245


def test_late_in_the_run_the_length_is_not_changed(tmp_path: Path) -> None:
    # The speed halves at step 200 of a 240-step plan: past replan_until (0.75), the run keeps its length.
    trainer, budget, _ = _fit(tmp_path, max_steps=1000, seconds_per_step=_two_speeds(0.5, 1.0, switch=200),
                              minutes=2.0, plan_at=[20], replan_every=20)
    assert trainer.global_step == budget.planned_steps == 240


class _Validations(L.Callback):
    """Simulated validations of ``seconds`` every ``every`` steps, after the step's other hooks (as Lightning runs
    them): the budget's clock jumps by ``seconds`` between its validation hooks. Records the planned length after
    every step."""

    def __init__(self, budget: TimeBudget, every: int, seconds: float) -> None:
        self.budget, self.every, self.seconds, self.extra, self.planned = budget, every, seconds, 0.0, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        if trainer.global_step % self.every == 0:
            self.budget.on_validation_start(trainer, pl_module)
            self.extra += self.seconds
            self.budget.on_validation_end(trainer, pl_module)
        self.planned.append(self.budget.planned_steps)


def test_validations_during_the_run_are_spent_but_not_taken_for_slow_steps(tmp_path: Path) -> None:
    """0.25 s per step and a 10 s validation every 50 steps in two minutes. Until the first validation the plan is
    480 steps; from it on, each step costs 0.25 s plus 0.2 s of validations to come, so 270 steps (five validations)
    fit, and the length stays there. Counted as steps, a window holding a validation would read 0.75 s per step and
    shrink the run, the next quiet window stretch it back; a share of all steps done would jump after each one."""
    module = PerceptionModule(_NormNet(), functools.partial(torch.optim.AdamW, lr=LR), warmup_steps=0.05,
                              min_lr_ratio=MIN_RATIO)
    budget = TimeBudget(minutes=2.0, plan_at=[20], replan_every=20)
    validations = _Validations(budget, every=50, seconds=10.0)
    trainer = L.Trainer(accelerator="cpu", max_steps=1000, max_epochs=-1, val_check_interval=1000,
                        check_val_every_n_epoch=None, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[budget, validations],
                        default_root_dir=tmp_path)
    budget.clock = lambda: trainer.global_step * 0.25 + validations.extra
    trainer.fit(module, DataLoader(_NormFrames(), batch_size=2))
    planned = validations.planned
    lengths = [p for i, p in enumerate(planned) if p is not None and (i == 0 or p != planned[i - 1])]
    assert lengths == [480, 270] and trainer.global_step == 270
    assert budget.paused == pytest.approx(50.0) and budget.clock() == pytest.approx(270 * 0.25 + 50.0)  # <= 120 s


def test_a_resumed_run_keeps_the_length_its_first_process_planned(tmp_path: Path) -> None:
    first, _, _ = _fit(tmp_path, max_steps=1000, seconds_per_step=0.5, save_every=60)
    assert first.global_step == 120
    # Resumed from step 60 on a machine ten times slower: a new plan would stop at once.
    resumed, budget, lr = _fit(tmp_path / "resumed", max_steps=1000, seconds_per_step=5.0,
                               ckpt_path=str(tmp_path / "s60.ckpt"))
    assert resumed.global_step == budget.planned_steps == 120 and min(lr.used) == 60
    assert resumed.optimizers[0].param_groups[0]["lr"] == pytest.approx(LR * MIN_RATIO)


@pytest.mark.parametrize(("kwargs", "field"), [({"minutes": 0}, "minutes"), ({"minutes": float("nan")}, "minutes"),
                                                ({"minutes": 1, "plan_at": [3]}, "plan_at"),
                                                ({"minutes": 1, "round_to": 0}, "round_to"),
                                                ({"minutes": 1, "replan_every": -1}, "replan_every"),
                                                ({"minutes": 1, "replan_change": -0.1}, "replan_change"),
                                                ({"minutes": 1, "replan_until": 1.5}, "replan_until")])
def test_bad_budget_settings_are_refused_by_name(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"callbacks.time_budget.{field}"):
        TimeBudget(**kwargs)


def test_a_resumed_run_steps_at_the_rate_of_its_own_schedule_from_its_first_step(tmp_path: Path) -> None:
    """Resumed with a longer max_steps, the first step used the rate the checkpoint stored (the end of the shorter
    run's cosine); every step now follows the resumed run's schedule."""
    _fit(tmp_path, max_steps=10, seconds_per_step=None, save_every=10)
    _, _, resumed = _fit(tmp_path / "resumed", max_steps=40, seconds_per_step=None,
                         ckpt_path=str(tmp_path / "s10.ckpt"))
    _, _, fresh = _fit(tmp_path / "fresh", max_steps=40, seconds_per_step=None)
    assert min(resumed.used) == 10
    assert [resumed.used[s] for s in range(10, 40)] == pytest.approx([fresh.used[s] for s in range(10, 40)])



def test_a_warm_up_as_long_as_the_run_is_named_in_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """An absolute warm-up of 500 steps in a 300-step run (or one a budget cut to 300): the learning rate would rise
    the whole run and never reach the configured one, silently."""
    module = PerceptionModule(_NormNet(), functools.partial(torch.optim.AdamW, lr=LR), warmup_steps=500)
    with caplog.at_level("WARNING", logger="visionpilot.training.module"):
        module.plan_schedule(1000)
        assert not caplog.records
        module.plan_schedule(300)
    assert "field 'model.warmup_steps': 500 steps of warm-up, not fewer than the run's 300 steps" in caplog.text
    assert module.lr_schedule(299) == pytest.approx(300 / 500)  # the schedule itself is the configured one
    caplog.clear()
    with caplog.at_level("WARNING", logger="visionpilot.training.module"):
        PerceptionModule(_NormNet(), functools.partial(torch.optim.AdamW, lr=LR), warmup_steps=0.5).plan_schedule(300)
    assert not caplog.records  # a fraction is always shorter than the run
