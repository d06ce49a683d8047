"""visionpilot-benchmark's model list: paths checked and named by the files they name, '+' in folders included."""

from __future__ import annotations

from pathlib import Path

import pytest

from visionpilot.export.benchmark import _check_path, model_specs


def test_model_paths_with_plus_signs_are_checked_and_named_by_their_files(tmp_path: Path) -> None:
    # 'base.ckpt+delta.safetensors' was split at every '+' (checked) or the last one (named), so run folders named
    # after their settings (lr+aug) were "not found" and named after the wrong folder.
    base = tmp_path / "lr+aug" / "checkpoints" / "last.ckpt"
    delta = tmp_path / "ft+gb" / "delta.safetensors"
    for path in (base, delta):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"")  # only their existence is checked here
    assert _check_path("m", f"{base}+{delta}") == delta
    assert _check_path("m", str(delta)) == delta
    assert list(model_specs([f"{base}+{delta}", str(base)])) == ["ft+gb", "lr+aug"]
    with pytest.raises(FileNotFoundError, match=r"^models\.m: model '.*missing\.ckpt\+.*' not found: .*"
                                                r"'.*missing\.ckpt' \(missing\) \+ '.*delta\.safetensors' \(found\)"):
        _check_path("m", f"{tmp_path / 'missing.ckpt'}+{delta}")
