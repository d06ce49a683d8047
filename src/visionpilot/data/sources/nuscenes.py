"""nuScenes v1.0 as a :class:`FrameSource`: six cameras, 3D boxes in the ego frame, map lane lines near the ego.

On disk (``root``, as the nuScenes download unpacks):

    <version>/scene.json sample.json sample_data.json calibrated_sensor.json ego_pose.json log.json
              sample_annotation.json instance.json category.json attribute.json visibility.json sensor.json
    samples/CAM_FRONT/<name>.jpg ...     key-frame images; sample_data.filename is relative to root
    maps/expansion/<location>.json       map expansion v1.3, optional (lanes; see nuscenes_map.py)

Each table is a JSON array of rows keyed by ``token``. Conventions are the devkit's: quaternions ``[w, x, y, z]``;
``sample_annotation.size = [width, length, height]``, its ``translation`` (box centre) and ``rotation`` in the
global frame; ``calibrated_sensor`` is sensor -> ego, ``ego_pose`` is ego -> global; timestamps in microseconds.

Frames: one per ``sample`` (the 2 Hz key frames). The ego frame of a frame is the ego pose of the sample's
``ref_channel`` (``LIDAR_TOP``) key-frame sample_data, as in the devkit and BEV codebases. Each camera is exposed at
a slightly different time, so its extrinsics go camera -> its own ego pose -> global -> the reference ego frame
(ego motion compensated). Intrinsics are ``calibrated_sensor.camera_intrinsic`` for the ``width`` x ``height``
image, used as published.

Labels: ``boxes_3d`` (centre, size [length, width, height], yaw of the length axis, all in the ego frame; velocity as
the devkit's ``box_velocity``, in ego axes); ``lanes_3d`` from the map expansion inside ``lane_range`` when the
location's map file exists; with ``derive_2d``, ``boxes_2d`` (hull of the projected box, clipped at the near plane and
to the image; the devkit's 2D export drops corners behind the camera instead, which differs for boxes that straddle
the camera plane) and ``lanes_2d`` (map lanes projected on flat ground). nuScenes annotates neither in 2D.
A version whose ``sample_annotation`` table is empty (``v1.0-test``: its annotations are withheld) has no box labels:
its frames carry neither ``boxes_3d`` nor ``boxes_2d`` (unknown, not empty), only the map lanes.

Classes: :data:`CATEGORY_MAP` (None = not one of our classes, ignored; an unknown name is an error). Regions from
``log.location`` (:data:`LOCATION_REGIONS`). Official splits by scene name: v1.0-mini mini_train / mini_val,
v1.0-trainval train / val, v1.0-test test.

Position (``Frame.latlon``, for restricted zones): nuScenes publishes no GPS, but each map's global frame is metres
east (x) and north (y) of a published origin (:data:`MAP_ORIGINS`, the devkit's ``scripts/export_poses.py``), so the
reference ego pose's translation gives latitude/longitude (a great-circle step from the origin; a few metres of
error across a map). Locations without a known origin (``map_origins`` adds them) give ``None``.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from visionpilot.data.frame import Boxes3D, CameraView, Frame, Lane
from visionpilot.data.regions import get_region
from visionpilot.data.sources._common import FormatError, SkipLog, check_on_error, escapes_root, read_json, read_rgb
from visionpilot.data.sources.base import FrameRef, FrameSource
from visionpilot.data.sources.nuscenes_map import MapLanes
from visionpilot.data.vocab import class_index
from visionpilot.geometry.boxes import project_box_2d
from visionpilot.geometry.frames import invert_rigid, make_transform, quaternion_to_rotation
from visionpilot.geometry.polylines import project_polylines

log = logging.getLogger(__name__)

CAMERAS: tuple[str, ...] = ("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_LEFT", "CAM_BACK",
                            "CAM_BACK_RIGHT")
TABLES: tuple[str, ...] = ("scene", "sample", "sample_data", "calibrated_sensor", "ego_pose", "log",
                           "sample_annotation", "instance", "category", "attribute", "visibility", "sensor")
LOCATION_REGIONS: dict[str, str] = {"boston-seaport": "us", "singapore-onenorth": "sg",
                                    "singapore-hollandvillage": "sg", "singapore-queenstown": "sg"}
#: Latitude/longitude of each map's origin (the devkit's REFERENCE_COORDINATES): global x points east, y north.
MAP_ORIGINS: dict[str, tuple[float, float]] = {
    "boston-seaport": (42.336849169438615, -71.05785369873047),
    "singapore-onenorth": (1.2882100868743724, 103.78475189208984),
    "singapore-hollandvillage": (1.2993652317780957, 103.78217697143555),
    "singapore-queenstown": (1.2782562240223188, 103.76741409301758),
}
_EARTH_RADIUS_M = 6_378_137.0  # as the devkit's export_poses.py
#: nuScenes category -> our class; None: ignored (as the nuScenes detection benchmark ignores them, or no class).
#: Emergency vehicles, which the benchmark ignores, are kept as what they are on the road (a police car is a car,
#: an ambulance a truck-sized vehicle): a driving model must see them; BEV mAP here counts them accordingly.
CATEGORY_MAP: dict[str, str | None] = {
    "vehicle.car": "car",
    "vehicle.emergency.police": "car",
    "vehicle.truck": "truck",
    "vehicle.trailer": "truck",
    "vehicle.construction": "truck",
    "vehicle.emergency.ambulance": "truck",
    "vehicle.bus.rigid": "bus",
    "vehicle.bus.bendy": "bus",
    "vehicle.motorcycle": "two_wheeler",  # the rider is inside the vehicle's box in nuScenes, as in our vocabulary
    "vehicle.bicycle": "two_wheeler",
    "human.pedestrian.adult": "pedestrian",
    "human.pedestrian.child": "pedestrian",
    "human.pedestrian.construction_worker": "pedestrian",
    "human.pedestrian.police_officer": "pedestrian",
    "human.pedestrian.wheelchair": None,
    "human.pedestrian.stroller": None,
    "human.pedestrian.personal_mobility": None,
    "movable_object.trafficcone": "traffic_cone",
    "movable_object.barrier": None,  # mostly long concrete / water barriers, not the small ones of traffic_cone
    "movable_object.debris": None,
    "movable_object.pushable_pullable": None,
    "static_object.bicycle_rack": None,
    "animal": None,
}
#: visibility level -> fraction visible (the middle of its band); read from each row's ``level``, not its token.
VISIBILITY_FRACTION: dict[str, float] = {"v0-40": 0.2, "v40-60": 0.5, "v60-80": 0.7, "v80-100": 0.9}
MINI_SPLITS: dict[str, frozenset[str]] = {
    "train": frozenset(f"scene-{n:04d}" for n in (61, 553, 655, 757, 796, 1077, 1094, 1100)),
    "val": frozenset(f"scene-{n:04d}" for n in (103, 916)),
}
#: The 150 scenes of the official val split (nuscenes-devkit utils/splits.py); every other trainval scene is train.
VAL_SCENES: frozenset[str] = frozenset(
    f"scene-{n:04d}" for a, b in ((3, 3), (12, 18), (35, 36), (38, 39), (92, 110), (221, 221), (268, 278), (329, 332),
                                  (344, 346), (519, 524), (552, 565), (625, 627), (629, 630), (632, 638), (770, 771),
                                  (775, 775), (777, 778), (780, 784), (794, 800), (802, 802), (904, 917), (919, 931),
                                  (962, 963), (966, 969), (971, 972), (1059, 1073))
    for n in range(a, b + 1))
_OFFICIAL_NAME = re.compile(r"scene-\d{4}$")


@dataclass
class _Camera:
    channel: str
    token: str  # sample_data token
    path: Path
    size: tuple[int, int]  # (height, width)
    intrinsics: np.ndarray
    extrinsics: np.ndarray  # camera -> reference ego


@dataclass
class _Sample:
    token: str
    scene: str
    region: str
    location: str
    logfile: str
    timestamp_us: int
    time_s: float  # since the scene's first sample
    ego_to_global: np.ndarray
    cameras: list[_Camera]
    boxes: Boxes3D
    visibility: np.ndarray  # (K,) fraction visible


def _origin(location: str, value: Sequence[float]) -> tuple[float, float]:
    v = [float(x) for x in value]
    if len(v) != 2 or not (-90 <= v[0] <= 90 and -180 <= v[1] <= 180):
        raise ValueError(f"nuScenes source: field 'map_origins.{location}' must be [lat, lon] in degrees, found "
                         f"{list(value)}")
    return v[0], v[1]


def map_to_latlon(origin: tuple[float, float], east_m: float, north_m: float) -> tuple[float, float]:
    """(lat, lon) of a point ``east_m``/``north_m`` metres from a map's ``origin``: the destination of a
    great-circle step of that length and bearing, as the devkit's ``export_poses.py`` (with a full-quadrant bearing)."""
    lat0, lon0 = np.radians(origin)
    bearing = np.arctan2(east_m, north_m)  # clockwise from north
    d = np.hypot(east_m, north_m) / _EARTH_RADIUS_M
    lat = np.arcsin(np.sin(lat0) * np.cos(d) + np.cos(lat0) * np.sin(d) * np.cos(bearing))
    lon = lon0 + np.arctan2(np.sin(bearing) * np.sin(d) * np.cos(lat0), np.cos(d) - np.sin(lat0) * np.sin(lat))
    return float(np.degrees(lat)), float(np.degrees(lon))


