"""The Hydra configs travel with a built wheel: an installed visionpilot finds them without the source tree."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_carries_configs_and_composes(tmp_path: Path) -> None:
    pytest.importorskip("hatchling", reason="hatchling (dev extra) builds the wheel without network access")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True, text=True)
    wheel = next(tmp_path.glob("visionpilot-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "visionpilot/configs/train.yaml" in names and "visionpilot/configs/rig/nuscenes6.yaml" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "import visionpilot.paths as p; from hydra import compose, initialize_config_dir; "
        f"d = p.config_dir(); assert str(d).startswith({str(site)!r}), d; "
        "initialize_config_dir(config_dir=str(d), version_base='1.3'); "
        "cfg = compose('train', overrides=['experiment=demo', 'paths.output_dir=x']); print(cfg.rig.name)"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.stdout.strip() == "nuscenes6"
