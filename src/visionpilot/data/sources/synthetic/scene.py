"""Scene sampling for the synthetic world: one drive = a road, traffic, scenery and weather over time.

Road model. Everything is placed in road coordinates ``(s, l)``: ``s`` the distance along the road, ``l`` the
lateral offset from the road's centre line (positive to the left, like ego y). In the ego frame at time ``t`` the
centre line is the cubic ``y_c(x) = c0 + c1 x + c2 x^2 + c3 x^3`` (the lane model of production lane detectors:
offset, heading, curvature/2, curvature rate/6), and a road point maps to ``x = s - s_ego(t)``,
``y = y_c(x) + l``. The same mapping places actors, lane lines and rendered pixels, so labels and pixels agree
exactly by construction. Curvature drifts along the road (a clothoid), so curves come and go during a scene.

Traffic. Vehicles sit in lane "slots" that move at one speed per slot (so slot mates never collide); two-wheelers
also ride shoulders; pedestrians walk sidewalks or verges; cones line road works; parked cars stand at the kerb.
Vehicles in the ego's direction travel along +s, oncoming ones along -s, on the side of the centre line the
region's driving side dictates.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from visionpilot.data.regions import Region
from visionpilot.data.sources.synthetic.plates import sample_plates
from visionpilot.data.sources.synthetic.styles import RegionStyle
from visionpilot.data.vocab import LANE_TYPES, OBJECT_CLASSES

CLASS = {name: i for i, name in enumerate(OBJECT_CLASSES)}
LANE = {name: i for i, name in enumerate(LANE_TYPES)}

# Prop kinds: unlabelled scenery that still occludes.
PROP_TREE, PROP_POLE_SIGN, PROP_BUILDING, PROP_LAMP = 0, 1, 2, 3

#: Range of the world kept around the ego (metres along x).
X_BEHIND, X_AHEAD = -70.0, 130.0


@dataclass
class Marking:
    """One painted (or physical, for road edges) lane line at a constant lateral offset ``l`` from the centre line."""

    l: float
    type: int
    half_width: float = 0.075
    double_offset: float = 0.0  # >0: two lines at l +- double_offset
    dash: float = 0.0  # 0 = solid
    gap: float = 0.0
    phase: float = 0.0
    color: tuple[float, float, float] = (235.0, 235.0, 230.0)
    wear: float = 1.0
    painted: bool = True  # road_edge lines are the surface boundary, not paint


@dataclass
class Actors:
    """Movers and static road users of a scene, as parallel arrays (A entries)."""

    cls: np.ndarray  # (A,) class index
    size: np.ndarray  # (A, 3) length, width, height
    l: np.ndarray  # (A,) lateral offset (may change for crossing pedestrians: l0 + lat_speed * t)
    lat_speed: np.ndarray  # (A,) m/s across the road
    s0: np.ndarray  # (A,) road position at t=0
    speed: np.ndarray  # (A,) m/s along s (negative = towards -s)
    heading_offset: np.ndarray  # (A,) radians added to the road tangent (pi for oncoming)
    color: np.ndarray  # (A, 3) main colour
    color2: np.ndarray  # (A, 3) secondary colour (rider/clothes/cargo)
    variant: np.ndarray  # (A,) shape variant (e.g. double-decker bus, pick-up)
    track_id: np.ndarray  # (A,)


@dataclass
class Props:
    kind: np.ndarray  # (Q,)
    l: np.ndarray
    s: np.ndarray
    size: np.ndarray  # (Q, 3)
    color: np.ndarray  # (Q, 3)
    color2: np.ndarray


@dataclass
class Lighting:
    time_of_day: str
    sun_dir: np.ndarray  # (3,) unit vector towards the sun (ego frame at t=0, world-fixed approx.)
    ambient: float
    diffuse: float
    tint: np.ndarray  # (3,) per-channel gain applied to the final image
    sky_horizon: np.ndarray  # (3,)
    sky_zenith: np.ndarray  # (3,)
    haze_color: np.ndarray  # (3,)
    visibility_m: float  # meteorological visibility: haze reaches 95% at this distance
    blur_sigma: float
    lights_on: bool


@dataclass
class Scene:
    """Everything about one drive that does not change with time, plus the laws of motion."""

    region: Region
    style: RegionStyle
    seed: int
    index: int
    lane_width: float
    n_ego: int  # lanes in the ego's direction
    n_opp: int  # oncoming lanes
    side: float  # +1: ego lanes at l > 0 (left-hand traffic), -1: l < 0 (right-hand traffic)
    ego_lane: int  # 0 = next to the centre line
    ego_speed: float
    road_lo: float  # lateral limits of the paved surface (road_edge lines)
    road_hi: float
    sidewalk: float  # sidewalk (urban) or verge band width beyond each road edge
    urban: bool
    markings: list[Marking]
    asphalt: np.ndarray  # (3,)
    shoulder_color: np.ndarray
    roadside: np.ndarray
    curb_color: np.ndarray
    kappa0: float  # curvature at s=0 (1/m)
    kappa_rate: float  # d kappa / d s (1/m^2)
    kappa_max: float
    wobble_amp: float  # lateral wobble of the ego in its lane (m)
    wobble_period: float  # s
    actors: Actors
    props: Props
    lighting: Lighting
    latlon0: tuple[float, float]
    heading0: float  # map heading of the road at s=0 (radians, east = 0, counter-clockwise)
    skyline: np.ndarray = field(default_factory=lambda: np.zeros(360))  # elevation (rad) of distant scenery per deg
    plates: list[str] = field(default_factory=list)  # licence plate text per actor (row of `actors`)

    @property
    def l_ego(self) -> float:
        return self.side * (self.ego_lane + 0.5) * self.lane_width

    def road_coeffs(self, t: float) -> np.ndarray:
        """(4,) cubic coefficients of the centre line in the ego frame at time t."""
        s_ego = self.ego_speed * t
        kappa = float(np.clip(self.kappa0 + self.kappa_rate * s_ego, -self.kappa_max, self.kappa_max))
        kappa_rate = self.kappa_rate if abs(kappa) < self.kappa_max else 0.0
        phase = 2 * np.pi * t / self.wobble_period
        wobble = self.wobble_amp * np.sin(phase)
        # Heading of the ego relative to the road follows the wobble's derivative (small-angle).
        heading = self.wobble_amp * 2 * np.pi / self.wobble_period * np.cos(phase) / max(self.ego_speed, 1.0)
        return np.array([-(self.l_ego + wobble), -heading, kappa / 2.0, kappa_rate / 6.0])

    def latlon(self, t: float) -> tuple[float, float]:
        """Approximate map position of the ego at time t (equirectangular; fine over a few km)."""
        d = self.ego_speed * t
        lat0, lon0 = self.latlon0
        dn, de = d * np.sin(self.heading0), d * np.cos(self.heading0)
        return (lat0 + dn / 111_320.0, lon0 + de / (111_320.0 * np.cos(np.deg2rad(lat0))))


def stable_seed(*parts: int | str) -> list[int]:
    """A process-independent seed list (Python's hash() is salted per process)."""
    return [zlib.crc32(p.encode()) if isinstance(p, str) else int(p) for p in parts]


def _choice(rng: np.random.Generator, weights: dict, size: int | None = None):
    keys = list(weights)
    p = np.asarray([weights[k] for k in keys], dtype=np.float64)
    idx = rng.choice(len(keys), size=size, p=p / p.sum())
    return keys[idx] if size is None else [keys[i] for i in np.atleast_1d(idx)]


def _jitter_color(rng: np.random.Generator, color, amount: float = 8.0) -> np.ndarray:
    return np.clip(np.asarray(color, dtype=np.float64) + rng.normal(0, amount, 3), 0, 255)


_PAINT = {"white": (238.0, 238.0, 232.0), "yellow": (235.0, 180.0, 30.0)}


def _marking(region: Region, type_name: str, l: float, wear: float, rng: np.random.Generator) -> Marking:
    color = _PAINT["yellow"] if "yellow" in type_name else _PAINT["white"]
    dash, gap = (0.0, 0.0)
    if type_name.endswith("dashed"):
        dash, gap = region.dash_m
    return Marking(
        l=l,
        type=LANE[type_name],
        half_width=0.075 if type_name != "double_yellow" else 0.06,
        double_offset=0.12 if type_name == "double_yellow" else 0.0,
        dash=dash,
        gap=gap,
        phase=float(rng.uniform(0, dash + gap)) if dash else 0.0,
        color=color,
        wear=wear,
    )


def _sample_lighting(rng: np.random.Generator, style: RegionStyle) -> Lighting:
    tod = _choice(rng, style.time_of_day)
    azimuth = rng.uniform(-np.pi, np.pi)
    hazy = rng.random() < style.haze_prob
    if tod == "day":
        elev = rng.uniform(0.5, 1.2)
        ambient, diffuse, tint = 0.55, 0.55, np.array([1.0, 1.0, 1.0])
        horizon, zenith = np.array([200.0, 215, 230]), np.array([95.0, 140, 210])
    elif tod == "overcast":
        elev = rng.uniform(0.6, 1.2)
        ambient, diffuse, tint = 0.8, 0.15, np.array([0.92, 0.93, 0.95])
        horizon, zenith = np.array([190.0, 192, 195]), np.array([150.0, 155, 162])
    elif tod == "dusk":
        elev = rng.uniform(0.05, 0.25)
        ambient, diffuse, tint = 0.45, 0.5, np.array([1.0, 0.82, 0.65])
        horizon, zenith = np.array([235.0, 160, 100]), np.array([70.0, 80, 140])
    else:  # night: street lights and retro-reflective paint keep the scene readable
        elev = 0.8
        ambient, diffuse, tint = 0.38, 0.1, np.array([0.75, 0.75, 0.85])
        horizon, zenith = np.array([40.0, 45, 60]), np.array([8.0, 10, 20])
    visibility = rng.uniform(120.0, 400.0) if hazy else rng.uniform(1500.0, 4000.0)
    haze = (horizon * 0.6 + np.array([150.0, 150, 150]) * 0.4) if hazy else horizon
    if hazy and style.region.code in ("cn", "in"):
        haze = haze * 0.7 + np.array([190.0, 175, 140]) * 0.3  # yellowish smog
    sun = np.array([np.cos(elev) * np.cos(azimuth), np.cos(elev) * np.sin(azimuth), np.sin(elev)])
    return Lighting(
        time_of_day=tod, sun_dir=sun, ambient=ambient, diffuse=diffuse, tint=tint, sky_horizon=horizon,
        sky_zenith=zenith, haze_color=haze, visibility_m=float(visibility),
        blur_sigma=float(rng.choice([0.0, 0.6, 0.9, 1.3], p=[0.35, 0.3, 0.25, 0.1])),
        lights_on=tod in ("night", "dusk"),
    )


def _vehicle_size(rng: np.random.Generator, cls: str, style: RegionStyle, double_decker: bool) -> np.ndarray:
    scale = style.vehicle_scale
    if cls == "car":
        size = np.array([rng.uniform(3.9, 4.9) * scale, rng.uniform(1.7, 1.9) * min(scale, 1.05),
                         rng.uniform(1.4, 1.75) * (1.05 if scale > 1.05 else 1.0)])
        if scale < 0.9 and rng.random() < 0.5:  # kei car: short, narrow, tall
            size = np.array([3.4, 1.48, rng.uniform(1.6, 1.75)])
        return size
    if cls == "truck":
        return np.array([rng.uniform(6.0, 10.0), rng.uniform(2.3, 2.5), rng.uniform(2.8, 3.6)])
    if cls == "bus":
        return np.array([rng.uniform(10.5, 12.0), 2.55, 4.4 if double_decker else rng.uniform(3.0, 3.3)])
    if cls == "two_wheeler":
        return np.array([rng.uniform(1.8, 2.2), rng.uniform(0.65, 0.8), rng.uniform(1.45, 1.7)])
    if cls == "pedestrian":
        return np.array([rng.uniform(0.45, 0.65), rng.uniform(0.5, 0.7), rng.uniform(1.5, 1.9)])
    return np.array([0.4, 0.4, rng.uniform(0.55, 0.75)])  # traffic cone


class _ActorList:
    """Accumulates actors before freezing them into arrays."""

    def __init__(self) -> None:
        self.rows: list[tuple] = []

    def add(self, cls: str, size, l, s0, speed, heading, color, color2, variant=0, lat_speed=0.0) -> None:
        self.rows.append((CLASS[cls], size, l, lat_speed, s0, speed, heading, color, color2, variant))

    def freeze(self) -> Actors:
        if not self.rows:
            z = np.zeros(0)
            return Actors(z.astype(int), np.zeros((0, 3)), z, z, z, z, z, np.zeros((0, 3)), np.zeros((0, 3)),
                          z.astype(int), z.astype(int))
        cols = list(zip(*self.rows))
        n = len(self.rows)
        return Actors(
            cls=np.asarray(cols[0], dtype=np.int64), size=np.asarray(cols[1], dtype=np.float64),
            l=np.asarray(cols[2], dtype=np.float64), lat_speed=np.asarray(cols[3], dtype=np.float64),
            s0=np.asarray(cols[4], dtype=np.float64), speed=np.asarray(cols[5], dtype=np.float64),
            heading_offset=np.asarray(cols[6], dtype=np.float64), color=np.asarray(cols[7], dtype=np.float64),
            color2=np.asarray(cols[8], dtype=np.float64), variant=np.asarray(cols[9], dtype=np.int64),
            track_id=np.arange(n, dtype=np.int64),
        )


def sample_scene(region: Region, style: RegionStyle, seed: int, index: int, duration_s: float) -> Scene:
    """Sample one scene deterministically from (seed, region, index)."""
    rng = np.random.default_rng(stable_seed(seed, region.code, index))
    lane_w = float(np.clip(rng.normal(region.lane_width_m, style.lane_width_jitter), 2.8, 4.0))
    n_ego = int(_choice(rng, style.lanes_per_direction))
    n_opp = int(max(1, n_ego - (rng.random() < 0.3)))
    side = 1.0 if region.left_hand_traffic else -1.0
    ego_lane = int(rng.integers(0, n_ego))
    ego_speed = float(rng.uniform(*style.speed_mps))
    wear = float(rng.uniform(*style.marking_wear))
    urban = bool(rng.random() < style.urban_prob)

    # Lateral layout (l grows to the left). Ego side is `side`; oncoming side is `-side`.
    shoulder_e = float(rng.uniform(*style.shoulder_m))
    shoulder_o = float(rng.uniform(*style.shoulder_m))
    edge_painted = rng.random() < style.edge_line_prob
    ego_edge = side * n_ego * lane_w
    opp_edge = -side * n_opp * lane_w
    markings: list[Marking] = []
    centre = region.centre_lines[int(rng.choice(len(region.centre_lines),
                                                p=np.asarray(style.centre_line_weights) / sum(style.centre_line_weights)))]
    markings.append(_marking(region, centre, 0.0, wear, rng))
    for k in range(1, n_ego):
        markings.append(_marking(region, region.divider, side * k * lane_w, wear, rng))
    for k in range(1, n_opp):
        markings.append(_marking(region, region.divider, -side * k * lane_w, wear, rng))
    if edge_painted and region.edge_line:
        markings.append(_marking(region, region.edge_line, ego_edge, wear, rng))
        markings.append(_marking(region, region.edge_line, opp_edge, wear, rng))
    kerb = bool(region.kerb_lines) and rng.random() < style.kerb_line_prob
    # Cars park at the nearside kerb where no restriction lines are painted, in a strip wide enough for a car
    # (UK parking bays are 1.8-2.4 m): a narrow shoulder is widened, so every style's parking probability holds.
    parked = not kerb and rng.random() < style.parked_prob
    if parked:
        shoulder_e = max(shoulder_e, float(rng.uniform(2.0, 2.6)))
    road_ego = ego_edge + side * shoulder_e
    road_opp = opp_edge - side * shoulder_o
    if kerb:
        kerb_type = region.kerb_lines[int(rng.integers(0, len(region.kerb_lines)))]
        # Kerbside restriction lines run 0.25 m inside the kerb on the ego's (nearside) edge.
        markings.append(_marking(region, kerb_type, road_ego - side * 0.3, wear, rng))
    for l_edge in (road_ego, road_opp):
        markings.append(Marking(l=l_edge, type=LANE["road_edge"], painted=False))
    markings.sort(key=lambda m: m.l)

    asphalt = np.asarray(style.asphalt[int(rng.integers(0, len(style.asphalt)))], dtype=np.float64)
    if rng.random() < style.concrete_prob:
        asphalt = np.array([150.0, 150, 145])
    asphalt = _jitter_color(rng, asphalt, 4.0)
    roadside = _jitter_color(rng, style.roadside[int(rng.integers(0, len(style.roadside)))], 8.0)
    curb = np.array([175.0, 175, 170]) if urban else roadside * 0.85 + asphalt * 0.15

    kappa_max = 1.0 / 150.0
    kappa0 = float(rng.choice([0.0, rng.uniform(-1, 1) * kappa_max], p=[0.35, 0.65]))
    kappa_rate = float(rng.uniform(-1, 1) * 2e-5)
    lighting = _sample_lighting(rng, style)

    # --- traffic -------------------------------------------------------------------------------------------------
    actors = _ActorList()
    travel = ego_speed * duration_s
    s_lo, s_hi = X_BEHIND - 40.0, X_AHEAD + 40.0  # spawn range at t=0 around the ego
    colors = style.car_colors
    density = float(rng.uniform(*style.traffic_density))

    def vehicle(cls: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        dd = cls == "bus" and rng.random() < style.double_decker_prob
        size = _vehicle_size(rng, cls, style, dd)
        color = _jitter_color(rng, _choice(rng, colors), 6.0)
        if cls == "bus":
            color = _jitter_color(rng, [(200, 30, 30), (240, 240, 240), (30, 110, 60), (230, 170, 20)][rng.integers(4)])
        if cls == "truck":
            color = _jitter_color(rng, [(235, 235, 235), (40, 70, 140), (200, 40, 30), (60, 60, 60)][rng.integers(4)])
        cargo = _jitter_color(rng, [(220, 220, 220), (160, 160, 160), (120, 90, 60)][rng.integers(3)])
        if cls == "two_wheeler":
            cargo = _jitter_color(rng, [(30, 30, 30), (180, 40, 40), (40, 60, 140), (200, 200, 200)][rng.integers(4)])
        return size, color, cargo, int(dd)

    def fill_slot(l: float, speed: float, heading: float, s_from: float, s_to: float, mix: dict, gap_scale: float,
                  keep_clear: tuple[float, float] | None = None) -> None:
        """Place vehicles along one slot; they share `speed`, so they never catch up with each other."""
        mean_gap = 100.0 / max(density * gap_scale, 0.1)
        s = s_from + rng.exponential(mean_gap * 0.5)
        while s < s_to:
            cls = _choice(rng, mix)
            size, color, cargo, variant = vehicle(cls)
            half = size[0] / 2
            centre = s + half
            if keep_clear is None or not (keep_clear[0] - half < centre < keep_clear[1] + half):
                actors.add(cls, size, l + rng.normal(0, 0.12), centre, speed, heading, color, cargo, variant)
            s = centre + half + 4.0 + rng.exponential(mean_gap)

    lane_mix = dict(style.road_users)
    for k in range(n_ego):
        l_lane = side * (k + 0.5) * lane_w
        if k == ego_lane:
            # The ego's own lane: traffic keeps the ego's speed; the ego's footprint (-1..5 m) stays clear.
            fill_slot(l_lane, ego_speed, 0.0, s_lo, s_hi, lane_mix, 1.0, keep_clear=(-6.0, 9.0))
        else:
            v = ego_speed + rng.normal(0, 2.0)
            fill_slot(l_lane, v, 0.0, s_lo - max(0.0, v - ego_speed) * duration_s,
                      s_hi + max(0.0, ego_speed - v) * duration_s, lane_mix, 1.0)
    for k in range(n_opp):
        l_lane = -side * (k + 0.5) * lane_w
        v = -float(rng.uniform(*style.speed_mps))
        # Oncoming traffic sweeps past: spawn over everything the scene will bring into range.
        fill_slot(l_lane, v, np.pi, s_lo, s_hi + travel - v * duration_s, lane_mix, 0.8)
    # Two-wheelers on the shoulders (filtering past traffic, as in IN/CN); not where cars park.
    if style.shoulder_two_wheelers > 0:
        for edge, shoulder, direction in ((ego_edge, shoulder_e, 1.0), (opp_edge, shoulder_o, -1.0)):
            if shoulder < 0.9 or (parked and direction > 0):
                continue
            l_tw = edge + np.sign(edge if edge else side) * min(shoulder / 2, 0.7)
            v = direction * float(rng.uniform(4.0, 9.0))
            n = rng.poisson(style.shoulder_two_wheelers * (s_hi - s_lo + abs(v) * duration_s) / 100.0)
            ss = np.sort(rng.uniform(s_lo - 80, s_hi + travel + abs(v) * duration_s, n))
            last = -np.inf
            for s in ss:
                if s - last < 3.0:
                    continue
                last = s
                size, color, cargo, _ = vehicle("two_wheeler")
                actors.add("two_wheeler", size, l_tw, s, v, 0.0 if direction > 0 else np.pi, color, cargo)
    # Parked cars at the nearside kerb, on the shoulder if it is wide enough.
    if parked:
        l_park = road_ego - side * 1.0
        s = s_lo + rng.uniform(0, 10)
        while s < s_hi + travel:
            size, color, cargo, variant = vehicle("car")
            if rng.random() < 0.8:
                actors.add("car", size, l_park, s + size[0] / 2, 0.0, 0.0 if rng.random() < 0.8 else np.pi, color,
                           cargo, variant)
            s += size[0] + rng.uniform(1.0, 8.0)
    # Pedestrians walk along both sides, beyond the road edge; a few stand at the kerb.
    walk_lo, walk_hi = s_lo + 0.0, s_hi + travel
    ped_rate = float(rng.uniform(*style.pedestrians_per_100m)) * (1.0 if urban else 0.4)
    sidewalk = float(rng.uniform(2.0, 4.0)) if urban else float(rng.uniform(1.5, 3.0))
    for edge in (road_ego, road_opp):
        out = np.sign(edge)
        n = rng.poisson(ped_rate * (walk_hi - walk_lo) / 100.0)
        for _ in range(n):
            size = _vehicle_size(rng, "pedestrian", style, False)
            l_p = edge + out * rng.uniform(1.0, max(sidewalk - 0.3, 1.1))
            v = float(rng.choice([-1, 1]) * rng.uniform(0.9, 1.6) * (rng.random() > 0.15))
            shirt = rng.uniform(20, 235, 3)
            trousers = rng.uniform(20, 120, 3)
            actors.add("pedestrian", size, l_p, rng.uniform(walk_lo, walk_hi), v,
                       0.0 if v >= 0 else np.pi, shirt, trousers)
    # Road works: a row of cones along a lane line or the shoulder.
    if rng.random() < style.cone_prob:
        # On a lane or edge line (never the centre line, never a kerb line where cars may park).
        limit = max(abs(ego_edge), abs(opp_edge)) + 1e-6
        cands = [m.l for m in markings if m.type != LANE["road_edge"] and 1e-6 < abs(m.l) <= limit] or [ego_edge]
        l_c = cands[int(rng.integers(0, len(cands)))]
        s_c = rng.uniform(X_BEHIND + 20, X_AHEAD) + travel * rng.uniform(0, 0.7)
        for j in range(int(rng.integers(5, 16))):
            size = _vehicle_size(rng, "traffic_cone", style, False)
            actors.add("traffic_cone", size, l_c + rng.normal(0, 0.05), s_c + j * rng.uniform(2.5, 5.0), 0.0, 0.0,
                       np.array([240.0, 90, 20]), np.array([240.0, 240, 240]))

    # --- scenery -------------------------------------------------------------------------------------------------
    pk, pl, ps, psz, pc, pc2 = [], [], [], [], [], []
    span = (X_BEHIND - 60, X_AHEAD + travel + 60)
    for edge in (road_ego, road_opp):
        out = np.sign(edge)
        if urban:
            s = span[0]
            while s < span[1]:
                w = rng.uniform(8, 30)
                depth = rng.uniform(8, 20)
                height = rng.uniform(6, 35)
                pk.append(PROP_BUILDING)
                pl.append(edge + out * (sidewalk + rng.uniform(0.5, 4) + depth / 2))
                ps.append(s + w / 2)
                psz.append([w, depth, height])
                base = rng.uniform(90, 210)
                pc.append(np.clip(base + rng.normal(0, 20, 3), 30, 240))
                pc2.append(np.array([60.0, 75, 90]))
                s += w + rng.uniform(0, 6)
        n_trees = rng.poisson((0.5 if urban else 1.6) * (span[1] - span[0]) / 30)
        for _ in range(n_trees):
            h = rng.uniform(4, 12)
            pk.append(PROP_TREE)
            pl.append(edge + out * (sidewalk + rng.uniform(0.5, 2.0 if urban else 25.0)))
            ps.append(rng.uniform(*span))
            psz.append([h * 0.45, h * 0.45, h])
            pc.append(np.array([90.0, 65, 40]))
            pc2.append(np.clip(np.array([50.0, 95, 40]) + rng.normal(0, 15, 3), 0, 255))
    # Signs and lamps on the nearside (the side traffic keeps to), as in the region.
    n_signs = rng.poisson((span[1] - span[0]) / 80)
    for _ in range(n_signs):
        pk.append(PROP_POLE_SIGN)
        pl.append(road_ego + np.sign(road_ego) * rng.uniform(0.4, 1.2))
        ps.append(rng.uniform(*span))
        psz.append([0.1, 0.9, rng.uniform(2.2, 3.0)])
        pc.append(np.asarray(style.sign_colors[int(rng.integers(0, len(style.sign_colors)))], dtype=np.float64))
        pc2.append(np.array([245.0, 245, 245]))
    if urban or rng.random() < 0.4:
        s = span[0] + rng.uniform(0, 30)
        spacing = rng.uniform(25, 45)
        while s < span[1]:
            for edge in (road_ego, road_opp):
                pk.append(PROP_LAMP)
                pl.append(edge + np.sign(edge) * 0.5)
                ps.append(s)
                psz.append([0.15, 0.15, 8.0])
                pc.append(np.array([120.0, 120, 125]))
                pc2.append(np.array([255.0, 240, 200]))
            s += spacing
    props = Props(np.asarray(pk, dtype=np.int64), np.asarray(pl, dtype=np.float64), np.asarray(ps, dtype=np.float64),
                  np.asarray(psz, dtype=np.float64).reshape(-1, 3), np.asarray(pc, dtype=np.float64).reshape(-1, 3),
                  np.asarray(pc2, dtype=np.float64).reshape(-1, 3))

    # Distant skyline: smooth noise over azimuth (hills, tree lines, city blocks).
    knots = rng.uniform(0.0, 0.08 if urban else 0.04, 25)
    skyline = np.interp(np.arange(360), np.linspace(0, 360, 25), knots)

    lat0, lon0 = style.city_latlon
    latlon0 = (lat0 + rng.uniform(-0.08, 0.08), lon0 + rng.uniform(-0.08, 0.08))
    frozen = actors.freeze()
    # Plates from their own stream, so adding them left every other draw of the scene (and its pixels) unchanged.
    plates = sample_plates(np.random.default_rng(stable_seed(seed, region.code, index, "plates")), region.code,
                           len(frozen.cls))
    return Scene(
        region=region, style=style, seed=seed, index=index, lane_width=lane_w, n_ego=n_ego, n_opp=n_opp, side=side,
        ego_lane=ego_lane, ego_speed=ego_speed, road_lo=min(road_ego, road_opp), road_hi=max(road_ego, road_opp),
        sidewalk=sidewalk, urban=urban, markings=markings, asphalt=asphalt,
        shoulder_color=asphalt * 0.92 + 8.0, roadside=roadside, curb_color=curb, kappa0=kappa0, kappa_rate=kappa_rate,
        kappa_max=kappa_max, wobble_amp=float(rng.uniform(0.0, 0.3)), wobble_period=float(rng.uniform(6.0, 15.0)),
        actors=frozen, props=props, lighting=lighting, latlon0=latlon0,
        heading0=float(rng.uniform(-np.pi, np.pi)), skyline=skyline, plates=plates,
    )
