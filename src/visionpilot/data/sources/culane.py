"""CULane as a :class:`FrameSource`: one front camera, 2D lane lines only, region CN.

On disk (``root``, as the CULane archives unpack):

    list/train.txt val.txt test.txt     one image per line, '/driver_23_30frame/05151649_0422.MP4/00000.jpg'
                                        (``*_gt.txt`` style lines with more columns work too: the first is the image)
    list/test_split/test<k>_<name>.txt  optional: the test images of each scenario (normal, crowd, night, ...)
    driver_*/<clip>.MP4/<frame>.jpg     1640x590 dash-camera images, sampled from 30 fps video
    driver_*/<clip>.MP4/<frame>.lines.txt
                                        one lane per text line: 'x1 y1 x2 y2 ...' image pixels, from the image
                                        bottom (y = 590) upwards; x may be negative where the lane leaves the image

Frames: ``frame_id`` is the image path without its suffix, ``scene_id`` the video clip (``driver_*/<clip>.MP4``),
``timestamp`` the frame number / 30. Official splits: a clip's split is the list it appears in (train, val, test).
An image in the lists of two different splits would be trained on and evaluated on: that is an error naming both
lists, in ``skip`` mode too (it is a conflict between lists, not a bad frame; the same image twice in one split, as
``train.txt`` and ``train_gt.txt`` list it, is read once). A clip whose images are spread over lists of different
splits goes, every frame of it, to the split of the list read first, with a warning.

Labels: ``lanes_2d`` only (CULane annotates up to four lane markings around the ego lane, without types): every
lane gets ``lane_type`` (default ``white_dashed``; ``meta['lane_types'] = 'unknown'`` says it is not annotated).
Points are used as written. The camera, named ``CAM_FRONT``, has no published calibration: see
:func:`~visionpilot.data.sources._common.uncalibrated_camera` for the intrinsics/extrinsics it carries.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from visionpilot.data.frame import CameraView, Frame, Lane
from visionpilot.data.regions import get_region
from visionpilot.data.sources._common import (
    FormatError,
    SkipLog,
    check_on_error,
    escapes_root,
    read_rgb,
    read_text,
    uncalibrated_camera,
)
from visionpilot.data.sources.base import FrameRef, FrameSource
from visionpilot.data.vocab import lane_type_index

log = logging.getLogger(__name__)

#: CULane's image size (height, width).
CULANE_IMAGE_SIZE: tuple[int, int] = (590, 1640)
LISTS: tuple[str, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class _Entry:
    image: str  # relative to root, no leading slash
    split: str
    category: str | None  # test scenario


def read_lines_txt(path: Path) -> list[np.ndarray]:
    """Lanes of a ``.lines.txt`` file as (P, 2) pixel polylines; a bad line names the file, line and field.

    A line of one point is not a lane and is dropped: the official evaluator gives it no similarity ("lane size
    must be greater or equal to 2"), and CLRNet's and LaneATT's loaders filter such lanes out.
    """
    if not path.is_file():
        raise FormatError(f"CULane label file {path} not found (every listed image needs its .lines.txt)")
    lanes = []
    for n, text in enumerate(read_text(path, "CULane label file").splitlines(), start=1):
        fields = text.split()
        if not fields:
            continue
        try:
            values = np.array([float(v) for v in fields], dtype=np.float64)
        except ValueError:
            bad = next(v for v in fields if not _is_float(v))
            raise FormatError(f"{path}: line {n}: field 'x y' pairs must be numbers, found '{bad}'") from None
        finite = bool(np.isfinite(values).all())
        if len(values) % 2 or not finite:
            raise FormatError(f"{path}: line {n}: field 'x y' pairs must hold an even count of finite numbers, "
                              f"found {len(values)} value(s)" + ("" if finite else ", not all finite"))
        if len(values) >= 4:
            lanes.append(values.reshape(-1, 2))
    return lanes


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class CULaneSource(FrameSource):
    """CULane images and lanes (see the module docstring).

    Args:
        root: the dataset folder (holding ``list/`` and ``driver_*``).
        lists: which list files to read (``list/<name>.txt``); their names are the official splits (``train_gt``,
            CULane's list with mask paths and lane flags, holds the ``train`` split).
        image_size: (height, width) every image must have.
        lane_type: the lane type given to every (untyped) CULane lane.
        region: region code of the data (CULane was recorded in Beijing).
        official_splits: keep each clip in the split of its list.
        on_error: ``raise`` or ``skip`` (drop and report frames whose image or label file is missing or bad; in
            ``skip`` mode label files are parsed while indexing, so bad ones never reach training).
        camera_name: the camera's name in frames.
    """

    name = "culane"

    def __init__(self, root: str | Path, lists: Sequence[str] = LISTS,
                 image_size: Sequence[int] = CULANE_IMAGE_SIZE, lane_type: str = "white_dashed", region: str = "cn",
                 official_splits: bool = True, on_error: str = "raise", camera_name: str = "CAM_FRONT") -> None:
        self.root = Path(root)
        self.lists = [str(n) for n in lists]
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.lane_type = lane_type_index(lane_type)
        self.region = get_region(region).code
        self.official_splits = bool(official_splits)
        self.on_error = check_on_error(on_error, "CULane source")
        self.camera_name = camera_name
        self.skips = SkipLog(self.name)
        self._entries: list[_Entry] | None = None
        self._scene_split: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._all())

    @property
    def camera_names(self) -> list[str]:
        return [self.camera_name]

    def index(self) -> list[FrameRef]:
        return [FrameRef(i, _frame_id(e.image), _scene_id(e.image), self.region) for i, e in enumerate(self._all())]

    def latlon(self, index: int) -> None:
        """Always None: CULane records no position (zones then follow ``governance.unknown_location``)."""
        return None

    def official_split(self, scene_id: str) -> str | None:
        return self._scene_split.get(scene_id) if self.official_splits else None

    def _all(self) -> list[_Entry]:
        if self._entries is None:
            self._entries = self._read_lists()
            self.skips.report(len(self._entries) + len(self.skips))
        return self._entries

    def _read_lists(self) -> list[_Entry]:
        categories = self._test_categories()
        seen: dict[str, tuple[Path, int, str]] = {}  # image -> (list file, line, split) where first listed
        clip_list: dict[str, Path] = {}  # clip -> the list that gave it its split
        mixed: dict[str, tuple[Path, Path]] = {}  # clip -> (that list, a list of another split holding its images)
        entries = []
        for name in self.lists:
            split = name.removesuffix("_gt")  # list/train_gt.txt (image, mask, 4 lane flags) lists the train split
            path = self.root / "list" / f"{name}.txt"
            if not path.is_file():
                raise FormatError(f"CULane list file {path} not found; is root '{self.root}' the folder holding "
                                  f"list/ and driver_*/? (lists read: {self.lists})")
            for n, text in enumerate(read_text(path, "CULane list file").splitlines(), start=1):
                if not text.strip():
                    continue
                image = text.split()[0].lstrip("/")
                if image in seen:
                    first, first_n, first_split = seen[image]
                    if first_split != split:  # one frame in two splits: a leak, whatever on_error says
                        raise FormatError(f"{path}: line {n}: field 'image' '{image}' must be in the lists of one "
                                          f"split only, found it in {split} ({path.name}) and in {first_split} "
                                          f"({first} line {first_n}); remove it from one of them")
                    continue
                seen[image] = (path, n, split)
                try:
                    if not image.endswith(".jpg"):
                        raise FormatError(f"{path}: line {n}: field 'image' must be a .jpg path, found '{image}'")
                    if escapes_root(image):  # the leading "/" is CULane's own, stripped above
                        raise FormatError(f"{path}: line {n}: field 'image' must be a path inside the dataset root, "
                                          f"without '..', found '{image}'")
                    if not (self.root / image).is_file():
                        raise FormatError(f"{path}: line {n}: image file {self.root / image} not found")
                    label = (self.root / image).with_suffix(".lines.txt")
                    if self.on_error == "skip":
                        read_lines_txt(label)
                    elif not label.is_file():
                        raise FormatError(f"{path}: line {n}: label file {label} not found")
                except FormatError as e:
                    if self.on_error == "raise":
                        raise
                    self.skips.add(f"{path.name} line {n}", e)
                    continue
                entries.append(_Entry(image, split, categories.get(image)))
                clip = _scene_id(image)
                if self._scene_split.setdefault(clip, split) != split:
                    mixed.setdefault(clip, (clip_list[clip], path))
                clip_list.setdefault(clip, path)
        if mixed:
            clip, (first, other) = next(iter(mixed.items()))
            log.warning("CULane source: %d clip(s) have images in the lists of different splits; each goes, every "
                        "frame of it, to the split of the list read first (e.g. clip '%s': %s, also in %s)",
                        len(mixed), clip, first, other)
        return entries

    def _test_categories(self) -> dict[str, str]:
        """Image -> test scenario from ``list/test_split/test<k>_<name>.txt`` (empty when absent)."""
        out = {}
        for path in sorted((self.root / "list" / "test_split").glob("test*_*.txt")):
            name = path.stem.split("_", 1)[1]
            for text in read_text(path, "CULane list file").splitlines():
                if text.strip():
                    out[text.split()[0].lstrip("/")] = name
        return out

    def load(self, index: int, with_images: bool = True) -> Frame:
        entries = self._all()
        if not 0 <= index < len(entries):
            raise IndexError(f"CULane source: index {index} out of range [0, {len(entries)})")
        e = entries[index]
        path = self.root / e.image
        lanes = [Lane(points, self.lane_type) for points in read_lines_txt(path.with_suffix(".lines.txt"))]
        k, ext = uncalibrated_camera(self.image_size)
        image = read_rgb(path, self.image_size, f"CULane {e.split} image") if with_images else None
        view = CameraView(name=self.camera_name, intrinsics=k, extrinsics=ext, image_size=self.image_size,
                          image=image, lanes_2d=lanes)
        stem = Path(e.image).stem
        meta: dict[str, Any] = {"list": e.split, "image": e.image, "lane_types": "unknown", "calibrated": False}
        if e.category is not None:
            meta["category"] = e.category
        frame = Frame(frame_id=_frame_id(e.image), scene_id=_scene_id(e.image), source=self.name, region=self.region,
                      driving_side=get_region(self.region).driving_side,
                      timestamp=int(stem) / 30.0 if stem.isdigit() else 0.0, cameras=[view],
                      labels=frozenset({"lanes_2d"}), meta=meta)
        return frame.validate(f"CULane image {path}")

    @property
    def skipped(self) -> dict[str, Any]:
        return self.skips.summary(len(self._all()) + len(self.skips))


def _frame_id(image: str) -> str:
    return image[: -len(".jpg")] if image.endswith(".jpg") else image


def _scene_id(image: str) -> str:
    return str(Path(image).parent)
