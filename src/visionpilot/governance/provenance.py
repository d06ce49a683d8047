"""Provenance: the lineage record every checkpoint, region delta and ONNX file carries, and reading it back.

One function builds every record (:func:`build_lineage`), so the three artefacts describe themselves alike::

    {"format": "visionpilot.lineage/1", "artefact": "checkpoint" | "region_delta" | "onnx",
     "created", "code_version", "config_sha256", "compute_region", "base_sha256",
     "governance": {"policy", "policy_sha256", "anonymised", "frames_exportable"},
     "data": {"role": "training" | "parity_calibration", "sources": {source: {region: frames}},
              "regions", "frame_counts": {split: {region: frames}}, "replay_frame_counts", "manifest_sha256",
              "excluded_frames"},
     ...artefact facts (region, strategy, precision, delta_sha256),
     "parents": [the lineage of each input model, plus its "file" and "sha256"]}

``data.sources`` counts the frames of every region the job may read (the selected and replay regions, all splits,
after zone exclusions); ``frame_counts`` splits the selected regions' frames by split (``train`` is what was trained
on), ``replay_frame_counts`` the replay regions' train frames.

A fine-tune's checkpoint and delta name the base checkpoint as their parent; merging a delta (``load_model``,
the export's ``delta_path``) gives the delta's record with the base's as its parent (:func:`merge_lineage`); an
ONNX file's parent is the merged model it was exported from. So the file shipped to a vehicle names every dataset,
region, frame count, split manifest and compute region behind it. No record holds a frame, a file name of a frame,
or any pixel: lineage travels with the weights.

``visionpilot-data action=lineage path=<file>`` prints :func:`format_lineage`.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

import visionpilot
from visionpilot.utils.io import file_sha256

LINEAGE_FORMAT = "visionpilot.lineage/1"
ARTEFACTS = ("checkpoint", "region_delta", "onnx")
UNRECORDED_SOURCE = "(source not recorded)"  # the summary's name for regions of records without sources


@lru_cache(maxsize=1)
def code_version() -> str:
    """``visionpilot <version>`` plus the git commit (and ``-dirty``) of a source checkout."""
    version = f"visionpilot {visionpilot.__version__}"
    root = Path(visionpilot.__file__).resolve().parents[2]
    try:
        top, _, sha = subprocess.run(["git", "-C", str(root), "rev-parse", "--show-toplevel", "--short=12", "HEAD"],
                                     capture_output=True, text=True, timeout=5, check=True).stdout.strip().partition("\n")
        if Path(top).resolve() != root:  # an installed package inside some other checkout (e.g. its .venv/)
            return version
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return version  # an installed wheel: no repository
    return f"{version}+g{sha}{'-dirty' if dirty else ''}" if sha else version


def config_sha256(config: Any) -> str | None:
    """Hash of the canonical JSON of a (resolved) config; None for None."""
    if config is None:
        return None
    plain = OmegaConf.to_container(config, resolve=True) if OmegaConf.is_config(config) else config
    return hashlib.sha256(json.dumps(plain, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def data_facts(datamodule: Any, role: str = "training") -> dict[str, Any]:
    """What a set-up datamodule read: sources and regions with frame counts, splits, manifest hash, exclusions."""
    if datamodule is None or getattr(datamodule, "manifest", None) is None:
        return {}
    report = getattr(datamodule, "governance_report", None)
    counts = datamodule.frame_counts
    sources = report.sources() if report is not None and report.groups else \
        {str(datamodule.source.name): {r: sum(c.get(r, 0) for c in counts.values()) for r in datamodule.selected_regions}}
    facts = {"role": role, "sources": sources, "regions": list(datamodule.selected_regions), "frame_counts": counts,
             "manifest_sha256": datamodule.manifest.sha256,
             "excluded_frames": report.excluded_count if report is not None else 0}
    replay = getattr(datamodule, "replay_frame_counts", None)
    if replay:
        facts["replay_frame_counts"] = dict(replay)
    return facts


def governance_facts(datamodule: Any) -> tuple[str | None, dict[str, Any]]:
    """(compute_region, governance record) of a datamodule's job."""
    gov = getattr(datamodule, "governance", None)
    if gov is None:
        return None, {}
    report = getattr(datamodule, "governance_report", None)
    return gov.compute_region, {
        "policy": gov.policy.name, "policy_sha256": gov.policy.sha256, "anonymised": gov.anonymiser is not None,
        "frames_exportable": None if report is None else report.frames_exportable,
    }


