"""Scene-level train/val/test splits per region, written as a manifest.

Frames of one scene are strongly correlated (same drive, seconds apart), so splitting by frame leaks the test set
into training. Every split here is by **scene**:

- A scene's split comes from a stable hash of ``(seed, scene_id)`` mapped onto the cumulative split fractions (in
  the order train, val, test, then any other names sorted). The hash depends on nothing else, so adding scenes to
  a source never moves an existing scene — except through the rule below.
- **Minimum rule**: in every region with at least as many scenes as there are splits with a positive fraction
  (3 for train/val/test), each of those splits gets at least one scene. Where hashing left one empty (checked in
  the order train, val, test), the region's hash-assigned scene whose hash lies closest to that split's interval is
  moved there, taken only from splits that keep at least one scene. These moves only happen in small regions, and
  they are the one case where adding a scene can move another (the forced scene goes back once hashing fills the
  split on its own).
- **Official splits**: where the source defines ``official_split(scene_id) -> str | None`` (nuScenes' train/val),
  those scenes keep their official split; ``None`` falls back to hashing. Officially split scenes are never moved.

A scene whose frames carry several regions (a drive across a border) has one split for all of them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visionpilot.data.regions import GLOBAL, resolve_regions
from visionpilot.data.sources.base import FrameRef
from visionpilot.utils.io import write_text_atomic

DEFAULT_FRACTIONS: dict[str, float] = {"train": 0.8, "val": 0.1, "test": 0.1}
#: Canonical order of split names: the cumulative hash intervals follow it, so dict order in a config is irrelevant.
SPLIT_ORDER: tuple[str, ...] = ("train", "val", "test")
MANIFEST_NAME = "manifest.json"

OfficialSplit = Callable[[str], "str | None"]


def _ordered_splits(names: Iterable[str]) -> list[str]:
    names = list(names)
    return [s for s in SPLIT_ORDER if s in names] + sorted(n for n in names if n not in SPLIT_ORDER)


def _number(value: object) -> float:
    """``float(value)``, or NaN for what is no number (``null``, ``"abc"``): refused with the other bad fractions."""
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("nan")


def normalise_fractions(fractions: Mapping[str, float] | None) -> dict[str, float]:
    """Validate split fractions (non-negative, summing to 1) and return them in canonical order."""
    fractions = dict(DEFAULT_FRACTIONS if fractions is None else fractions)
    if not fractions:
        raise ValueError(f"split fractions: expected at least one split, e.g. {DEFAULT_FRACTIONS}, found {{}}")
    bad = {k: v for k, v in fractions.items() if not _number(v) >= 0.0}
    if bad:
        raise ValueError(f"split fractions: each fraction must be a number >= 0, found {bad}")
    total = sum(float(v) for v in fractions.values())
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"split fractions: must sum to 1, found {dict(fractions)} (sum {total:.6g})")
    return {k: float(fractions[k]) for k in _ordered_splits(fractions)}


def scene_hash(seed: int, scene_id: str) -> float:
    """Stable hash of ``(seed, scene_id)`` in [0, 1): independent of Python's hash seed and of other scenes."""
    digest = hashlib.sha256(f"{int(seed)}:{scene_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _manifest_file(path: str | os.PathLike[str]) -> Path:
    """A ``.json`` path as is; anything else is a folder holding ``manifest.json``."""
    path = Path(path)
    return path if path.suffix == ".json" and not path.is_dir() else path / MANIFEST_NAME


def _canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


@dataclass
class SplitManifest:
    """Which scenes of which region belong to which split.

    Attributes:
        seed: split seed.
        fractions: split name -> fraction, canonical order.
        splits: split -> region -> sorted scene ids (every region of the source under every split, maybe empty).
        counts: split -> region -> ``{"scenes": n, "frames": n}``.
    """

    seed: int
    fractions: dict[str, float]
    splits: dict[str, dict[str, list[str]]]
    counts: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)

    @property
    def sha256(self) -> str:
        """Hash of the canonical JSON of :attr:`splits` — identifies the split, whatever the fractions/seed."""
        return hashlib.sha256(_canonical_json(self.splits).encode()).hexdigest()

    @property
    def regions(self) -> list[str]:
        """Regions the split was built from (the regions the source has)."""
        return sorted({r for per_region in self.splits.values() for r in per_region})

    def scene_splits(self) -> dict[tuple[str, str], str]:
        """(region, scene id) -> split name."""
        return {(r, s): split for split, per_region in self.splits.items()
                for r, scenes in per_region.items() for s in scenes}

    def select_regions(self, regions: str | Iterable[str] | None) -> list[str]:
        """Resolve a region selection against the regions this manifest (the source) has.

        ``"global"`` / None means every region the source has; an explicit code the source lacks is an error.
        """
        have = self.regions
        if regions is None or (isinstance(regions, str) and regions.lower() == GLOBAL):
            return have
        wanted = [regions] if isinstance(regions, str) else list(regions)
        if any(str(w).lower() == GLOBAL for w in wanted):
            return have
        wanted = resolve_regions(wanted)
        missing = [r for r in wanted if r not in have]
        if missing:
            raise ValueError(f"region selection {wanted}: the source has no frames for {missing}; "
                             f"regions it has: {have} (or '{GLOBAL}' for all of them)")
        return wanted

    def select(self, refs: Iterable[FrameRef], split: str, regions: str | Iterable[str] | None = GLOBAL
               ) -> list[FrameRef]:
        """The refs of ``split`` in the selected regions, in source order.

        Raises if a ref's scene is in no split at all (the manifest is stale for this source).
        """
        if split not in self.splits:
            raise ValueError(f"unknown split '{split}'; this manifest has {list(self.splits)}")
        wanted = set(self.select_regions(regions))
        assignment = self.scene_splits()
        out, stale = [], []
        for ref in refs:
            got = assignment.get((ref.region, ref.scene_id))
            if got is None:
                stale.append(ref)
            elif got == split and ref.region in wanted:
                out.append(ref)
        if stale:
            ex = stale[0]
            raise ValueError(f"split manifest (sha256 {self.sha256[:12]}) does not cover {len(stale)} frame(s) of the "
                             f"source, e.g. frame '{ex.frame_id}' of scene '{ex.scene_id}' in region '{ex.region}'; "
                             f"rebuild the splits for this source")
        return out

    def frame_counts(self, split: str, regions: str | Iterable[str] | None = GLOBAL) -> dict[str, int]:
        """Region -> number of frames of ``split`` in the selected regions."""
        return {r: self.counts.get(split, {}).get(r, {}).get("frames", 0) for r in self.select_regions(regions)}

    # -- JSON ---------------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "fractions": self.fractions, "splits": self.splits, "counts": self.counts,
                "sha256": self.sha256}

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the manifest atomically (:func:`visionpilot.utils.io.write_text_atomic`).

        ``path`` is a ``.json`` file, or a folder (created if needed) to hold ``manifest.json``.
        """
        path = _manifest_file(path)
        return write_text_atomic(path, json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n")

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> SplitManifest:
        """Read a manifest written by :meth:`write`, checking its ``sha256`` against its splits."""
        path = _manifest_file(path)
        with open(path) as f:
            data = json.load(f)
        missing = [k for k in ("seed", "fractions", "splits") if k not in data]
        if missing:
            raise ValueError(f"{path}: missing field(s) {missing}; a split manifest needs seed, fractions, splits")
        manifest = cls(seed=int(data["seed"]), fractions=dict(data["fractions"]), splits=data["splits"],
                       counts=data.get("counts", {}))
        if "sha256" in data and data["sha256"] != manifest.sha256:
            raise ValueError(f"{path}: field 'sha256' is {data['sha256']} but the splits hash to {manifest.sha256}; "
                             f"the file was edited or truncated")
        return manifest


def make_splits(refs: Iterable[FrameRef], fractions: Mapping[str, float] | None = None, seed: int = 0,
                official: OfficialSplit | None = None) -> SplitManifest:
    """Assign every scene of ``refs`` to a split, per region (see the module docstring for the rules).

    Args:
        refs: the source's frame refs (``source.index()``).
        fractions: split name -> fraction (sum 1); default train 0.8 / val 0.1 / test 0.1.
        seed: split seed.
        official: optional ``scene_id -> split name | None`` (a source's ``official_split``).
    """
    fracs = normalise_fractions(fractions)
    names = list(fracs)
    frames: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))  # region -> scene -> frames
    for ref in refs:
        frames[ref.region][ref.scene_id] += 1
    if not frames:
        raise ValueError("make_splits: the source has no frames (empty index)")

    # Hash interval of each split: [lo, hi) of the cumulative fractions.
    bounds, acc = {}, 0.0
    for name in names:
        bounds[name] = (acc, acc + fracs[name])
        acc += fracs[name]

    def hashed(u: float) -> str:
        for name in names:
            if u < bounds[name][1] and fracs[name] > 0:
                return name
        return [n for n in names if fracs[n] > 0][-1]  # u just below 1 with float round-off

    scenes = sorted({s for per in frames.values() for s in per})
    u = {s: scene_hash(seed, s) for s in scenes}
    assign: dict[str, str] = {}
    fixed: set[str] = set()
    for s in scenes:
        off = official(s) if official is not None else None
        if off is not None:
            if off not in names:
                raise ValueError(f"official split of scene '{s}' is '{off}', which is not one of the split names "
                                 f"{names} (fractions {fracs})")
            assign[s] = off
            fixed.add(s)
        else:
            assign[s] = hashed(u[s])

    # Minimum rule: per region with enough scenes, every split with a positive fraction gets a scene.
    positive = [n for n in names if fracs[n] > 0]
    for region in sorted(frames):
        region_scenes = sorted(frames[region])
        if len(region_scenes) < len(positive):
            continue
        for name in positive:
            if any(assign[s] == name for s in region_scenes):
                continue
            sizes = {n: sum(assign[s] == n for s in region_scenes) for n in names}
            donors = [s for s in region_scenes if s not in fixed and sizes[assign[s]] >= 2]
            if not donors:
                continue
            lo, hi = bounds[name]
            best = min(donors, key=lambda s: (max(lo - u[s], u[s] - hi, 0.0), s))
            assign[best] = name

    splits = {n: {r: sorted(s for s in frames[r] if assign[s] == n) for r in sorted(frames)} for n in names}
    counts = {n: {r: {"scenes": len(splits[n][r]), "frames": sum(frames[r][s] for s in splits[n][r])}
                  for r in sorted(frames)} for n in names}
    return SplitManifest(seed=int(seed), fractions=fracs, splits=splits, counts=counts)


def splits_for_source(source: Any, fractions: Mapping[str, float] | None = None, seed: int = 0) -> SplitManifest:
    """:func:`make_splits` over ``source.index()``, honouring ``source.official_split`` where defined."""
    return make_splits(source.index(), fractions, seed, official=getattr(source, "official_split", None))
