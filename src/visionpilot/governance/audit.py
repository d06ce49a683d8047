"""What a job may read: residency decisions and zone exclusions over a source's index, never its images.

:class:`Governance` is what a datamodule holds: the policy, the job's ``compute_region`` and the anonymiser (if
enabled). Its :meth:`~Governance.audit` walks the frame refs of the regions a job reads, groups them by source
and region, asks the policy about each group, and drops frames inside restricted zones (positions from
``source.latlon``). :meth:`~Governance.enforce` is the same and raises :class:`ResidencyError` on any refusal:
the datamodule calls it in ``setup`` after indexing and before any frame is loaded, and ``visionpilot-data
action=audit`` prints the report instead (:func:`format_audit`).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from visionpilot.data.sources.base import FrameRef
from visionpilot.governance.anonymise import Anonymiser
from visionpilot.governance.policy import Decision, Policy, ResidencyError, normalise_region_code
from visionpilot.governance.zones import locate_frames, zone_hits

log = logging.getLogger(__name__)
NO_LOCATION = "(no location)"


def source_names(source: Any, refs: Sequence[FrameRef]) -> list[str]:
    """The dataset name (``Frame.source``) of each ref: a mixed source's refs are ``<key>:<id>`` (shards of one
    record the members' names as ``member_names``)."""
    parts = getattr(source, "sources", None)
    if isinstance(parts, Mapping):
        return [getattr(parts.get(r.frame_id.partition(":")[0]), "name", source.name) for r in refs]
    names = getattr(source, "member_names", None)
    if isinstance(names, Mapping):
        return [str(names.get(r.frame_id.partition(":")[0], source.name)) for r in refs]
    return [str(source.name)] * len(refs)


@dataclass
class Group:
    """The frames of one source and region that a job reads, and what the policy says about them."""

    source: str
    region: str
    frames: int
    decision: Decision
    excluded: dict[str, int] = field(default_factory=dict)  # zone name (or NO_LOCATION) -> frames dropped
    no_location: int = 0  # frames without a position in a region some zone applies to

    @property
    def kept(self) -> int:
        return self.frames - sum(self.excluded.values())


@dataclass
class GovernanceReport:
    """The outcome of :meth:`Governance.audit` (JSON: :meth:`to_dict`)."""

    policy: Policy
    compute_region: str | None
    anonymiser: Anonymiser | None
    groups: list[Group]
    kept_refs: list[FrameRef]
    excluded_ids: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def excluded_count(self) -> int:
        return len(self.excluded_ids)

    @property
    def frames_exportable(self) -> bool:
        """Whether frames as this job reads them may leave their residence region (prediction images, previews)."""
        return all(g.decision.exportable for g in self.groups)

    @property
    def anonymised(self) -> bool:
        return self.anonymiser is not None

    def sources(self) -> dict[str, dict[str, int]]:
        """source -> region -> frames read (after zone exclusions)."""
        out: dict[str, dict[str, int]] = {}
        for g in self.groups:
            out.setdefault(g.source, {})[g.region] = g.kept
        return out

    def raise_if_refused(self) -> None:
        if self.errors:
            raise refusal(self.policy, self.compute_region, self.errors,
                          [g.decision for g in self.groups if not g.decision.allowed])

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy.name, "policy_sha256": self.policy.sha256, "compute_region": self.compute_region,
            "anonymiser": self.anonymiser.describe() if self.anonymiser else None,
            "ok": self.ok, "errors": list(self.errors), "frames_exportable": self.frames_exportable,
            "groups": [{"source": g.source, "region": g.region, "frames": g.frames, "kept": g.kept,
                        "resides_in": g.decision.resides_in, "rule": g.decision.rule.describe(),
                        "process_abroad": g.decision.rule.process_abroad, "allowed": g.decision.allowed,
                        "needs_anonymisation": g.decision.needs_anonymisation, "exportable": g.decision.exportable,
                        "reason": g.decision.reason, "excluded": dict(g.excluded), "no_location": g.no_location}
                       for g in self.groups],
            "zones": [z.to_dict() for z in self.policy.zones],
            "excluded_frames": self.excluded_count,
        }


