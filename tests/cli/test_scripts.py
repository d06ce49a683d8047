"""scripts/quickstart.sh and scripts/region_finetune.sh print where their results are: the paths must be right from
wherever the script is started. The visionpilot commands are stubs here that only make their run dirs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# A console script that makes its Hydra run dir (or sweep dir) and leaves a mark in it.
STUB = """#!/usr/bin/env bash
for arg in "$@"; do
  case "$arg" in hydra.run.dir=*|hydra.sweep.dir=*) mkdir -p "${arg#*=}" && touch "${arg#*=}/ran" ;; esac
done
"""


def _fake_repo(tmp_path: Path) -> Path:
    """A checkout with the real scripts and an installed-looking .venv whose commands are stubs."""
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    for name in ("quickstart.sh", "region_finetune.sh", "setup_env.sh"):
        shutil.copy(REPO / "scripts" / name, root / "scripts" / name)
    (root / "pyproject.toml").write_text("")
    bin_dir = root / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for cmd in ("python", *(f"visionpilot-{c}" for c in ("data", "train", "finetune", "eval", "export", "benchmark"))):
        (bin_dir / cmd).write_text(STUB)
        (bin_dir / cmd).chmod(0o755)
    stamp = root / ".venv" / ".visionpilot-install-base"
    stamp.write_text("")
    os.utime(stamp, (os.path.getmtime(root / "pyproject.toml") + 10,) * 2)  # installed after pyproject: no pip
    return root


@pytest.mark.parametrize(("script", "printed", "env"), [
    ("quickstart.sh", r"global demo model: metrics \(overall, per region\) +(\S+)/train/metrics\.json", {}),
    ("region_finetune.sh", r"global model +(\S+)/global \(metrics\.json", {"QUICK": "1"}),
])
@pytest.mark.parametrize("out", [None, "results"])
def test_printed_result_paths_hold_the_results_from_another_directory(tmp_path: Path, script: str, printed: str,
                                                                      env: dict[str, str], out: str | None) -> None:
    # setup_env.sh moves to the repository root: a relative OUT (and the default) was used there, but printed as if
    # relative to where the script was started, so the printed paths led nowhere.
    root = _fake_repo(tmp_path)
    caller = tmp_path / "elsewhere"
    caller.mkdir()
    run_env = {k: v for k, v in os.environ.items() if k != "OUT"} | env | ({"OUT": out} if out else {})
    result = subprocess.run(["bash", str(root / "scripts" / script)], cwd=caller, env=run_env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    match = re.search(printed, result.stdout)
    assert match, result.stdout
    out_dir = caller / match.group(1)  # as the user reads it, from where they started the script
    assert (out_dir / ("train" if script == "quickstart.sh" else "global") / "ran").is_file(), result.stdout
    if out:  # a relative OUT is relative to where the script was started
        assert out_dir.resolve() == (caller / out).resolve()
    # Every result the script lists lies in the run dir of one of its commands (a path that no command writes to,
    # left behind when the steps change, would send the user to nothing).
    listed = re.findall(r"^  .*?  ?(\S*" + re.escape(match.group(1)) + r"/\S+)", result.stdout, flags=re.M)
    assert len(listed) >= 5, result.stdout
    for listed_path in listed:
        brace = re.search(r"\{(.*?)\}", listed_path)  # export/{fp32,int8}/model.onnx: both
        for path in ([listed_path[:brace.start()] + alt + listed_path[brace.end():] for alt in brace.group(1).split(",")]
                     if brace else [listed_path]):
            where = caller / path.rstrip(",")
            assert any((d / "ran").is_file() for d in (where, *where.parents)), f"no command writes {path}"
