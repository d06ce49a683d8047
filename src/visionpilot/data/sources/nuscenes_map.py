"""Lane lines from the nuScenes map expansion v1.3 (``maps/expansion/<location>.json``).

The file is one JSON object of layers, each a list of records keyed by ``token``. We read three geometric and two
line layers:

    node          {token, x, y}                       a 2D point in the location's global frame (metres)
    line          {token, node_tokens: [...]}         a polyline through nodes
    lane_divider  {token, line_token, lane_divider_segments: [{node_token, segment_type}, ...]}
    road_divider  {token, line_token, road_segment_token}

A ``lane_divider`` separates lanes of one direction; its ``lane_divider_segments`` give the painted line type from
each listed node of its line on (``segment_type`` such as ``DOUBLE_DASHED_WHITE``, ``SINGLE_SOLID_WHITE``,
``SINGLE_SOLID_YELLOW``, ``NIL`` = unpainted). A ``road_divider`` separates the two directions and has no type.

Type mapping (our :data:`~visionpilot.data.vocab.LANE_TYPES`), by the words of ``segment_type``:

    ``NIL``                       no paint: the piece is dropped
    ``*_DASHED_WHITE``            white_dashed   (``DOUBLE_DASHED_WHITE`` is the common broken divider of the maps)
    ``*_SOLID_WHITE``, ``*_ZIGZAG_WHITE``   white_solid
    ``*_DASHED_YELLOW``           yellow_dashed
    ``SINGLE_SOLID_YELLOW``       yellow_solid
    ``DOUBLE_SOLID_YELLOW``       double_yellow
    no segments listed            the region's lane divider (white_dashed in US and SG)
    ``road_divider``              the region's most common centre line (US double_yellow, SG white_dashed), or
                                  ``road_divider_type``

The maps have no z: nodes lie on the plane ``z = 0`` of the global frame (where nuScenes ego poses also sit).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from visionpilot.data.frame import Lane
from visionpilot.data.regions import get_region
from visionpilot.data.sources._common import FormatError, SkipLog, read_json
from visionpilot.data.vocab import LANE_TYPES, lane_type_index
from visionpilot.geometry.polylines import clip_polyline_box

#: Our lane type for each known segment type (others are read by their words, see :func:`segment_lane_type`).
SEGMENT_TYPES: dict[str, str | None] = {
    "NIL": None,
    "DOUBLE_DASHED_WHITE": "white_dashed",
    "SINGLE_DASHED_WHITE": "white_dashed",
    "SINGLE_SOLID_WHITE": "white_solid",
    "DOUBLE_SOLID_WHITE": "white_solid",
    "SINGLE_ZIGZAG_WHITE": "white_solid",
    "SINGLE_DASHED_YELLOW": "yellow_dashed",
    "DOUBLE_DASHED_YELLOW": "yellow_dashed",
    "SINGLE_SOLID_YELLOW": "yellow_solid",
    "DOUBLE_SOLID_YELLOW": "double_yellow",
}


def segment_lane_type(segment_type: str) -> str | None:
    """Our lane type name for a map ``segment_type`` (None: unpainted); unknown spellings are read by their words."""
    if not isinstance(segment_type, str):
        raise ValueError(f"segment_type must be a string such as 'DOUBLE_DASHED_WHITE', found {segment_type!r}")
    if segment_type in SEGMENT_TYPES:
        return SEGMENT_TYPES[segment_type]
    words = set(str(segment_type).upper().split("_"))
    if "YELLOW" in words:
        if "DASHED" in words:
            return "yellow_dashed"
        return "double_yellow" if "DOUBLE" in words else "yellow_solid"
    if "WHITE" in words:
        return "white_dashed" if "DASHED" in words else "white_solid"
    raise ValueError(f"unknown segment_type '{segment_type}'; known: {sorted(SEGMENT_TYPES)}")


@dataclass
class MapPiece:
    """A run of one lane type along a map line: (P, 2) global points, its type index, and its bounds."""

    points: np.ndarray
    type: int
    lo: np.ndarray  # (2,) min x, y
    hi: np.ndarray  # (2,) max x, y


class MapLanes:
    """The lane lines of one map-expansion file, queried around an ego pose.

    Args:
        path: ``maps/expansion/<location>.json``.
        region: region code of the location (for the road-divider and untyped-divider types).
        road_divider_type: lane type of ``road_divider`` lines; None: the region's most common centre line.
        skips: where malformed records go under ``on_error=skip`` (None: raise).
    """

    def __init__(self, path: Path, region: str, road_divider_type: str | None = None,
                 skips: SkipLog | None = None) -> None:
        self.path = Path(path)
        r = get_region(region)
        self.divider_type = lane_type_index(r.divider)
        self.road_divider_type = lane_type_index(road_divider_type or r.centre_lines[0])
        self.skips = skips
        self.pieces = self._parse(read_json(self.path, "nuScenes map expansion"))
        self.lo = np.array([p.lo for p in self.pieces]).reshape(-1, 2)
        self.hi = np.array([p.hi for p in self.pieces]).reshape(-1, 2)

    def _fail(self, what: str, error: FormatError) -> None:
        if self.skips is None:
            raise error
        self.skips.add(what, error)

    def _parse(self, data: Any) -> list[MapPiece]:
        if not isinstance(data, dict):
            raise FormatError(f"{self.path}: expected a JSON object of map layers, found {type(data).__name__}")
        for layer in ("node", "line", "lane_divider", "road_divider"):
            if layer not in data:
                raise FormatError(f"{self.path}: layer '{layer}' is missing (a map expansion v1.3 file has layers "
                                  f"node, line, lane_divider and road_divider); found layers {sorted(data)[:12]}")
            if not isinstance(data[layer], list):
                raise FormatError(f"{self.path}: layer '{layer}' must be a list of records, found "
                                  f"{type(data[layer]).__name__}")
        nodes: dict[str, tuple[float, float]] = {}
        for i, row in enumerate(data["node"]):
            try:
                tok = _token(row, self.path, "node", i)  # first: the value below is evaluated before the key
                nodes[tok] = (_number(row, "x", self.path, "node"), _number(row, "y", self.path, "node"))
            except FormatError as e:
                self._fail(f"map node #{i}", e)
        lines: dict[str, list[str]] = {}
        for i, row in enumerate(data["line"]):
            try:
                tok = _token(row, self.path, "line", i)
                refs = row.get("node_tokens")
                if not isinstance(refs, list) or len(refs) < 2 or not all(isinstance(r, str) for r in refs):
                    raise FormatError(f"{self.path}: layer 'line', token '{tok}': field 'node_tokens' must list at "
                                      f"least 2 node tokens, found {refs!r}")
                lines[tok] = refs
            except FormatError as e:
                self._fail(f"map line #{i}", e)
        pieces: list[MapPiece] = []
        for layer in ("lane_divider", "road_divider"):
            for i, row in enumerate(data[layer]):
                try:
                    pieces += self._divider(layer, i, row, nodes, lines)
                except FormatError as e:
                    self._fail(f"map {layer} #{i}", e)
        return pieces

    def _divider(self, layer: str, i: int, row: Any, nodes: dict[str, tuple[float, float]],
                 lines: dict[str, list[str]]) -> list[MapPiece]:
        tok = _token(row, self.path, layer, i)
        where = f"{self.path}: layer '{layer}', token '{tok}'"
        line_tok = row.get("line_token")
        if not isinstance(line_tok, str) or line_tok not in lines:
            raise FormatError(f"{where}: field 'line_token' must name a record of layer 'line', found {line_tok!r}")
        node_toks = lines[line_tok]
        missing = [t for t in node_toks if t not in nodes]
        if missing:
            raise FormatError(f"{self.path}: layer 'line', token '{line_tok}': field 'node_tokens' names unknown "
                              f"node '{missing[0]}'")
        pts = np.array([nodes[t] for t in node_toks], dtype=np.float64)
        # Type of each edge k (node k -> k + 1).
        if layer == "road_divider":
            edge_types = [self.road_divider_type] * (len(pts) - 1)
        else:
            edge_types = self._edge_types(where, row, node_toks)
        pieces = []
        start = 0
        for k in range(1, len(edge_types) + 1):  # runs of one type: edges start..k-1 join nodes start..k
            if k == len(edge_types) or edge_types[k] != edge_types[start]:
                if edge_types[start] >= 0:  # unpainted runs are dropped
                    p = pts[start:k + 1]
                    pieces.append(MapPiece(p, edge_types[start], p.min(axis=0), p.max(axis=0)))
                start = k
        return pieces

    def _edge_types(self, where: str, row: dict[str, Any], node_toks: list[str]) -> list[int]:
        segments = row.get("lane_divider_segments")
        if not isinstance(segments, list):
            raise FormatError(f"{where}: field 'lane_divider_segments' must be a list, found {segments!r}")
        if not segments:
            return [self.divider_type] * (len(node_toks) - 1)
        position = {t: k for k, t in enumerate(node_toks)}
        starts: list[tuple[int, int]] = []
        for j, seg in enumerate(segments):
            node = seg.get("node_token") if isinstance(seg, dict) else None
            if not isinstance(node, str) or node not in position:
                raise FormatError(f"{where}: field 'lane_divider_segments[{j}].node_token' must be a node of the "
                                  f"divider's line, found {node!r}")
            if "segment_type" not in seg:
                raise FormatError(f"{where}: field 'lane_divider_segments[{j}].segment_type' is missing")
            try:
                name = segment_lane_type(seg.get("segment_type"))
            except ValueError as e:
                raise FormatError(f"{where}: field 'lane_divider_segments[{j}].segment_type': {e}") from None
            starts.append((position[node], -1 if name is None else lane_type_index(name)))
        starts.sort()
        # A segment's type holds from its node to the next segment's node; nodes before the first take the first's.
        types = []
        j = 0
        for k in range(len(node_toks) - 1):
            while j + 1 < len(starts) and starts[j + 1][0] <= k:
                j += 1
            types.append(starts[j][1])
        return types

    def lanes_near(self, ego_to_global: np.ndarray, x_range: tuple[float, float], y_range: tuple[float, float],
                   min_length: float = 2.0) -> list[Lane]:
        """Lane lines inside the ego-frame box ``x_range`` x ``y_range``, as (P, 3) ego-frame polylines.

        Points are the map's nodes plus the box crossings; z is where the global ground plane z = 0 lies in the ego
        frame at that (x, y).
        """
        if not self.pieces:
            return []
        rot, t = ego_to_global[:3, :3], ego_to_global[:3, 3]
        corners = np.array([[x, y, 0.0] for x in x_range for y in y_range]) @ rot.T + t
        lo, hi = corners[:, :2].min(axis=0), corners[:, :2].max(axis=0)
        hit = np.flatnonzero((self.hi >= lo).all(axis=1) & (self.lo <= hi).all(axis=1))
        # Ground plane z_global = 0 in ego coordinates: n . p = d with n = R^T e_z, d = -t_z.
        n, d = rot[2], -t[2]
        out = []
        for i in hit:
            piece = self.pieces[i]
            g = np.column_stack([piece.points, np.zeros(len(piece.points))])
            xy = ((g - t) @ rot)[:, :2]  # global -> ego
            for part in clip_polyline_box(xy, x_range, y_range, min_length):
                z = (d - n[0] * part[:, 0] - n[1] * part[:, 1]) / n[2]
                out.append(Lane(np.column_stack([part, z]), piece.type))
        return out


def _token(row: Any, path: Path, layer: str, i: int) -> str:
    if not isinstance(row, dict) or not isinstance(row.get("token"), str):
        raise FormatError(f"{path}: layer '{layer}', record #{i}: field 'token' must be a string, found "
                          f"{row.get('token') if isinstance(row, dict) else row!r}")
    return row["token"]


def _number(row: dict[str, Any], name: str, path: Path, layer: str) -> float:
    value = row.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
        raise FormatError(f"{path}: layer '{layer}', token '{row['token']}': field '{name}' must be a finite number, "
                          f"found {value!r}")
    return float(value)


assert all(t is None or t in LANE_TYPES for t in SEGMENT_TYPES.values())
