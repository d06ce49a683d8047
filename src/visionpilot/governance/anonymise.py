"""Anonymisation: blur faces and licence plates from boxes, as a frame transform that runs before any other.

Boxes come from the frame (``CameraView.privacy_boxes``: the synthetic world labels every visible head and plate)
or, where a source has none (``None``: real data), from a plugged-in detector: any callable
``image (H, W, 3) uint8 -> (boxes (K, 4) float x1, y1, x2, y2 pixels, classes (K,) int)`` named by
``governance.anonymise.detector`` (a Hydra ``_target_``). A frame the anonymiser cannot cover (no boxes, no
detector) is an error, never passed through: data that may be read only anonymised is never read raw.

The blur is a Gaussian whose sigma scales with the box (``strength`` x its longer side, at least 2 px) over the
box grown by ``margin``: characters and facial features are a few pixels wide, so nothing of them survives, and
unlike a mosaic it leaves no block edges. ``method: fill`` paints the box with its mean colour instead (for data
where even the blurred silhouette is too much).

:func:`high_frequency_energy` is the measure the tests and docs use: the energy of the image minus its Gaussian
low-pass (sigma 1 px) inside the boxes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from numbers import Real
from typing import Any, Protocol

import cv2
import numpy as np

from visionpilot.data.frame import CameraView, Frame
from visionpilot.data.sources.base import FrameRef, FrameSource

log = logging.getLogger(__name__)
METHODS = ("blur", "fill")
FIELDS = ("enabled", "method", "margin", "strength", "detector", "always_detect")


class Detector(Protocol):
    """A face/plate detector for sources without privacy labels."""

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


class AnonymisationError(RuntimeError):
    """A frame could not be anonymised (no boxes and no detector)."""


def check_config(spec: Mapping[str, Any] | None, where: str = "governance.anonymise") -> dict[str, Any]:
    """The anonymiser settings as a plain dict, their names and ``method`` checked (also while ``enabled`` is false:
    a typo such as ``enable: true`` must not leave the anonymiser silently off)."""
    if spec is not None and not isinstance(spec, Mapping):
        raise ValueError(f"{where}: expected a mapping {{enabled, method, margin, strength, detector, always_detect}}, "
                         f"found {spec!r}")
    spec = dict(spec or {})
    unknown = sorted(set(spec) - set(FIELDS))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; valid: {sorted(FIELDS)}")
    method = spec.get("method", "blur")
    if method not in METHODS:
        raise ValueError(f"{where}: field 'method' must be one of {list(METHODS)}, found {method!r}")
    for key in ("enabled", "always_detect"):
        if key in spec and not isinstance(spec[key], bool):  # "false" (a string) would switch it on
            raise ValueError(f"{where}: field '{key}' must be true or false, found {spec[key]!r}")
    for key, strict in (("margin", False), ("strength", True)):
        value = spec.get(key, 1.0)
        ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value) and \
            (value > 0 if strict else value >= 0)
        if not ok:
            raise ValueError(f"{where}: field '{key}' must be a number {'>' if strict else '>='} 0, found {value!r}")
    det = spec.get("detector")
    if det is not None and not callable(det) and not (isinstance(det, Mapping) and "_target_" in det):
        raise ValueError(f"{where}: field 'detector' must be null, a {{_target_: ...}} mapping that builds a callable "
                         f"image -> (boxes, classes), or such a callable, found {det!r}")
    return spec


def _grow(box: Sequence[float], margin: float, width: int, height: int) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = (float(v) for v in box)
    pad = margin * max(x2 - x1, y2 - y1) + 1.0  # at least a pixel: anti-aliased edges spill over
    return (max(int(np.floor(x1 - pad)), 0), max(int(np.floor(y1 - pad)), 0),
            min(int(np.ceil(x2 + pad)), width), min(int(np.ceil(y2 + pad)), height))


def blur_boxes(image: np.ndarray, boxes: np.ndarray, method: str = "blur", margin: float = 0.15,
               strength: float = 0.5) -> np.ndarray:
    """A copy of ``image`` (H, W, 3) uint8 with every box (K, 4) blurred or filled (see the module docstring)."""
    if method not in METHODS:
        raise ValueError(f"anonymise: field 'method' must be one of {list(METHODS)}, found {method!r}")
    out = image.copy()
    height, width = image.shape[:2]
    for box in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
        x0, y0, x1, y1 = _grow(box, margin, width, height)
        if x1 <= x0 or y1 <= y0:
            continue
        roi = out[y0:y1, x0:x1]
        if method == "fill":
            roi[:] = roi.reshape(-1, 3).mean(axis=0).round().astype(np.uint8)
            continue
        sigma = max(2.0, strength * max(box[2] - box[0], box[3] - box[1]))
        # Blur a context window around the ROI so the ROI's edge pixels average real surroundings, not reflections.
        c = int(np.ceil(2 * sigma))
        cx0, cy0, cx1, cy1 = max(x0 - c, 0), max(y0 - c, 0), min(x1 + c, width), min(y1 + c, height)
        blurred = cv2.GaussianBlur(out[cy0:cy1, cx0:cx1], (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
        roi[:] = blurred[y0 - cy0:y1 - cy0, x0 - cx0:x1 - cx0]
    return out


def high_frequency_energy(image: np.ndarray, boxes: np.ndarray) -> float:
    """Mean squared difference between the image and its Gaussian low-pass (sigma 1 px) inside ``boxes``."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    high = grey - cv2.GaussianBlur(grey, (0, 0), 1.0)
    height, width = grey.shape
    total, count = 0.0, 0
    for x1, y1, x2, y2 in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
        win = high[max(int(y1), 0):min(int(np.ceil(y2)), height), max(int(x1), 0):min(int(np.ceil(x2)), width)]
        total += float((win ** 2).sum())
        count += win.size
    return total / max(count, 1)


