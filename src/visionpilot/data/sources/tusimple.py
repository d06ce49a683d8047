"""TuSimple lane detection as a :class:`FrameSource`: one front camera, 2D lane lines only, region US.

On disk (``root``, as the TuSimple archives unpack):

    label_data_0313.json label_data_0531.json label_data_0601.json   train set labels
    test_label.json                                                  test set labels (released after the challenge)
    clips/<date>/<clip>/<n>.jpg                                      1280x720 images; the 20th frame is labelled

Each label file holds one JSON object per text line::

    {"lanes": [[-2, -2, 632, 625, ...], ...], "h_samples": [240, 250, ..., 710], "raw_file": "clips/0313-1/6040/20.jpg"}

``lanes[i][j]`` is the x pixel of lane ``i`` at image row ``h_samples[j]``; ``-2`` (any negative value) = no point.
Test labels may carry ``run_time``; it is ignored.

Frames: ``frame_id`` is ``raw_file`` without ``clips/`` and the suffix, ``scene_id`` the clip folder. Official
splits: frames of ``test_label.json`` are ``test``; the train files have none (their clips are split by hash). An image
(``raw_file``) labelled both in a train file and in ``test_label.json`` is an error naming both files, even with
``on_error="skip"``; a clip with some frames in each goes, every frame of it, to ``test``, with a warning.

Labels: ``lanes_2d`` only, each lane the polyline through its points top to bottom, typed ``lane_type`` (TuSimple has
no line types; ``meta['lane_types'] = 'unknown'``). ``meta['tusimple']`` keeps ``h_samples`` and the raw ``lanes``
so the official accuracy / FP / FN can be computed exactly (:class:`~visionpilot.evaluation.tusimple.TuSimpleMetric`).
The camera, named ``CAM_FRONT``, has no published calibration (see
:func:`~visionpilot.data.sources._common.uncalibrated_camera`).

``raw_file`` must be a path relative to ``root``: an absolute path or one with ``..`` would read an image outside the
dataset. A root written by :func:`~visionpilot.data.writers.write_tusimple` also holds :data:`EXPORT_STATUS`; one that
does not say ``complete`` is an export killed half-way (say, train labels written, test labels not) and is refused.
"""

from __future__ import annotations

import json
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
    read_json,
    read_rgb,
    uncalibrated_camera,
)
from visionpilot.data.sources.base import FrameRef, FrameSource
from visionpilot.data.vocab import lane_type_index

log = logging.getLogger(__name__)

#: TuSimple's image size (height, width).
TUSIMPLE_IMAGE_SIZE: tuple[int, int] = (720, 1280)
TEST_FILE = "test_label.json"
#: The export's status, which our writer sets to ``writing`` before it touches a root and to ``complete`` (with the
#: label files it wrote) last. Several label files cannot be replaced in one atomic step, so this file is what tells a
#: finished export from one killed between them. The official archives have none and are read as they are.
EXPORT_STATUS = "visionpilot_export.json"


@dataclass(frozen=True)
class _Label:
    file: str
    line: int
    raw_file: str
    h_samples: tuple[float, ...]
    lanes: tuple[tuple[float, ...], ...]


def parse_label_line(text: str, where: str) -> _Label | None:
    """One label line -> :class:`_Label` (None for a blank line); errors name ``where`` (file and line) and field."""
    if not text.strip():
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise FormatError(f"{where}: malformed JSON at column {e.colno} ({e.msg})") from None
    if not isinstance(obj, dict):
        raise FormatError(f"{where}: expected a JSON object, found {type(obj).__name__}")
    raw = obj.get("raw_file")
    if not isinstance(raw, str) or not raw:
        raise FormatError(f"{where}: field 'raw_file' must be an image path, found {raw!r}")
    if escapes_root(raw):
        raise FormatError(f"{where}: field 'raw_file' must be an image path relative to the dataset root, without "
                          f"'..' (e.g. 'clips/0313-1/6040/20.jpg'), found {raw!r}")
    h = obj.get("h_samples")
    if not isinstance(h, list) or not h or not all(_is_num(v) for v in h):
        raise FormatError(f"{where}: field 'h_samples' must be a non-empty list of numbers, found {_short(h)}")
    lanes = obj.get("lanes")
    if not isinstance(lanes, list):
        raise FormatError(f"{where}: field 'lanes' must be a list of lanes, found {_short(lanes)}")
    for i, lane in enumerate(lanes):
        if not isinstance(lane, list) or len(lane) != len(h):
            found = f"{len(lane)} values" if isinstance(lane, list) else _short(lane)
            raise FormatError(f"{where}: field 'lanes[{i}]' must hold one number per h_sample ({len(h)}), "
                              f"found {found}")
        bad = [j for j, v in enumerate(lane) if not _is_num(v)]
        if bad:  # the count is right: name the value (NaN, a string, ...) rather than report the count
            raise FormatError(f"{where}: field 'lanes[{i}][{bad[0]}]' must be a finite number (x in pixels, -2 = no "
                              f"point), found {_short(lane[bad[0]])}")
    return _Label("", 0, raw, tuple(float(v) for v in h),
                  tuple(tuple(float(v) for v in lane) for lane in lanes))


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and bool(np.isfinite(v))


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def label_lanes(label: _Label) -> list[np.ndarray]:
    """(P, 2) pixel polylines (x, y) through each lane's present points; lanes with fewer than 2 points dropped."""
    h = np.asarray(label.h_samples)
    out = []
    for lane in label.lanes:
        x = np.asarray(lane)
        ok = x >= 0  # -2 marks "no point"
        if ok.sum() >= 2:
            out.append(np.column_stack([x[ok], h[ok]]))
    return out


