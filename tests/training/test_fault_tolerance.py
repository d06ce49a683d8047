"""Fault tolerance: atomic checkpoint writes, finding the checkpoint to resume from, resumable loaders, and a training
process killed with SIGKILL mid-epoch that, restarted with the same command, ends exactly where an uninterrupted
run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from visionpilot.data.datamodule import EpochSampler, ResumableDataLoader
from visionpilot.training.checkpoints import load_checkpoint
from visionpilot.training.fault_tolerance import (
    AtomicCheckpointIO,
    checkpoint_step,
    find_resume_checkpoint,
    resolve_ckpt_path,
    with_previous_metrics,
)

HERE = Path(__file__).parent


# -- atomic writes and the resume lookup ---------------------------------------------------------------------------


def _ckpt(step: int) -> dict:
    return {"global_step": step, "state_dict": {"w": torch.full((64, 64), float(step))}}


def test_crash_while_writing_keeps_the_last_good_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    io, path = AtomicCheckpointIO(), tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint(_ckpt(10), path)
    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        real_save(obj, f, *args, **kwargs)
        f.truncate(100)  # half a file on disk, then the process "dies"
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint(_ckpt(20), path)
    monkeypatch.setattr(torch, "save", real_save)
    assert checkpoint_step(path) == 10  # the previous file, whole
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind


def test_resume_lookup_takes_the_newest_readable_checkpoint(tmp_path: Path) -> None:
    assert find_resume_checkpoint(tmp_path) is None
    ckpts = tmp_path / "checkpoints"
    io = AtomicCheckpointIO()
    io.save_checkpoint(_ckpt(30), ckpts / "epoch000.ckpt")
    io.save_checkpoint(_ckpt(40), ckpts / "last.ckpt")
    assert find_resume_checkpoint(tmp_path) == ckpts / "last.ckpt"
    io.save_checkpoint(_ckpt(50), tmp_path / "hpc_ckpt_1.ckpt")  # SLURM's requeue checkpoint
    assert find_resume_checkpoint(tmp_path) == tmp_path / "hpc_ckpt_1.ckpt"
    (ckpts / "step9999.ckpt").write_bytes(b"PK\x03\x04 truncated")  # unreadable: skipped
    (ckpts / ".last.ckpt.x1.tmp").write_bytes(b"")  # an interrupted write: never a candidate
    assert find_resume_checkpoint(tmp_path) == tmp_path / "hpc_ckpt_1.ckpt"
    assert resolve_ckpt_path("auto", tmp_path) == str(tmp_path / "hpc_ckpt_1.ckpt")
    assert not (ckpts / ".last.ckpt.x1.tmp").exists()  # the leftover of an interrupted write, removed on resume
    assert resolve_ckpt_path("never", tmp_path) is None and resolve_ckpt_path(None, tmp_path) is None
    assert resolve_ckpt_path("some/explicit.ckpt", tmp_path) == "some/explicit.ckpt"
    assert resolve_ckpt_path("auto", tmp_path / "fresh") is None


def test_resume_refuses_a_run_dir_whose_checkpoints_are_all_unreadable(tmp_path: Path) -> None:
    # Starting fresh would overwrite them with step 1 and report success: say so instead.
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    (ckpts / "last.ckpt").write_bytes(b"PK\x03\x04 truncated")
    torch.save({"state_dict": {}}, ckpts / "weights.ckpt")
    with pytest.raises(RuntimeError, match=r"(?s)none can be read.*last.ckpt: unreadable checkpoint.*weights.ckpt: "
                                           r"not a Lightning checkpoint.*ckpt_path=never to start fresh"):
        resolve_ckpt_path("auto", tmp_path)
    assert resolve_ckpt_path("never", tmp_path) is None


def test_rerun_keeps_the_metrics_it_does_not_recompute(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    assert with_previous_metrics(path, {"train/steps": 8.0}) == {"train/steps": 8.0}
    path.write_text(json.dumps({"val/lane_f1": 0.5, "train/steps": 8, "val/det_map": None}))
    assert with_previous_metrics(path, {"train/steps": 8.0}) == {"val/lane_f1": 0.5, "train/steps": 8.0}
    path.write_text("{truncated")
    assert with_previous_metrics(path, {"train/steps": 8.0}) == {"train/steps": 8.0}


def test_a_rerun_that_validated_again_keeps_no_figure_of_the_earlier_validation(tmp_path: Path) -> None:
    # A resumed run that validates (continued for more steps, or on other regions) reports that validation alone: a
    # metric it could not compute (NaN, left out) or a region it no longer validates kept the earlier model's figure.
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"val/step": 4.0, "val/lane_f1": 0.5, "val/us/det_map": 0.2, "train/frames_per_s": 9.0}))
    assert with_previous_metrics(path, {"val/step": 8.0, "val/det_map": 0.3, "train/steps": 8.0}) == {
        "train/frames_per_s": 9.0, "val/step": 8.0, "val/det_map": 0.3, "train/steps": 8.0}


# -- resumable sampler and loader ------------------------------------------------------------------------------------


class _Ids(Dataset):
    def __len__(self) -> int:
        return 11

    def __getitem__(self, item: tuple[int, int]) -> int:
        return item[1]


def _loader(num_workers: int = 0) -> ResumableDataLoader:
    return ResumableDataLoader(_Ids(), batch_size=2, sampler=EpochSampler(11, shuffle=True, seed=3),
                               num_workers=num_workers, drop_last=True)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_loader_resumes_mid_epoch_with_the_next_unseen_frame(num_workers: int) -> None:
    full = _loader()
    full.sampler.set_epoch(2)
    expected = [b.tolist() for b in full]
    interrupted = _loader(num_workers)
    interrupted.sampler.set_epoch(2)
    it = iter(interrupted)
    seen = [next(it).tolist() for _ in range(2)]
    state = interrupted.state_dict()
    assert state == {"sampler": {"epoch": 2, "consumed": 4}}
    del it
    restarted = _loader(num_workers)  # a new process: epoch 0 until the state is loaded
    restarted.load_state_dict(state)
    restarted.sampler.set_epoch(2)  # Lightning sets the (same) epoch again before iterating
    rest = [b.tolist() for b in restarted]
    assert seen + rest == expected
    assert restarted.state_dict() == {"sampler": {"epoch": 2, "consumed": 10}}
    restarted.sampler.set_epoch(3)  # the next epoch starts from its beginning
    assert len([b for b in restarted]) == 5


def test_sampler_shards_ranks_evenly(monkeypatch: pytest.MonkeyPatch) -> None:
    orders = []
    for rank in (0, 1):
        sampler = EpochSampler(11, shuffle=True, seed=0, distributed=True, pad=True)
        monkeypatch.setattr(sampler, "replicas", lambda rank=rank: (2, rank))
        orders.append([i for _, i in sampler])
        assert len(sampler) == 6
    assert len(orders[0]) == len(orders[1]) == 6
    assert set(orders[0]) | set(orders[1]) == set(range(11))  # every frame, one padded repeat
    unpadded = EpochSampler(11, distributed=True, pad=False)
    monkeypatch.setattr(unpadded, "replicas", lambda: (2, 1))
    assert len(unpadded) == 5 and [i for _, i in unpadded] == [1, 3, 5, 7, 9]
    assert len(EpochSampler(11, distributed=True)) == 11  # no process group: the whole epoch


# -- SIGKILL mid-epoch, then the same command again ------------------------------------------------------------------

# 6 scenes x 2 frames of one region: ~10 train frames, 5 steps an epoch at batch 2; 8 steps span two epochs.
# Checkpoints every 2 steps; the kill comes at step 3, mid-epoch, one step after the step-2 checkpoint.
TRAIN = ["rig=front1", "region=de", "data.image_size=[64,176]", "data.source.scenes_per_region=6",
         "data.source.frames_per_scene=2", "data.num_workers=0", "data.persistent_workers=false", "data.batch_size=2",
         "callbacks.prediction_images=null", "callbacks.progress_bar=null", "logger=csv", "trainer.max_steps=8",
         "trainer.max_epochs=-1", "trainer.limit_val_batches=1", "trainer.enable_model_summary=false",
         "callbacks.periodic_checkpoint.every_n_train_steps=2", "+callbacks.pause._target_=probes.PauseAt",
         "+callbacks.pause.step=3"]


def _command(run_dir: Path, marker: Path) -> list[str]:
    return [sys.executable, "-m", "visionpilot.cli.train", *TRAIN, f"+callbacks.pause.marker={marker}",
            f"hydra.run.dir={run_dir}"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _finish(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, env=_env(), cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def _wait_for_pause(proc: subprocess.Popen, marker: Path) -> None:
    """Until the run pauses at step 3 (its PauseAt probe wrote the marker)."""
    deadline = time.monotonic() + 600
    while not marker.exists():
        assert proc.poll() is None, f"training exited before step 3:\n{proc.stderr.read()[-5000:]}"
        assert time.monotonic() < deadline, "training never reached step 3"
        time.sleep(0.2)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_rerun_finishes_like_an_uninterrupted_run(tmp_path: Path) -> None:
    # Reference: the same command, never interrupted (its pause marker exists already, so it never pauses).
    ref_dir, ref_marker = tmp_path / "reference", tmp_path / "reference.marker"
    ref_marker.write_text("no pause")
    _finish(_command(ref_dir, ref_marker), tmp_path)

    run_dir, marker = tmp_path / "run", tmp_path / "run.marker"
    cmd = _command(run_dir, marker)
    proc = subprocess.Popen(cmd, env=_env(), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    _wait_for_pause(proc, marker)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    last = run_dir / "checkpoints" / "last.ckpt"
    assert checkpoint_step(last) == 2 and not (run_dir / "metrics.json").exists()

    out = _finish(cmd, tmp_path)  # the same command: resumes from step 2 by itself
    assert "ckpt_path=auto: resuming from" in out.stdout + out.stderr

    ref = json.loads((ref_dir / "metrics.json").read_text())
    got = json.loads((run_dir / "metrics.json").read_text())
    assert got["train/steps"] == ref["train/steps"] == 8
    val = sorted(k for k in ref if k.startswith("val/"))
    assert val and {k: round(got[k], 5) for k in val} == {k: round(ref[k], 5) for k in val}
    # Same optimizer steps and, the data order having resumed mid-epoch, the same weights.
    a, b = (torch.load(d / "checkpoints" / "last.ckpt", weights_only=False) for d in (ref_dir, run_dir))
    assert a["global_step"] == b["global_step"] == 8
    steps = {int(s["step"]) for s in b["optimizer_states"][0]["state"].values()}
    assert steps == {8}
    differ = [k for k in a["state_dict"] if not torch.allclose(a["state_dict"][k], b["state_dict"][k], atol=1e-6)]
    assert not differ, f"weights differ from the uninterrupted run in {differ[:3]}"
    assert load_checkpoint(run_dir / "checkpoints" / "last.ckpt").meta["camera_names"] == ["CAM_FRONT"]


@pytest.mark.slow
def test_sigterm_saves_the_step_it_stopped_at_and_exits_143(tmp_path: Path) -> None:
    run_dir, marker = tmp_path / "run", tmp_path / "run.marker"
    cmd = [*_command(run_dir, marker), "+callbacks.pause.seconds=3"]  # SIGTERM arrives while step 3 pauses
    log = tmp_path / "stdout.log"
    with log.open("w") as stdout:
        proc = subprocess.Popen(cmd, env=_env(), cwd=tmp_path, stdout=stdout, stderr=subprocess.PIPE, text=True)
    _wait_for_pause(proc, marker)
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    # Lightning's SIGTERMException exited 0 here, with last.ckpt from step 2: a stopped run looked finished.
    assert proc.returncode == 143, err[-3000:]
    assert "stopped by SIGTERM at step 3" in log.read_text() and not (run_dir / "metrics.json").exists()
    assert checkpoint_step(run_dir / "checkpoints" / "last.ckpt") == 3  # not the periodic step-2 one
    out = _finish(cmd, tmp_path)  # the same command resumes at step 3 and finishes
    assert "ckpt_path=auto: resuming from" in out.stdout + out.stderr
    assert json.loads((run_dir / "metrics.json").read_text())["train/steps"] == 8


def test_resuming_with_other_settings_lists_them() -> None:
    from visionpilot.training.fault_tolerance import config_changes

    stored = {"data": {"regions": ["us"], "batch_size": 4}, "model": {"lr": 1e-3}, "trainer": {"max_steps": 10}}
    current = {"data": {"regions": ["us", "gb"], "batch_size": 4}, "model": {"lr": 1e-3, "compile": True},
               "trainer": {"max_steps": 20}}  # more steps: the usual reason to resume, not reported
    assert config_changes(stored, current) == ["data.regions: ['us'] -> ['us', 'gb']",
                                               "model.compile: '(unset)' -> True"]
    assert config_changes(stored, stored) == [] and config_changes({}, current) == []
