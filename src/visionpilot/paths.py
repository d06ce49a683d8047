"""Where the package's Hydra configs live, for a source checkout and for an installed wheel."""

from __future__ import annotations

from functools import cache
from pathlib import Path


@cache
def config_dir() -> Path:
    """The ``configs/`` directory.

    A built wheel carries the configs inside the package (``visionpilot/configs``, see pyproject's force-include);
    a source checkout (editable install) has them at the repository root. The packaged copy wins when present.
    """
    packaged = Path(__file__).resolve().parent / "configs"
    if (packaged / "train.yaml").is_file() or (packaged / "data.yaml").is_file():
        return packaged
    repo = Path(__file__).resolve().parents[2] / "configs"
    if repo.is_dir():
        return repo
    raise FileNotFoundError(
        f"visionpilot configs not found: looked in {packaged} (installed wheel) and {repo} (source checkout)"
    )
