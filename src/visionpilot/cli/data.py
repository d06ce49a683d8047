"""``visionpilot-data``: preview, statistics, dump and export of a dataset and its region splits.

    visionpilot-data action=preview rig=nuscenes6 region=gb hydra.run.dir=out/preview
    visionpilot-data action=stats region=global hydra.run.dir=out/stats
    visionpilot-data action=stats data=nuscenes data.root=/data/nuscenes split=all
    visionpilot-data action=dump data=culane data.root=/data/culane split=val     # frames.jsonl
    visionpilot-data action=export format=nuscenes data.regions=[us,sg]           # synthetic -> <run dir>/nuscenes
    visionpilot-data action=shard data=nuscenes data.root=/data/nuscenes out=s3://bucket/shards/nuscenes
                                                                                  # litdata shards, a prefix per region
    visionpilot-data action=audit governance=sovereign compute_region=us          # what a job would read, and why
    visionpilot-data action=lineage path=runs/export/model.onnx                   # where a model comes from

Every action except ``lineage`` runs under the governance policy (``governance=...``, ``compute_region=...``):
``audit`` prints what would be read and what is excluded without reading an image; the others refuse data the
policy forbids here, skip frames in restricted zones, and write anonymised images where the policy requires it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from visionpilot.governance import governance_kwargs
from visionpilot.paths import config_dir

log = logging.getLogger(__name__)
ACTIONS = ("preview", "stats", "dump", "export", "shard", "audit", "lineage")
#: Regions each export format can hold (nuScenes: its locations; CULane and TuSimple: where they were recorded).
FORMAT_REGIONS: dict[str, tuple[str, ...]] = {"nuscenes": ("sg", "us"), "culane": ("cn",), "tusimple": ("us",)}


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run ``cfg.action`` and return what it produced (paths, stats)."""
    from visionpilot.data.inspect import format_stats_table, select_refs, write_previews, write_stats

    action = cfg.get("action")
    if action not in ACTIONS:
        raise ValueError(f"unknown action '{action}'; valid choices: {list(ACTIONS)}")
    if action == "shard" and not cfg.get("out"):
        raise ValueError("action=shard: field 'out' is required: a folder or object-store URL for the shards, "
                         "e.g. out=/data/shards/synthetic or out=s3://bucket/shards")
    if action == "export" and cfg.get("format") not in FORMAT_REGIONS:
        raise ValueError(f"action=export: unknown format '{cfg.get('format')}'; valid choices: {list(FORMAT_REGIONS)}")
    if action == "export" and cfg.format != "nuscenes":  # before the writer clears an earlier export's lists
        size = (cfg.get("export") or {}).get("image_size")
        size = OmegaConf.to_container(size) if OmegaConf.is_config(size) else size
        if size is not None and not (isinstance(size, list | tuple) and len(size) == 2 and all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
            raise ValueError(f"action=export format={cfg.format}: field 'export.image_size' must be (height, width) "
                             f"in pixels, two positive integers, or null (the format's own size), found {size!r}")
    if action == "preview":
        count = cfg.get("frames_per_region")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"action=preview: field 'frames_per_region' must be a positive integer, found {count!r}")
    if action == "lineage":
        return _lineage(cfg)
    out_dir = Path(cfg.paths.output_dir)
    datamodule = hydra.utils.instantiate(cfg.data, **governance_kwargs(cfg))
    manifest = datamodule.build_splits()
    regions = manifest.select_regions(datamodule.regions)
    datamodule.manifest, datamodule.selected_regions = manifest, regions
    if action == "audit":
        return _audit(datamodule, regions, out_dir)
    report = datamodule.enforce_governance()  # before any frame is read; drops frames in restricted zones
    manifest_path = manifest.write(out_dir / "splits.json")
    source = datamodule.source
    if report.anonymised:  # every frame written (images, previews, shards) comes out anonymised
        from visionpilot.governance.anonymise import AnonymisedSource

        source = AnonymisedSource(source, report.anonymiser)
    elif action == "preview" and not report.frames_exportable:
        log.warning("governance: previews of %s stay in their residence region (frames may not leave as images)",
                    [f"{g.source}/{g.region}" for g in report.groups if not g.decision.exportable])
    if action == "export":
        return _export(cfg, source, datamodule.refs, manifest, regions, out_dir)
    if action == "shard":
        return _shard(cfg, source, datamodule.refs, manifest, regions)
    refs = select_refs(datamodule.refs, manifest, cfg.split, regions)
    if action == "preview":
        paths = write_previews(source, refs, out_dir / "previews", int(cfg.frames_per_region))
        print(f"wrote {len(paths)} preview images under {out_dir / 'previews'} (split manifest: {manifest_path})")
        return {"previews": paths, "manifest": manifest_path}
    if action == "dump":
        from visionpilot.data.dump import write_frames_jsonl

        n = write_frames_jsonl(source, refs, out_dir / "frames.jsonl")
        print(f"wrote {n} frames ({cfg.split} split, regions {regions}) to {out_dir / 'frames.jsonl'}")
        return {"frames": out_dir / "frames.jsonl", "count": n, "manifest": manifest_path}
    extra = {"skipped": source.skipped} if hasattr(source, "skipped") else {}
    stats = write_stats(source, refs, out_dir / "stats.json", split=cfg.split, regions_selected=regions,
                        manifest_sha256=manifest.sha256, **extra)
    print(format_stats_table(stats))
    print(f"wrote {out_dir / 'stats.json'} (split manifest: {manifest_path})")
    return {"stats": stats, "manifest": manifest_path}


