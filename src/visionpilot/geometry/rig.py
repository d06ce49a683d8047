"""Camera rigs: where each camera sits on the car and what it sees.

A rig is read from ``configs/rig/<name>.yaml`` (a Hydra group, ``rig=nuscenes6``) and turned into per-camera
intrinsics and extrinsics for an image size. Every camera of a rig renders/streams at the same image size so that
a batch can stack them as ``(B, N_cam, 3, H, W)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import yaml

from visionpilot.geometry.frames import camera_extrinsics, intrinsics_from_fov
from visionpilot.paths import config_dir


@dataclass(frozen=True)
class CameraSpec:
    """Mounting of one camera. Angles in degrees, position in the ego frame (metres)."""

    name: str
    position: tuple[float, float, float]
    yaw_deg: float
    hfov_deg: float
    pitch_deg: float = 0.0
    roll_deg: float = 0.0
    principal: tuple[float, float] = (0.5, 0.5)  # principal point as fractions of (width, height)

    def intrinsics(self, image_size: tuple[int, int]) -> np.ndarray:
        height, width = image_size
        return intrinsics_from_fov(self.hfov_deg, width, height, self.principal)

    def extrinsics(self) -> np.ndarray:
        return camera_extrinsics(self.position, self.yaw_deg, self.pitch_deg, self.roll_deg)


@dataclass(frozen=True)
class Rig:
    """An ordered set of cameras. The order is the camera axis of every batch."""

    name: str
    cameras: tuple[CameraSpec, ...] = field(default_factory=tuple)

    @property
    def camera_names(self) -> list[str]:
        return [c.name for c in self.cameras]

    def __len__(self) -> int:
        return len(self.cameras)

    def intrinsics(self, image_size: tuple[int, int]) -> np.ndarray:
        """(N_cam, 3, 3) for images of size (height, width)."""
        return np.stack([c.intrinsics(image_size) for c in self.cameras])

    def extrinsics(self) -> np.ndarray:
        """(N_cam, 4, 4) camera -> ego."""
        return np.stack([c.extrinsics() for c in self.cameras])

    def mirror_order(self) -> list[int] | None:
        """Permutation that maps each camera to its left/right mirror twin (itself if on the centre line).

        Used by horizontal flip: after mirroring the world, slot ``i`` holds the flipped image of camera
        ``mirror_order()[i]``. None when the rig is not left/right symmetric.

        The twin of a camera sits at the mirrored position with mirrored yaw and roll, the same pitch and field of
        view, and the mirrored principal point; every camera must have its own twin (a permutation).
        """
        order = []
        for cam in self.cameras:
            want_pos = np.array([cam.position[0], -cam.position[1], cam.position[2]])
            want_principal = (1.0 - cam.principal[0], cam.principal[1])
            best, best_err = None, np.inf
            for j, other in enumerate(self.cameras):
                angle_err = (abs(((other.yaw_deg + cam.yaw_deg) + 180) % 360 - 180)
                             + abs(other.pitch_deg - cam.pitch_deg) + abs(other.roll_deg + cam.roll_deg))
                err = np.linalg.norm(np.asarray(other.position) - want_pos) + angle_err / 10.0
                same_optics = other.hfov_deg == cam.hfov_deg and np.allclose(other.principal, want_principal)
                if same_optics and err < best_err:
                    best, best_err = j, err
            if best is None or best_err > 0.2:
                return None
            order.append(best)
        return order if sorted(order) == list(range(len(order))) else None


def available_rigs() -> list[str]:
    return sorted(p.stem for p in (config_dir() / "rig").glob("*.yaml"))


def rig_from_config(cfg: Mapping[str, Any]) -> Rig:
    """Build a :class:`Rig` from its config mapping (a Hydra ``rig`` node or a parsed YAML file)."""
    name = cfg.get("name", "<unnamed>")
    cams_cfg: Sequence[Mapping[str, Any]] = cfg.get("cameras") or []
    if not cams_cfg:
        raise ValueError(f"rig '{name}': field 'cameras' must list at least one camera, found {cams_cfg!r}")
    cameras = []
    required = ("name", "position", "yaw_deg", "hfov_deg")
    for i, c in enumerate(cams_cfg):
        missing = [k for k in required if k not in c]
        if missing:
            cam = f"camera #{i} '{c['name']}'" if "name" in c else f"camera #{i}"
            raise ValueError(f"rig '{name}', {cam}: missing field(s) {missing}; each camera needs {list(required)}")
        where = f"rig '{name}', camera '{c['name']}'"
        position = _numbers(where, "position", c["position"], 3)
        principal = _numbers(where, "principal", c.get("principal", (0.5, 0.5)), 2)
        if not all(0.0 <= v <= 1.0 for v in principal):  # pixels given here would put it far outside the image
            raise ValueError(f"{where}: field 'principal' is the principal point as fractions of (width, height), "
                             f"each in [0, 1], found {list(principal)}")
        hfov_deg, yaw_deg, pitch_deg, roll_deg = (_numbers(where, k, c.get(k, 0.0), None)[0]
                                                  for k in ("hfov_deg", "yaw_deg", "pitch_deg", "roll_deg"))
        if not 0.0 < hfov_deg < 180.0:
            raise ValueError(f"{where}: field 'hfov_deg' must be in (0, 180) degrees for a pinhole camera, "
                             f"found {hfov_deg}")
        cameras.append(
            CameraSpec(
                name=str(c["name"]),
                position=position,  # type: ignore[arg-type]
                yaw_deg=yaw_deg,
                hfov_deg=hfov_deg,
                pitch_deg=pitch_deg,
                roll_deg=roll_deg,
                principal=principal,  # type: ignore[arg-type]
            )
        )
    names = [c.name for c in cameras]
    if len(set(names)) != len(names):
        raise ValueError(f"rig '{name}': camera names must be unique, found {names}")
    return Rig(name=str(name), cameras=tuple(cameras))


def _numbers(where: str, field: str, value: Any, count: int | None) -> tuple[float, ...]:
    """``count`` finite numbers (None: one scalar) from a camera's config field, else an error naming it."""
    try:
        out = (float(value),) if count is None else () if isinstance(value, str) else tuple(float(v) for v in value)
    except (TypeError, ValueError):
        out = ()
    if len(out) != (count or 1) or not all(math.isfinite(v) for v in out):
        expected = "a number" if count is None else f"{count} numbers"
        raise ValueError(f"{where}: field '{field}' needs {expected}, found {value!r}")
    return out


def load_rig(name: str) -> Rig:
    """Load ``configs/rig/<name>.yaml``; an unknown name lists the valid ones."""
    path = config_dir() / "rig" / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown rig '{name}'; valid choices: {available_rigs()}")
    with open(path) as f:
        return rig_from_config(yaml.safe_load(f))


def as_rig(rig: Rig | str | Mapping[str, Any]) -> Rig:
    """Accept a Rig, a rig name, or a config mapping."""
    if isinstance(rig, Rig):
        return rig
    if isinstance(rig, str):
        return load_rig(rig)
    return rig_from_config(rig)
