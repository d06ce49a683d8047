"""Data governance: residency policy, restricted zones, anonymisation and provenance (docs/governance.md).

- :mod:`~visionpilot.governance.policy`: rules per source and region (``never`` / ``anonymised_only`` /
  ``allowed`` processing abroad) and the decision for a job's ``compute_region``;
- :mod:`~visionpilot.governance.zones`: restricted zones (circles, polygons in latitude/longitude);
- :mod:`~visionpilot.governance.audit`: :class:`Governance`, what a datamodule enforces in ``setup`` before any
  frame is read, and the audit report;
- :mod:`~visionpilot.governance.anonymise`: the face/plate anonymiser (a frame transform);
- :mod:`~visionpilot.governance.provenance`: the lineage record of checkpoints, region deltas and ONNX files.
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import OmegaConf

from visionpilot.governance.anonymise import AnonymisationError, Anonymiser, high_frequency_energy
from visionpilot.governance.audit import Governance, GovernanceReport, format_audit
from visionpilot.governance.policy import PROCESSING, Policy, ResidencyError, normalise_region_code
from visionpilot.governance.provenance import build_lineage, format_lineage, merge_lineage, read_lineage
from visionpilot.governance.zones import Zone

log = logging.getLogger(__name__)

__all__ = ["PROCESSING", "AnonymisationError", "Anonymiser", "Governance", "GovernanceReport", "Policy",
           "ResidencyError", "Zone", "build_lineage", "format_audit", "format_lineage", "governance_kwargs",
           "high_frequency_energy", "merge_lineage", "normalise_region_code", "read_lineage", "withhold_frames"]


def governance_kwargs(cfg: Any) -> dict[str, Any]:
    """``governance`` and ``compute_region`` of an entry point's config, as datamodule keyword arguments.

    Entry points pass them when they instantiate ``cfg.data`` (they are the job's, not the data's: a checkpoint's
    stored data config must not carry the compute region it was trained in into a fine-tune elsewhere). A config
    without them gives ``{}`` (the open policy).
    """
    out: dict[str, Any] = {}
    if cfg is None:
        return out
    if cfg.get("governance") is not None:
        gov = cfg.get("governance")
        out["governance"] = OmegaConf.to_container(gov, resolve=True) if OmegaConf.is_config(gov) else dict(gov)
    if "compute_region" in cfg:
        out["compute_region"] = cfg.get("compute_region")
    return out


def withhold_frames(trainer: Any, module: Any) -> bool:
    """Stop a run from writing frames when its data may not leave its region as images; True if withheld.

    Prediction images (``PredictionImages``) are drawn from the module's ``val_examples``: the module keeps none
    and the callback is switched off, so no frame of non-exportable data reaches the run directory.
    """
    report = getattr(getattr(trainer, "datamodule", None), "governance_report", None)
    if report is None or report.frames_exportable:
        return False
    from visionpilot.training.callbacks import PredictionImages

    module.num_val_examples = 0
    for cb in getattr(trainer, "callbacks", []):
        if isinstance(cb, PredictionImages):
            cb.enabled = False
    groups = [f"{g.source}/{g.region}" for g in report.groups if not g.decision.exportable]
    log.info("governance: prediction images withheld (frames of %s may not leave their region as images)", groups)
    return True