class Governance:
    """A policy, where the job runs, and the anonymiser (None unless ``governance.anonymise.enabled``).

    Args:
        policy: the residency policy.
        compute_region: where the job runs (ISO code), None if undeclared.
    """

    def __init__(self, policy: Policy | None = None, compute_region: str | None = None) -> None:
        self.policy = policy or Policy()
        self.compute_region = normalise_region_code(compute_region)
        spec = dict(self.policy.anonymise)
        self.anonymiser = Anonymiser.from_config(spec) if spec.get("enabled", False) else None

    @classmethod
    def from_config(cls, governance: Mapping[str, Any] | None, compute_region: str | None = None) -> Governance:
        return cls(Policy.from_config(governance), compute_region)

    def describe(self) -> str:
        return (f"policy '{self.policy.name}', compute_region={self.compute_region or 'null'}, anonymiser "
                f"{self.anonymiser.describe() if self.anonymiser else 'off'}")

    def audit(self, source: Any, refs: Sequence[FrameRef], regions: Sequence[str]) -> GovernanceReport:
        """Decisions and zone exclusions for the refs of ``regions`` (reads the index and positions only)."""
        wanted = set(regions)
        names = source_names(source, refs)
        chosen = [(ref, name) for ref, name in zip(refs, names) if ref.region in wanted]
        counts = Counter((name, ref.region) for ref, name in chosen)
        groups = {key: Group(key[0], key[1], n, self.policy.decide(key[0], key[1], self.compute_region,
                                                                   self.anonymiser is not None))
                  for key, n in sorted(counts.items())}
        errors = [f"{g.source} / {g.region} ({g.frames} frames): {g.decision.reason}" for g in groups.values()
                  if not g.decision.allowed]
        excluded: set[str] = set()
        zoned = [(ref, name) for ref, name in chosen if self.policy.zones_for(ref.region)]
        if zoned:
            latlon = locate_frames(source, [ref.index for ref, _ in zoned])
            hits = zone_hits(self.policy.zones, [ref.region for ref, _ in zoned], latlon)
            unknown = np.isnan(latlon).any(axis=1)
            for (ref, name), hit, missing in zip(zoned, hits, unknown.tolist()):
                g = groups[(name, ref.region)]
                if missing:
                    g.no_location += 1
                    if self.policy.unknown_location == "exclude":
                        hit = NO_LOCATION
                if hit is not None:
                    g.excluded[hit] = g.excluded.get(hit, 0) + 1
                    excluded.add(ref.frame_id)
            for g in groups.values():
                if g.no_location and self.policy.unknown_location == "error":
                    errors.append(f"{g.source} / {g.region}: {g.no_location} frames have no position, but zones "
                                  f"{[z.name for z in self.policy.zones_for(g.region)]} apply to region "
                                  f"'{g.region}' (governance.unknown_location=error; set keep or exclude)")
        kept = [r for r in refs if r.frame_id not in excluded] if excluded else list(refs)
        return GovernanceReport(self.policy, self.compute_region, self.anonymiser, list(groups.values()), kept,
                                excluded, errors)

    def enforce(self, source: Any, refs: Sequence[FrameRef], regions: Sequence[str]) -> GovernanceReport:
        """:meth:`audit`, raising :class:`ResidencyError` on any refusal (residency before any position lookup)."""
        refused = self._refused(source, refs, regions)
        if refused:
            raise refusal(self.policy, self.compute_region, [e for e, _ in refused], [d for _, d in refused])
        report = self.audit(source, refs, regions)
        report.raise_if_refused()
        if report.excluded_count:
            log.info("governance: %d frames inside restricted zones excluded (%s)", report.excluded_count,
                     ", ".join(f"{g.source}/{g.region}: {g.excluded}" for g in report.groups if g.excluded))
        return report

    def audit_residency(self, source: Any, refs: Sequence[FrameRef], regions: Sequence[str]) -> list[str]:
        """Only the residency refusals (no zones)."""
        return [error for error, _ in self._refused(source, refs, regions)]

    def _refused(self, source: Any, refs: Sequence[FrameRef], regions: Sequence[str]) -> list[tuple[str, Decision]]:
        wanted = set(regions)
        counts = Counter((name, ref.region) for ref, name in zip(refs, source_names(source, refs))
                         if ref.region in wanted)
        out = []
        for (name, region), n in sorted(counts.items()):
            d = self.policy.decide(name, region, self.compute_region, self.anonymiser is not None)
            if not d.allowed:
                out.append((f"{name} / {region} ({n} frames): {d.reason}", d))
        return out


