"""Anonymisation: plates and faces of the synthetic world lose their detail; boxes follow every transform; real
sources plug in a detector, and a frame that cannot be covered is an error, never passed through raw."""

from __future__ import annotations

import re

import numpy as np
import pytest

from tests.data.conftest import TinySource
from visionpilot.data.sources.synthetic import SyntheticSource
from visionpilot.data.sources.synthetic.plates import PLATE_FORMATS, sample_plates
from visionpilot.data.transforms import Resize, flip_frame
from visionpilot.data.vocab import PRIVACY_CLASSES
from visionpilot.governance.anonymise import AnonymisationError, Anonymiser, blur_boxes, high_frequency_energy

PLATE = PRIVACY_CLASSES.index("licence_plate")


@pytest.fixture(scope="module")
def close_plates() -> list[tuple[np.ndarray, np.ndarray]]:
    """(image, plate boxes) of front-camera frames with plates at least 8 px tall (readable text), 256 x 704."""
    src = SyntheticSource("front1", regions=["de", "gb", "us"], scenes_per_region=4, frames_per_scene=3,
                          image_size=(256, 704))
    out = []
    for i in range(24, 36):  # the US drives: close traffic ahead in these scenes
        frame = src.load(i)
        if frame.meta["time_of_day"] not in ("day", "overcast"):
            continue  # at dusk and night the plate and its ink darken together: little text detail left to remove
        cam = frame.cameras[0]
        tall = (cam.privacy_classes == PLATE) & (cam.privacy_boxes[:, 3] - cam.privacy_boxes[:, 1] >= 8)
        if tall.any():
            out.append((cam.image, cam.privacy_boxes[tall]))
    assert out, "no plate of 8 px or more in the test frames"
    return out


def test_blur_removes_at_least_90_percent_of_plate_detail(close_plates: list) -> None:
    """High-frequency energy (image minus its 1-px Gaussian low-pass) inside plate boxes drops by >= 90 %."""
    before = np.array([high_frequency_energy(img, boxes) for img, boxes in close_plates])
    after = np.array([high_frequency_energy(blur_boxes(img, boxes), boxes) for img, boxes in close_plates])
    assert (before > 50).all(), f"plates should carry text detail before anonymisation: {before}"
    drop = 1 - after / before
    assert (drop >= 0.9).all(), f"high-frequency energy drop per frame: {drop}"
    filled = np.array([high_frequency_energy(blur_boxes(img, b, method="fill"), b) for img, b in close_plates])
    assert (filled < 0.1 * before).all()


def test_anonymiser_blurs_only_the_boxes_of_synthetic_frames() -> None:
    src = SyntheticSource("front1", regions=["us"], scenes_per_region=1, frames_per_scene=2, image_size=(128, 352))
    frame = src.load(0)
    out = Anonymiser()(frame)
    assert out.meta["anonymised"] == "blur" and "anonymised" not in frame.meta  # the input is not mutated
    cam, new = frame.cameras[0], out.cameras[0]
    assert cam.privacy_boxes is not None and len(cam.privacy_boxes) > 0
    changed = np.any(cam.image != new.image, axis=-1)
    near_box = np.zeros_like(changed)
    for x1, y1, x2, y2 in cam.privacy_boxes:
        pad = 0.15 * max(x2 - x1, y2 - y1) + 2
        near_box[max(int(y1 - pad), 0):int(y2 + pad) + 1, max(int(x1 - pad), 0):int(x2 + pad) + 1] = True
    assert changed.any() and not (changed & ~near_box).any()


