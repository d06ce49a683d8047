"""The fixed vocabularies every dataset source maps its labels into.

Indices are part of the model contract (head channels, ONNX metadata): append new names at the end only.

Object classes
    ``car``           passenger cars, vans, pickups, SUVs.
    ``truck``         goods vehicles, trailers, construction vehicles.
    ``bus``           buses and coaches.
    ``two_wheeler``   motorcycles, scooters, bicycles — with their rider, one box for both.
    ``pedestrian``    people on foot (adult or child).
    ``traffic_cone``  cones and small temporary barriers.

Lane types (lane-line polylines; a lane is the space between two of them)
    ``white_dashed``   broken white line (lane divider; centre line in DE/GB/JP/SG).
    ``white_solid``    continuous white line (edge line, no-lane-change divider).
    ``yellow_dashed``  broken yellow line (centre line where passing is allowed in US/CN).
    ``yellow_solid``   continuous yellow line (CN centre line; kerbside no-parking line in SG).
    ``double_yellow``  two continuous yellow lines (US centre line, no passing either way).
    ``road_edge``      the physical boundary of the drivable surface (kerb, verge), marked or not.

Privacy classes (image regions that carry personal data and are anonymised, governance/anonymise.py)
    ``face``           a person's head.
    ``licence_plate``  a vehicle registration plate.
"""

from __future__ import annotations

from collections.abc import Iterable

OBJECT_CLASSES: tuple[str, ...] = ("car", "truck", "bus", "two_wheeler", "pedestrian", "traffic_cone")
LANE_TYPES: tuple[str, ...] = (
    "white_dashed",
    "white_solid",
    "yellow_dashed",
    "yellow_solid",
    "double_yellow",
    "road_edge",
)

PRIVACY_CLASSES: tuple[str, ...] = ("face", "licence_plate")

#: Drawing colours (RGB) for previews and plots.
CLASS_COLORS: dict[str, tuple[int, int, int]] = {
    "car": (0, 160, 255),
    "truck": (255, 140, 0),
    "bus": (190, 60, 255),
    "two_wheeler": (0, 220, 120),
    "pedestrian": (255, 40, 80),
    "traffic_cone": (255, 230, 0),
}
LANE_COLORS: dict[str, tuple[int, int, int]] = {
    "white_dashed": (200, 200, 255),
    "white_solid": (255, 255, 255),
    "yellow_dashed": (255, 220, 90),
    "yellow_solid": (255, 190, 0),
    "double_yellow": (255, 120, 0),
    "road_edge": (255, 60, 200),
}


def _index(kind: str, names: tuple[str, ...], name: str) -> int:
    try:
        return names.index(name)
    except ValueError:
        raise ValueError(f"unknown {kind} '{name}'; valid choices: {list(names)}") from None


def class_index(name: str) -> int:
    """Index of an object class name; an unknown name lists the valid ones."""
    return _index("object class", OBJECT_CLASSES, name)


def lane_type_index(name: str) -> int:
    """Index of a lane type name; an unknown name lists the valid ones."""
    return _index("lane type", LANE_TYPES, name)


def check_names(kind: str, names: Iterable[str], valid: tuple[str, ...]) -> list[str]:
    """Validate a list of names against a vocabulary, naming the first bad one and the valid choices."""
    names = list(names)
    for n in names:
        _index(kind, valid, n)
    return names
