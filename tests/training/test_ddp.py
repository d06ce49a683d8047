"""Data-parallel training on CPU: 2 processes over gloo, as ``trainer=ddp`` and as torchrun launches them.

Each run trains a tiny model for a few steps; a probe callback (tests/training/probes.py) saves every rank's weights
and the frames it trained on. DDP must keep the ranks' weights identical while every rank reads other frames.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from visionpilot.training.checkpoints import load_checkpoint

HERE = Path(__file__).parent
TINY = ["rig=front1", "region=de", "data.image_size=[64,176]", "data.source.scenes_per_region=6",
        "data.source.frames_per_scene=2", "data.num_workers=0", "data.persistent_workers=false", "data.batch_size=2",
        "callbacks.prediction_images=null", "callbacks.progress_bar=null", "logger=csv",
        "trainer.max_steps=3", "trainer.max_epochs=-1", "trainer.limit_val_batches=1",
        "trainer.enable_model_summary=false"]


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return env


def _run(cmd: list[str], run_dir: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout, cwd=run_dir.parent)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n" \
                                 f"{proc.stderr[-6000:]}"
    return proc


def _probe_args(out: Path) -> list[str]:
    return ["+callbacks.rank_probe._target_=probes.RankProbe", f"+callbacks.rank_probe.out={out}"]


def _check_ranks(probe_dir: Path, steps: int, backend: str = "gloo") -> None:
    ranks = [torch.load(probe_dir / f"rank{r}.pt", weights_only=False, map_location="cpu") for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world_size"] == 2 for r in ranks)
    assert all(r["backend"] == backend for r in ranks)
    assert all(r["steps"] == steps for r in ranks)
    params = [{k: v for k, v in r["state_dict"].items() if "running_" not in k and "num_batches" not in k}
              for r in ranks]
    assert params[0].keys() == params[1].keys() and len(params[0]) > 10
    differ = [k for k in params[0] if not torch.equal(params[0][k], params[1][k])]
    assert not differ, f"ranks' weights diverged in {len(differ)} tensors, e.g. {differ[:3]}"
    # Each rank trains on its own slice of the epoch (at most one frame repeats, padding an odd count).
    first = [r["frames"][:4] for r in ranks]  # the first epoch's 2 batches x 2 frames of each rank
    assert len(set(first[0]) & set(first[1])) <= 1, f"ranks read the same frames: {first}"


@pytest.mark.slow
def test_ddp_two_cpu_processes_keep_weights_identical(tmp_path: Path) -> None:
    """``trainer=ddp trainer.accelerator=cpu trainer.devices=2``: Lightning starts the second process (gloo)."""
    run_dir, probe = tmp_path / "run", tmp_path / "probe"
    _run([sys.executable, "-m", "visionpilot.cli.train", "trainer=ddp", "trainer.accelerator=cpu",
          "trainer.devices=2", *TINY, *_probe_args(probe), f"hydra.run.dir={run_dir}"], run_dir)
    _check_ranks(probe, steps=3)
    # Rank 0 wrote one checkpoint for both, loadable on its own.
    loaded = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    weights = torch.load(probe / "rank0.pt", weights_only=False)["state_dict"]
    for name, value in loaded.net.state_dict().items():
        if "running_" not in name and "num_batches" not in name:
            assert torch.equal(value, weights[f"net.{name}"]), name


@pytest.mark.slow
def test_torchrun_multinode_config_on_cpu(tmp_path: Path) -> None:
    """``torchrun --nproc_per_node=2 ... trainer=multinode``: devices and nodes come from torchrun's environment."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun is not installed beside this Python")
    run_dir, probe = tmp_path / "run", tmp_path / "probe"
    _run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "visionpilot.cli.train", "trainer=multinode",
          "trainer.accelerator=cpu", "trainer.precision=32-true", "trainer.sync_batchnorm=false", *TINY,
          *_probe_args(probe), f"hydra.run.dir={run_dir}"], run_dir)
    _check_ranks(probe, steps=3)


def test_nccl_two_gpus(tmp_path: Path) -> None:
    """``trainer=gpu_ddp trainer.devices=2``: one process per GPU over NCCL, bf16, SyncBatchNorm."""
    if torch.cuda.device_count() < 2:
        pytest.skip(f"NCCL data parallelism needs >= 2 CUDA GPUs, found {torch.cuda.device_count()}")
    run_dir, probe = tmp_path / "run", tmp_path / "probe"
    env_tiny = [a for a in TINY if not a.startswith("data.num_workers")]
    _run([sys.executable, "-m", "visionpilot.cli.train", "trainer=gpu_ddp", "trainer.devices=2", *env_tiny,
          *_probe_args(probe), f"hydra.run.dir={run_dir}"], run_dir)
    _check_ranks(probe, steps=3, backend="nccl")
