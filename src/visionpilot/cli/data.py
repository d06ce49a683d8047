"""``visionpilot-data``: preview, statistics (and later conversion) of a dataset and its region splits.

    visionpilot-data action=preview rig=nuscenes6 region=gb hydra.run.dir=out/preview
    visionpilot-data action=stats region=global hydra.run.dir=out/stats
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from visionpilot.paths import config_dir

log = logging.getLogger(__name__)
ACTIONS = ("preview", "stats")


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run ``cfg.action`` and return what it produced (paths, stats)."""
    from visionpilot.data.inspect import format_stats_table, select_refs, write_previews, write_stats

    action = cfg.get("action")
    if action not in ACTIONS:
        raise ValueError(f"unknown action '{action}'; valid choices: {list(ACTIONS)}")
    out_dir = Path(cfg.paths.output_dir)
    datamodule = hydra.utils.instantiate(cfg.data)
    manifest = datamodule.build_splits()
    regions = manifest.select_regions(datamodule.regions)
    manifest_path = manifest.write(out_dir / "splits.json")
    refs = select_refs(datamodule.refs, manifest, cfg.split, regions)
    source = datamodule.source
    if action == "preview":
        paths = write_previews(source, refs, out_dir / "previews", int(cfg.frames_per_region))
        print(f"wrote {len(paths)} preview images under {out_dir / 'previews'} (split manifest: {manifest_path})")
        return {"previews": paths, "manifest": manifest_path}
    stats = write_stats(source, refs, out_dir / "stats.json", split=cfg.split, regions_selected=regions,
                        manifest_sha256=manifest.sha256)
    print(format_stats_table(stats))
    print(f"wrote {out_dir / 'stats.json'} (split manifest: {manifest_path})")
    return {"stats": stats, "manifest": manifest_path}


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="data")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