def _visibility_fraction(row: dict[str, Any], table: _Table) -> float:
    """The middle of a visibility row's band (``level`` 'v0-40' -> 0.2); another spelling of a band is read too."""
    level = row.get("level")
    if level in VISIBILITY_FRACTION:
        return VISIBILITY_FRACTION[level]
    match = re.fullmatch(r"v(\d+)-(\d+)", str(level))
    if match is None or not 0 <= int(match[1]) <= int(match[2]) <= 100:
        raise FormatError(f"{table.where(row.get('token'))}: field 'level' must be a visibility band like 'v0-40' or "
                          f"'v80-100', found {level!r}")
    return (int(match[1]) + int(match[2])) / 200.0


class _Table:
    """Rows of one table by token, and messages that name the file and the token."""

    def __init__(self, name: str, path: Path, rows: Any) -> None:
        self.name, self.path = name, path
        if not isinstance(rows, list):
            raise FormatError(f"nuScenes table {path}: expected a JSON array of rows, found {type(rows).__name__}")
        self.rows = rows
        self.by_token: dict[str, dict[str, Any]] = {}
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise FormatError(f"{path}: row {i}: expected a JSON object (a record with a 'token'), found "
                                  f"{type(row).__name__} {str(row)[:60]!r}")
            if not isinstance(row.get("token"), str):
                found = "no such field" if "token" not in row else repr(row["token"])
                raise FormatError(f"{path}: row {i}: field 'token' must be a string, found {found}")
            if row["token"] in self.by_token:  # a merged or repeated table: the row would count twice
                first = next(j for j, r in enumerate(rows) if r is self.by_token[row["token"]])
                raise FormatError(f"{path}: row {i}: field 'token' must be unique in the table, found "
                                  f"'{row['token']}' again (first in row {first})")
            self.by_token[row["token"]] = row

    def where(self, token: str) -> str:
        return f"{self.path} (token '{token}')"

    def get(self, token: Any, referrer: str, field: str) -> dict[str, Any]:
        row = self.by_token.get(token) if isinstance(token, str) else None
        if row is None:
            raise FormatError(f"{referrer}: field '{field}' must name a row of {self.path}, found {token!r}")
        return row

    def field(self, row: dict[str, Any], name: str, check: Callable[[Any], bool], expected: str) -> Any:
        value = row.get(name)
        if name not in row or not check(value):
            found = "no such field" if name not in row else repr(value)
            raise FormatError(f"{self.where(row['token'])}: field '{name}' must be {expected}, found {found}")
        return value


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and bool(np.isfinite(v))