def build_lineage(artefact: str, *, datamodule: Any = None, data_role: str = "training", config: Any = None,
                  base_sha256: str | None = None, parents: Sequence[Mapping[str, Any]] = (),
                  **facts: Any) -> dict[str, Any]:
    """The lineage record of an artefact (see the module docstring).

    Args:
        artefact: one of :data:`ARTEFACTS`.
        datamodule: the set-up datamodule of the job that made it (data read, compute region, policy).
        data_role: what that data was for (``training``; ``parity_calibration`` for an export).
        config: the job's resolved config (hashed, not stored).
        base_sha256: SHA-256 of the model file the job started from.
        parents: lineage records of input models, each with ``file`` and ``sha256`` (:func:`parent_record`).
        **facts: artefact facts (``region``, ``strategy``, ``precision``, ``delta_sha256``...).
    """
    if artefact not in ARTEFACTS:
        raise ValueError(f"build_lineage: artefact must be one of {list(ARTEFACTS)}, found {artefact!r}")
    compute_region, governance = governance_facts(datamodule)
    return {"format": LINEAGE_FORMAT, "artefact": artefact, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "code_version": code_version(), "config_sha256": config_sha256(config),
            "compute_region": compute_region, "base_sha256": base_sha256, "governance": governance,
            "data": data_facts(datamodule, data_role), **facts, "parents": [dict(p) for p in parents]}


def parent_record(lineage: Mapping[str, Any] | None, sha256: str, path: str | Path | None = None) -> dict[str, Any]:
    """A parent entry: the input model's lineage with its file name and hash; files written before lineage
    existed get a record that says "no lineage recorded"."""
    record = dict(lineage or {"format": LINEAGE_FORMAT, "artefact": "checkpoint", "note": "no lineage recorded"})
    record.update({"file": Path(path).name if path else record.get("file"), "sha256": sha256})
    return record


