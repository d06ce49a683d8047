"""Drawing solids (road users and scenery) with the painter's algorithm, plus an instance-id mask.

Every solid is a set of convex hexahedra ("parts"). All parts of a frame are gathered in one :class:`SolidBatch`,
so normals, lighting and haze are computed once per frame and projection once per camera, with numpy; Python only
loops over the polygons it hands to OpenCV. Per camera, solids are drawn far to near and, within a solid, parts in
template order with back-face culling, so nearer objects hide farther ones. The instance mask gets one convex-hull
polygon per part (the exact silhouette of a convex part); the image one polygon per visible face plus its decals.
Parts that cover only a few pixels are drawn as a single hull polygon in the image too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from visionpilot.data.sources.synthetic.ground import haze_alpha, lit
from visionpilot.data.sources.synthetic.plates import draw_plate_text
from visionpilot.data.sources.synthetic.scene import Scene
from visionpilot.data.sources.synthetic.shapes import EMISSIVE, LAMP, PLATE, TAIL, Template, decal_table
from visionpilot.geometry.boxes import HEX_FACES
from visionpilot.geometry.camera import DEFAULT_NEAR, clip_polygon_near
from visionpilot.geometry.frames import invert_rigid

_SHIFT = 4  # fixed-point bits for OpenCV polygon vertices (1/16 px)
_SCALE = float(1 << _SHIFT)
_SMALL_PX = 10.0  # parts smaller than this (both sides) are drawn as one polygon
_DECAL_PX = 16.0  # decals (lights, windows, plates) are drawn on parts at least this large
_SMALL_SOLID_PX = 4.0  # whole solids smaller than this are drawn as one polygon


@dataclass
class SolidGroup:
    """K solids that share one template."""

    template: Template
    corners: np.ndarray  # (K, P, 8, 3) ego frame
    palettes: np.ndarray  # (K, R, 3) colour per role
    mask_ids: np.ndarray  # (K,) instance-mask id
    centers: np.ndarray  # (K, 3) for depth ordering and haze
    shadows: np.ndarray | None = None  # (K, 4, 3) ground polygons, or None
    texts: list[str] | None = None  # (K,) licence plate text drawn into PLATE decals, or None


class Colours:
    """RGB colours kept as an array, handed to OpenCV as lists row by row: a frame's whole (T, 6, 3) face table
    converted with ``tolist`` cost ~5 ms per frame (a sixth of the demo's loader), and a camera draws a few of its
    faces. ``colours[i]`` is row ``i`` as (nested) Python floats."""

    def __init__(self, table: np.ndarray | None = None) -> None:
        self.table = np.zeros((0, 3)) if table is None else table

    def __getitem__(self, i: int) -> list:
        return self.table[i].tolist()

    def __len__(self) -> int:
        return len(self.table)


@dataclass
class SolidBatch:
    """All solids of a frame. ``T`` parts in total, ``S`` solids; part ranges per solid are contiguous."""

    corners: np.ndarray  # (T, 8, 3) ego frame
    start: np.ndarray  # (S + 1,) part range of solid i: start[i]:start[i+1]
    mask_id: np.ndarray  # (S,) instance id
    center: np.ndarray  # (S, 3) for depth ordering
    shadow: np.ndarray  # (S, 4, 3) ground polygon per solid
    has_shadow: np.ndarray  # (S,)
    normals: np.ndarray  # (T, 6, 3) outward face normals
    face_centers: np.ndarray  # (T, 6, 3)
    face_colors: Colours  # (T, 6, 3) lit and hazed RGB
    decals: dict[tuple[int, int], list[int]]  # (part, face) -> rows of decal_corners / decal_colors
    decal_corners: np.ndarray  # (D, 4, 3) ego frame
    decal_colors: Colours  # (D, 3) lit and hazed RGB
    shadow_colors: Colours  # (S, 3)
    decal_text: dict[int, str] = field(default_factory=dict)  # decal row -> plate text


def _shade_roles(scene: Scene, colors: np.ndarray, roles: np.ndarray, shade: np.ndarray) -> np.ndarray:
    """Lit colours (N, F, 3) for colour ``roles`` (N, F) from palettes ``colors`` (N, F, R, 3), diffuse ``shade``."""
    base = np.take_along_axis(colors, roles[..., None, None].repeat(3, -1), axis=-2)[..., 0, :]  # (N, F, 3)
    out = lit(base, scene, shade[..., None])
    emissive = np.isin(roles, EMISSIVE)
    if emissive.any():
        if scene.lighting.lights_on:
            out[emissive] = np.minimum(base[emissive] * 1.1, 255.0)
        else:  # lights off: a darker lens
            dim = np.where(roles == TAIL, 0.7, np.where(roles == LAMP, 0.5, 0.55))
            out[emissive] = (base * (dim * shade)[..., None] * scene.lighting.tint)[emissive]
    return out


def build_batch(scene: Scene, groups: list[SolidGroup], with_colors: bool = True) -> SolidBatch:
    """Gather a frame's solid groups into one batch; ``with_colors=False`` skips lighting (label-only frames)."""
    light = scene.lighting
    groups = [g for g in groups if len(g.mask_ids)]
    n_parts = [len(g.template.roles) for g in groups]
    corners = (np.concatenate([g.corners.reshape(-1, 8, 3) for g in groups]) if groups else np.zeros((0, 8, 3)))
    counts = np.concatenate([np.full(len(g.mask_ids), n) for g, n in zip(groups, n_parts)]).astype(int) \
        if groups else np.zeros(0, int)
    start = np.concatenate([[0], np.cumsum(counts)]).astype(int)
    center = np.concatenate([g.centers for g in groups]) if groups else np.zeros((0, 3))
    shadow = np.concatenate([g.shadows if g.shadows is not None else np.zeros((len(g.mask_ids), 4, 3))
                             for g in groups]) if groups else np.zeros((0, 4, 3))
    has_shadow = np.concatenate([np.full(len(g.mask_ids), g.shadows is not None) for g in groups]) \
        if groups else np.zeros(0, bool)
    faces = corners[:, HEX_FACES]  # (T, 6, 4, 3)
    normal = np.cross(faces[:, :, 1] - faces[:, :, 0], faces[:, :, 3] - faces[:, :, 0])
    bad = np.linalg.norm(normal, axis=-1) < 1e-9  # a collapsed corner (cone tip): use the opposite one
    if bad.any():
        normal[bad] = np.cross(faces[:, :, 3] - faces[:, :, 2], faces[:, :, 1] - faces[:, :, 2])[bad]
    normal /= np.maximum(np.linalg.norm(normal, axis=-1, keepdims=True), 1e-12)
    batch = SolidBatch(
        corners=corners, start=start,
        mask_id=np.concatenate([g.mask_ids for g in groups]).astype(int) if groups else np.zeros(0, int),
        center=center, shadow=shadow, has_shadow=has_shadow, normals=normal, face_centers=faces.mean(axis=2),
        face_colors=Colours(), decals={}, decal_corners=np.zeros((0, 4, 3)), decal_colors=Colours(),
        shadow_colors=Colours(),
    )
    if not with_colors or not groups:
        return batch
    roles = np.concatenate([np.tile(g.template.roles, len(g.mask_ids)) for g in groups])  # (T,)
    palettes = np.concatenate([g.palettes for g in groups])  # (S, R, 3)
    part_solid = np.repeat(np.arange(len(center)), counts)
    shade = light.ambient + light.diffuse * np.clip(normal @ light.sun_dir, 0, None)  # (T, 6)
    # Haze by distance from the ego (cameras are within 2 m of it), so colours are shared by all cameras.
    a_solid = haze_alpha(np.linalg.norm(center[:, :2], axis=1), light.visibility_m)  # (S,)
    haze_col = lit(light.haze_color, scene, 1.0)
    face_rgb = _shade_roles(scene, palettes[part_solid][:, None].repeat(6, 1), np.repeat(roles[:, None], 6, 1),
                            shade)
    a_part = a_solid[part_solid][:, None, None]
    batch.face_colors = Colours(face_rgb * (1 - a_part) + haze_col * a_part)
    # Decals: every solid of a group repeats its template's decal table.
    tables, solid_of, first = [], [], 0
    for g in groups:
        table = decal_table(g.template)
        k = len(g.mask_ids)
        if len(table):
            rep = np.tile(table, (k, 1))
            sid = np.repeat(np.arange(first, first + k), len(table))
            rep[:, 0] += start[sid]  # part index -> global part index
            tables.append(rep)
            solid_of.append(sid)
        first += k
    if tables:
        table = np.concatenate(tables)
        d_solid = np.concatenate(solid_of)
        t_idx, f_idx = table[:, 0].astype(int), table[:, 1].astype(int)
        quads = faces[t_idx, f_idx]  # (D, 4, 3) face corners
        a = table[:, [2, 3, 3, 2]][..., None]  # (D, 4, 1) sub-rectangle corners in face parameters
        b = table[:, [4, 4, 5, 5]][..., None]
        batch.decal_corners = ((1 - a) * (1 - b) * quads[:, None, 0] + a * (1 - b) * quads[:, None, 1]
                               + a * b * quads[:, None, 2] + (1 - a) * b * quads[:, None, 3])
        d_roles = table[:, 6].astype(int)
        rgb = _shade_roles(scene, palettes[d_solid][:, None], d_roles[:, None], shade[t_idx, f_idx][:, None])[:, 0]
        a_d = a_solid[d_solid][:, None]
        batch.decal_colors = Colours(rgb * (1 - a_d) + haze_col * a_d)
        for d, key in enumerate(zip(t_idx.tolist(), f_idx.tolist())):
            batch.decals.setdefault(key, []).append(d)
        if any(g.texts for g in groups):
            texts = [t for g in groups for t in (g.texts or [None] * len(g.mask_ids))]
            batch.decal_text = {d: texts[s] for d, s in zip(np.flatnonzero(d_roles == PLATE).tolist(),
                                                            d_solid[d_roles == PLATE].tolist()) if texts[s]}
    ground = light.ambient + light.diffuse * max(light.sun_dir[2], 0)
    shadow_rgb = lit(scene.asphalt * 0.45, scene, ground)
    batch.shadow_colors = Colours(shadow_rgb[None] * (1 - a_solid[:, None]) + haze_col * a_solid[:, None])
    return batch


def draw_solids(batch: SolidBatch, intrinsics: np.ndarray, extrinsics: np.ndarray, image: np.ndarray | None,
                mask: np.ndarray, painted: np.ndarray) -> tuple[int, int, int, int] | None:
    """Draw a frame's solids into one camera's ``image`` (H, W, 3) and instance ``mask`` (H, W) uint16.

    ``painted[mask_id]`` receives the pixel count of each labelled solid's whole silhouette (before nearer solids
    hide parts of it), so that its visibility is visible pixels / painted pixels; ids beyond ``painted`` (scenery)
    are not counted.

    Returns the rectangle ``(x0, y0, x1, y1)`` that holds every pixel of a labelled id in ``mask`` (so visible
    pixels need only be counted there), or None if no labelled solid was drawn.
    """
    if len(batch.mask_id) == 0:
        return None
    height, width = mask.shape
    world_to_cam = invert_rigid(extrinsics)
    rot, trans = world_to_cam[:3, :3], world_to_cam[:3, 3]
    cam_pos = extrinsics[:3, 3]
    kmat = intrinsics[:2, :3]
    aa = cv2.LINE_AA

    def to_fixed(pc: np.ndarray) -> np.ndarray:
        # OpenCV puts pixel centres at integers, our convention at +0.5.
        uv = (pc / np.maximum(pc[..., 2:3], DEFAULT_NEAR * 0.999)) @ kmat.T
        uv -= 0.5
        uv *= _SCALE
        # Far-off (or masked-out, non-finite) points are clamped so the fixed-point cast stays defined: fmax/fmin
        # also map NaN to the bound (such points are never drawn, any value will do).
        np.fmax(uv, -2.0**30, out=uv)
        np.fmin(uv, 2.0**30, out=uv)
        return np.rint(uv, out=uv).astype(np.int32)

    pc = batch.corners @ rot.T + trans  # (T, 8, 3) camera frame
    front = pc[..., 2] >= DEFAULT_NEAR  # (T, 8)
    fixed = to_fixed(pc)  # (T, 8, 2), meaningful where in front
    seen = np.einsum("tfk,tfk->tf", batch.face_centers - cam_pos, batch.normals) < 0  # (T, 6)
    start = batch.start
    part_front = front.all(axis=1)
    solid_all_front = np.logical_and.reduceat(part_front, start[:-1])
    solid_any_front = np.logical_or.reduceat(front.any(axis=1), start[:-1])
    big = np.int64(1) << 40
    lo = np.where(front[..., None], fixed, big).min(axis=1)
    hi = np.where(front[..., None], fixed, -big).max(axis=1)
    s_lo = np.minimum.reduceat(lo, start[:-1])
    s_hi = np.maximum.reduceat(hi, start[:-1])
    on_screen = solid_any_front & ~(solid_all_front & ((s_hi[:, 0] < 0) | (s_lo[:, 0] > width * _SCALE) |
                                                        (s_hi[:, 1] < 0) | (s_lo[:, 1] > height * _SCALE)))
    # Faces of parts that cross the near plane, clipped all at once (a quad cut by a plane keeps <= 5 vertices).
    cut_faces = _clip_faces_near(pc, ~part_front & front.any(axis=1), seen, to_fixed)
    part_extent = (hi - lo).max(axis=1)
    part_small = (part_extent < _SMALL_PX * _SCALE) & part_front
    part_decals = (part_extent >= _DECAL_PX * _SCALE).tolist()
    # Level of detail: a whole solid this small is one hull polygon in its main (first visible part) colour.
    solid_small = ((s_hi - s_lo).max(axis=1) < _SMALL_SOLID_PX * _SCALE) & solid_all_front
    if image is not None and len(batch.decal_corners):
        dpc = batch.decal_corners @ rot.T + trans  # (D, 4, 3)
        d_front = (dpc[..., 2] >= DEFAULT_NEAR).all(axis=1)
        d_fixed = to_fixed(dpc)
    dist = np.linalg.norm(batch.center - cam_pos, axis=1)
    # Shadows of solids within 80 m, projected all at once (those crossing the near plane are clipped one by one).
    shadow_on = (batch.has_shadow & (dist < 80) & on_screen) if image is not None else np.zeros(len(dist), bool)
    if shadow_on.any():
        spc = batch.shadow[shadow_on] @ rot.T + trans  # (S', 4, 3)
        s_fixed = to_fixed(spc)
        s_front = (spc[..., 2] >= DEFAULT_NEAR).all(axis=1).tolist()
        s_row = np.cumsum(shadow_on) - 1
    shadow_on_l = shadow_on.tolist()
    # Python lists and precomputed views keep the per-polygon loop free of numpy calls.
    face_fixed = np.ascontiguousarray(fixed[:, HEX_FACES])  # (T, 6, 4, 2); OpenCV needs contiguous rows
    seen_rows = seen.tolist()
    part_front_l = part_front.tolist()
    part_small_l = part_small.tolist()
    mask_ids = batch.mask_id.tolist()
    draw = image is not None
    decal_text = batch.decal_text
    line8 = cv2.LINE_8
    roi = [width, height, 0, 0]  # union of the labelled solids' pixel rectangles
    start_l = start.tolist()
    solid_small_l = solid_small.tolist()
    solid_all_front_l = solid_all_front.tolist()
    for i in np.flatnonzero(on_screen)[np.argsort(-dist[on_screen])].tolist():
        mid = mask_ids[i]
        s0, s1 = start_l[i], start_l[i + 1]
        if shadow_on_l[i]:
            r = s_row[i]
            poly = s_fixed[r] if s_front[r] else _polygon(spc[r], to_fixed)
            if poly is not None:
                cv2.fillConvexPoly(image, poly, batch.shadow_colors[i], aa, _SHIFT)
        small = solid_small_l[i]
        if small:
            hull = cv2.convexHull(fixed[s0:s1].reshape(-1, 2))
            cv2.fillConvexPoly(mask, hull, mid, line8, _SHIFT)
            if draw:
                t = s1 - 1 if s1 - s0 > 1 else s0
                row = seen_rows[t]
                cv2.fillConvexPoly(image, hull, batch.face_colors[t][row.index(True) if True in row else 0], aa,
                                   _SHIFT)
        for t in range(s0, s1) if not small else ():  # noqa: B007 (t is used below)
            row = seen_rows[t]
            if part_front_l[t]:
                hull = cv2.convexHull(fixed[t])
                cv2.fillConvexPoly(mask, hull, mid, line8, _SHIFT)
                if not draw:
                    continue
                colors = batch.face_colors[t]
                if part_small_l[t]:
                    cv2.fillConvexPoly(image, hull, colors[row.index(True) if True in row else 0], aa, _SHIFT)
                    continue
                decals = part_decals[t]
                faces_t = face_fixed[t]
                for f in range(6):
                    if row[f]:
                        cv2.fillConvexPoly(image, faces_t[f], colors[f], aa, _SHIFT)
                        for d in batch.decals.get((t, f), ()) if decals else ():
                            dpoly = d_fixed[d] if d_front[d] else _polygon(dpc[d], to_fixed)
                            if dpoly is not None:
                                cv2.fillConvexPoly(image, dpoly, batch.decal_colors[d], aa, _SHIFT)
                                if d in decal_text and d_front[d]:
                                    draw_plate_text(image, d_fixed[d] / _SCALE, decal_text[d], batch.decal_colors[d])
                continue
            # A part crossing the near plane: its visible faces, clipped.
            for f in range(6):
                poly = cut_faces.get((t, f))
                if poly is None:
                    continue
                cv2.fillConvexPoly(mask, poly, mid, line8, _SHIFT)
                if draw:
                    cv2.fillConvexPoly(image, poly, batch.face_colors[t][f], aa, _SHIFT)
                    for d in batch.decals.get((t, f), ()):
                        dpoly = d_fixed[d] if d_front[d] else _polygon(dpc[d], to_fixed)
                        if dpoly is not None:
                            cv2.fillConvexPoly(image, dpoly, batch.decal_colors[d], aa, _SHIFT)
        if mid < len(painted):
            # The solid was drawn last, so all of its pixels still carry its id: count them around it.
            if solid_all_front_l[i]:
                x0, y0 = np.maximum(s_lo[i] // int(_SCALE) - 1, 0)
                x1, y1 = s_hi[i] // int(_SCALE) + 2
            else:
                x0, y0, x1, y1 = 0, 0, width, height
            x1, y1 = min(x1, width), min(y1, height)
            painted[mid] = np.count_nonzero(mask[y0:y1, x0:x1] == mid)
            roi = [min(roi[0], x0), min(roi[1], y0), max(roi[2], x1), max(roi[3], y1)]
    return (int(roi[0]), int(roi[1]), int(roi[2]), int(roi[3])) if roi[2] > roi[0] and roi[3] > roi[1] else None


def _clip_faces_near(pc: np.ndarray, parts: np.ndarray, seen: np.ndarray, to_fixed
                     ) -> dict[tuple[int, int], np.ndarray]:
    """Fixed-point polygons of the seen faces of ``parts`` (T,) bool, clipped at the near plane, keyed (part, face).

    Sutherland-Hodgman against one plane, vectorised over faces: each corner contributes itself if in front and
    the crossing of its outgoing edge if that edge crosses the plane.
    """
    t_idx, f_idx = np.nonzero(parts[:, None] & seen)
    if len(t_idx) == 0:
        return {}
    quads = pc[t_idx[:, None], HEX_FACES[f_idx]]  # (F, 4, 3)
    inside = quads[..., 2] >= DEFAULT_NEAR
    nxt = np.roll(quads, -1, axis=1)
    nin = np.roll(inside, -1, axis=1)
    dz = nxt[..., 2] - quads[..., 2]
    t = (DEFAULT_NEAR - quads[..., 2]) / np.where(np.abs(dz) < 1e-12, 1e-12, dz)
    cross = quads + t[..., None] * (nxt - quads)
    pts = to_fixed(np.stack([quads, cross], axis=2).reshape(-1, 8, 3))  # (F, 8, 2)
    keep = np.stack([inside, inside != nin], axis=2).reshape(-1, 8)
    return {(int(ti), int(fi)): pts[k][keep[k]] for k, (ti, fi) in enumerate(zip(t_idx, f_idx))
            if keep[k].sum() >= 3}


def _polygon(pc_face: np.ndarray, to_fixed) -> np.ndarray | None:
    """Fixed-point polygon of a camera-frame face, clipped at the near plane; None if nothing is in front."""
    if (pc_face[:, 2] >= DEFAULT_NEAR).all():
        return to_fixed(pc_face)
    clipped = clip_polygon_near(pc_face)
    return to_fixed(clipped) if len(clipped) >= 3 else None