def _is_vec(n: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, list) and len(v) == n and all(_is_num(x) for x in v)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _is_matrix3(v: Any) -> bool:
    return isinstance(v, list) and len(v) == 3 and all(_is_vec(3)(r) for r in v)


def _is_quat(v: Any) -> bool:
    return _is_vec(4)(v) and sum(x * x for x in v) > 0.25  # near unit length; the devkit normalises


def _pose(table: _Table, row: dict[str, Any]) -> np.ndarray:
    """4x4 from a row's ``rotation`` [w, x, y, z] and ``translation`` (calibrated_sensor, ego_pose)."""
    q = table.field(row, "rotation", _is_quat, "a quaternion [w, x, y, z]")
    t = table.field(row, "translation", _is_vec(3), "3 numbers [x, y, z] in metres")
    return make_transform(quaternion_to_rotation(q), t)


class NuScenesSource(FrameSource):
    """nuScenes v1.0 key frames (see the module docstring for the format, frames and mappings).

    Args:
        root: the dataset folder (holding ``<version>/``, ``samples/``, ``maps/``).
        version: ``v1.0-mini``, ``v1.0-trainval``, ``v1.0-test``; None: the one ``v1.0-*`` folder under ``root``.
        cameras: camera channels, in frame order.
        ref_channel: the channel whose ego pose is the frame's ego frame.
        map_lanes: ``auto`` (lanes where ``maps/expansion/<location>.json`` exists), ``true`` (required) or
            ``false`` (no lanes).
        lane_range: ego-frame box ``[x_min, x_max, y_min, y_max]`` (metres) the lanes are cut to.
        road_divider_type: lane type of ``road_divider`` lines; None: the region's most common centre line.
        derive_2d: project the 3D boxes and lanes into every camera as 2D labels.
        min_points: drop boxes with fewer lidar + radar points (1 = the devkit's "valid" boxes; 0 keeps all).
        official_splits: keep the official split of each scene (:meth:`official_split`).
        on_error: ``raise`` or ``skip`` (drop and report the frames a bad row, image or category touches).
        location_regions: extra or changed ``log.location`` -> region code entries.
        map_origins: extra or changed ``log.location`` -> ``[lat, lon]`` of the map origin (for ``Frame.latlon``).
    """

    name = "nuscenes"

    def __init__(self, root: str | Path, version: str | None = None, cameras: Sequence[str] = CAMERAS,
                 ref_channel: str = "LIDAR_TOP", map_lanes: str | bool = "auto",
                 lane_range: Sequence[float] = (-60.0, 120.0, -50.0, 50.0), road_divider_type: str | None = None,
                 derive_2d: bool = True, min_points: int = 1, official_splits: bool = True, on_error: str = "raise",
                 location_regions: Mapping[str, str] | None = None,
                 map_origins: Mapping[str, Sequence[float]] | None = None) -> None:
        self.root = Path(root)
        self.version = self._find_version(version)
        self.cameras = [str(c) for c in cameras]
        if not self.cameras:
            raise ValueError("nuScenes source: field 'cameras' must list at least one camera channel")
        self.ref_channel = str(ref_channel)
        self.map_lanes = {True: "true", False: "false"}.get(map_lanes, str(map_lanes).lower())  # type: ignore[arg-type]
        if self.map_lanes not in ("auto", "true", "false"):
            raise ValueError(f"nuScenes source: field 'map_lanes' must be auto, true or false, found '{map_lanes}'")
        if len(lane_range) != 4 or not (lane_range[0] < lane_range[1] and lane_range[2] < lane_range[3]):
            raise ValueError(f"nuScenes source: field 'lane_range' must be [x_min, x_max, y_min, y_max] with "
                             f"min < max, found {list(lane_range)}")
        self.lane_range = tuple(float(v) for v in lane_range)
        self.road_divider_type = road_divider_type
        self.derive_2d = bool(derive_2d)
        self.min_points = int(min_points)
        self.official_splits = bool(official_splits)
        self.on_error = check_on_error(on_error, "nuScenes source")
        self.location_regions = {**LOCATION_REGIONS, **dict(location_regions or {})}
        self.map_origins = {**MAP_ORIGINS, **{k: _origin(k, v) for k, v in dict(map_origins or {}).items()}}
        self.skips = SkipLog(self.name)
        self._samples: list[_Sample] | None = None
        self._annotated = True  # False when the version has no sample_annotation rows at all (v1.0-test)
        self._maps: dict[str, MapLanes | None] = {}

    def _find_version(self, version: str | None) -> str:
        if version:
            if not (self.root / version / "scene.json").is_file():
                raise FormatError(f"nuScenes source: {self.root / version / 'scene.json'} not found; is root "
                                  f"'{self.root}' the folder holding '{version}/'?")
            return version
        found = sorted(p.parent.name for p in self.root.glob("v1.0-*/scene.json"))
        if len(found) != 1:
            what = f"several ({found})" if found else "none"
            raise FormatError(f"nuScenes source: expected one '<version>/scene.json' under root '{self.root}', found "
                              f"{what}; set the source's 'version' (e.g. v1.0-trainval)")
        return found[0]

    def __getstate__(self) -> dict[str, Any]:
        # Map files are large: each worker process reloads the ones it needs instead of receiving a pickle.
        return {**self.__dict__, "_maps": {}}

    # -- index ----------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._all())

    @property
    def camera_names(self) -> list[str]:
        return list(self.cameras)

    def index(self) -> list[FrameRef]:
        return [FrameRef(i, s.token, s.scene, s.region) for i, s in enumerate(self._all())]

    def latlon(self, index: int) -> tuple[float, float] | None:
        """(latitude, longitude) of frame ``index`` from its ego pose and map origin (see the module docstring)."""
        s = self._all()[index]
        origin = self.map_origins.get(s.location)
        return None if origin is None else map_to_latlon(origin, s.ego_to_global[0, 3], s.ego_to_global[1, 3])

    def official_split(self, scene_id: str) -> str | None:
        """The official split of a scene name (None: not an official scene of this version, or switched off)."""
        if not self.official_splits:
            return None
        if self.version.endswith("mini"):
            return next((split for split, names in MINI_SPLITS.items() if scene_id in names), None)
        if not _OFFICIAL_NAME.match(scene_id):
            return None
        if self.version.endswith("trainval"):
            return "val" if scene_id in VAL_SCENES else "train"
        return "test" if self.version.endswith("test") else None

    def _all(self) -> list[_Sample]:
        if self._samples is None:
            self._samples = self._build()
            self.skips.report(len(self._samples) + len(self.skips))
        return self._samples

    def _fail(self, what: str, error: FormatError) -> None:
        if self.on_error == "raise":
            raise error
        self.skips.add(what, error)

    def _build(self) -> list[_Sample]:
        t = {name: _Table(name, p, read_json(p, f"nuScenes table '{name}'"))
             for name in TABLES for p in [self.root / self.version / f"{name}.json"]}
        self._annotated = bool(t["sample_annotation"].rows)
        bad: dict[str, FormatError] = {}  # sample token -> first error of a row that belongs to it
        key_frames = self._key_frames(t, bad)
        annotations: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in t["sample_annotation"].rows:
            if isinstance(row.get("sample_token"), str):
                annotations[row["sample_token"]].append(row)
            else:
                self._fail(f"sample_annotation '{row['token']}'", FormatError(
                    f"{t['sample_annotation'].where(row['token'])}: field 'sample_token' must be a sample token, "
                    f"found {row.get('sample_token')!r}"))
        self._track = {tok: i for i, tok in enumerate(t["instance"].by_token)}
        samples_of: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in t["sample"].rows:
            scene_token = row.get("scene_token")
            if isinstance(scene_token, str) and scene_token in t["scene"].by_token:
                samples_of[scene_token].append(row)
            else:
                self._fail(f"sample '{row['token']}'", FormatError(
                    f"{t['sample'].where(row['token'])}: field 'scene_token' must name a row of "
                    f"{t['scene'].path}, found {scene_token!r}"))
        out: list[_Sample] = []
        scenes = sorted(t["scene"].rows, key=lambda r: str(r.get("name", r["token"])))
        for scene in scenes:
            rows = samples_of.get(scene["token"], [])
            try:
                name, region, location, logfile = self._scene_facts(t, scene)
                stamps = [t["sample"].field(r, "timestamp", _is_int, "an integer (microseconds)") for r in rows]
            except FormatError as e:
                for r in rows:
                    self._fail(f"sample '{r['token']}'", e)
                continue
            order = np.argsort(stamps, kind="stable")
            start = min(stamps) if stamps else 0
            for j in order:
                row = rows[j]
                try:
                    if row["token"] in bad:
                        raise bad[row["token"]]
                    out.append(self._sample(t, row, name, region, location, logfile, stamps[j], start,
                                            key_frames.get(row["token"], {}), annotations.get(row["token"], [])))
                except FormatError as e:
                    self._fail(f"sample '{row['token']}' of scene '{name}'", e)
        return out

    def _scene_facts(self, t: dict[str, _Table], scene: dict[str, Any]) -> tuple[str, str, str, str]:
        name = t["scene"].field(scene, "name", _is_str, "a string")
        log_row = t["log"].get(scene.get("log_token"), t["scene"].where(scene["token"]), "log_token")
        location = t["log"].field(log_row, "location", _is_str, "a string")
        if location not in self.location_regions:
            raise FormatError(f"{t['log'].where(log_row['token'])}: field 'location' must be one of "
                              f"{sorted(self.location_regions)} (add others with the source's location_regions), "
                              f"found '{location}'")
        region = get_region(self.location_regions[location]).code
        return name, region, location, str(log_row.get("logfile", ""))

    def _key_frames(self, t: dict[str, _Table], bad: dict[str, FormatError]) -> dict[str, dict[str, dict[str, Any]]]:
        """sample token -> channel -> its key-frame sample_data row, for the channels we read."""
        wanted = {*self.cameras, self.ref_channel}
        channel_of: dict[str, str] = {}
        for cs in t["calibrated_sensor"].rows:
            sensor_token = cs.get("sensor_token")  # a non-string is reported below, by the rows that use it
            sensor = t["sensor"].by_token.get(sensor_token) if isinstance(sensor_token, str) else None
            if sensor is not None and isinstance(sensor.get("channel"), str):
                channel_of[cs["token"]] = sensor["channel"]
        out: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        sd = t["sample_data"]
        for row in sd.rows:
            sample = row.get("sample_token")
            try:
                if not sd.field(row, "is_key_frame", lambda v: isinstance(v, bool), "true or false"):
                    continue
                cs_token = row.get("calibrated_sensor_token")
                channel = channel_of.get(cs_token) if isinstance(cs_token, str) else None
                if channel is None:
                    cs = t["calibrated_sensor"].get(cs_token, sd.where(row["token"]),
                                                    "calibrated_sensor_token")
                    t["sensor"].get(cs.get("sensor_token"), t["calibrated_sensor"].where(cs["token"]),
                                    "sensor_token")
                    continue  # a sensor row without a channel string: not one we read
                if channel in wanted:
                    out[sd.field(row, "sample_token", _is_str, "a sample token")][channel] = row
            except FormatError as e:
                if isinstance(sample, str):
                    bad.setdefault(sample, e)
                else:
                    self._fail(f"sample_data '{row['token']}'", e)
        return out

    def _sample(self, t: dict[str, _Table], row: dict[str, Any], scene: str, region: str, location: str,
                logfile: str, stamp: int, start: int, frames: dict[str, dict[str, Any]],
                annotations: list[dict[str, Any]]) -> _Sample:
        token = row["token"]
        sd = t["sample_data"]

        def key_frame(channel: str) -> dict[str, Any]:
            if channel not in frames:
                raise FormatError(f"{t['sample'].where(token)}: no key-frame row of channel '{channel}' in "
                                  f"{sd.path} (field 'sample_token' = this sample, 'is_key_frame' = true)")
            return frames[channel]

        def ego_pose(data: dict[str, Any]) -> np.ndarray:
            return _pose(t["ego_pose"], t["ego_pose"].get(data.get("ego_pose_token"), sd.where(data["token"]),
                                                          "ego_pose_token"))

        ego_to_global = ego_pose(key_frame(self.ref_channel))
        global_to_ego = invert_rigid(ego_to_global)
        cameras = []
        for channel in self.cameras:
            data = key_frame(channel)
            where = sd.where(data["token"])
            cs = t["calibrated_sensor"].get(data.get("calibrated_sensor_token"), where, "calibrated_sensor_token")
            k = np.asarray(t["calibrated_sensor"].field(cs, "camera_intrinsic", _is_matrix3, "a 3x3 matrix"))
            filename = sd.field(data, "filename", lambda v: isinstance(v, str) and v != "" and not escapes_root(v),
                                "a file path relative to the dataset root, without '..'")
            width = sd.field(data, "width", lambda v: _is_int(v) and v > 0, "a positive integer")
            height = sd.field(data, "height", lambda v: _is_int(v) and v > 0, "a positive integer")
            path = self.root / filename
            if not path.is_file():
                raise FormatError(f"{where}: field 'filename': image file {path} not found")
            extrinsics = global_to_ego @ ego_pose(data) @ _pose(t["calibrated_sensor"], cs)
            cameras.append(_Camera(channel, data["token"], path, (height, width), k, extrinsics))
        boxes, visibility = self._boxes(t, annotations, global_to_ego)
        return _Sample(token, scene, region, location, logfile, stamp, (stamp - start) * 1e-6, ego_to_global, cameras,
                       boxes, visibility)

    def _boxes(self, t: dict[str, _Table], rows: list[dict[str, Any]], global_to_ego: np.ndarray
               ) -> tuple[Boxes3D, np.ndarray]:
        """Validate a sample's annotation rows, keep ours, and move them into the ego frame (vectorised: trainval has
        1.2 M rows)."""
        ann = t["sample_annotation"]
        kept: list[tuple[dict[str, Any], str, str, float]] = []  # (row, class, instance token, fraction visible)
        for a in rows:
            where = ann.where(a["token"])
            instance = t["instance"].get(a.get("instance_token"), where, "instance_token")
            category = t["category"].get(instance.get("category_token"), t["instance"].where(instance["token"]),
                                         "category_token")
            name = t["category"].field(category, "name", _is_str, "a string")
            if name not in CATEGORY_MAP:
                raise FormatError(f"{t['category'].where(category['token'])}: field 'name' must be a nuScenes "
                                  f"category {sorted(CATEGORY_MAP)}, found '{name}' (used by sample_annotation "
                                  f"'{a['token']}')")
            vis = t["visibility"].get(a.get("visibility_token"), where, "visibility_token")
            for tok in ann.field(a, "attribute_tokens", lambda v: isinstance(v, list), "a list of tokens"):
                t["attribute"].get(tok, where, "attribute_tokens")
            points = sum(ann.field(a, f, lambda v: _is_int(v) and v >= 0, "a count >= 0")
                         for f in ("num_lidar_pts", "num_radar_pts"))
            ann.field(a, "size", lambda v: _is_vec(3)(v) and min(v) > 0, "3 positive numbers [w, l, h]")
            ann.field(a, "translation", _is_vec(3), "3 numbers [x, y, z] in metres")
            ann.field(a, "rotation", _is_quat, "a quaternion [w, x, y, z]")
            if CATEGORY_MAP[name] is not None and points >= self.min_points:
                kept.append((a, CATEGORY_MAP[name], instance["token"], _visibility_fraction(vis, t["visibility"])))
        k = len(kept)
        rot, shift = global_to_ego[:3, :3], global_to_ego[:3, 3]
        wlh = np.array([a["size"] for a, *_ in kept], dtype=np.float64).reshape(k, 3)
        centers = np.array([a["translation"] for a, *_ in kept], dtype=np.float64).reshape(k, 3) @ rot.T + shift
        box_rot = rot @ quaternion_to_rotation(np.array([a["rotation"] for a, *_ in kept]).reshape(k, 4))
        velocity = np.array([self._velocity(t, a) for a, *_ in kept], dtype=np.float64).reshape(k, 3) @ rot.T
        boxes = Boxes3D(centers=centers, sizes=wlh[:, [1, 0, 2]],  # nuScenes [w, l, h] -> our [l, w, h]
                        yaws=np.arctan2(box_rot[:, 1, 0], box_rot[:, 0, 0]),  # heading of the box's length axis
                        classes=np.array([class_index(c) for _, c, _, _ in kept], dtype=np.int64),
                        track_ids=np.array([self._track[i] for _, _, i, _ in kept], dtype=np.int64),
                        velocities=velocity[:, :2])
        return boxes, np.array([v for *_, v in kept], dtype=np.float32)

    def _velocity(self, t: dict[str, _Table], a: dict[str, Any], max_time_diff: float = 1.5) -> list[float]:
        """Global velocity [vx, vy, vz] of an annotation from its neighbours, as the devkit's ``box_velocity``."""
        ann, where = t["sample_annotation"], t["sample_annotation"].where(a["token"])
        prev = ann.get(a["prev"], where, "prev") if a.get("prev") else None
        nxt = ann.get(a["next"], where, "next") if a.get("next") else None
        if prev is None and nxt is None:
            return [np.nan] * 3
        first, last = prev or a, nxt or a
        stamps = []
        for r in (first, last):
            sample = t["sample"].get(r.get("sample_token"), ann.where(r["token"]), "sample_token")
            stamps.append(t["sample"].field(sample, "timestamp", _is_int, "an integer (microseconds)") * 1e-6)
            ann.field(r, "translation", _is_vec(3), "3 numbers [x, y, z] in metres")
        dt = stamps[1] - stamps[0]
        if prev is not None and nxt is not None:
            max_time_diff *= 2
        if dt > max_time_diff or dt <= 0:
            return [np.nan] * 3
        return [(p1 - p0) / dt for p0, p1 in zip(first["translation"], last["translation"])]

    # -- frames ---------------------------------------------------------------------------------------------

    def _map(self, location: str, region: str) -> MapLanes | None:
        if location not in self._maps:
            path = self.root / "maps" / "expansion" / f"{location}.json"
            if self.map_lanes == "false" or (self.map_lanes == "auto" and not path.is_file()):
                if self.map_lanes == "auto":
                    log.warning("nuScenes: no map expansion %s; frames of '%s' have no lanes", path, location)
                self._maps[location] = None
            elif self.on_error != "skip":
                self._maps[location] = MapLanes(path, region, self.road_divider_type, None)
            else:  # bad records are skipped inside; a file that cannot be read at all leaves the location unmapped
                try:
                    self._maps[location] = MapLanes(path, region, self.road_divider_type, self.skips)
                except FormatError as e:
                    self.skips.add(f"map expansion {path}", e)
                    log.warning("nuScenes: on_error=skip: frames of '%s' have no lanes: %s", location, e)
                    self._maps[location] = None
        return self._maps[location]

    def load(self, index: int, with_images: bool = True) -> Frame:
        samples = self._all()
        if not 0 <= index < len(samples):
            raise IndexError(f"nuScenes source: index {index} out of range [0, {len(samples)})")
        s = samples[index]
        labels = {"boxes_3d"} if self._annotated else set()
        lanes: list[Lane] = []
        lane_map = self._map(s.location, s.region)
        if lane_map is not None:
            x0, x1, y0, y1 = self.lane_range
            lanes = lane_map.lanes_near(s.ego_to_global, (x0, x1), (y0, y1))
            labels.add("lanes_3d")
        if self.derive_2d:
            if self._annotated:
                labels.add("boxes_2d")
            if lane_map is not None:
                labels.add("lanes_2d")
        views = [self._view(cam, s, lanes, with_images) for cam in s.cameras]
        frame = Frame(frame_id=s.token, scene_id=s.scene, source=self.name, region=s.region,
                      driving_side=get_region(s.region).driving_side, timestamp=s.time_s, cameras=views,
                      boxes_3d=s.boxes, lanes_3d=lanes, labels=frozenset(labels), latlon=self.latlon(index),
                      meta={"location": s.location, "log": s.logfile, "timestamp_us": s.timestamp_us,
                            "version": self.version})
        return frame.validate(f"nuScenes sample (root {self.root})")

    def _view(self, cam: _Camera, s: _Sample, lanes: list[Lane], with_images: bool) -> CameraView:
        where = f"nuScenes sample_data '{cam.token}' ({cam.channel} of sample '{s.token}')"
        image = read_rgb(cam.path, cam.size, where) if with_images else None
        view = CameraView(name=cam.channel, intrinsics=cam.intrinsics.copy(), extrinsics=cam.extrinsics.copy(),
                          image_size=cam.size, image=image)
        if not self.derive_2d:
            return view
        b = s.boxes
        boxes, visible = project_box_2d(b.centers, b.sizes, b.yaws, cam.intrinsics, cam.extrinsics, cam.size)
        wh = boxes[:, 2:] - boxes[:, :2]
        rows = np.flatnonzero(visible & (wh.min(axis=1) >= 2.0)) if len(b) else np.zeros(0, dtype=np.int64)
        pieces = project_polylines([ln.points for ln in lanes], cam.intrinsics, cam.extrinsics, cam.size,
                                   min_length_px=8.0)
        view.boxes_2d = boxes[rows].astype(np.float32).reshape(-1, 4)
        view.classes_2d = b.classes[rows]
        view.box_ids_2d = rows.astype(np.int64)
        view.visibility_2d = s.visibility[rows]
        view.lanes_2d = [Lane(p.astype(np.float32), ln.type) for ln, ps in zip(lanes, pieces) for p in ps]
        return view

    @property
    def skipped(self) -> dict[str, Any]:
        """What ``on_error=skip`` dropped (count, reasons, examples)."""
        return self.skips.summary(len(self._all()) + len(self.skips))