def checkpoint_lineage(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The lineage of a checkpoint from its ``visionpilot`` entry, rebuilt from the facts older files carry."""
    if meta.get("lineage"):
        return dict(meta["lineage"])
    regions = list(meta.get("regions") or [])
    return {"format": LINEAGE_FORMAT, "artefact": "checkpoint", "note": "rebuilt from checkpoint facts",
            "compute_region": None, "config_sha256": config_sha256(meta.get("config")),
            "data": {"role": "training", "regions": regions, "frame_counts": {"train": dict(meta.get("frame_counts")
                                                                                          or {})},
                     "manifest_sha256": meta.get("manifest_sha256")}, "parents": []}


def merge_lineage(base: Mapping[str, Any] | None, delta: Mapping[str, Any] | None, *, base_sha256: str,
                  delta_sha256: str, base_path: str | Path | None = None,
                  delta_path: str | Path | None = None) -> dict[str, Any]:
    """The lineage of ``base + delta`` as one model: the delta's record (file and hash added) whose parent is the
    base's record, taken from the base file actually merged (the delta was checked to come from it)."""
    merged = parent_record(delta or {"format": LINEAGE_FORMAT, "artefact": "region_delta",
                                     "note": "no lineage recorded"}, delta_sha256, delta_path)
    others = [p for p in merged.get("parents", []) if p.get("sha256") != base_sha256]
    merged["parents"] = [parent_record(base, base_sha256, base_path), *others]
    return merged


def read_lineage(path: str | Path) -> dict[str, Any]:
    """The lineage of a checkpoint (``.ckpt``), region delta (``.safetensors``) or ONNX file, with its file name and
    SHA-256 added; files without a recorded lineage give what their other metadata says."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"lineage: file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        from visionpilot.export.onnx_export import read_metadata

        meta = read_metadata(str(path))
        lineage = meta.get("lineage") or {"format": LINEAGE_FORMAT, "artefact": "onnx", "note": "no lineage recorded",
                                          "data": {"regions": meta.get("regions")}, "parents": []}
    elif suffix == ".safetensors":
        from visionpilot.training.finetune import read_delta_metadata

        meta = read_delta_metadata(path)
        lineage = meta.get("lineage") or {"format": LINEAGE_FORMAT, "artefact": "region_delta",
                                          "note": "no lineage recorded", "region": meta.get("region"),
                                          "strategy": meta.get("strategy"), "base_sha256": meta.get("base_sha256"),
                                          "data": {"regions": [meta.get("region")],
                                                   "frame_counts": {"train": meta.get("frame_counts")}},
                                          "parents": []}
    elif suffix in (".ckpt", ".pt", ".pth"):
        from visionpilot.training.checkpoints import read_checkpoint

        lineage = checkpoint_lineage(read_checkpoint(path)["visionpilot"])
    else:
        raise ValueError(f"lineage: {path}: expected a .ckpt, .safetensors or .onnx file, found '{suffix or path.name}'")
    return parent_record(lineage, file_sha256(path), path)


def lineage_summary(lineage: Mapping[str, Any]) -> dict[str, Any]:
    """Across the whole tree: the regions of each source some training job read, compute regions, manifests, files.

    Regions, not frame counts: a fine-tune's replay re-reads frames its base was trained on, so counts of different
    records do not add up (each record has its own).
    """
    sources: dict[str, set[str]] = {}
    compute, manifests, files = set(), set(), []

    def walk(rec: Mapping[str, Any]) -> None:
        data = rec.get("data") or {}
        if data.get("role", "training") == "training":
            for src, regions in (data.get("sources") or {}).items():
                sources.setdefault(src, set()).update(regions)
            if not data.get("sources") and data.get("regions"):  # rebuilt from older files: regions, no sources
                sources.setdefault(UNRECORDED_SOURCE, set()).update(str(r) for r in data["regions"] if r)
            if data.get("manifest_sha256"):
                manifests.add(data["manifest_sha256"])
        if rec.get("compute_region"):
            compute.add(rec["compute_region"])
        files.append(f"{rec.get('file') or '?'} ({rec.get('artefact')})")
        for p in rec.get("parents") or []:
            walk(p)

    walk(lineage)
    return {"sources": {k: sorted(v) for k, v in sources.items()}, "compute_regions": sorted(compute),
            "manifests": sorted(manifests), "files": files}


def _counts(counts: Mapping[str, int] | None) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted((counts or {}).items())) or "-"


def format_lineage(lineage: Mapping[str, Any]) -> str:
    """The lineage tree as text (``visionpilot-data action=lineage``)."""
    lines: list[str] = []

    def emit(rec: Mapping[str, Any], indent: str, head: str) -> None:
        facts = [f"{k} {rec[k]}" for k in ("region", "strategy", "precision") if rec.get(k)]
        sha = (rec.get("sha256") or "")[:12]
        lines.append(f"{head}{rec.get('file') or '(model)'}  [{rec.get('artefact')}{', ' if facts else ''}"
                     f"{', '.join(facts)}]  sha256 {sha or '-'}")
        gov = rec.get("governance") or {}
        lines.append(f"{indent}made {rec.get('created', '?')} by {rec.get('code_version', '?')}, compute region "
                     f"{rec.get('compute_region') or 'undeclared'}, config {str(rec.get('config_sha256') or '-')[:12]}")
        if gov:
            lines.append(f"{indent}policy {gov.get('policy')} ({str(gov.get('policy_sha256'))[:12]}), anonymised "
                         f"{'yes' if gov.get('anonymised') else 'no'}, its frames may leave their region as images: "
                         f"{ {True: 'yes', False: 'no', None: '?'}[gov.get('frames_exportable')] }")
        data = rec.get("data") or {}
        if data:
            role = data.get("role", "training")
            srcs = "; ".join(f"{s}: {_counts(r)}" for s, r in (data.get("sources") or {}).items()) or \
                f"regions {data.get('regions')}"
            lines.append(f"{indent}data ({role}): {srcs}")
            for split, counts in (data.get("frame_counts") or {}).items():
                lines.append(f"{indent}  {split}: {_counts(counts)}")
            if data.get("replay_frame_counts"):
                lines.append(f"{indent}  replay (train): {_counts(data['replay_frame_counts'])}")
            lines.append(f"{indent}  split manifest {str(data.get('manifest_sha256') or '-')[:12]}, excluded by zones "
                         f"{data.get('excluded_frames', 0)}")
        if rec.get("base_sha256"):
            lines.append(f"{indent}base model sha256 {rec['base_sha256'][:12]}")
        if rec.get("note"):
            lines.append(f"{indent}note: {rec['note']}")
        parents = rec.get("parents") or []
        for i, p in enumerate(parents):
            last = i == len(parents) - 1
            emit(p, indent + ("     " if last else "|    "), indent + ("`-- " if last else "|-- "))

    emit(lineage, "    ", "")
    s = lineage_summary(lineage)
    lines.append("")
    lines.append("training data (whole lineage): " + ("; ".join(f"{src}: {', '.join(r)}" for src, r in
                                                              s["sources"].items()) or "-"))
    lines.append(f"compute regions: {', '.join(s['compute_regions']) or 'undeclared'}; split manifests: "
                 f"{', '.join(m[:12] for m in s['manifests']) or '-'}")
    return "\n".join(lines)
