"""Road users and scenery as sets of convex hexahedra ("parts"), plus flat "decals" painted on their faces.

Every part has the corner order of :mod:`visionpilot.geometry.boxes` (bottom face then top face, each front-left,
front-right, rear-right, rear-left), so one vectorised code path projects, clips and culls all of them. Parts are
given in a normalised object frame — x forward in [-0.5, 0.5] of the length, y left in [-0.5, 0.5] of the width,
z up in [0, 1] of the height — and scaled by the actor's size. Decals (lights, windows, plates) lie on a part's
face and never change its silhouette, so the tight 2D box is the union of the parts' clipped projections.

Parts are listed in drawing order (within one object, later parts are drawn over earlier ones); the order is chosen
so that the common views look right (wheels before the body that hides their tops, body before the cabin on it).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

from visionpilot.data.sources.synthetic.scene import CLASS, PROP_BUILDING, PROP_LAMP, PROP_POLE_SIGN, PROP_TREE

# Colour roles: which of an actor's colours a part or decal takes.
BODY, GLASS, TYRE, SECOND, SKIN, DARK, TAIL, HEAD, PLATE, LAMP = range(10)
#: Roles that emit light (not darkened at night).
EMISSIVE = (TAIL, HEAD, LAMP)

# Face indices as in visionpilot.geometry.boxes.HEX_FACES.
F_BOTTOM, F_TOP, F_FRONT, F_REAR, F_LEFT, F_RIGHT = range(6)


@dataclass(frozen=True)
class Template:
    """A shape in the normalised object frame."""

    corners: np.ndarray  # (P, 8, 3)
    roles: np.ndarray  # (P,)
    decals: dict[tuple[int, int], list[tuple[float, float, float, float, int]]]  # (part, face) -> (a0, a1, b0, b1, role)


def _part(x0: float, x1: float, y0: float, y1: float, z0: float, z1: float, top_scale: float = 1.0) -> np.ndarray:
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    bottom = [[x1, y1, z0], [x1, y0, z0], [x0, y0, z0], [x0, y1, z0]]
    top = [[cx + (x - cx) * top_scale, cy + (y - cy) * top_scale, z1] for x, y, _ in bottom]
    return np.asarray(bottom + top, dtype=np.float64)


def _wheels(xs: tuple[float, ...], half: float, y_in: float, y_out: float, z1: float) -> list[tuple[np.ndarray, int]]:
    out = []
    for x in xs:
        for sign in (1, -1):
            y0, y1 = sorted((sign * y_in, sign * y_out))
            out.append((_part(x - half, x + half, y0, y1, 0.0, z1), TYRE))
    return out


def _lights(part: int) -> list[tuple[int, int, float, float, float, float, int]]:
    """Head and tail lights and plates on the front/rear faces of `part` (a = across the face, b = up)."""
    return [
        (part, F_FRONT, 0.04, 0.2, 0.55, 0.85, HEAD), (part, F_FRONT, 0.8, 0.96, 0.55, 0.85, HEAD),
        (part, F_FRONT, 0.38, 0.62, 0.12, 0.42, PLATE),
        (part, F_REAR, 0.04, 0.2, 0.55, 0.85, TAIL), (part, F_REAR, 0.8, 0.96, 0.55, 0.85, TAIL),
        (part, F_REAR, 0.38, 0.62, 0.12, 0.42, PLATE),
    ]


def _build(parts: list[tuple[np.ndarray, int]], decals: list) -> Template:
    by_face: dict[tuple[int, int], list[tuple[float, float, float, float, int]]] = {}
    for part, face, a0, a1, b0, b1, role in decals:
        by_face.setdefault((part, face), []).append((a0, a1, b0, b1, role))
    return Template(np.stack([p for p, _ in parts]), np.asarray([r for _, r in parts]), by_face)


@cache
def actor_template(cls: int, variant: int) -> Template:
    """Template of a road user. Car variants: 0 sedan, 1 SUV, 2 pick-up; bus variant 1 = double-decker."""
    if cls == CLASS["car"]:
        parts = _wheels((0.31, -0.31), 0.1, 0.3, 0.48, 0.42)
        parts.append((_part(-0.5, 0.5, -0.5, 0.5, 0.3, 0.62), BODY))
        body = len(parts) - 1
        if variant == 1:
            parts.append((_part(-0.46, 0.2, -0.47, 0.47, 0.62, 1.0, 0.9), GLASS))
        elif variant == 2:
            parts.append((_part(-0.05, 0.3, -0.47, 0.47, 0.62, 1.0, 0.88), GLASS))
        else:
            parts.append((_part(-0.32, 0.18, -0.46, 0.46, 0.62, 1.0, 0.82), GLASS))
        return _build(parts, _lights(body))
    if cls == CLASS["truck"]:
        parts = _wheels((0.38, -0.2, -0.36), 0.07, 0.32, 0.49, 0.3)
        parts.append((_part(-0.5, 0.28, -0.5, 0.5, 0.12, 1.0), SECOND))
        cargo = len(parts) - 1
        parts.append((_part(0.3, 0.5, -0.5, 0.5, 0.12, 0.8, 0.96), BODY))
        cab = len(parts) - 1
        decals = [(cab, F_FRONT, 0.08, 0.92, 0.55, 0.92, GLASS), (cab, F_FRONT, 0.04, 0.16, 0.15, 0.3, HEAD),
                  (cab, F_FRONT, 0.84, 0.96, 0.15, 0.3, HEAD), (cab, F_LEFT, 0.2, 0.9, 0.55, 0.9, GLASS),
                  (cab, F_RIGHT, 0.1, 0.8, 0.55, 0.9, GLASS),
                  (cargo, F_REAR, 0.03, 0.15, 0.05, 0.15, TAIL), (cargo, F_REAR, 0.85, 0.97, 0.05, 0.15, TAIL),
                  (cargo, F_REAR, 0.4, 0.6, 0.02, 0.1, PLATE)]
        return _build(parts, decals)
    if cls == CLASS["bus"]:
        parts = _wheels((0.3, -0.3), 0.05, 0.32, 0.49, 0.28)
        parts.append((_part(-0.5, 0.5, -0.5, 0.5, 0.1, 1.0), BODY))
        b = len(parts) - 1
        bands = ((0.3, 0.5), (0.64, 0.9)) if variant == 1 else ((0.45, 0.85),)
        decals = [(b, F_FRONT, 0.05, 0.95, bands[-1][0], bands[-1][1], GLASS), (b, F_REAR, 0.1, 0.9, 0.6, 0.85, GLASS),
                  (b, F_FRONT, 0.04, 0.16, 0.1, 0.2, HEAD), (b, F_FRONT, 0.84, 0.96, 0.1, 0.2, HEAD),
                  (b, F_REAR, 0.04, 0.16, 0.1, 0.22, TAIL), (b, F_REAR, 0.84, 0.96, 0.1, 0.22, TAIL),
                  (b, F_REAR, 0.4, 0.6, 0.05, 0.14, PLATE)]
        for lo, hi in bands:
            decals += [(b, F_LEFT, 0.03, 0.97, lo, hi, GLASS), (b, F_RIGHT, 0.03, 0.97, lo, hi, GLASS)]
        return _build(parts, decals)
    if cls == CLASS["two_wheeler"]:
        parts = [(_part(0.3, 0.5, -0.12, 0.12, 0.0, 0.42), TYRE), (_part(-0.5, -0.3, -0.12, 0.12, 0.0, 0.42), TYRE),
                 (_part(-0.35, 0.38, -0.3, 0.3, 0.2, 0.55), BODY),
                 (_part(-0.22, 0.1, -0.5, 0.5, 0.5, 0.86), SECOND),
                 (_part(-0.13, 0.07, -0.24, 0.24, 0.86, 1.0), DARK)]
        decals = [(2, F_FRONT, 0.3, 0.7, 0.5, 0.9, HEAD), (2, F_REAR, 0.3, 0.7, 0.5, 0.9, TAIL)]
        return _build(parts, decals)
    if cls == CLASS["pedestrian"]:
        parts = [(_part(-0.25, 0.25, -0.32, 0.32, 0.0, 0.47), SECOND),
                 (_part(-0.4, 0.4, -0.5, 0.5, 0.47, 0.84, 0.92), BODY),
                 (_part(-0.25, 0.25, -0.2, 0.2, 0.86, 1.0), SKIN)]
        # A face (eyes, mouth) and hair: detail that anonymisation must remove (privacy.py labels the head).
        face = [(2, F_FRONT, 0.2, 0.4, 0.55, 0.7, DARK), (2, F_FRONT, 0.6, 0.8, 0.55, 0.7, DARK),
                (2, F_FRONT, 0.3, 0.7, 0.18, 0.3, TAIL), (2, F_REAR, 0.0, 1.0, 0.3, 1.0, DARK)]
        return _build(parts, face)
    if cls == CLASS["traffic_cone"]:
        def hw(z: float) -> float:  # half width of the cone body at height z (normalised)
            return 0.38 - 0.33 * (z - 0.08) / 0.92
        parts = [(_part(-0.5, 0.5, -0.5, 0.5, 0.0, 0.08), DARK)]
        for (z0, z1), role in (((0.08, 0.45), BODY), ((0.45, 0.62), SECOND), ((0.62, 1.0), BODY)):
            h = hw(z0)
            parts.append((_part(-h, h, -h, h, z0, z1, hw(z1) / h), role))
        return _build(parts, [])
    raise ValueError(f"no template for class index {cls}")


@cache
def prop_template(kind: int) -> Template:
    """Template of an unlabelled scenery prop (size = its bounding box)."""
    if kind == PROP_TREE:
        return _build([(_part(-0.08, 0.08, -0.08, 0.08, 0.0, 0.35), BODY),
                       (_part(-0.5, 0.5, -0.5, 0.5, 0.3, 1.0, 0.25), SECOND)], [])
    if kind == PROP_POLE_SIGN:
        return _build([(_part(-0.5, 0.5, -0.05, 0.05, 0.0, 0.72), DARK),
                       (_part(-0.5, 0.5, -0.5, 0.5, 0.7, 1.0), BODY)],
                      [(1, F_FRONT, 0.1, 0.9, 0.1, 0.9, SECOND), (1, F_REAR, 0.1, 0.9, 0.1, 0.9, SECOND)])
    if kind == PROP_BUILDING:
        decals = []
        for lo, hi in ((0.15, 0.3), (0.45, 0.6), (0.75, 0.9)):
            decals += [(0, F_LEFT, 0.05, 0.95, lo, hi, GLASS), (0, F_RIGHT, 0.05, 0.95, lo, hi, GLASS)]
        return _build([(_part(-0.5, 0.5, -0.5, 0.5, 0.0, 1.0), BODY)], decals)
    if kind == PROP_LAMP:
        return _build([(_part(-0.5, 0.5, -0.5, 0.5, 0.0, 0.97), BODY), (_part(-1.2, 1.2, -1.2, 1.2, 0.97, 1.0), LAMP)],
                      [])
    raise ValueError(f"no template for prop kind {kind}")


def place(template: Template, sizes: np.ndarray, centers_xy: np.ndarray, yaws: np.ndarray) -> np.ndarray:
    """Corners (K, P, 8, 3) of K copies of a template scaled to ``sizes`` (K, 3) = (l, w, h), rotated by ``yaws``
    (K,) and set on the ground at ``centers_xy`` (K, 2)."""
    local = template.corners[None] * sizes[:, None, None, :]  # (K, P, 8, 3)
    c, s = np.cos(yaws)[:, None, None], np.sin(yaws)[:, None, None]
    x = c * local[..., 0] - s * local[..., 1] + centers_xy[:, 0, None, None]
    y = s * local[..., 0] + c * local[..., 1] + centers_xy[:, 1, None, None]
    return np.stack([x, y, local[..., 2]], axis=-1)


_FIXED_ROLE_COLORS = {TYRE: (28.0, 28, 30), SKIN: (205.0, 160, 130), DARK: (35.0, 35, 38), TAIL: (230.0, 30, 25),
                      HEAD: (250.0, 245, 220), LAMP: (255.0, 240, 200)}


def role_colors(colors: np.ndarray, colors2: np.ndarray, plate: np.ndarray) -> np.ndarray:
    """(K, 10, 3) colour per role for K solids with main ``colors`` and secondary ``colors2`` (K, 3)."""
    out = np.empty((len(colors), 10, 3))
    out[:, BODY] = colors
    out[:, GLASS] = colors * 0.15 + np.array([35.0, 45, 55])  # dark, tinted by the body
    out[:, SECOND] = colors2
    out[:, PLATE] = plate
    for role, rgb in _FIXED_ROLE_COLORS.items():
        out[:, role] = rgb
    return out


_DECAL_TABLES: dict[int, np.ndarray] = {}


def decal_table(template: Template) -> np.ndarray:
    """(D, 7) rows ``part, face, a0, a1, b0, b1, role`` of a template's decals (templates are cached singletons)."""
    key = id(template)
    if key not in _DECAL_TABLES:
        rows = [(p, f, *rect) for (p, f), rects in template.decals.items() for rect in rects]
        _DECAL_TABLES[key] = np.asarray(rows, dtype=np.float64).reshape(-1, 7)
    return _DECAL_TABLES[key]
