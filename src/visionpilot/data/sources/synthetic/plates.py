"""Licence plates of the synthetic world: random characters in each region's format, drawn into plate decals.

Plates carry readable text so that anonymisation can be tested on real detail (governance/anonymise.py): a plate
whose text survives blurring would be visible in the images. The text is rendered once per string into a small
"ink" texture (OpenCV's Hershey font, with its image pyramid) and warped into the plate's projected quad with a
perspective transform on the plate's bounding box only: a few small OpenCV calls per plate large enough to read.
"""

from __future__ import annotations

import math
import string
from functools import lru_cache

import cv2
import numpy as np

#: Plate formats per region: ``L`` a letter, ``D`` a digit, anything else literal. Latin characters only (OpenCV's
#: Hershey fonts have no CJK glyphs, so the CN province character becomes a letter).
PLATE_FORMATS: dict[str, tuple[str, ...]] = {
    "us": ("DLLLDDD", "LLL DDDD"),
    "cn": ("L LDDDDD", "L DDDDD"),
    "de": ("L LL DDDD", "LL L DDD", "LLL LL DD"),
    "gb": ("LLDD LLL",),
    "jp": ("DD-DD", "LL DD-DD"),
    "in": ("LL DD LL DDDD",),
    "sg": ("SLL DDDD L",),
}
_DEFAULT_FORMATS = ("LLL DDDD",)
_LETTERS = np.array(list(string.ascii_uppercase.replace("I", "").replace("O", "")))  # as most registries do
_DIGITS = np.array(list(string.digits))

#: Plates shorter than this (pixels, in the image) get no text: the characters would be below one pixel.
MIN_TEXT_PX = 5.0
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_TEXT_SCALE, _TEXT_THICKNESS = 1.0, 2
_INK = 0.12  # ink brightness relative to the lit plate colour


def sample_plates(rng: np.random.Generator, region: str, count: int) -> list[str]:
    """``count`` random plate strings in the formats of ``region``."""
    formats = PLATE_FORMATS.get(region, _DEFAULT_FORMATS)
    width = max(len(f) for f in formats)
    # All draws at once (scenes hold hundreds of actors); the format then picks which draws it shows.
    which = rng.integers(0, len(formats), count)
    letters = _LETTERS[rng.integers(0, len(_LETTERS), (count, width))].tolist()
    digits = _DIGITS[rng.integers(0, len(_DIGITS), (count, width))].tolist()
    return ["".join(lt[i] if ch == "L" else dg[i] if ch == "D" else ch for i, ch in enumerate(formats[f]))
            for f, lt, dg in zip(which.tolist(), letters, digits)]


@lru_cache(maxsize=8192)
def ink_texture(text: str, level: int = 0) -> np.ndarray:
    """(h, w) uint8 coverage of ``text`` (255 = ink) on a plate-shaped texture with a small margin; ``level`` k is
    the k-th level of its image pyramid (half the size per level, low-pass filtered: cv2.pyrDown)."""
    if level > 0:
        tex = cv2.pyrDown(ink_texture(text, level - 1))
    else:
        (w, h), base = cv2.getTextSize(text, _FONT, _TEXT_SCALE, _TEXT_THICKNESS)
        pad_x, pad_y = 6, 5
        tex = np.zeros((h + base + 2 * pad_y, w + 2 * pad_x), dtype=np.uint8)
        cv2.putText(tex, text, (pad_x, pad_y + h), _FONT, _TEXT_SCALE, 255, _TEXT_THICKNESS, cv2.LINE_AA)
    tex.setflags(write=False)  # shared by every plate with this text
    return tex


def draw_plate_text(image: np.ndarray, quad: np.ndarray, text: str, plate_rgb: list[float]) -> None:
    """Draw ``text`` into the plate ``quad`` of ``image`` in place.

    Args:
        image: (H, W, 3) uint8.
        quad: (4, 2) OpenCV pixel coordinates (pixel centres at integers) of the plate's corners, in the order
            bottom-left, bottom-right, top-right, top-left as seen by a viewer facing the plate.
        text: the plate's characters.
        plate_rgb: the plate's lit colour (the ink is a dark version of it, so night and haze stay consistent).
    """
    (x_bl, y_bl), (x_br, y_br), (x_tr, y_tr), (x_tl, y_tl) = quad.tolist()  # most plates stop here: plain floats
    height = max(math.hypot(x_tl - x_bl, y_tl - y_bl), math.hypot(x_tr - x_br, y_tr - y_br))
    if height < MIN_TEXT_PX:
        return
    h_img, w_img = image.shape[:2]
    x0, y0 = np.floor(quad.min(axis=0)).astype(int)
    x1, y1 = np.ceil(quad.max(axis=0)).astype(int) + 1
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w_img), min(y1, h_img)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return
    # Sampling a texture much larger than the plate aliases strokes into dots: warp from the pyramid level at most
    # twice the plate's size (cached per text and level, so no filtering per plate).
    level = max(int(math.log2(max(ink_texture(text).shape[0] / height, 1.0))), 0)
    tex = ink_texture(text, level)
    th, tw = tex.shape
    src = np.array([[0, th], [tw, th], [tw, 0], [0, 0]], dtype=np.float32)
    dst = (quad - [x0, y0]).astype(np.float32)
    homography = cv2.getPerspectiveTransform(src, dst)
    alpha = cv2.warpPerspective(tex, homography, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if not alpha.any():
        return
    roi = image[y0:y1, x0:x1]
    a = alpha[..., None].astype(np.float32) * (1.0 / 255.0)
    ink = np.asarray(plate_rgb, dtype=np.float32) * _INK
    roi[:] = (roi * (1.0 - a) + ink * a + 0.5).astype(np.uint8)