def refusal(policy: Policy, compute_region: str | None, errors: Sequence[str],
            decisions: Sequence[Decision] = ()) -> ResidencyError:
    """The error for refused data: every (source, region, rule) and what to do about it.

    ``decisions`` are the refusals among ``errors``: a misspelt rule is refused wherever the job runs, so its advice
    is to correct the spelling, not to run elsewhere or anonymise.
    """
    misspelt = sorted({d.rule.where for d in decisions if d.misspelt})
    advice = []
    if misspelt:
        advice.append(f"Correct the source name in {', '.join(misspelt)} to the name the job reads (or '*'): a "
                      f"misspelt rule is refused wherever the job runs, anonymised or not")
    if len(errors) > sum(d.misspelt for d in decisions):
        advice.append("Run it where the data resides (compute_region=<code>), enable anonymisation where the rule "
                      "allows it, or select other regions")
    return ResidencyError(f"governance policy '{policy.name}' refuses this job (compute_region="
                          f"{compute_region or 'null, undeclared'}); no frame was read:\n  " + "\n  ".join(errors) +
                          "\n" + ". ".join(advice) + "; `visionpilot-data action=audit` shows all rules.")


def format_audit(report: GovernanceReport) -> str:
    """The audit as a Markdown table plus the zones and the verdict, for the console."""
    p = report.policy
    lines = [f"governance policy '{p.name}' (sha256 {p.sha256[:12]}), compute_region="
             f"{report.compute_region or 'null (undeclared: counts as abroad)'}, anonymiser "
             f"{report.anonymiser.describe() if report.anonymiser else 'off'}",
             "",
             "| source | region | frames | resides in | process abroad | rule | decision | zone-excluded | read |",
             "| --- | --- | ---: | --- | --- | --- | --- | ---: | ---: |"]
    for g in report.groups:
        d = g.decision
        if not d.allowed:
            verdict = "REFUSED"
        elif d.needs_anonymisation:
            verdict = "read anonymised"
        else:
            verdict = "read (in residence)" if d.in_residence else "read"
        lines.append(f"| {g.source} | {g.region} | {g.frames} | {d.resides_in} | {d.rule.process_abroad} | "
                     f"{d.rule.where} | {verdict} | {sum(g.excluded.values())} | "
                     f"{g.kept if d.allowed else 0} |")
    if p.zones:
        lines += ["", "restricted zones:"]
        for z in p.zones:
            n = sum(g.excluded.get(z.name, 0) for g in report.groups)
            lines.append(f"  - {z.describe()}: {n} frames excluded")
        unknown = sum(g.no_location for g in report.groups)
        if unknown:
            lines.append(f"  - {unknown} frames without a position (unknown_location={p.unknown_location})")
    lines.append("")
    lines.append(f"frames leave the region as images (previews, prediction images): "
                 f"{'yes' if report.frames_exportable else 'no (withheld)'}")
    if report.errors:
        lines.append("verdict: the job would FAIL before reading any image:")
        lines += [f"  - {e}" for e in report.errors]
    else:
        total = sum(g.kept for g in report.groups)
        lines.append(f"verdict: OK, {total} frames would be read ({report.excluded_count} excluded by zones)")
    return "\n".join(lines)
