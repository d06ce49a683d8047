"""What the real-dataset loaders share: format errors, the ``on_error`` policy, image reading, uncalibrated cameras.

Bad input is reported for people: the file, the token or line, the field, what was expected and what was found.
With ``on_error="skip"`` a loader drops the frames a bad input touches, counts them in :class:`SkipLog` and
reports them once, instead of stopping at the first one.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath
from typing import Any

import cv2
import numpy as np

from visionpilot.geometry.frames import camera_extrinsics

log = logging.getLogger(__name__)

#: What a loader does with a bad input: stop with the message, or skip the frames it touches and report them.
ON_ERROR = ("raise", "skip")


class FormatError(ValueError):
    """A dataset file does not hold what its format promises (the message names file, token/line and field)."""


def check_on_error(value: str, owner: str) -> str:
    if value not in ON_ERROR:
        raise ValueError(f"{owner}: field 'on_error' must be one of {list(ON_ERROR)}, found '{value}'")
    return value


@dataclass
class SkipLog:
    """Frames (or records) dropped under ``on_error=skip``, with the reason for each."""

    source: str
    items: list[tuple[str, str]] = field(default_factory=list)  # (what was skipped, message)

    def add(self, what: str, error: Exception) -> None:
        self.items.append((what, str(error)))

    def __len__(self) -> int:
        return len(self.items)

    def summary(self, total: int | None = None) -> dict[str, Any]:
        """JSON-friendly report: count, reasons by kind (the message up to its first ':'-free clause), examples."""
        kinds = Counter(_kind(msg) for _, msg in self.items)
        return {"skipped": len(self.items), "of": total, "reasons": dict(kinds.most_common()),
                "examples": [{"what": w, "error": m} for w, m in self.items[:5]]}

    def report(self, total: int | None = None) -> None:
        if not self.items:
            return
        of = f" of {total}" if total is not None else ""
        what, msg = self.items[0]
        log.warning("%s: on_error=skip dropped %d%s frame(s)/record(s); first: %s: %s", self.source, len(self.items),
                    of, what, msg)


def _kind(message: str) -> str:
    """A short reason kind for counting: the text after the last 'field' mention, else the message head."""
    if "field '" in message:
        return "field '" + message.split("field '", 1)[1].split("'", 1)[0] + "'"
    return message.split(":", 1)[0][:60]


def read_text(path: Path, what: str) -> str:
    """A text file's content (UTF-8, as JSON and the ASCII label files are); other bytes (a corrupt or binary file)
    are an error naming the file and the offset, not a bare UnicodeDecodeError."""
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(f"{what} {path}: byte offset {e.start}: must be UTF-8 text, found byte "
                          f"{e.object[e.start]:#04x}") from None


def read_json(path: Path, what: str) -> Any:
    """Parse a JSON file; a missing file, bytes that are not text or a syntax error name the file (and where)."""
    if not path.is_file():
        raise FormatError(f"{what}: file {path} not found")
    text = read_text(path, f"{what}:")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise FormatError(f"{what}: {path}: line {e.lineno}, column {e.colno}: malformed JSON ({e.msg})") from None


def escapes_root(relative: str) -> bool:
    """Whether a path a label file gives relative to the dataset root would read outside it: an absolute path
    (``root / path`` is then ``path`` itself; POSIX, a Windows drive, or a leading backslash) or a ``..`` part."""
    parts = relative.replace("\\", "/").split("/")
    return relative.startswith(("/", "\\")) or bool(PureWindowsPath(relative).drive) or ".." in parts


def read_rgb(path: Path, size: tuple[int, int] | None, where: str) -> np.ndarray:
    """Decode an image file to (H, W, 3) uint8 RGB, checking its (height, width) when ``size`` is given."""
    image = cv2.imread(os.fspath(path), cv2.IMREAD_COLOR)
    if image is None:
        reason = "not found" if not path.is_file() else "not a readable image"
        raise FormatError(f"{where}: image file {path} {reason}")
    if size is not None and tuple(image.shape[:2]) != tuple(size):
        raise FormatError(f"{where}: image file {path} must be {size[1]}x{size[0]} (width x height), found "
                          f"{image.shape[1]}x{image.shape[0]}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def uncalibrated_camera(image_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Intrinsics and extrinsics for a camera the dataset publishes no calibration for (CULane, TuSimple).

    Intrinsics: focal length 1 px with the principal point at the image centre. The 1-px focal marks the slot as
    uncalibrated: the BEV lifting ignores cameras with ``fx <= 1`` (as it does padded slots), while the centred
    principal point keeps the row-anchor lane head's left/right split (at ``cx``) meaningful.
    Extrinsics: a camera at the ego origin looking along ego +x (axes only, no mounting height).
    """
    height, width = image_size
    k = np.array([[1.0, 0.0, width / 2.0], [0.0, 1.0, height / 2.0], [0.0, 0.0, 1.0]])
    return k, camera_extrinsics((0.0, 0.0, 0.0), 0.0)
