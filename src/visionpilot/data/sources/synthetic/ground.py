"""Ground and sky shading: road surface, lane-line paint, verges, sky and haze for every camera at once.

The ground is flat (z = 0) and the cameras are fixed on the car, so each pixel's ray meets the ground at a point
that never changes: :class:`RigGeometry` casts all rays once per rig. A frame then only evaluates the road's cubic
centre line at those points, which places every lane line analytically — anti-aliased across the line by the
pixel's footprint and box-filtered along it for dashes, so distant paint fades instead of aliasing.

The ground is shaded at ``1/scale`` of the image resolution (default half) in image layout and upsampled with
bilinear interpolation; solids are then drawn at full resolution on top. At half resolution this is ~4x cheaper,
and the paint keeps its exact position (linear interpolation preserves where a line is).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cache

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter

from visionpilot.data.sources.synthetic.scene import Marking, Scene

_MAX_GROUND_M = 1000.0
_DEPTH_BIN_M = 2.0  # haze lookup resolution (255 bins: up to 510 m)
_EL_BINS = 256  # sky elevation lookup bins over [0, pi/2]


def haze_alpha(distance: np.ndarray | float, visibility_m: float) -> np.ndarray:
    """Koschmieder's law: contrast falls to 5% at the meteorological visibility (extinction 3/V)."""
    return 1.0 - np.exp(-3.0 * np.asarray(distance, dtype=np.float64) / visibility_m)


def lit(color: np.ndarray, scene: Scene, factor: float | np.ndarray) -> np.ndarray:
    """Apply a lighting factor and the scene's colour tint."""
    return np.asarray(color, dtype=np.float64) * factor * scene.lighting.tint


@dataclass
class RigGeometry:
    """Per-pixel ground and sky geometry of a rig, at ``1/scale`` resolution, cameras stacked along rows.

    All arrays are (N * h, w) with h, w = ceil(H / scale), ceil(W / scale).
    """

    image_size: tuple[int, int]
    n_cams: int
    scale: int
    small_size: tuple[int, int]
    gx: np.ndarray  # ego x of each pixel's ground point (float32; 0 for sky)
    gy: np.ndarray  # ego y (far off the road for sky pixels; they are overwritten)
    gx2: np.ndarray  # gx**2 and gx**3, so the cubic costs no extra multiplications
    gx3: np.ndarray
    fp_l: np.ndarray  # footprint across the road (m): anti-aliasing width of lines
    fp_s: np.ndarray  # footprint along the road (m): box-filter width of dashes
    depth_bin: np.ndarray  # uint8 haze bin
    sky: np.ndarray  # bool: the ray does not meet the ground within range
    sky_idx: np.ndarray  # (S,) flat indices of sky pixels
    sky_el_bin: np.ndarray  # (S,) elevation bin
    sky_el: np.ndarray  # (S,) float32 elevation (rad), >= 0
    sky_az: np.ndarray  # (S,) azimuth in degrees [0, 360) in the ego frame