def test_sources_without_boxes_need_a_detector() -> None:
    frame = TinySource().load(0)
    assert all(c.privacy_boxes is None for c in frame.cameras)
    with pytest.raises(AnonymisationError, match=r"frame 'de-000-0000' of source 'tiny' \(region de\), camera "
                                                 r"'CAM_FRONT_LEFT': no face/plate boxes .* governance.anonymise."
                                                 r"detector"):
        Anonymiser()(frame)
    calls = []

    def detector(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        calls.append(image.shape)
        return np.array([[10.0, 10.0, 30.0, 30.0]]), np.array([0])

    out = Anonymiser(detector=detector)(frame)
    assert len(calls) == len(frame.cameras)
    before, after = frame.cameras[1].image, out.cameras[1].image
    assert not np.array_equal(before[10:30, 10:30], after[10:30, 10:30])
    np.testing.assert_array_equal(before[:, 40:], after[:, 40:])  # far from the box: untouched
    # A detector given as a Hydra target in the policy is instantiated.
    an = Anonymiser.from_config({"enabled": True, "detector": {"_target_": "numpy.zeros", "_partial_": True}})
    assert callable(an.detector)
    # What would only fail at the first frame, or never: refused when the policy is read.
    with pytest.raises(ValueError, match=r"field 'detector' must be a callable .* found array"):
        Anonymiser.from_config({"detector": {"_target_": "numpy.zeros", "shape": [0]}})
    with pytest.raises(ValueError, match=r"field 'always_detect' is true but no 'detector' is given"):
        Anonymiser.from_config({"always_detect": True})


def test_privacy_boxes_follow_resize_and_flip() -> None:
    src = SyntheticSource("front1", regions=["us"], scenes_per_region=1, frames_per_scene=2, image_size=(128, 352))
    frame = src.load(0)
    cam = frame.cameras[0]
    half = Resize((64, 176))(frame).cameras[0]
    np.testing.assert_allclose(half.privacy_boxes, cam.privacy_boxes / 2, atol=1e-4)
    assert half.privacy_classes.tolist() == cam.privacy_classes.tolist()
    flipped = flip_frame(frame).cameras[0]
    expect = cam.privacy_boxes.copy()
    expect[:, [0, 2]] = 352 - cam.privacy_boxes[:, [2, 0]]
    np.testing.assert_allclose(flipped.privacy_boxes, expect)
    assert flip_frame(TinySource().load(0)).cameras[0].privacy_boxes is None  # unknown stays unknown


def test_plates_have_each_regions_format_and_faces_are_labelled() -> None:
    rng = np.random.default_rng(0)
    for region, formats in PLATE_FORMATS.items():
        pattern = "|".join("".join("[A-Z]" if ch == "L" else "[0-9]" if ch == "D" else re.escape(ch) for ch in f)
                           for f in formats)
        for text in sample_plates(rng, region, 20):
            assert re.fullmatch(pattern, text), (region, text)
    # Pedestrians' heads are labelled as faces somewhere in a few urban drives (six cameras see the sidewalks).
    src = SyntheticSource("nuscenes6", regions=["jp"], scenes_per_region=3, frames_per_scene=1, image_size=(64, 176))
    classes = np.concatenate([c.privacy_classes for i in range(len(src)) for c in src.load(i, with_images=False).cameras])
    assert {PRIVACY_CLASSES[k] for k in classes} == {"face", "licence_plate"}


@pytest.mark.parametrize(("output", "message"), [
    # x, y, w, h boxes: x2 < x1 grew into an empty window, so the face was silently left raw.
    ((np.array([[30.0, 30.0, 10.0, 10.0]]), np.array([0])), r"x2 >= x1 and y2 >= y1 \(not x, y, w, h\), found "
                                                           r"\[\[30.0, 30.0, 10.0, 10.0\]\]"),
    # A score column: reshape(-1, 4) scrambled four (K, 5) rows into five boxes of the wrong pixels.
    ((np.array([[10, 10, 30, 30, 0.9]] * 4), np.array([0] * 4)), r"boxes \(K, 4\) x1, y1, x2, y2 pixels, found "
                                                                r"shape \(4, 5\)"),
    ((np.array([[np.nan, 1.0, 5.0, 5.0]]), np.array([0])), r"must return finite x1, y1, x2, y2 boxes"),
    (np.array([[10.0, 10.0, 30.0, 30.0]]), r"must return \(boxes \(K, 4\), classes \(K,\)\), found a ndarray"),
])
def test_a_malformed_detector_output_is_an_error_not_a_raw_frame(output: object, message: str) -> None:
    frame = TinySource().load(0)
    an = Anonymiser(detector=lambda image: output)
    with pytest.raises(AnonymisationError, match=r"frame 'de-000-0000' of source 'tiny' \(region de\), camera "
                                                 r"'CAM_FRONT_LEFT': governance.anonymise.detector \(function\) .*"
                                                 + message):
        an(frame)
    # No detection at all is a valid answer (nothing to blur), in any empty shape.
    for empty in (np.zeros((0, 4)), np.zeros(0), []):
        out = Anonymiser(detector=lambda image, e=empty: (e, []))(frame)
        np.testing.assert_array_equal(out.cameras[0].image, frame.cameras[0].image)


@pytest.mark.parametrize(("spec", "message"), [
    ({"enabled": "false"}, r"field 'enabled' must be true or false, found 'false'"),  # a string: it switched it on
    ({"enabled": True, "margin": "0.2"}, r"field 'margin' must be a number >= 0, found '0.2'"),
    ({"enabled": True, "strength": None}, r"field 'strength' must be a number > 0, found None"),
    ({"enabled": False, "margin": -1}, r"field 'margin' must be a number >= 0, found -1"),  # checked while off
    ({"enabled": False, "strength": 0}, r"field 'strength' must be a number > 0, found 0"),
    ({"enabled": False, "always_detect": "yes"}, r"field 'always_detect' must be true or false, found 'yes'"),
    ({"enabled": False, "detector": {"weights": "x.onnx"}}, r"field 'detector' must be null, a \{_target_: \.\.\.\} "
                                                            r"mapping .* found \{'weights': 'x.onnx'\}"),
])
def test_anonymiser_settings_of_the_wrong_type_or_value_name_the_field(spec: dict, message: str) -> None:
    """docs/governance.md: every anonymiser field is checked when the policy is read, while off too; a string
    margin gave Python's "'<' not supported between 'str' and 'int'", and ``enabled: "false"`` turned it on."""
    from visionpilot.governance.policy import Policy

    with pytest.raises(ValueError, match=r"governance.anonymise: " + message):
        Policy.from_config({"anonymise": spec})
    Policy.from_config({"anonymise": {"enabled": False, "margin": 0, "strength": np.float32(0.5),
                                      "detector": None, "always_detect": False}})  # valid values still parse
