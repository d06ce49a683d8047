"""Restricted zones: circles and polygons in latitude/longitude, and which frames of a source lie inside them.

Some countries restrict collection near sensitive sites (military areas, government compounds). A policy lists such
zones; frames whose position lies inside one are excluded from training and from everything a job exports
(:mod:`visionpilot.governance.audit`). Positions come from :meth:`FrameSource.latlon
<visionpilot.data.sources.base.FrameSource.latlon>`, which reads no image (the synthetic world computes them from
the scene; real sources pass their GPS through ``Frame.latlon``).

Geometry is done by hand (no GIS dependency for two tests): circles by haversine distance on a sphere of the mean
Earth radius (error < 0.5 %), polygons by the even-odd rule in the (longitude, latitude) plane — exact for the
small, city-scale polygons zones are, wrong only across the antimeridian or the poles, which are refused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

EARTH_RADIUS_M = 6_371_008.8  # mean Earth radius (IUGG)


def haversine_m(lat1: np.ndarray, lon1: np.ndarray, lat2: float, lon2: float) -> np.ndarray:
    """Great-circle distance in metres between points (degrees) and one point."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dp, dl = p2 - p1, np.radians(np.asarray(lon2) - np.asarray(lon1))
    a = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def points_in_polygon(lat: np.ndarray, lon: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Even-odd rule: which points (degrees) lie inside ``polygon`` (P, 2) of (lat, lon) vertices."""
    x, y = np.asarray(lon, dtype=np.float64)[:, None], np.asarray(lat, dtype=np.float64)[:, None]
    px, py = polygon[:, 1][None], polygon[:, 0][None]
    qx, qy = np.roll(px, -1, axis=1), np.roll(py, -1, axis=1)
    crosses = (py > y) != (qy > y)  # the edge straddles the point's latitude
    with np.errstate(divide="ignore", invalid="ignore"):
        x_at = px + (y - py) * (qx - px) / (qy - py)
    return (crosses & (x < x_at)).sum(axis=1) % 2 == 1


@dataclass(frozen=True)
class Zone:
    """A restricted zone.

    Attributes:
        name: shown in audits and errors.
        center: (lat, lon) of a circle, or None for a polygon.
        radius_m: circle radius in metres.
        polygon: (P, 2) (lat, lon) vertices of a polygon, or None for a circle.
        regions: region codes whose frames the zone applies to; empty: every region.
        note: why the zone exists (the regulation, the site list).
    """

    name: str
    center: tuple[float, float] | None = None
    radius_m: float = 0.0
    polygon: np.ndarray | None = None
    regions: tuple[str, ...] = ()
    note: str = ""

    def applies_to(self, region: str) -> bool:
        return not self.regions or region in self.regions

    def contains(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        """Which points (degrees, arrays of one shape) lie inside the zone."""
        lat, lon = np.atleast_1d(np.asarray(lat, dtype=np.float64)), np.atleast_1d(np.asarray(lon, dtype=np.float64))
        if self.center is not None:
            return haversine_m(lat, lon, *self.center) <= self.radius_m
        return points_in_polygon(lat, lon, self.polygon)

    def describe(self) -> str:
        where = "" if not self.regions else f", {'/'.join(self.regions)} frames"
        if self.center is not None:
            return (f"{self.name} (circle {self.radius_m / 1000:.1f} km around {self.center[0]:.4f}, "
                    f"{self.center[1]:.4f}{where})")
        return f"{self.name} (polygon of {len(self.polygon)} vertices{where})"

    def to_dict(self) -> dict[str, Any]:
        shape: dict[str, Any] = ({"circle": {"lat": self.center[0], "lon": self.center[1], "radius_m": self.radius_m}}
                                 if self.center is not None else {"polygon": self.polygon.tolist()})
        return {"name": self.name, **shape, "regions": list(self.regions), "note": self.note}


def zone_from_config(spec: Mapping[str, Any], where: str) -> Zone:
    """A :class:`Zone` from a policy entry ``{name, circle: {lat, lon, radius_m} | polygon: [[lat, lon], ...],
    regions: [..], note}``; ``where`` names the entry in errors (``governance.zones[0]``)."""
    from visionpilot.governance.policy import expect_mapping, note_from_config

    spec = expect_mapping(spec, where, "{name, circle | polygon, regions, note}")
    unknown = sorted(set(spec) - {"name", "circle", "polygon", "regions", "note"})
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; a zone has name, circle or polygon, regions, note")
    name = str(spec.get("name") or where)
    note = note_from_config(spec.get("note"), f"{where} ('{name}')")
    regions = _zone_regions(spec.get("regions"), f"{where}.regions")
    if ("circle" in spec) == ("polygon" in spec):
        raise ValueError(f"{where} ('{name}'): expected exactly one of 'circle' ({{lat, lon, radius_m}}) or "
                         f"'polygon' ([[lat, lon], ...]), found {sorted(k for k in ('circle', 'polygon') if k in spec)}")
    if "circle" in spec:
        c = expect_mapping(spec["circle"], f"{where}.circle ('{name}')", "{lat, lon, radius_m}")
        missing = [k for k in ("lat", "lon", "radius_m") if k not in c]
        if missing:
            raise ValueError(f"{where}.circle ('{name}'): missing field(s) {missing}; expected lat, lon (degrees) and "
                             f"radius_m (metres), found {c}")
        lat, lon, radius = (_number(c[k], f"{where}.circle ('{name}')", k) for k in ("lat", "lon", "radius_m"))
        _check_latlon(f"{where}.circle", lat, lon)
        if not radius > 0:
            raise ValueError(f"{where}.circle ('{name}'): radius_m must be > 0, found {radius}")
        return Zone(name, center=(lat, lon), radius_m=radius, regions=regions, note=note)
    try:
        poly = np.asarray(spec["polygon"], dtype=np.float64)
    except (TypeError, ValueError):  # ragged, or not numbers
        poly = np.zeros(0)
    if poly.ndim != 2 or poly.shape[1] != 2 or len(poly) < 3:
        raise ValueError(f"{where}.polygon ('{name}'): expected at least 3 [lat, lon] vertices (numbers), found "
                         f"{spec['polygon']!r}")
    for lat, lon in poly:
        _check_latlon(f"{where}.polygon", lat, lon)
    if np.ptp(poly[:, 1]) > 180:
        raise ValueError(f"{where}.polygon ('{name}'): spans {np.ptp(poly[:, 1]):.0f} degrees of longitude; polygons "
                         f"across the antimeridian are not supported, split it in two")
    return Zone(name, polygon=poly, regions=regions, note=note)


def _zone_regions(regions: Any, where: str) -> tuple[str, ...]:
    """A zone's region codes; a bare string is one code (``regions: cn``), not its characters. A code that is no
    ISO code (``china``, or YAML's unquoted ``no`` read as false) is an error: it would match no frame."""
    from visionpilot.governance.policy import normalise_region_code

    if regions is None:
        return ()
    if isinstance(regions, (str, bool)) or not isinstance(regions, Sequence):
        regions = [regions]
    codes = []
    for r in regions:
        code = None if isinstance(r, bool) else normalise_region_code(r, where)
        if code is None:
            raise ValueError(f"{where}: expected an ISO 3166-1 alpha-2 code (e.g. us, cn, de), found {r!r}"
                             f"{' (quote it in YAML: an unquoted no reads as false)' if isinstance(r, bool) else ''}")
        codes.append(code)
    return tuple(codes)


def _number(value: Any, where: str, key: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: field '{key}' must be a number, found {value!r}") from None


def _check_latlon(where: str, lat: float, lon: float) -> None:
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise ValueError(f"{where}: expected latitude in [-90, 90] and longitude in [-180, 180] degrees, found "
                         f"({lat}, {lon})")


def locate_frames(source: Any, indices: Sequence[int]) -> np.ndarray:
    """(F, 2) (lat, lon) of source frames, NaN where unknown; reads no image (``source.latlon``)."""
    out = np.full((len(indices), 2), np.nan)
    for k, i in enumerate(indices):
        ll = source.latlon(int(i))
        if ll is not None:
            out[k] = ll
    return out


def zone_hits(zones: Sequence[Zone], regions: Sequence[str], latlon: np.ndarray) -> list[str | None]:
    """For each frame (region, (lat, lon)), the name of the first zone that applies to its region and contains it."""
    hits: list[str | None] = [None] * len(regions)
    regions = np.asarray(regions)
    known = ~np.isnan(latlon).any(axis=1)
    for zone in zones:
        todo = np.flatnonzero(known & np.array([h is None for h in hits]) &
                              np.array([zone.applies_to(r) for r in regions], dtype=bool))
        if len(todo) == 0:
            continue
        inside = zone.contains(latlon[todo, 0], latlon[todo, 1])
        for k in todo[inside].tolist():
            hits[k] = zone.name
    return hits