def _neighbour_step(a: np.ndarray) -> np.ndarray:
    """Largest absolute difference to the 4 neighbours (NaN where all neighbours are NaN)."""
    steps = np.full((4, *a.shape), np.nan)
    steps[0, :, :-1] = np.abs(np.diff(a, axis=1))
    steps[1, :, 1:] = steps[0, :, :-1]
    steps[2, :-1] = np.abs(np.diff(a, axis=0))
    steps[3, 1:] = steps[2, :-1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN neighbourhoods (sky) stay NaN
        return np.nanmax(steps, axis=0)


def build_rig_geometry(intrinsics: np.ndarray, extrinsics: np.ndarray, image_size: tuple[int, int],
                       scale: int = 2) -> RigGeometry:
    """Cast every (low-resolution) pixel's ray onto the ground plane once."""
    height, width = image_size
    h, w = -(-height // scale), -(-width // scale)
    # Centres of the low-resolution pixels in full-resolution pixel coordinates, where cv2.resize to (W, H) puts
    # them: (i + 0.5) * W / w. That is (i + 0.5) * scale only when the image size is a multiple of the scale; with
    # `scale` the ground was stretched against the solids and the labels (by 2 px at the bottom of 256 x 704).
    u, v = np.meshgrid((np.arange(w) + 0.5) * (width / w), (np.arange(h) + 0.5) * (height / h))
    pix = np.stack([u, v, np.ones_like(u)], axis=-1)
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("gx", "gy", "fpl", "fps", "db", "sky", "elb", "el", "az")}
    for c in range(len(intrinsics)):
        rays = pix @ np.linalg.inv(intrinsics[c]).T @ extrinsics[c][:3, :3].T  # (h, w, 3) ego directions
        pos = extrinsics[c][:3, 3]
        down = rays[..., 2] < -1e-9
        lam = np.where(down, -pos[2] / np.where(down, rays[..., 2], -1.0), np.inf)  # depth along the optical axis
        ground = down & (lam * np.hypot(rays[..., 0], rays[..., 1]) < _MAX_GROUND_M)
        lam = np.where(ground, lam, np.nan)
        gx = pos[0] + lam * rays[..., 0]
        gy = pos[1] + lam * rays[..., 1]
        # A low-res pixel covers `scale` full-res pixels; footprints are per full-res pixel.
        out["fpl"].append(np.clip(np.nan_to_num(_neighbour_step(gy) / scale, nan=50.0), 2e-3, 50.0))
        out["fps"].append(np.clip(np.nan_to_num(_neighbour_step(gx) / scale, nan=50.0), 2e-3, 50.0))
        out["gx"].append(np.where(ground, gx, 0.0))
        out["gy"].append(np.where(ground, gy, 1e4))
        out["db"].append(np.clip(np.nan_to_num(lam, nan=1e9) / _DEPTH_BIN_M, 0, 255).astype(np.uint8))
        el = np.arcsin(np.clip(rays[..., 2] / np.linalg.norm(rays, axis=-1), -1, 1))
        out["sky"].append(~ground)
        out["el"].append(np.maximum(el, 0.0))
        out["elb"].append(np.clip(np.maximum(el, 0) / (np.pi / 2) * (_EL_BINS - 1), 0, _EL_BINS - 1).astype(np.uint8))
        out["az"].append((np.degrees(np.arctan2(rays[..., 1], rays[..., 0])) % 360).astype(np.int16) % 360)
    cat = {k: np.concatenate(v, axis=0) for k, v in out.items()}
    gx = cat["gx"].astype(np.float32)
    sky_idx = np.flatnonzero(cat["sky"])
    return RigGeometry(
        image_size=(height, width), n_cams=len(intrinsics), scale=scale, small_size=(h, w), gx=gx,
        gy=cat["gy"].astype(np.float32), gx2=gx * gx, gx3=gx * gx * gx, fp_l=cat["fpl"].astype(np.float32),
        fp_s=cat["fps"].astype(np.float32), depth_bin=cat["db"], sky=cat["sky"], sky_idx=sky_idx,
        sky_el_bin=cat["elb"].ravel()[sky_idx].astype(np.intp), sky_el=cat["el"].ravel()[sky_idx].astype(np.float32),
        sky_az=cat["az"].ravel()[sky_idx].astype(np.intp),
    )


@cache
def _ground_texture() -> np.ndarray:
    """(512 * 512,) multiplicative asphalt/verge texture around 1.0, 6 texels per metre, tiling every ~85 m.

    Periodic and fixed for reproducibility; smoothed over ~2 texels so near the camera it reads as surface
    blotches rather than squares.
    """
    rng = np.random.default_rng(1234)
    tex = gaussian_filter(rng.normal(0, 1, (512, 512)), 2.0, mode="wrap")
    return (tex / tex.std() * 0.05 + 1.0).astype(np.float32).ravel()


def render_ground_and_sky(scene: Scene, t: float, geo: RigGeometry, images: np.ndarray,
                          marking_mask: np.ndarray | None = None, surface_mask: np.ndarray | None = None) -> None:
    """Shade ground and sky of all cameras into ``images`` (N, H, W, 3) uint8, in place.

    Optionally writes ``marking_mask`` (N, H, W) uint8 = 1 + lane type where paint covers more than half of a
    pixel, and ``surface_mask`` (N, H, W) uint8 = 1 on the paved road (for label/render agreement tests).
    """
    light = scene.lighting
    c0, c1, c2, c3 = (float(v) for v in scene.road_coeffs(t))
    # Lateral offset from the centre line and position along the road, per pixel.
    l = cv2.addWeighted(geo.gx, -c1, geo.gx2, -c2, -c0)
    l = cv2.scaleAdd(geo.gx3, -c3, l)
    l += geo.gy
    s = geo.gx + np.float32(scene.ego_speed * t)

    # Surface bands across the road: roadside | sidewalk/verge | kerb | road | kerb | sidewalk/verge | roadside.
    ground_light = light.ambient + light.diffuse * max(light.sun_dir[2], 0.0)
    lo, hi, sw = scene.road_lo, scene.road_hi, scene.sidewalk
    breaks = np.array([lo - sw, lo - 0.15, lo, hi, hi + 0.15, hi + sw], dtype=np.float32)
    side = np.array([165.0, 162, 155]) if scene.urban else scene.roadside * 1.08 + 6
    palette = lit(np.stack([scene.roadside, side, scene.curb_color, scene.asphalt, scene.curb_color, side,
                            scene.roadside]), scene, ground_light).astype(np.float32)
    band = np.searchsorted(breaks, l)  # (N*h, w)
    tex_idx = (s * 6.0).astype(np.int32) & 511
    tex_idx <<= 9
    tex_idx |= (l * 6.0).astype(np.int32) & 511
    # Texture and haze fold into one multiply-add per channel: c = palette[band] * tex * (1 - a) + haze * a.
    haze_lut = haze_alpha((np.arange(256) + 0.5) * _DEPTH_BIN_M, light.visibility_m).astype(np.float32)
    a = haze_lut.take(geo.depth_bin)
    gain = _ground_texture().take(tex_idx)
    gain *= 1.0 - a
    haze_col = lit(light.haze_color, scene, 1.0)
    planes = []
    for ch in range(3):  # planar float32 channels: OpenCV's arithmetic is SIMD and needs no broadcasting
        plane = palette[:, ch].take(band)
        cv2.multiply(plane, gain, dst=plane)
        cv2.scaleAdd(a, float(haze_col[ch]), plane, dst=plane)
        planes.append(plane)

    mtype = np.zeros(l.shape, np.uint8) if marking_mask is not None else None
    # Paint is hazed like the ground under it; retro-reflective paint stays bright in headlights.
    _paint_lines(scene, l, s, geo, planes, a, haze_col, max(ground_light, 0.75), mtype)

    # Sky: gradient by elevation, a distant skyline silhouette, haze towards the horizon.
    el = np.linspace(0, np.pi / 2, _EL_BINS)
    frac = np.clip(el / 0.6, 0, 1) ** 0.7
    sky_lut = light.sky_horizon[None] * (1 - frac[:, None]) + light.sky_zenith[None] * frac[:, None]
    hz = np.exp(-el / 0.05)[:, None] * (1.0 - np.exp(-3000.0 / light.visibility_m))
    sky_lut = (sky_lut * (1 - hz) + light.haze_color[None] * hz) * light.tint
    far = np.asarray(scene.roadside if not scene.urban else [120.0, 122, 128]) * 0.6 * ground_light * light.tint
    a_far = haze_alpha(1500.0, light.visibility_m)
    far_col = far * (1 - a_far) + light.haze_color * light.tint * a_far
    sky_lut = np.concatenate([sky_lut, far_col[None]]).astype(np.float32)  # last entry: skyline silhouette
    sky_bin = np.where(geo.sky_el < scene.skyline.astype(np.float32).take(geo.sky_az), _EL_BINS, geo.sky_el_bin)
    for ch in range(3):
        planes[ch].ravel()[geo.sky_idx] = sky_lut[:, ch].take(sky_bin)

    small = cv2.merge([cv2.convertScaleAbs(p) for p in planes])  # saturating float -> uint8, (N*h, w, 3)
    h, w = geo.small_size
    height, width = geo.image_size
    # Masks: INTER_NEAREST_EXACT centres each low-res pixel where INTER_LINEAR does (INTER_NEAREST shifts it by half
    # a pixel unless the size is a multiple of the scale; for multiples the two are the same).
    for c in range(geo.n_cams):
        cv2.resize(small[c * h:(c + 1) * h], (width, height), dst=images[c], interpolation=cv2.INTER_LINEAR)
        if mtype is not None:
            marking_mask[c] = cv2.resize(mtype[c * h:(c + 1) * h], (width, height),
                                         interpolation=cv2.INTER_NEAREST_EXACT)
        if surface_mask is not None:
            road = ((band[c * h:(c + 1) * h] == 3) & ~geo.sky[c * h:(c + 1) * h]).astype(np.uint8)
            surface_mask[c] = cv2.resize(road, (width, height), interpolation=cv2.INTER_NEAREST_EXACT)


def _paint_lines(scene: Scene, l: np.ndarray, s: np.ndarray, geo: RigGeometry, planes: list[np.ndarray],
                 haze: np.ndarray, haze_col: np.ndarray, paint_light: float, mtype: np.ndarray | None) -> None:
    """Blend lane-line paint into ``color``. Only pixels within 0.4 m of a line are touched."""
    w = scene.lane_width
    painted = [m for m in scene.markings if m.painted]
    # Lines at integer multiples of the lane width are found with one rounding; the others (kerb lines) are few.
    regular = [m for m in painted if abs(m.l / w - round(m.l / w)) < 1e-6]
    irregular = [m for m in painted if m not in regular]
    lf, sf = l.ravel(), s.ravel()
    if regular:
        ks = np.array([round(m.l / w) for m in regular])
        kmin = int(ks.min())
        exists = np.zeros(int(ks.max()) - kmin + 1, dtype=bool)
        exists[ks - kmin] = True
        kf = np.rint(lf * np.float32(1.0 / w))
        d = np.abs(lf - kf * np.float32(w))
        idx = np.flatnonzero(d < 0.4)
        ki = kf[idx].astype(np.int64) - kmin
        ok = (ki >= 0) & (ki < len(exists))
        ok[ok] = exists[ki[ok]]
        idx, ki = idx[ok], ki[ok]
        _blend(scene, {int(k) - kmin: m for k, m in zip(ks, regular)}, ki, idx, d[idx], sf, geo, planes, haze,
               haze_col, paint_light, mtype)
    for m in irregular:
        d = np.abs(lf - np.float32(m.l))
        idx = np.flatnonzero(d < 0.4)
        _blend(scene, {0: m}, np.zeros(len(idx), dtype=np.int64), idx, d[idx], sf, geo, planes, haze, haze_col,
               paint_light, mtype)


def _blend(scene: Scene, table: dict[int, Marking], ki: np.ndarray, idx: np.ndarray, dist: np.ndarray,
           s: np.ndarray, geo: RigGeometry, planes: list[np.ndarray], haze: np.ndarray, haze_col: np.ndarray,
           paint_light: float, mtype: np.ndarray | None) -> None:
    """Blend the paint of lines ``table[ki]`` into flat pixels ``idx`` at distance ``dist`` from their line."""
    n = max(table) + 1
    half, off, dash, period, phase, wear = (np.zeros(n, np.float32) for _ in range(6))
    period[:] = 1.0
    paint = np.zeros((n, 3), np.float32)
    types = np.zeros(n, np.uint8)
    for k, m in table.items():
        half[k], off[k], wear[k], types[k] = m.half_width, m.double_offset, m.wear, m.type + 1
        if m.dash:
            dash[k], period[k], phase[k] = m.dash, m.dash + m.gap, m.phase
        paint[k] = lit(np.asarray(m.color), scene, paint_light)
    o = off[ki]
    dd = np.where(o > 0, np.abs(dist - o), dist)  # double lines: distance to the nearer of the pair
    cov = np.clip((half[ki] - dd) / geo.fp_l.ravel()[idx] + 0.5, 0.0, 1.0)
    j = np.flatnonzero(dash[ki] > 0)
    if len(j):
        # Box-filter the dash square wave over the pixel's footprint along the road.
        kj = ki[j]
        fs = geo.fp_s.ravel()[idx[j]]
        u = s[idx[j]] - phase[kj]
        p, dl = period[kj], dash[kj]

        def integral(v: np.ndarray) -> np.ndarray:  # length of paint in [0, v]
            return np.floor(v / p) * dl + np.minimum(np.mod(v, p), dl)

        cov[j] *= np.clip((integral(u + fs / 2) - integral(u - fs / 2)) / fs, 0.0, 1.0)
    alpha = cov * wear[ki]
    a_h = haze.ravel()[idx]
    for ch in range(3):
        flat = planes[ch].ravel()
        hazed_paint = paint[ki, ch] * (1 - a_h) + haze_col[ch] * a_h
        flat[idx] += (hazed_paint - flat[idx]) * alpha
    if mtype is not None:
        # A pixel shows the line if paint covers most of it or the line's centre crosses it (thin, far lines), and
        # the pixel centre lies on a dash.
        hit = (cov > 0.5) | (dd < geo.fp_l.ravel()[idx] * geo.scale / 2)
        if len(j):
            hit[j] &= np.mod(u, p) < dl
        mtype.ravel()[idx[hit]] = types[ki[hit]]