class Anonymiser:
    """Frame transform ``(frame, seed) -> frame`` that blurs faces and licence plates in every camera image.

    Args:
        method: ``blur`` (Gaussian) or ``fill`` (mean colour).
        margin: grow each box by this fraction of its longer side (plus one pixel).
        strength: blur sigma as a fraction of the box's longer side.
        detector: callable ``image -> (boxes, classes)`` for cameras without ``privacy_boxes`` (real sources).
        always_detect: also run the detector where the frame has boxes, and blur the union.
        enabled: kept for config symmetry (the datamodule builds an anonymiser only when enabled).
    """

    def __init__(self, method: str = "blur", margin: float = 0.15, strength: float = 0.5,
                 detector: Detector | Callable[..., Any] | None = None, always_detect: bool = False,
                 enabled: bool = True) -> None:
        if method not in METHODS:
            raise ValueError(f"governance.anonymise: field 'method' must be one of {list(METHODS)}, found {method!r}")
        if margin < 0 or strength <= 0:
            raise ValueError(f"governance.anonymise: margin must be >= 0 and strength > 0, found margin={margin}, "
                             f"strength={strength}")
        if detector is not None and not callable(detector):
            raise ValueError(f"governance.anonymise: field 'detector' must be a callable image -> (boxes, classes) or a "
                             f"{{_target_: ...}} mapping that builds one, found {detector!r}")
        if always_detect and detector is None:
            raise ValueError("governance.anonymise: field 'always_detect' is true but no 'detector' is given; give a "
                             "detector or set always_detect: false")
        self.method, self.margin, self.strength = method, float(margin), float(strength)
        self.detector = detector
        self.always_detect = bool(always_detect)

    @classmethod
    def from_config(cls, spec: Mapping[str, Any] | None) -> Anonymiser:
        """From ``governance.anonymise`` (a plain mapping); the detector is instantiated if it has a ``_target_``."""
        spec = check_config(spec)
        det = spec.pop("detector", None)
        if isinstance(det, Mapping):
            import hydra

            det = hydra.utils.instantiate(det)
        return cls(detector=det, **spec)

    def describe(self) -> str:
        det = "none" if self.detector is None else type(self.detector).__name__
        return f"{self.method} (margin {self.margin}, strength {self.strength}, detector {det})"

    def boxes_for(self, frame: Frame, cam: CameraView) -> np.ndarray:
        boxes = [] if cam.privacy_boxes is None else [np.asarray(cam.privacy_boxes).reshape(-1, 4)]
        if self.detector is not None and (cam.privacy_boxes is None or self.always_detect):
            boxes.append(self.detect(frame, cam))
        elif cam.privacy_boxes is None:
            raise AnonymisationError(
                f"frame '{frame.frame_id}' of source '{frame.source}' (region {frame.region}), camera '{cam.name}': "
                f"no face/plate boxes (the source provides none) and no detector; set "
                f"governance.anonymise.detector to a detector (_target_: ...) for this source")
        return np.concatenate(boxes) if boxes else np.zeros((0, 4))

    def detect(self, frame: Frame, cam: CameraView) -> np.ndarray:
        """The detector's boxes (K, 4) for one camera image, checked: a malformed output (``x, y, w, h`` boxes, a
        score column) would blur the wrong pixels or none and pass faces and plates through raw."""
        where = (f"frame '{frame.frame_id}' of source '{frame.source}' (region {frame.region}), camera '{cam.name}': "
                 f"governance.anonymise.detector ({type(self.detector).__name__})")
        out = self.detector(cam.image)
        if not isinstance(out, (tuple, list)) or len(out) != 2:  # a bare (2, 4) array would unpack into two rows
            found_what = f"a {type(out).__name__} of length {len(out)}" if isinstance(out, (tuple, list)) else \
                f"a {type(out).__name__}"
            raise AnonymisationError(f"{where} must return (boxes (K, 4), classes (K,)), found {found_what}")
        try:
            found = np.asarray(out[0], dtype=np.float64)
        except (TypeError, ValueError):
            raise AnonymisationError(f"{where} must return boxes (K, 4) of numbers, found {out[0]!r}") from None
        if found.size == 0:
            return np.zeros((0, 4))
        if found.ndim != 2 or found.shape[1] != 4:
            raise AnonymisationError(f"{where} must return boxes (K, 4) x1, y1, x2, y2 pixels, found shape "
                                     f"{found.shape}")
        bad = ~np.isfinite(found).all(axis=1) | (found[:, 2] < found[:, 0]) | (found[:, 3] < found[:, 1])
        if bad.any():
            raise AnonymisationError(f"{where} must return finite x1, y1, x2, y2 boxes with x2 >= x1 and y2 >= y1 "
                                     f"(not x, y, w, h), found {found[bad][:3].tolist()}")
        return found

    def __call__(self, frame: Frame, seed: int | None = None) -> Frame:
        cams = []
        for cam in frame.cameras:
            if cam.image is None:  # label-only frames carry no pixels to protect
                cams.append(cam)
                continue
            boxes = self.boxes_for(frame, cam)
            cams.append(replace(cam, image=blur_boxes(cam.image, boxes, self.method, self.margin, self.strength))
                        if len(boxes) else cam)
        return frame.copy(cameras=cams, meta={**frame.meta, "anonymised": self.method})


