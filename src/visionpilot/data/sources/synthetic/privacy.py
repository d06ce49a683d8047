"""Where the synthetic world shows personal data: face and licence-plate boxes per camera, for anonymisation.

Faces are the pedestrians' heads (the template parts of role ``SKIN``; riders wear helmets), plates the ``PLATE``
decals of vehicles. A box is given for every head or plate whose owner is rendered, whose plate faces the camera,
and of which at least ``min_visible`` of the box's pixels show its owner in the instance mask (so a plate behind
another car has none). Boxes are the tight bounds of the projected head or plate quad, clipped to the image,
in the image's pixel convention (:mod:`visionpilot.geometry.frames`). The same geometry drives the pixels, so a
box covers exactly the pixels that carry the detail.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from visionpilot.data.sources.synthetic.shapes import PLATE, SKIN, Template, decal_table
from visionpilot.data.vocab import PRIVACY_CLASSES
from visionpilot.geometry.boxes import HEX_FACES, project_hexahedra_bounds
from visionpilot.geometry.camera import DEFAULT_NEAR
from visionpilot.geometry.frames import invert_rigid

FACE, LICENCE_PLATE = PRIVACY_CLASSES.index("face"), PRIVACY_CLASSES.index("licence_plate")


@dataclass
class PrivacyParts:
    """Heads and plates of a frame's actors in the ego frame (``Q`` of them)."""

    hexahedra: np.ndarray  # (Q, 8, 3): heads as they are, plates as their quad twice (a flat hexahedron)
    owners: np.ndarray  # (Q,) actor index (instance mask id - 1)
    classes: np.ndarray  # (Q,) privacy class index
    normals: np.ndarray  # (Q, 3) outward plate normal; zeros for heads (seen from every side)
    centers: np.ndarray  # (Q, 3)


@dataclass(frozen=True)
class _Layout:
    """Where a template shows personal data, as linear maps of its parts' corners (computed once per template)."""

    parts: np.ndarray  # (E,) part index of each head or plate
    classes: np.ndarray  # (E,) privacy class
    weights: np.ndarray  # (E, 8, 8): element corners = weights @ part corners (a plate: its quad twice)
    edges: np.ndarray  # (E, 2, 8): two face edges (corner weights) whose cross product is the plate normal; 0: heads


_LAYOUTS: dict[int, _Layout] = {}


def _layout(template: Template) -> _Layout:
    key = id(template)  # templates are cached singletons (shapes.actor_template)
    if key not in _LAYOUTS:
        parts, classes, weights, edges = [], [], [], []
        for p in np.flatnonzero(template.roles == SKIN):
            parts.append(int(p))
            classes.append(FACE)
            weights.append(np.eye(8))
            edges.append(np.zeros((2, 8)))
        for part, face, a0, a1, b0, b1, role in decal_table(template):
            if int(role) != PLATE:
                continue
            fc = HEX_FACES[int(face)]  # the face's corners among the part's 8
            quad = np.zeros((4, 8))
            for row, (a, b) in enumerate(((a0, b0), (a1, b0), (a1, b1), (a0, b1))):  # bilinear on the face
                quad[row, fc] = [(1 - a) * (1 - b), a * (1 - b), a * b, (1 - a) * b]
            edge = np.zeros((2, 8))
            edge[0, fc[1]], edge[0, fc[0]], edge[1, fc[3]], edge[1, fc[0]] = 1, -1, 1, -1
            parts.append(int(part))
            classes.append(LICENCE_PLATE)
            weights.append(np.concatenate([quad, quad]))  # a flat hexahedron
            edges.append(edge)
        _LAYOUTS[key] = _Layout(np.asarray(parts, int), np.asarray(classes, int),
                                np.asarray(weights).reshape(-1, 8, 8), np.asarray(edges).reshape(-1, 2, 8))
    return _LAYOUTS[key]


def template_parts(template: Template, corners: np.ndarray, owners: np.ndarray) -> PrivacyParts:
    """Heads and plates of K actors sharing ``template``, placed at ``corners`` (K, P, 8, 3)."""
    lay = _layout(template)
    k, e = len(owners), len(lay.parts)
    if k == 0 or e == 0:
        return empty_parts()
    sel = corners[:, lay.parts]  # (K, E, 8, 3)
    hexes = lay.weights @ sel  # (E, 8, 8) @ (K, E, 8, 3) -> (K, E, 8, 3)
    d = lay.edges @ sel  # (K, E, 2, 3)
    n = np.cross(d[:, :, 0], d[:, :, 1])
    n /= np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)
    h = hexes.reshape(-1, 8, 3)
    return PrivacyParts(h, np.repeat(owners, e), np.tile(lay.classes, k), n.reshape(-1, 3), h.mean(axis=1))


