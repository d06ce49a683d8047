"""What each region's synthetic scenes contain: the figures of docs/regions.md's style table.

    python benchmarks/synthetic_regions.py [--scenes 300] [--seed 0]

Samples scenes only (roads, actors, lighting; no pixels), so it takes seconds. Shares of two-wheelers, trucks and
buses are over all road vehicles of all the region's scenes (parked cars included); the rest are per scene.
"""

from __future__ import annotations

import argparse

import numpy as np

from visionpilot.data.regions import REGIONS
from visionpilot.data.sources.synthetic.scene import CLASS, sample_scene
from visionpilot.data.sources.synthetic.styles import STYLES

VEHICLES = [CLASS[c] for c in ("car", "truck", "bus", "two_wheeler")]
HAZE_VISIBILITY_M = 1000.0  # a scene is "hazy" when its meteorological visibility is under this


def region_figures(code: str, scenes: int, seed: int) -> dict[str, float]:
    classes, lanes, widths, hazy, urban, parked = [], [], [], [], [], []
    for j in range(scenes):
        sc = sample_scene(REGIONS[code], STYLES[code], seed, j, duration_s=1.5)
        cls = sc.actors.cls
        classes.append(cls[np.isin(cls, VEHICLES)])
        lanes.append(sc.n_ego)
        widths.append(sc.lane_width)
        hazy.append(sc.lighting.visibility_m < HAZE_VISIBILITY_M)
        urban.append(sc.urban)
        parked.append(bool(((cls == CLASS["car"]) & (sc.actors.speed == 0.0)).any()))
    veh = np.concatenate(classes)
    return {
        "lanes per direction": float(np.mean(lanes)),
        "lane width (m)": float(np.mean(widths)),
        "two-wheeler share": float(np.mean(veh == CLASS["two_wheeler"])),
        "truck share": float(np.mean(veh == CLASS["truck"])),
        "bus share": float(np.mean(veh == CLASS["bus"])),
        "hazy scenes": float(np.mean(hazy)),
        "urban scenes": float(np.mean(urban)),
        "scenes with parked cars": float(np.mean(parked)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=300, help="scenes per region")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rows = {code: region_figures(code, args.scenes, args.seed) for code in REGIONS}
    cols = list(next(iter(rows.values())))
    print(f"{args.scenes} scenes per region, seed {args.seed}\n")
    print("| code | " + " | ".join(cols) + " |")
    print("| --- |" + " ---: |" * len(cols))
    for code, r in rows.items():
        print(f"| `{code}` | {r[cols[0]]:.1f} | " + " | ".join(f"{r[c]:.2f}" for c in cols[1:]) + " |")


if __name__ == "__main__":
    main()
