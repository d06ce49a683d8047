"""Looking at a dataset: labelled preview images and label statistics per region (``visionpilot-data``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from visionpilot.data.sources.base import FrameRef, FrameSource
from visionpilot.data.splits import SplitManifest
from visionpilot.data.vocab import LANE_TYPES, OBJECT_CLASSES
from visionpilot.utils.io import write_json_atomic
from visionpilot.viz.draw import frame_preview, save_rgb


def select_refs(refs: Sequence[FrameRef], manifest: SplitManifest, split: str, regions: Sequence[str]
                ) -> list[FrameRef]:
    """Frames of ``split`` (or every split for ``"all"``) in ``regions``."""
    if split == "all":
        return [r for s in manifest.splits for r in manifest.select(refs, s, regions)]
    if split not in manifest.splits:
        raise ValueError(f"unknown split '{split}'; valid choices: {list(manifest.splits)} or 'all'")
    return manifest.select(refs, split, regions)


def spread(refs: Sequence[FrameRef], count: int) -> list[FrameRef]:
    """``count`` frames spread over as many different scenes as possible (first frame of each scene first)."""
    by_scene: dict[str, list[FrameRef]] = {}
    for r in refs:
        by_scene.setdefault(r.scene_id, []).append(r)
    out: list[FrameRef] = []
    depth = 0
    while len(out) < count and any(len(v) > depth for v in by_scene.values()):
        for frames in by_scene.values():
            if depth < len(frames) and len(out) < count:
                out.append(frames[depth])
        depth += 1
    return out


def write_previews(source: FrameSource, refs: Sequence[FrameRef], out_dir: str | Path, frames_per_region: int
                   ) -> list[Path]:
    """One labelled PNG per frame (all cameras tiled, 2D boxes and lanes, a BEV panel) under ``<region>/``."""
    written = []
    for region in sorted({r.region for r in refs}):
        for ref in spread([r for r in refs if r.region == region], frames_per_region):
            frame = source.load(ref.index)
            path = Path(out_dir) / region / f"{ref.frame_id}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            save_rgb(str(path), frame_preview(frame))
            written.append(path)
    return written


def label_stats(source: FrameSource, refs: Sequence[FrameRef]) -> dict[str, Any]:
    """Per-region counts over label-only loads (no pixels are read): frames, scenes, objects per class (3D and
    2D), lane polylines per type, and the label kinds present."""
    per: dict[str, dict[str, Any]] = {}
    for ref in refs:
        frame = source.load(ref.index, with_images=False)
        s = per.setdefault(ref.region, {"frames": 0, "scenes": set(), "objects_3d": Counter(), "boxes_2d": Counter(),
                                        "lanes_3d": Counter(), "lanes_2d": Counter(), "labels": Counter(),
                                        "cameras": Counter()})
        s["frames"] += 1
        s["scenes"].add(ref.scene_id)
        s["labels"].update(frame.labels)
        s["cameras"][len(frame.cameras)] += 1
        s["objects_3d"].update(OBJECT_CLASSES[c] for c in frame.boxes_3d.classes)
        s["lanes_3d"].update(LANE_TYPES[lane.type] for lane in frame.lanes_3d)
        for cam in frame.cameras:
            s["boxes_2d"].update(OBJECT_CLASSES[c] for c in cam.classes_2d)
            s["lanes_2d"].update(LANE_TYPES[lane.type] for lane in cam.lanes_2d)
    regions = {}
    for region, s in sorted(per.items()):
        regions[region] = {
            "frames": s["frames"],
            "scenes": len(s["scenes"]),
            "objects_3d": {c: int(s["objects_3d"][c]) for c in OBJECT_CLASSES},
            "boxes_2d": {c: int(s["boxes_2d"][c]) for c in OBJECT_CLASSES},
            "lanes_3d": {t: int(s["lanes_3d"][t]) for t in LANE_TYPES},
            "lanes_2d": {t: int(s["lanes_2d"][t]) for t in LANE_TYPES},
            "objects_3d_per_frame": round(sum(s["objects_3d"].values()) / max(s["frames"], 1), 3),
            "label_kinds": {k: int(v) for k, v in sorted(s["labels"].items())},
            "cameras_per_frame": {str(k): int(v) for k, v in sorted(s["cameras"].items())},
        }
    total = {
        "frames": sum(r["frames"] for r in regions.values()),
        "scenes": sum(r["scenes"] for r in regions.values()),
        "objects_3d": {c: sum(r["objects_3d"][c] for r in regions.values()) for c in OBJECT_CLASSES},
        "lanes_3d": {t: sum(r["lanes_3d"][t] for r in regions.values()) for t in LANE_TYPES},
    }
    return {"regions": regions, "total": total}


def write_stats(source: FrameSource, refs: Sequence[FrameRef], path: str | Path, **extra: Any) -> dict[str, Any]:
    """Compute :func:`label_stats` and write them (plus ``extra`` fields) to ``path`` atomically."""
    stats = {"source": source.name, "camera_names": source.camera_names, **extra, **label_stats(source, refs)}
    write_json_atomic(path, stats)
    return stats


def format_stats_table(stats: dict[str, Any]) -> str:
    """A short Markdown table of the per-region counts, for the console: 3D boxes per class, then the 2D boxes and
    the 3D and 2D lanes (a lane benchmark such as CULane has only 2D lanes: they must not read as zero lanes)."""
    head = "| region | frames | scenes | " + " | ".join(OBJECT_CLASSES) + " | 2D boxes | 3D lanes | 2D lanes |"
    lines = [head, "|" + " --- |" * (6 + len(OBJECT_CLASSES))]
    for region, r in stats["regions"].items():
        objs = " | ".join(str(r["objects_3d"][c]) for c in OBJECT_CLASSES)
        counts = " | ".join(str(int(np.sum(list(r[k].values())))) for k in ("boxes_2d", "lanes_3d", "lanes_2d"))
        lines.append(f"| {region} | {r['frames']} | {r['scenes']} | {objs} | {counts} |")
    return "\n".join(lines)