def empty_parts() -> PrivacyParts:
    return PrivacyParts(np.zeros((0, 8, 3)), np.zeros(0, int), np.zeros(0, int), np.zeros((0, 3)), np.zeros((0, 3)))


def concat_parts(parts: list[PrivacyParts]) -> PrivacyParts:
    if not parts:
        return empty_parts()
    return PrivacyParts(*(np.concatenate([getattr(p, f) for p in parts])
                          for f in ("hexahedra", "owners", "classes", "normals", "centers")))


def privacy_boxes(parts: PrivacyParts, intrinsics: np.ndarray, extrinsics: np.ndarray, image_size: tuple[int, int],
                  masks: np.ndarray, visible_px: np.ndarray, min_visible: float = 0.25
                  ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per camera, ``(boxes (M, 4) float32, classes (M,) int64)`` of the visible heads and plates.

    Args:
        parts: from :func:`template_parts` / :func:`concat_parts`.
        intrinsics, extrinsics: (C, 3, 3), (C, 4, 4) of the rig.
        image_size: (height, width).
        masks: (C, H, W) instance masks (actor k has id k + 1).
        visible_px: (C, A + 1) pixels of each mask id per camera: parts of actors a camera does not show are
            skipped before any projection (most of a frame's actors are off-screen in most cameras).
        min_visible: share of a box's pixels that must show its owner.
    """
    n_cam = len(extrinsics)
    empty = (np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
    shown = visible_px[:, parts.owners + 1] > 0  # (C, Q)
    use = np.flatnonzero(shown.any(axis=0))
    if len(use) == 0:
        return [empty] * n_cam
    parts = PrivacyParts(parts.hexahedra[use], parts.owners[use], parts.classes[use], parts.normals[use],
                         parts.centers[use])
    shown = shown[:, use]
    height, width = image_size
    out = []
    for c in range(n_cam):
        towards = ((parts.centers - extrinsics[c][:3, 3]) * parts.normals).sum(axis=1) < 0
        cand = np.flatnonzero(shown[c] & (towards | (parts.classes == FACE)))
        boxes, ok = _bounds(parts.hexahedra[cand], intrinsics[c], extrinsics[c], image_size)
        rows = []
        for q, box in zip(cand[ok].tolist(), boxes[ok].tolist()):
            x1, y1, x2, y2 = box
            win = masks[c, max(int(y1), 0):min(int(np.ceil(y2)), height), max(int(x1), 0):min(int(np.ceil(x2)), width)]
            if win.size and np.count_nonzero(win == parts.owners[q] + 1) >= min_visible * win.size:
                rows.append((q, box))
        if rows:
            out.append((np.array([b for _, b in rows], np.float32), parts.classes[[q for q, _ in rows]].astype(np.int64)))
        else:
            out.append(empty)
    return out


def _bounds(hexahedra: np.ndarray, intrinsics: np.ndarray, extrinsics: np.ndarray, image_size: tuple[int, int]
            ) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (Q, 4) and ``ok`` (Q,) (at least 1 px on both sides) of hexahedra in one camera.

    Parts wholly in front of the camera (nearly all) take their projected corners' bounds clipped to the image:
    at most a little larger than the exact clipped hull, which for a blur box errs on the safe side. The few that
    cross the near plane go through the exact :func:`project_hexahedra_bounds`.
    """
    if len(hexahedra) == 0:
        return np.zeros((0, 4)), np.zeros(0, bool)
    height, width = image_size
    world_to_cam = invert_rigid(extrinsics)
    pc = hexahedra @ world_to_cam[:3, :3].T + world_to_cam[:3, 3]  # (Q, 8, 3)
    front = (pc[..., 2] >= DEFAULT_NEAR).all(axis=1)
    uv = (pc[..., :2] / np.maximum(pc[..., 2:], DEFAULT_NEAR)) @ intrinsics[:2, :2].T + intrinsics[:2, 2]
    boxes = np.concatenate([uv.min(axis=1), uv.max(axis=1)], axis=1).clip(0, [width, height, width, height])
    if not front.all():
        cut, cut_ok = project_hexahedra_bounds(hexahedra[~front], intrinsics, extrinsics, image_size)
        boxes[~front] = np.where(cut_ok[:, None], cut, 0.0)
    wh = boxes[:, 2:] - boxes[:, :2]
    return boxes, (wh >= 1.0).all(axis=1)
