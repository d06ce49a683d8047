"""Camera rigs: the shipped configs load and are consistent; bad names and configs fail with clear messages."""

import numpy as np
import pytest

from visionpilot.geometry.frames import camera_extrinsics, invert_rigid
from visionpilot.geometry.rig import Rig, as_rig, available_rigs, load_rig, rig_from_config

SHIPPED = available_rigs()


def _cam(name, y=0.0, yaw=0.0, hfov=60.0, **extra):
    return {"name": name, "position": [1.0, y, 1.5], "yaw_deg": yaw, "hfov_deg": hfov, **extra}


def test_shipped_rigs_are_found():
    """configs/rig holds (at least) the three documented rigs."""
    assert {"front1", "nuscenes6", "surround8"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_rig_loads_with_unique_names_and_valid_calibration(name):
    """Each rig loads; its camera names are unique; intrinsics (N, 3, 3) have positive focal lengths and a
    principal point inside the image; extrinsics (N, 4, 4) are rigid with the camera above the ground."""
    rig = load_rig(name)
    assert rig.name == name and len(rig) >= 1
    assert len(set(rig.camera_names)) == len(rig)
    k = rig.intrinsics((256, 704))
    e = rig.extrinsics()
    assert k.shape == (len(rig), 3, 3) and e.shape == (len(rig), 4, 4)
    assert (k[:, 0, 0] > 0).all() and (k[:, 1, 1] > 0).all()
    assert ((k[:, 0, 2] > 0) & (k[:, 0, 2] < 704) & (k[:, 1, 2] > 0) & (k[:, 1, 2] < 256)).all()
    np.testing.assert_allclose(invert_rigid(e) @ e, np.broadcast_to(np.eye(4), e.shape), atol=1e-12)
    assert (e[:, 2, 3] > 0).all()


def test_nuscenes6_layout_and_mirror_order():
    """nuscenes6 is FRONT_LEFT, FRONT, FRONT_RIGHT, BACK_LEFT, BACK, BACK_RIGHT; mirroring swaps left/right:
    [2, 1, 0, 5, 4, 3]. CAM_FRONT's extrinsics are those of a forward camera at its configured position."""
    rig = load_rig("nuscenes6")
    assert rig.camera_names == ["CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_LEFT", "CAM_BACK",
                                "CAM_BACK_RIGHT"]
    assert rig.mirror_order() == [2, 1, 0, 5, 4, 3]
    np.testing.assert_allclose(rig.extrinsics()[1], camera_extrinsics([1.70, 0.02, 1.51], 0.0))


def test_surround8_and_front1_mirror_order():
    """surround8 swaps the pillar and repeater pairs and keeps the centre cameras; front1 maps to itself."""
    assert load_rig("surround8").mirror_order() == [0, 1, 2, 4, 3, 6, 5, 7]
    assert load_rig("front1").mirror_order() == [0]


def test_mirror_order_none_for_asymmetric_rigs():
    """No permutation when: a side camera has no twin; twins differ in pitch; two cameras would share a twin
    (A at y = 0 mirrors to itself, B at y = 0.1 has only A nearby)."""
    lone = rig_from_config({"name": "lone", "cameras": [_cam("L", y=0.9, yaw=60)]})
    assert lone.mirror_order() is None
    pitched = rig_from_config({"name": "p", "cameras": [_cam("L", y=0.9, yaw=60, pitch_deg=0.0),
                                                        _cam("R", y=-0.9, yaw=-60, pitch_deg=30.0)]})
    assert pitched.mirror_order() is None
    shared = rig_from_config({"name": "s", "cameras": [_cam("A", y=0.0), _cam("B", y=0.1)]})
    assert shared.mirror_order() is None


def test_mirror_order_pairs_twins_with_mirrored_roll():
    """Left/right cameras with roll +3 / -3 are mirror twins; with roll +3 / +3 they are not."""
    twins = rig_from_config({"name": "t", "cameras": [_cam("L", y=0.9, yaw=60, roll_deg=3.0),
                                                      _cam("R", y=-0.9, yaw=-60, roll_deg=-3.0)]})
    assert twins.mirror_order() == [1, 0]
    same = rig_from_config({"name": "t", "cameras": [_cam("L", y=0.9, yaw=60, roll_deg=3.0),
                                                     _cam("R", y=-0.9, yaw=-60, roll_deg=3.0)]})
    assert same.mirror_order() is None


def test_unknown_rig_lists_valid_choices():
    """An unknown rig name raises and the message lists every valid rig."""
    with pytest.raises(ValueError, match="unknown rig 'nope'") as info:
        load_rig("nope")
    for name in SHIPPED:
        assert name in str(info.value)


def test_missing_field_names_camera_and_field():
    """A camera without hfov_deg: the error names the rig, the camera and the missing field."""
    cfg = {"name": "bad", "cameras": [_cam("OK"), {"name": "CAM_X", "position": [0, 0, 1], "yaw_deg": 0}]}
    with pytest.raises(ValueError, match="hfov_deg") as info:
        rig_from_config(cfg)
    assert "CAM_X" in str(info.value) and "'bad'" in str(info.value)


def test_unnamed_camera_is_named_by_index():
    """A camera missing its name is identified by its index in the list."""
    with pytest.raises(ValueError, match=r"camera #1.*\['name'\]"):
        rig_from_config({"name": "bad", "cameras": [_cam("OK"), {"position": [0, 0, 1], "yaw_deg": 0, "hfov_deg": 60}]})


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"name": "empty", "cameras": []}, "at least one camera"),
        ({"name": "dup", "cameras": [_cam("A"), _cam("A", y=1.0)]}, "unique"),
        ({"name": "pos", "cameras": [{**_cam("A"), "position": [1.0, 2.0]}]}, "position"),
    ],
)
def test_other_malformed_rigs(cfg, message):
    """No cameras, duplicate names and a 2-value position are rejected with a message saying what is wrong."""
    with pytest.raises(ValueError, match=message):
        rig_from_config(cfg)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("position", 1.5, r"field 'position' needs 3 numbers, found 1.5"),  # was: 'float' object is not iterable
        ("position", "1.5", r"field 'position' needs 3 numbers, found '1.5'"),
        ("principal", [0.5], r"field 'principal' needs 2 numbers, found \[0.5\]"),  # was: IndexError, later
        # Pixels instead of fractions: accepted, and every projection landed a hundred images away.
        ("principal", [320, 240], r"field 'principal' .* fractions of \(width, height\), each in \[0, 1\], "
                                  r"found \[320.0, 240.0\]"),
        ("hfov_deg", 200, r"field 'hfov_deg' must be in \(0, 180\) degrees .*, found 200.0"),  # was: no camera named
        ("yaw_deg", "left", r"field 'yaw_deg' needs a number, found 'left'"),
        ("pitch_deg", float("nan"), r"field 'pitch_deg' needs a number, found nan"),
    ],
)
def test_malformed_camera_fields_name_rig_camera_field_and_value(field, value, message):
    """A camera field of the wrong kind or range fails when the rig is read, naming rig, camera, field and value."""
    with pytest.raises(ValueError, match=rf"rig 'bad', camera 'CAM_X': {message}"):
        rig_from_config({"name": "bad", "cameras": [_cam("OK"), {**_cam("CAM_X"), field: value}]})


def test_as_rig_accepts_rig_name_and_mapping():
    """as_rig passes a Rig through, loads a name, and builds from a mapping; optional fields get defaults."""
    rig = load_rig("front1")
    assert as_rig(rig) is rig
    assert as_rig("front1") == rig
    built = as_rig({"name": "m", "cameras": [_cam("A")]})
    assert isinstance(built, Rig) and built.cameras[0].pitch_deg == 0.0 and built.cameras[0].principal == (0.5, 0.5)


def test_mirror_order_requires_mirrored_principal_point():
    """Flipping an image moves cx to W - cx: twins need principal x fractions p and 1 - p (same y)."""
    twins = rig_from_config({"name": "t", "cameras": [_cam("L", y=0.9, yaw=60, principal=[0.4, 0.45]),
                                                      _cam("R", y=-0.9, yaw=-60, principal=[0.6, 0.45])]})
    assert twins.mirror_order() == [1, 0]
    same = rig_from_config({"name": "t", "cameras": [_cam("L", y=0.9, yaw=60, principal=[0.4, 0.45]),
                                                     _cam("R", y=-0.9, yaw=-60, principal=[0.4, 0.45])]})
    assert same.mirror_order() is None
