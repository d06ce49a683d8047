"""The synthetic multi-region driving world as a :class:`FrameSource`.

Frames are indexed region-major: region ``r`` (in sorted order of the selection), scene ``j``, time step ``t``.
A scene's content depends only on ``(seed, region, j)``, not on which other regions are selected, so the scene
``syn-gb-0003`` is the same drive (and lands in the same split) under ``region=gb`` and ``region=global``.

Labels (exact, every camera):
    - 3D boxes of road users within ``label_range_m`` and visible in at least one camera (see ``min_visibility``),
      ego frame, with track ids and
      ground velocities expressed in ego axes;
    - 2D boxes per camera: the tight box of the object's silhouette clipped to the image (amodal w.r.t. occlusion
      by other objects), kept when at least ``min_visibility`` of the silhouette is unoccluded and the box is at
      least ``min_box_px`` on both sides; ``visibility_2d`` is the unoccluded fraction;
    - lane lines as 3D polylines (every 2 m from 60 m behind to 120 m ahead, on the ground) with their types,
      including road edges, and their clipped projections per camera;
    - face and licence-plate boxes per camera (``privacy_boxes``; see ``privacy.py``) for anonymisation. Plates
      show random characters in the region's format (``plates.py``).

Every frame has a latitude/longitude (``Frame.latlon``; each scene starts near a city of its region and drives
along a heading), which :meth:`SyntheticSource.latlon` computes without rendering, for restricted-zone checks.
"""

from __future__ import annotations

import math
import numbers
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from visionpilot.data.frame import LABEL_KINDS, Boxes3D, CameraView, Frame, Lane
from visionpilot.data.regions import get_region, resolve_regions
from visionpilot.data.sources.base import FrameRef, FrameSource
from visionpilot.data.sources.synthetic.ground import RigGeometry, build_rig_geometry, render_ground_and_sky
from visionpilot.data.sources.synthetic.privacy import concat_parts, privacy_boxes, template_parts
from visionpilot.data.sources.synthetic.scene import CLASS, X_AHEAD, X_BEHIND, Scene, sample_scene, stable_seed
from visionpilot.data.sources.synthetic.sensor import add_sensor_effects
from visionpilot.data.sources.synthetic.shapes import actor_template, place, prop_template, role_colors
from visionpilot.data.sources.synthetic.solids import SolidGroup, build_batch, draw_solids
from visionpilot.data.sources.synthetic.styles import STYLES
from visionpilot.geometry.boxes import group_bounds, project_hexahedra_bounds
from visionpilot.geometry.frames import wrap_angle
from visionpilot.geometry.polylines import project_polylines
from visionpilot.geometry.rig import Rig, as_rig

_EGO_FOOTPRINT = np.array([[-1.0, 1.0], [-1.0, -1.0], [3.9, -1.0], [3.9, 1.0]])  # rear axle origin, ~4.9 m car
_PLATE = np.array([240.0, 240, 235])
GROUND_SCALE = 3  # the ground is shaded at 1/GROUND_SCALE resolution, then upsampled (see ground.py)


@dataclass
class RenderOutput:
    """A frame plus the renderer's by-products used to test label/render agreement."""

    frame: Frame
    instance_masks: np.ndarray  # (N, H, W) uint8/uint16: 0 background, scene actor ids (see actor_mask_ids)
    actor_mask_ids: list[np.ndarray]  # per camera: mask id of each 2D box row
    marking_masks: np.ndarray | None  # (N, H, W) uint8: 1 + lane type where paint covers the pixel
    surface_masks: np.ndarray | None  # (N, H, W) uint8: 1 on the paved road
    scene: Scene


