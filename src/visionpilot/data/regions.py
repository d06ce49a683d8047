"""The regions registry: countries as a first-class axis of the data.

Codes are ISO 3166-1 alpha-2, written lower-case inside visionpilot (config values, metric keys such as
``val/gb/lane_f1``, file names) and upper-case for people (:attr:`Region.iso`).

The marking conventions are the national norms the synthetic world follows and that real sources are checked
against; see docs/regions.md for sources and the synthetic styles built on them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from visionpilot.data.vocab import LANE_TYPES


@dataclass(frozen=True)
class Region:
    """One country and its road-marking conventions.

    Attributes:
        code: ISO 3166-1 alpha-2, lower-case.
        name: English short name.
        driving_side: ``"right"`` (right-hand traffic: oncoming traffic on the ego's left) or ``"left"``.
        centre_lines: lane types used between the two directions, most common first.
        divider: lane type between lanes of the same direction.
        edge_line: lane type of the outer edge line, or None where edges are usually unmarked.
        kerb_lines: kerbside markings that are not lane boundaries (e.g. parking restrictions), may be empty.
        lane_width_m: typical lane width on ordinary roads (metres).
        dash_m: (line, gap) lengths of the broken divider line (metres).
    """

    code: str
    name: str
    driving_side: str
    centre_lines: tuple[str, ...]
    divider: str
    edge_line: str | None
    kerb_lines: tuple[str, ...]
    lane_width_m: float
    dash_m: tuple[float, float]

    @property
    def iso(self) -> str:
        return self.code.upper()

    @property
    def left_hand_traffic(self) -> bool:
        return self.driving_side == "left"


REGIONS: dict[str, Region] = {
    r.code: r
    for r in (
        # MUTCD: yellow separates opposing directions (double solid = no passing), white separates same direction;
        # broken lines 10 ft marked / 30 ft gap; 12 ft (3.66 m) lanes.
        Region("us", "United States", "right", ("double_yellow", "yellow_dashed"), "white_dashed", "white_solid",
               (), 3.7, (3.0, 9.0)),
        # GB 5768: yellow centre lines (solid, double, broken), white dividers 6 m / 9 m; lanes 3.5-3.75 m.
        Region("cn", "China", "right", ("yellow_solid", "double_yellow", "yellow_dashed"), "white_dashed",
               "white_solid", (), 3.5, (6.0, 9.0)),
        # StVO / RMS: all permanent markings white (yellow only for road works); Leitlinie 3 m / 6 m off motorways.
        Region("de", "Germany", "right", ("white_dashed", "white_solid"), "white_dashed", "white_solid", (), 3.5,
               (3.0, 6.0)),
        # Traffic Signs Regulations: white centre and lane lines; yellow kerbside lines restrict waiting.
        Region("gb", "United Kingdom", "left", ("white_dashed",), "white_dashed", "white_solid",
               ("double_yellow", "yellow_solid"), 3.65, (4.0, 5.0)),
        # Japanese road markings: white centre line (solid or broken); yellow solid = no overtaking; 5 m / 5 m.
        Region("jp", "Japan", "left", ("white_solid", "white_dashed", "yellow_solid"), "white_dashed", "white_solid",
               (), 3.25, (5.0, 5.0)),
        # IRC:35: broken white centre line, yellow solid where overtaking is barred; edges often unmarked.
        Region("in", "India", "left", ("white_dashed", "yellow_solid"), "white_dashed", None, (), 3.5, (3.0, 4.5)),
        # LTA: white lane and centre lines; single/double yellow kerb lines restrict parking.
        Region("sg", "Singapore", "left", ("white_dashed", "white_solid"), "white_dashed", "white_solid",
               ("yellow_solid", "double_yellow"), 3.3, (3.0, 6.0)),
    )
}

for _r in REGIONS.values():
    for _t in (*_r.centre_lines, _r.divider, *([_r.edge_line] if _r.edge_line else []), *_r.kerb_lines):
        assert _t in LANE_TYPES, f"region {_r.code}: lane type {_t} not in the vocabulary"

#: The value of ``region=global``: every registered region.
GLOBAL = "global"


def get_region(code: str) -> Region:
    """Look up a region by ISO code (any case); an unknown code lists the valid ones."""
    key = str(code).lower()
    if key not in REGIONS:
        raise ValueError(f"unknown region '{code}'; valid choices: {sorted(REGIONS)} (or '{GLOBAL}' for all)")
    return REGIONS[key]


def is_global(regions: str | Iterable[str] | None) -> bool:
    """Whether a region selection means every region: None, ``"global"``, or a list naming ``"global"``."""
    if regions is None or isinstance(regions, str):
        return regions is None or regions.lower() == GLOBAL
    return any(str(code).lower() == GLOBAL for code in regions)


def resolve_regions(regions: str | Iterable[str] | None) -> list[str]:
    """Normalise a region selection (``"global"``, a code, or a list of codes) to a sorted list of valid codes."""
    if is_global(regions):
        return sorted(REGIONS)
    if isinstance(regions, str):
        regions = [regions]
    out = [get_region(code).code for code in regions]
    if not out:
        raise ValueError(f"empty region selection; valid choices: {sorted(REGIONS)} (or '{GLOBAL}' for all)")
    return sorted(set(out))


def other_side(side: str) -> str:
    """The opposite driving side (used by horizontal flip)."""
    if side not in ("left", "right"):
        raise ValueError(f"driving side must be 'left' or 'right', found '{side}'")
    return "left" if side == "right" else "right"
