"""Sensor effects of the synthetic cameras: noise and lens/motion blur, cheap enough to apply to every frame."""

from __future__ import annotations

from functools import cache

import cv2
import numpy as np

from visionpilot.data.sources.synthetic.scene import Scene


@cache
def _noise_bank(rows: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Positive and negative parts of fixed Gaussian noise (sigma 4 grey levels), (rows, width, 3) uint8 each.

    Drawing fresh noise for a million pixels costs more than the rest of the sensor model; a fixed bank read at a
    random row offset per frame is indistinguishable to a network and saturating add/subtract is SIMD-fast.
    """
    rng = np.random.default_rng(4321)
    noise = rng.normal(0, 4.0, (rows, width, 3))
    return np.clip(noise, 0, 255).astype(np.uint8), np.clip(-noise, 0, 255).astype(np.uint8)


def add_sensor_effects(images: np.ndarray, scene: Scene, rng: np.random.Generator) -> None:
    """Sensor noise (the fixed bank at a random offset) and blur, in place on (N, H, W, 3)."""
    n, height, width, _ = images.shape
    rows = n * height
    pos, neg = _noise_bank(rows * 2, width)
    flat = images.reshape(rows, width, 3)
    off = int(rng.integers(0, rows))
    cv2.add(flat, pos[off:off + rows], dst=flat)
    off = int(rng.integers(0, rows))
    cv2.subtract(flat, neg[off:off + rows], dst=flat)
    sigma = scene.lighting.blur_sigma
    if sigma > 0:
        # Kernel of +-2 sigma (OpenCV's default +-3 sigma costs twice as much for a visually identical blur).
        k = 2 * int(np.ceil(2 * sigma)) + 1
        for c in range(n):
            cv2.GaussianBlur(images[c], (k, k), sigma, dst=images[c])