class SyntheticSource(FrameSource):
    """Procedural multi-camera driving world, deterministic per (seed, index).

    Args:
        rig: camera rig (name like ``"nuscenes6"``, a config mapping, or a Rig).
        regions: ``"global"``, a region code or a list of codes.
        scenes_per_region: drives per region.
        frames_per_scene: time steps per drive.
        fps: time steps per second (nuScenes key frames are 2 Hz).
        image_size: (height, width) of every camera image.
        seed: world seed.
        min_visibility: minimum unoccluded fraction of a silhouette for a 2D box (and, in some camera, a 3D box).
        min_box_px: minimum width and height of a 2D box in pixels.
        label_range_m: annotation range: objects farther from the ego (ground-plane distance) are rendered but not
            labelled, in 3D or 2D — as real datasets annotate within a range (Waymo 75 m; nuScenes evaluates 50 m).
        noise: add sensor noise and blur (off only for label/render agreement tests).
    """

    name = "synthetic"

    def __init__(self, rig: Rig | str | Mapping[str, Any] = "nuscenes6", regions: str | list[str] = "global",
                 scenes_per_region: int = 20, frames_per_scene: int = 10, fps: float = 2.0,
                 image_size: tuple[int, int] | list[int] = (256, 704), seed: int = 0, min_visibility: float = 0.15,
                 min_box_px: float = 3.0, label_range_m: float = 75.0, noise: bool = True) -> None:
        self.rig = as_rig(rig)
        self.regions = resolve_regions(regions)
        # Checked here, not at the first frame: a zero fps or image side failed there obscurely (ZeroDivisionError,
        # an OpenCV assertion), and a negative fps, a fractional count or a visibility above 1 (no labels at all)
        # were taken silently.
        self.scenes_per_region = _integer("scenes_per_region", scenes_per_region, 1)
        self.frames_per_scene = _integer("frames_per_scene", frames_per_scene, 1)
        self.fps = _number("fps", fps, lambda v: 0 < v < math.inf, "a number of frames per second > 0")
        try:
            height, width = image_size
        except (TypeError, ValueError):
            raise ValueError(f"synthetic source: field 'image_size' must be (height, width), found "
                             f"{image_size!r}") from None
        self.image_size = (_integer("image_size[0] (height)", height, 1), _integer("image_size[1] (width)", width, 1))
        self.seed = _integer("seed", seed, 0)
        self.min_visibility = _number("min_visibility", min_visibility, lambda v: 0 <= v <= 1, "a fraction in [0, 1]")
        self.min_box_px = _number("min_box_px", min_box_px, lambda v: 0 <= v < math.inf, "a number of pixels >= 0")
        self.label_range_m = _number("label_range_m", label_range_m, lambda v: v > 0, "a distance in metres > 0")
        self.noise = bool(noise)
        self.intrinsics = self.rig.intrinsics(self.image_size)
        self.extrinsics = self.rig.extrinsics()
        self._geometry: RigGeometry | None = None
        self._scenes: OrderedDict[tuple[str, int], Scene] = OrderedDict()
        # Scenes are small (arrays of actors and props) and shuffled loading revisits them every epoch.
        self._scene_cache_size = 1024

    # Caches are rebuilt lazily in each worker process rather than pickled.
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_geometry"] = None
        state["_scenes"] = OrderedDict()
        return state

    def __len__(self) -> int:
        return len(self.regions) * self.scenes_per_region * self.frames_per_scene

    @property
    def camera_names(self) -> list[str]:
        return self.rig.camera_names

    def locate(self, index: int) -> tuple[str, int, int]:
        """(region, scene index, time step) of a frame index."""
        if not 0 <= index < len(self):
            raise IndexError(f"synthetic source: index {index} out of range [0, {len(self)})")
        per_region = self.scenes_per_region * self.frames_per_scene
        region = self.regions[index // per_region]
        rest = index % per_region
        return region, rest // self.frames_per_scene, rest % self.frames_per_scene

    def index(self) -> list[FrameRef]:
        refs = []
        for i in range(len(self)):
            region, j, t = self.locate(i)
            refs.append(FrameRef(i, f"syn-{region}-{j:04d}-{t:03d}", f"syn-{region}-{j:04d}", region))
        return refs

    def scene(self, region: str, j: int) -> Scene:
        key = (region, j)
        if key not in self._scenes:
            duration = (self.frames_per_scene - 1) / self.fps
            self._scenes[key] = sample_scene(get_region(region), STYLES[region], self.seed, j, duration)
            while len(self._scenes) > self._scene_cache_size:
                self._scenes.popitem(last=False)
        return self._scenes[key]

    def latlon(self, index: int) -> tuple[float, float]:
        """(latitude, longitude) of frame ``index``, from its scene alone (no rendering): zone checks stay cheap."""
        region, j, t_idx = self.locate(index)
        return self.scene(region, j).latlon(t_idx / self.fps)

    @property
    def geometry(self) -> RigGeometry:
        if self._geometry is None:
            self._geometry = build_rig_geometry(self.intrinsics, self.extrinsics, self.image_size, scale=GROUND_SCALE)
        return self._geometry

    def load(self, index: int, with_images: bool = True) -> Frame:
        return self.render(index, with_images=with_images).frame

    def render(self, index: int, with_images: bool = True, debug: bool = False) -> RenderOutput:
        """Build the frame at ``index``; ``debug`` also returns marking and surface masks (slower)."""
        region, j, t_idx = self.locate(index)
        scene = self.scene(region, j)
        t = t_idx / self.fps
        coeffs = scene.road_coeffs(t)
        s_ego = scene.ego_speed * t

        def centre_y(x: np.ndarray) -> np.ndarray:
            return coeffs[0] + x * (coeffs[1] + x * (coeffs[2] + x * coeffs[3]))

        def heading(x: np.ndarray) -> np.ndarray:
            return np.arctan(coeffs[1] + x * (2 * coeffs[2] + 3 * x * coeffs[3]))

        # --- actors at time t ------------------------------------------------------------------------------------
        a = scene.actors
        x = a.s0 + a.speed * t - s_ego
        lat = a.l + a.lat_speed * t
        near = np.flatnonzero((x > X_BEHIND) & (x < X_AHEAD))
        x, lat = x[near], lat[near]
        y = centre_y(x) + lat
        road_yaw = heading(x)
        yaw = road_yaw + a.heading_offset[near]
        size = a.size[near]
        keep = _non_overlapping(np.stack([x, y], 1), size[:, :2], yaw)
        near, x, y, yaw, road_yaw, size = near[keep], x[keep], y[keep], yaw[keep], road_yaw[keep], size[keep]
        speed = a.speed[near]
        vel = np.stack([speed * np.cos(road_yaw), speed * np.sin(road_yaw)], 1)  # ground velocity in ego axes
        cls = a.cls[near]
        n_act = len(near)
        xy = np.stack([x, y], 1)
        sun = scene.lighting.sun_dir
        groups: list[SolidGroup] = []
        placed = []  # (template, corners, actor rows) per actor group: heads and plates are found after drawing
        part_corners = np.zeros((0, 8, 3))
        owners = np.zeros(0, dtype=int)
        # One group per template (class, variant); mask id k + 1 for actor k, so labels can find their pixels.
        keys = cls * 16 + a.variant[near]
        for key in np.unique(keys):
            k = np.flatnonzero(keys == key)
            tpl = actor_template(int(key // 16), int(key % 16))
            corners = place(tpl, size[k], xy[k], yaw[k])
            shadows = None
            if key // 16 != CLASS["traffic_cone"]:
                rect = np.stack([_rect(size[i, :2] * 1.08, float(yaw[i])) for i in k]) + xy[k, None]
                rect -= sun[:2] / max(sun[2], 0.3) * size[k, 2, None, None] * 0.08
                shadows = np.concatenate([rect, np.full((len(k), 4, 1), 0.005)], axis=2)
            texts = [scene.plates[i] for i in near[k]] if with_images and scene.plates else None
            groups.append(SolidGroup(tpl, corners, role_colors(a.color[near[k]], a.color2[near[k]], _PLATE), k + 1,
                                     np.column_stack([xy[k], size[k, 2] / 2]), shadows, texts))
            part_corners = np.concatenate([part_corners, corners.reshape(-1, 8, 3)])
            owners = np.concatenate([owners, np.repeat(k, len(tpl.roles))])
            placed.append((tpl, corners, k))
        # Scenery: one mask id for all of it (n_act + 1), beyond the labelled ids.
        p = scene.props
        px = p.s - s_ego
        pnear = np.flatnonzero((px > X_BEHIND - 30) & (px < X_AHEAD + 60))
        pxy = np.column_stack([px[pnear], centre_y(px[pnear]) + p.l[pnear]])
        pyaw = heading(px[pnear])
        for kind in np.unique(p.kind[pnear]):
            k = np.flatnonzero(p.kind[pnear] == kind)
            q = pnear[k]
            tpl = prop_template(int(kind))
            groups.append(SolidGroup(tpl, place(tpl, p.size[q], pxy[k], pyaw[k]),
                                     role_colors(p.color[q], p.color2[q], _PLATE), np.full(len(k), n_act + 1),
                                     np.column_stack([pxy[k], p.size[q, 2] / 2])))
        batch = build_batch(scene, groups, with_colors=with_images)

        n_cam = len(self.rig)
        height, width = self.image_size
        images = np.zeros((n_cam, height, width, 3), dtype=np.uint8) if with_images else None
        marking = np.zeros((n_cam, height, width), dtype=np.uint8) if debug and with_images else None
        surface = np.zeros((n_cam, height, width), dtype=np.uint8) if debug and with_images else None
        if images is not None:
            render_ground_and_sky(scene, t, self.geometry, images, marking, surface)
        # Instance ids fit uint8 in almost every frame; OpenCV then counts pixels per id far faster than bincount.
        small_ids = n_act + 2 <= 256
        masks = np.zeros((n_cam, height, width), dtype=np.uint8 if small_ids else np.uint16)

        per_cam = []
        shown_px = []  # per camera: visible pixels per mask id
        # Objects farther than the annotation range are drawn but not labelled, as in real datasets.
        in_range = np.hypot(x, y) <= self.label_range_m
        all_boxes, all_ok = project_hexahedra_bounds(part_corners, self.intrinsics, self.extrinsics, self.image_size)
        for c in range(n_cam):
            painted = np.zeros(n_act + 1, dtype=np.int64)
            roi = draw_solids(batch, self.intrinsics[c], self.extrinsics[c],
                              images[c] if images is not None else None, masks[c], painted)
            # Visible pixels of labelled ids, counted only where they can be (entry 0, background, is unused).
            visible_px = np.zeros(n_act + 1, dtype=np.int64)
            if roi is not None:
                x0, y0, x1, y1 = roi
                sub = masks[c][y0:y1, x0:x1]
                if small_ids:
                    visible_px[:] = cv2.calcHist([sub], [0], None, [256], [0, 256]).ravel()[: n_act + 1]
                else:
                    visible_px[:] = np.bincount(sub.ravel(), minlength=n_act + 2)[: n_act + 1]
            obj_boxes, obj_ok = group_bounds(all_boxes[c], all_ok[c], owners, n_act)
            vis = visible_px[1:] / np.maximum(painted[1:], 1)
            wh = obj_boxes[:, 2:] - obj_boxes[:, :2]
            ok = obj_ok & (painted[1:] > 0) & (vis >= self.min_visibility) & (wh.min(axis=1) >= self.min_box_px)
            ok &= in_range
            per_cam.append((obj_boxes, ok, vis))
            shown_px.append(visible_px)
        # Faces and plates of the actors some camera shows (most of a frame's actors are hidden or off-screen).
        shown = (np.stack(shown_px)[:, 1:] > 0).any(axis=0)
        private = [template_parts(tpl, corners[shown[k]], k[shown[k]]) for tpl, corners, k in placed if shown[k].any()]
        privacy = privacy_boxes(concat_parts(private), self.intrinsics, self.extrinsics, self.image_size, masks,
                                np.stack(shown_px))
        if images is not None and self.noise:
            rng = np.random.default_rng(stable_seed(self.seed, region, j, t_idx, "sensor"))
            add_sensor_effects(images, scene, rng)

        # 3D boxes: objects with a 2D box in some camera; 2D rows point at these rows.
        seen = np.zeros(n_act, dtype=bool)
        for _, ok, _ in per_cam:
            seen |= ok
        row_of = np.full(n_act, -1)
        row_of[seen] = np.arange(seen.sum())
        boxes3d = Boxes3D(
            centers=np.stack([x, y, size[:, 2] / 2], 1)[seen] if n_act else np.zeros((0, 3)),
            sizes=size[seen] if n_act else np.zeros((0, 3)),
            yaws=wrap_angle(yaw[seen]) if n_act else np.zeros(0),
            classes=cls[seen].astype(np.int64) if n_act else np.zeros(0, dtype=np.int64),
            track_ids=a.track_id[near][seen] if n_act else np.zeros(0, dtype=np.int64),
            velocities=vel[seen] if n_act else np.zeros((0, 2)),
        )

        # Lane lines: the same cubic that shaded the ground pixels, sampled every 2 m.
        xs = np.arange(X_BEHIND + 10, X_AHEAD - 10 + 1e-6, 2.0)
        yc = centre_y(xs)
        lanes3d = [Lane(np.column_stack([xs, yc + m.l, np.zeros_like(xs)]), m.type) for m in scene.markings]

        cameras = []
        mask_ids = []
        for c in range(n_cam):
            obj_boxes, ok, vis = per_cam[c]
            rows = np.flatnonzero(ok)
            pieces = project_polylines([lane.points for lane in lanes3d], self.intrinsics[c], self.extrinsics[c],
                                       self.image_size, min_length_px=8.0)
            lanes2d = [Lane(piece.astype(np.float32), lane.type) for lane, ps in zip(lanes3d, pieces) for piece in ps]
            cameras.append(CameraView(
                name=self.rig.cameras[c].name, intrinsics=self.intrinsics[c].copy(),
                extrinsics=self.extrinsics[c].copy(), image_size=self.image_size,
                image=images[c] if images is not None else None,
                boxes_2d=obj_boxes[rows].astype(np.float32), classes_2d=cls[rows].astype(np.int64),
                box_ids_2d=row_of[rows].astype(np.int64), visibility_2d=vis[rows].astype(np.float32),
                lanes_2d=lanes2d, privacy_boxes=privacy[c][0], privacy_classes=privacy[c][1],
            ))
            mask_ids.append(rows + 1)
        lt = scene.lighting
        frame = Frame(
            frame_id=f"syn-{region}-{j:04d}-{t_idx:03d}", scene_id=f"syn-{region}-{j:04d}", source=self.name,
            region=region, driving_side=scene.region.driving_side, timestamp=float(t), cameras=cameras,
            boxes_3d=boxes3d, lanes_3d=lanes3d, labels=frozenset(LABEL_KINDS), latlon=scene.latlon(t),
            meta={"time_of_day": lt.time_of_day, "visibility_m": round(lt.visibility_m, 1), "urban": scene.urban,
                  "lanes_per_direction": [scene.n_ego, scene.n_opp], "lane_width_m": round(scene.lane_width, 3),
                  "curvature": round(float(2 * coeffs[2]), 6), "ego_speed_mps": round(scene.ego_speed, 2)},
        )
        return RenderOutput(frame, masks, mask_ids, marking, surface, scene)


def _integer(field: str, value: Any, least: int) -> int:
    """``value`` as an int >= ``least``; a fraction, a bool or a string is refused rather than truncated."""
    if (isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value)
            or value != int(value) or value < least):
        raise ValueError(f"synthetic source: field '{field}' must be an integer >= {least}, found {value!r}")
    return int(value)


def _number(field: str, value: Any, ok: Callable[[float], bool], expected: str) -> float:
    """``value`` as a float for which ``ok`` holds (NaN fails every comparison, so it is refused too)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not ok(float(value)):
        raise ValueError(f"synthetic source: field '{field}' must be {expected}, found {value!r}")
    return float(value)


def _rect(lw: np.ndarray, yaw: float) -> np.ndarray:
    """(4, 2) corners of a length x width rectangle rotated by yaw, centred at the origin."""
    hl, hw = lw / 2
    local = np.array([[hl, hw], [hl, -hw], [-hl, -hw], [-hl, hw]])
    c, s = np.cos(yaw), np.sin(yaw)
    return local @ np.array([[c, s], [-s, c]])


def _non_overlapping(centers: np.ndarray, lw: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """Greedy keep-mask so that no two footprints (nor a footprint and the ego) overlap, by separating axes.

    All pairs are tested at once; the greedy pass (earlier rows win) is a short loop over a boolean matrix.
    """
    n = len(centers)
    if n == 0:
        return np.zeros(0, dtype=bool)
    hl, hw = lw[:, 0] / 2, lw[:, 1] / 2
    local = np.stack([np.stack([hl, hw], 1), np.stack([hl, -hw], 1), np.stack([-hl, -hw], 1),
                      np.stack([-hl, hw], 1)], 1)  # (n, 4, 2)
    c, s = np.cos(yaw)[:, None], np.sin(yaw)[:, None]
    polys = np.stack([c * local[..., 0] - s * local[..., 1], s * local[..., 0] + c * local[..., 1]], -1)
    polys = np.concatenate([_EGO_FOOTPRINT[None], polys + centers[:, None]])  # (m, 4, 2), row 0 = ego
    axes = np.stack([polys[:, 1] - polys[:, 0], polys[:, 3] - polys[:, 0]], 1)  # (m, 2, 2)
    proj = np.einsum("iak,jpk->ijap", axes, polys)  # (m, m, 2, 4): polygon j on the axes of polygon i
    lo, hi = proj.min(-1), proj.max(-1)  # (m, m, 2)
    own_lo = np.diagonal(lo, axis1=0, axis2=1).T[:, None]  # (m, 1, 2) polygon i on its own axes
    own_hi = np.diagonal(hi, axis1=0, axis2=1).T[:, None]
    sep_i = ((hi < own_lo) | (lo > own_hi)).any(-1)  # separated along an axis of i
    overlap = ~(sep_i | sep_i.T)
    np.fill_diagonal(overlap, False)
    keep = np.ones(n + 1, dtype=bool)
    for i in range(1, n + 1):
        if overlap[i, :i][keep[:i]].any():
            keep[i] = False
    return keep[1:]
