"""Helpers the format writers share: stable tokens, atomic file writes, camera and region checks."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from visionpilot.data.frame import CameraView, Frame
from visionpilot.utils.io import write_atomic


def stable_token(*parts: Any) -> str:
    """A 32-hex-digit token (the shape of nuScenes tokens) that depends only on ``parts``."""
    return hashlib.md5("/".join(str(p) for p in parts).encode()).hexdigest()


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`visionpilot.utils.io.write_atomic`)."""
    return write_atomic(path, lambda tmp: Path(tmp).write_bytes(data))


def write_image_atomic(path: Path, rgb: np.ndarray, jpeg_quality: int = 95) -> Path:
    """Encode an (H, W, 3) uint8 RGB image by the file suffix (.jpg / .png) and write it atomically."""
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if path.suffix.lower() in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(path.suffix, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError(f"could not encode an image of shape {rgb.shape} as '{path.suffix}' for {path}")
    return write_bytes_atomic(path, buf.tobytes())


def camera_of(frame: Frame, name: str, fmt: str) -> CameraView:
    """The camera ``name`` of a frame, with its image; a clear error otherwise."""
    for cam in frame.cameras:
        if cam.name == name:
            if cam.image is None:
                raise ValueError(f"{fmt} writer: frame '{frame.frame_id}', camera '{name}': field 'image' is None; "
                                 f"load frames with images to export them")
            return cam
    raise ValueError(f"{fmt} writer: frame '{frame.frame_id}' has no camera '{name}' (it has {frame.camera_names}); "
                     f"set the writer's camera")


def check_region(frame: Frame, allowed: tuple[str, ...], fmt: str) -> None:
    if frame.region not in allowed:
        raise ValueError(f"{fmt} writer: frame '{frame.frame_id}' is in region '{frame.region}', but the {fmt} format "
                         f"holds {list(allowed)} only; select those regions (e.g. region={allowed[0]})")

