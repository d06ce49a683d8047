#!/usr/bin/env bash
# The main job on the embedded synthetic multi-region world (nothing to download):
#   1. look at the data: labelled previews and label statistics for every region
#   2. train the global demo model (6 cameras, every region, image heads + bird's-eye-view branch)
# and print where every result is. Budget: <= 20 minutes on 2 CPU cores.
#   bash scripts/quickstart.sh                 # results under runs/quickstart
#   OUT=/tmp/qs bash scripts/quickstart.sh     # elsewhere
set -euo pipefail
source "$(dirname "$0")/setup_env.sh"
OUT="${OUT:-runs/quickstart}"
mkdir -p "$OUT"
START=$(date +%s)
step() { printf '\n== [%s] %s (%ds)\n' "$(date +%H:%M:%S)" "$1" "$(( $(date +%s) - START ))"; }

step "1/2 data: previews and label statistics for every region"
visionpilot-data action=preview region=global split=val frames_per_region=2 hydra.run.dir="$OUT/data/preview"
visionpilot-data action=stats region=global split=all hydra.run.dir="$OUT/data/stats"

step "2/2 train the global demo model (experiment=demo)"
visionpilot-train experiment=demo hydra.run.dir="$OUT/train"

step "done"
cat <<TXT
Results ($(( $(date +%s) - START )) s):
  data previews (all cameras + BEV, labels drawn)  $OUT/data/preview/previews/<region>/*.png
  label statistics per region                     $OUT/data/stats/stats.json
  split manifest (scene-level, per region)        $OUT/data/stats/splits.json
  demo training metrics (overall and per region)  $OUT/train/metrics.json
  prediction images (dashed = predicted)          $OUT/train/plots/
  checkpoints                                     $OUT/train/checkpoints/
TXT