class TuSimpleSource(FrameSource):
    """TuSimple images and lanes (see the module docstring).

    Args:
        root: the dataset folder (holding the label files and ``clips/``).
        label_files: label files to read, relative to ``root``; None: every ``label_data_*.json`` and
            ``test_label.json`` found there.
        image_size: (height, width) every image must have.
        lane_type: the lane type given to every (untyped) TuSimple lane.
        region: region code of the data (TuSimple was recorded on US highways).
        official_splits: put ``test_label.json`` frames in the test split.
        on_error: ``raise`` or ``skip`` (drop and report bad lines and frames whose image is missing).
        camera_name: the camera's name in frames.
    """

    name = "tusimple"

    def __init__(self, root: str | Path, label_files: Sequence[str] | None = None,
                 image_size: Sequence[int] = TUSIMPLE_IMAGE_SIZE, lane_type: str = "white_dashed",
                 region: str = "us", official_splits: bool = True, on_error: str = "raise",
                 camera_name: str = "CAM_FRONT") -> None:
        self.root = Path(root)
        self.label_files = None if label_files is None else [str(f) for f in label_files]
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.lane_type = lane_type_index(lane_type)
        self.region = get_region(region).code
        self.official_splits = bool(official_splits)
        self.on_error = check_on_error(on_error, "TuSimple source")
        self.camera_name = camera_name
        self.skips = SkipLog(self.name)
        self._labels: list[_Label] | None = None
        self._test_scenes: set[str] = set()

    def __len__(self) -> int:
        return len(self._all())

    @property
    def camera_names(self) -> list[str]:
        return [self.camera_name]

    def index(self) -> list[FrameRef]:
        return [FrameRef(i, _frame_id(lb.raw_file), _scene_id(lb.raw_file), self.region)
                for i, lb in enumerate(self._all())]

    def latlon(self, index: int) -> None:
        """Always None: TuSimple records no position (zones then follow ``governance.unknown_location``)."""
        return None

    def official_split(self, scene_id: str) -> str | None:
        return "test" if self.official_splits and scene_id in self._test_scenes else None

    def _check_export(self) -> None:
        """Refuse a root our writer left half-written (see :data:`EXPORT_STATUS`); roots without the file pass."""
        path = self.root / EXPORT_STATUS
        if not path.exists():
            return
        status = read_json(path, "TuSimple export status")
        state = status.get("status") if isinstance(status, dict) else None
        if state != "complete":
            raise FormatError(f"TuSimple export status {path}: field 'status' must be 'complete', found {state!r}: "
                              f"the export into root '{self.root}' did not finish, so its label files may be missing; "
                              f"run the export again")
        listed = status.get("label_files")
        if not isinstance(listed, dict) or not all(isinstance(k, str) for k in listed):
            raise FormatError(f"TuSimple export status {path}: field 'label_files' must map label file names to "
                              f"frame counts, found {_short(listed)}")
        missing = sorted(name for name in listed if not (self.root / name).is_file())
        if missing:
            raise FormatError(f"TuSimple export status {path}: field 'label_files' lists {sorted(listed)}, but "
                              f"{missing} not found under root '{self.root}'; run the export again")

    def _files(self) -> list[Path]:
        self._check_export()
        if self.label_files is not None:
            return [self.root / f for f in self.label_files]
        found = sorted(self.root.glob("label_data_*.json")) + sorted(self.root.glob(TEST_FILE))
        if not found:
            raise FormatError(f"TuSimple source: no label_data_*.json or {TEST_FILE} under root '{self.root}'")
        return found

    def _all(self) -> list[_Label]:
        if self._labels is None:
            self._labels = self._read()
            self.skips.report(len(self._labels) + len(self.skips))
        return self._labels

    def _read(self) -> list[_Label]:
        labels: list[_Label] = []
        seen: dict[str, tuple[Path, int]] = {}  # raw_file -> (label file, line) where first read
        train_clips: dict[str, Path] = {}  # clip -> the first train label file holding one of its frames
        test_path: Path | None = None
        for path in self._files():
            if not path.is_file():
                raise FormatError(f"TuSimple label file {path} not found")
            is_test = path.name == TEST_FILE
            for n, raw in enumerate(path.read_bytes().splitlines(), start=1):
                where = f"{path}: line {n}"
                try:
                    try:  # line by line, so that on_error=skip drops only a line with bytes that are not text
                        text = raw.decode("utf-8")
                    except UnicodeDecodeError as e:
                        raise FormatError(f"{where}: column {e.start + 1}: must be UTF-8 text, found byte "
                                          f"{raw[e.start]:#04x}") from None
                    label = parse_label_line(text, where)
                    if label is not None and label.raw_file not in seen \
                            and not (self.root / label.raw_file).is_file():
                        raise FormatError(f"{where}: field 'raw_file': image file {self.root / label.raw_file} "
                                          f"not found")
                except FormatError as e:
                    if self.on_error == "raise":
                        raise
                    self.skips.add(f"{path.name} line {n}", e)
                    continue
                if label is None:
                    continue
                if label.raw_file in seen:
                    first, first_n = seen[label.raw_file]
                    if self.official_splits and (first.name == TEST_FILE) != is_test:
                        # One image in train and test: a leak, whatever on_error says (two files disagree, no line
                        # of them is bad on its own).
                        raise FormatError(f"{where}: field 'raw_file' '{label.raw_file}' must be labelled in the "
                                          f"train label files or in {TEST_FILE}, not both, found it in {path.name} "
                                          f"and in {first} line {first_n}; remove it from one of them")
                    continue
                seen[label.raw_file] = (path, n)
                labels.append(_Label(path.name, n, label.raw_file, label.h_samples, label.lanes))
                clip = _scene_id(label.raw_file)
                if is_test:
                    self._test_scenes.add(clip)
                    test_path = path
                else:
                    train_clips.setdefault(clip, path)
        mixed = [clip for clip in train_clips if clip in self._test_scenes]
        if mixed and self.official_splits:
            log.warning("TuSimple source: %d clip(s) have frames in both train label files and %s; each goes, every "
                        "frame of it, to the test split (e.g. clip '%s': %s, also in %s)",
                        len(mixed), TEST_FILE, mixed[0], test_path, train_clips[mixed[0]])
        return labels

    def load(self, index: int, with_images: bool = True) -> Frame:
        labels = self._all()
        if not 0 <= index < len(labels):
            raise IndexError(f"TuSimple source: index {index} out of range [0, {len(labels)})")
        lb = labels[index]
        path = self.root / lb.raw_file
        k, ext = uncalibrated_camera(self.image_size)
        image = read_rgb(path, self.image_size, f"TuSimple {lb.file} line {lb.line}") if with_images else None
        view = CameraView(name=self.camera_name, intrinsics=k, extrinsics=ext, image_size=self.image_size,
                          image=image, lanes_2d=[Lane(p, self.lane_type) for p in label_lanes(lb)])
        stem = Path(lb.raw_file).stem
        meta = {"label_file": lb.file, "line": lb.line, "raw_file": lb.raw_file, "lane_types": "unknown",
                "calibrated": False,
                "tusimple": {"h_samples": list(lb.h_samples), "lanes": [list(x) for x in lb.lanes]}}
        frame = Frame(frame_id=_frame_id(lb.raw_file), scene_id=_scene_id(lb.raw_file), source=self.name,
                      region=self.region, driving_side=get_region(self.region).driving_side,
                      timestamp=(int(stem) - 1) / 20.0 if stem.isdigit() else 0.0, cameras=[view],
                      labels=frozenset({"lanes_2d"}), meta=meta)
        return frame.validate(f"TuSimple {lb.file} line {lb.line}")

    @property
    def skipped(self) -> dict[str, Any]:
        return self.skips.summary(len(self._all()) + len(self.skips))


def _frame_id(raw_file: str) -> str:
    p = Path(raw_file)
    parts = p.with_suffix("").parts
    return "/".join(parts[1:] if parts and parts[0] == "clips" else parts)


def _scene_id(raw_file: str) -> str:
    parts = Path(raw_file).parent.parts
    return "/".join(parts[1:] if parts and parts[0] == "clips" else parts)
