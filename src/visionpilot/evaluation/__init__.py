"""Evaluation: lane and detection metrics as accumulating torchmetrics ``Metric``s, and per-region routing.

Every metric takes plain tensors / arrays (no model code), accumulates sum- or cat-reduced states (so it syncs
across DDP processes and supports ``merge_state``), and returns ``{name: tensor}`` from ``compute()`` with the
metric names of ``metrics.json`` (``lane_f1``, ``det_map50``, ``det_map``, ``bev_map``, ``bev_lane_iou``, ...).
:class:`PerRegionMetric` reports any of them per region plus overall.
"""

from visionpilot.evaluation._common import nan_invalid
from visionpilot.evaluation.detection_2d import Detection2DMAP
from visionpilot.evaluation.detection_bev import NUSCENES_CLASS_RANGES, NUSCENES_DIST_THRESHOLDS, BevDetectionMetric
from visionpilot.evaluation.lane_2d import CULANE_IMAGE_SIZE, CULANE_LANE_WIDTH, CULaneF1
from visionpilot.evaluation.lanes_bev import BevGrid, BevLaneChamferF1, BevLaneIoU, rasterize_polylines
from visionpilot.evaluation.per_region import OVERALL, PerRegionMetric, flatten_region_results
from visionpilot.evaluation.tusimple import TUSIMPLE_H_SAMPLES, TuSimpleMetric

__all__ = [
    "CULANE_IMAGE_SIZE",
    "CULANE_LANE_WIDTH",
    "NUSCENES_CLASS_RANGES",
    "NUSCENES_DIST_THRESHOLDS",
    "OVERALL",
    "TUSIMPLE_H_SAMPLES",
    "BevDetectionMetric",
    "BevGrid",
    "BevLaneChamferF1",
    "BevLaneIoU",
    "CULaneF1",
    "Detection2DMAP",
    "PerRegionMetric",
    "TuSimpleMetric",
    "flatten_region_results",
    "nan_invalid",
    "rasterize_polylines",
]