def _audit(datamodule: Any, regions: list[str], out_dir: Path) -> dict[str, Any]:
    """Print and write (``audit.json``) what the job would read and exclude, from the index alone."""
    from visionpilot.governance import format_audit
    from visionpilot.utils.io import write_json_atomic

    report = datamodule.governance.audit(datamodule.source, datamodule.refs, datamodule.regions_read())
    print(format_audit(report))
    doc = {"regions": regions, **report.to_dict()}
    write_json_atomic(out_dir / "audit.json", doc)
    print(f"wrote {out_dir / 'audit.json'}")
    return {"audit": doc, "report": report}


def _lineage(cfg: DictConfig) -> dict[str, Any]:
    """Print the lineage of ``cfg.path`` (a checkpoint, region delta or ONNX file)."""
    from visionpilot.governance import format_lineage, read_lineage

    if not cfg.get("path"):
        raise ValueError("action=lineage: field 'path' is required: a .ckpt, region delta (.safetensors) or .onnx "
                         "file, e.g. path=runs/export/model.onnx")
    lineage = read_lineage(cfg.path)
    print(format_lineage(lineage))
    return {"lineage": lineage}


def _export(cfg: DictConfig, source: Any, refs: list, manifest: Any, regions: list[str], out_dir: Path
            ) -> dict[str, Any]:
    """Write every frame of the selected regions that the format can hold, with the splits of the manifest."""
    from visionpilot.data.writers import WRITERS

    fmt = str(cfg.format)
    allowed = FORMAT_REGIONS[fmt]
    keep = [r for r in regions if r in allowed]
    if not keep:
        raise ValueError(f"action=export format={fmt}: the format holds regions {list(allowed)}, but the selection "
                         f"has {regions}; select one of them (e.g. region={allowed[0]} or data.regions=[...])")
    chosen = [r for r in refs if r.region in keep]
    options = {k: v for k, v in (OmegaConf.to_container(cfg.export, resolve=True) or {}).items() if v is not None}
    if fmt == "nuscenes":
        options.pop("camera", None)  # nuScenes takes every camera
        options.pop("image_size", None)  # images keep the source's size; sample_data records it
    else:
        options["splits"] = {scene: split for (region, scene), split in manifest.scene_splits().items()}
        # Checked here: the writer finds it missing at the first frame, after clearing an earlier export's lists.
        if "camera" in options and options["camera"] not in source.camera_names:
            raise ValueError(f"action=export format={fmt}: field 'export.camera' must be one of the data's cameras "
                             f"{list(source.camera_names)}, found {options['camera']!r}")
    root = out_dir / fmt
    frames = (source.load(r.index) for r in chosen)  # streamed: the writers write images as they come
    WRITERS[fmt](frames, root, **options)
    print(f"wrote {len(chosen)} frames of regions {keep} in {fmt} format under {root}")
    return {"root": root, "frames": len(chosen), "regions": keep}


def _shard(cfg: DictConfig, source: Any, refs: list, manifest: Any, regions: list[str]) -> dict[str, Any]:
    """Write the selected regions' frames as litdata shards under ``cfg.out`` (data/shards.py)."""
    from visionpilot.data.shards import write_shards

    options = OmegaConf.to_container(cfg.get("shard") or {}, resolve=True) or {}
    meta = write_shards(source, refs, manifest, regions, str(cfg.out), **options)
    for region, splits in meta["frames"].items():
        print(f"{region}: " + ", ".join(f"{split} {n}" for split, n in splits.items()) + " frames")
    total = sum(n for splits in meta["frames"].values() for n in splits.values())
    print(f"wrote {total} frames of regions {regions} as {meta['image_format']} shards under {cfg.out} "
          f"(train with: visionpilot-train data=streaming data.root={cfg.out})")
    return {"root": str(cfg.out), "frames": total, "regions": regions, "meta": meta}


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="data")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