class AnonymiseFirst:
    """``transform(anonymise(frame), seed)``: the anonymiser runs before augmentation, on the source's pixels and
    boxes, and the wrapped transform sees the same seed as without it (augmentation is unchanged)."""

    def __init__(self, anonymiser: Anonymiser, transform: Callable[..., Frame] | None) -> None:
        self.anonymiser, self.transform = anonymiser, transform

    def __call__(self, frame: Frame, seed: int | None = None) -> Frame:
        frame = self.anonymiser(frame, seed)
        return frame if self.transform is None else self.transform(frame, seed)

    def __repr__(self) -> str:
        return f"AnonymiseFirst({self.anonymiser.describe()}, {self.transform!r})"


class AnonymisedSource(FrameSource):
    """A source whose frames come anonymised (for writers and previews that load frames themselves)."""

    def __init__(self, source: FrameSource, anonymiser: Anonymiser) -> None:
        self.source, self.anonymiser = source, anonymiser
        self.name = source.name

    def __len__(self) -> int:
        return len(self.source)

    def index(self) -> list[FrameRef]:
        return self.source.index()

    def load(self, index: int, with_images: bool = True) -> Frame:
        return self.anonymiser(self.source.load(index, with_images=with_images))

    def latlon(self, index: int) -> tuple[float, float] | None:
        return self.source.latlon(index)

    @property
    def camera_names(self) -> list[str]:
        return self.source.camera_names

    def __getattr__(self, name: str) -> Any:  # official_split, skipped, ... of the wrapped source
        if name in ("source", "anonymiser"):
            raise AttributeError(name)
        return getattr(self.source, name)
