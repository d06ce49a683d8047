"""Residency policy: where each source's data of each region resides and whether it may be processed elsewhere.

A policy (``configs/governance/<name>.yaml``, the Hydra group ``governance=...``) holds:

- ``rules``: ``{source, region, resides_in, process_abroad, note}`` entries. ``source`` is a source name
  (``Frame.source``: ``synthetic``, ``nuscenes``, ..., in any case: ``nuScenes`` rules ``nuscenes``) or ``"*"``;
  ``region`` a region code or ``"*"``;
  ``resides_in`` the region code where the data is stored (default: the data's own region); ``process_abroad``
  one of :data:`PROCESSING`:

  ==================  ======================================================================================
  ``never``           only a job whose ``compute_region`` is ``resides_in`` may read it
  ``anonymised_only`` elsewhere it may be read only through the anonymiser (faces and plates blurred)
  ``allowed``         anywhere
  ==================  ======================================================================================

  The most specific matching rule wins: source and region > region > source > ``default``. Two rules with the
  same source and region are an error. A rule that would silently match nothing is refused: one naming a
  container (``mixed``, ``shards``: their frames carry their datasets' names) when the policy is read, and one
  spelt almost like a source the job reads (``nu-scenes``, ``nuscene``) when the job is ruled on
  (:meth:`Policy.decide`).
- ``default``: the rule for data no rule names (``process_abroad: allowed`` unless said otherwise).
- ``zones``: restricted zones (:mod:`visionpilot.governance.zones`); ``unknown_location``: what happens to frames
  without a position in a region a zone applies to (``keep``, ``exclude`` or ``error``).
- ``anonymise``: the anonymiser's settings (:mod:`visionpilot.governance.anonymise`); ``enabled: true`` runs it on
  every frame the job reads.

A job's ``compute_region`` is where it runs (ISO 3166-1 alpha-2). ``null`` means *undeclared* and counts as
abroad for every rule: data that may go anywhere is read as before, restricted data needs a declaration (fail
closed; docs/governance.md explains why).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from visionpilot.governance.zones import Zone, zone_from_config

#: What ``process_abroad`` may say, most restrictive first.
PROCESSING: tuple[str, ...] = ("never", "anonymised_only", "allowed")
ANY = "*"
UNKNOWN_LOCATION: tuple[str, ...] = ("keep", "exclude", "error")
_RULE_FIELDS = {"source", "region", "resides_in", "process_abroad", "note"}
_POLICY_FIELDS = {"name", "rules", "default", "zones", "unknown_location", "anonymise"}
#: Sources that hold other sources' frames (``MixedSource.name``, ``ShardSource.name``; written out here so that
#: reading a policy does not import the data stack): their frames carry the name of the dataset they come from.
CONTAINER_SOURCES: dict[str, str] = {
    "mixed": "a mixed source's frames are ruled by each member's own name",
    "shards": "streamed shards' frames keep the name of the source they were written from",
}
#: How alike (difflib ratio of the letters and digits) a rule's source and a source a job reads must be for the rule
#: to count as misspelt: punctuation, one wrong, missing or extra letter in names of 7+ letters (``nu-scenes``,
#: ``nuscene``), a suffix of up to a quarter of the name (``nuscenes-mini``).
NEAR_MISS = 0.8


class ResidencyError(PermissionError):
    """A job asked for data it may not process where it runs (or not in the form it would read it)."""


def normalise_region_code(code: Any, what: str = "compute_region") -> str | None:
    """A region code lower-cased (``US`` -> ``us``); None, ``""`` and ``"null"`` mean undeclared."""
    if code is None or (isinstance(code, str) and code.strip().lower() in ("", "null", "none")):
        return None
    text = str(code).strip().lower()
    if len(text) != 2 or not text.isalpha():
        raise ValueError(f"{what}: expected an ISO 3166-1 alpha-2 code (e.g. us, cn, de) or null, found {code!r}")
    return text


@dataclass(frozen=True)
class Rule:
    """One residency rule; ``where`` names it in messages (``governance.rules[1]`` or ``governance.default``)."""

    where: str
    source: str = ANY
    region: str = ANY
    resides_in: str | None = None
    process_abroad: str = "allowed"
    note: str = ""

    def matches(self, source: str, region: str) -> bool:
        # Regardless of case: a rule written with a dataset's own spelling ('nuScenes') must rule its frames.
        return self.source in (ANY, source.lower()) and self.region in (ANY, region)

    @property
    def specificity(self) -> int:
        return 2 * (self.region != ANY) + (self.source != ANY)

    def describe(self) -> str:
        """``governance.rules[0] (source *, region cn: process_abroad=never)``."""
        return f"{self.where} (source {self.source}, region {self.region}: process_abroad={self.process_abroad})"

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "region": self.region, "resides_in": self.resides_in,
                "process_abroad": self.process_abroad, "note": self.note}


def _found(value: Any) -> str:
    return "a mapping" if isinstance(value, Mapping) else repr(value)


def expect_mapping(value: Any, where: str, what: str) -> dict[str, Any]:
    """``value`` as a dict (None: empty), or an error naming ``where``, the expected ``what`` and what was found."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: expected a mapping {what}, found {_found(value)}")
    return dict(value)


def expect_list(value: Any, where: str, what: str) -> list[Any]:
    """``value`` as a list (None: empty), or an error naming ``where``, the expected ``what`` and what was found."""
    if value is None:
        return []
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
        raise ValueError(f"{where}: expected a list of {what}, found {_found(value)}")
    return list(value)


def note_from_config(value: Any, where: str) -> str:
    """A rule's or zone's ``note``: text, or left out / null for none (not the text 'None')."""
    if value is None:
        return ""
    if not isinstance(value, str):  # a list or number is a YAML slip (unquoted text, a '-' too many): say so
        raise ValueError(f"{where}: field 'note' must be text (quote it in YAML) or null, found {value!r}")
    return value


def rule_from_config(spec: Mapping[str, Any], where: str) -> Rule:
    spec = expect_mapping(spec, where, "{source, region, resides_in, process_abroad, note}")
    unknown = sorted(set(spec) - _RULE_FIELDS)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; a rule has {sorted(_RULE_FIELDS)}")
    mode = str(spec.get("process_abroad", "allowed"))
    if mode not in PROCESSING:
        raise ValueError(f"{where}: field 'process_abroad' must be one of {list(PROCESSING)}, found {mode!r}")
    # Left out means '*'; an explicit null or empty value is a mistake, not a wildcard (nor a source named 'None').
    for key, what in (("source", "a source name (Frame.source)"), ("region", "a region code")):
        value = spec.get(key, ANY)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{where}: field '{key}' must be {what} or '{ANY}', found {value!r}")
    # Lower-cased like Frame.source names are matched (an already lower-case policy keeps its sha256).
    source = str(spec.get("source", ANY)).strip().lower()
    if source in CONTAINER_SOURCES:
        raise ValueError(f"{where}: field 'source' must be the name of the dataset the frames come from (Frame.source: "
                         f"synthetic, nuscenes, culane, tusimple or your own source's name) or '{ANY}', found "
                         f"{spec['source']!r}: {CONTAINER_SOURCES[source]}, so this rule would match no frame")
    region = str(spec.get("region", ANY)).strip().lower()
    if region != ANY and normalise_region_code(region, f"{where}.region") is None:  # 'null', 'none'
        raise ValueError(f"{where}: field 'region' must be a region code or '{ANY}', found {spec['region']!r}")
    resides = normalise_region_code(spec.get("resides_in"), f"{where}.resides_in")
    return Rule(where, source, region, resides, mode, note_from_config(spec.get("note"), where))


def _letters(name: str) -> str:
    """A name without case, spaces or punctuation: ``Nu-Scenes`` and ``nu_scenes`` are both ``nuscenes``."""
    return re.sub(r"[^0-9a-z]", "", name.lower())


@dataclass(frozen=True)
class Decision:
    """What a policy says about reading one source's frames of one region from ``compute_region``."""

    source: str
    region: str
    rule: Rule
    resides_in: str
    compute_region: str | None
    in_residence: bool  # the job runs where the data resides
    allowed: bool  # it may read the data (with anonymisation where ``needs_anonymisation``)
    needs_anonymisation: bool  # only through the anonymiser
    exportable: bool  # frames (e.g. prediction images) may leave the residence region in the form the job reads
    reason: str

    @property
    def misspelt(self) -> bool:
        """Refused because the rule meant for these frames misspells their source (it does not match them)."""
        return not self.rule.matches(self.source, self.region)


@dataclass
class Policy:
    """A residency policy (see the module docstring)."""

    name: str = "open"
    rules: list[Rule] = field(default_factory=list)
    default: Rule = field(default_factory=lambda: Rule("governance.default"))
    zones: list[Zone] = field(default_factory=list)
    unknown_location: str = "keep"
    anonymise: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, spec: Mapping[str, Any] | None) -> Policy:
        """Parse a policy config (a plain mapping; None gives the open policy), checking every field."""
        spec = expect_mapping(spec, "governance", "(name, rules, default, zones, unknown_location, anonymise; a "
                                                  "preset is selected with governance=<name> on the command line)")
        unknown = sorted(set(spec) - _POLICY_FIELDS)
        if unknown:
            raise ValueError(f"governance: unknown field(s) {unknown}; a policy has {sorted(_POLICY_FIELDS)}")
        rules = [rule_from_config(r, f"governance.rules[{i}]") for i, r in
                 enumerate(expect_list(spec.get("rules"), "governance.rules", "rules [{source, region, resides_in, "
                                                                                "process_abroad, note}, ...]"))]
        seen: dict[tuple[str, str], str] = {}
        for r in rules:
            if (r.source, r.region) in seen:
                raise ValueError(f"{r.where}: source {r.source!r} and region {r.region!r} are already ruled by "
                                 f"{seen[(r.source, r.region)]}; keep one rule per source and region")
            seen[(r.source, r.region)] = r.where
        default = expect_mapping(spec.get("default"), "governance.default", "{resides_in, process_abroad, note}")
        if {"source", "region"} & set(default):
            raise ValueError("governance.default: applies to every source and region; remove 'source'/'region'")
        unknown_location = str(spec.get("unknown_location", "keep"))
        if unknown_location not in UNKNOWN_LOCATION:
            raise ValueError(f"governance: field 'unknown_location' must be one of {list(UNKNOWN_LOCATION)}, found "
                             f"{unknown_location!r}")
        zones = [zone_from_config(z, f"governance.zones[{i}]") for i, z in
                 enumerate(expect_list(spec.get("zones"), "governance.zones", "zones [{name, circle | polygon, "
                                                                              "regions, note}, ...]"))]
        names: dict[str, int] = {}
        for i, z in enumerate(zones):  # audits count excluded frames by zone name: two zones would share a count
            key = z.name.strip().lower()
            if key in names:
                raise ValueError(f"governance.zones[{i}]: field 'name' is {z.name!r}, already the name of "
                                 f"governance.zones[{names[key]}]; give every zone its own name")
            names[key] = i
        from visionpilot.governance.anonymise import check_config  # lazily: it imports the data package

        return cls(name=str(spec.get("name") or "custom"), rules=rules,
                   default=rule_from_config(default, "governance.default"), zones=zones,
                   unknown_location=unknown_location, anonymise=check_config(spec.get("anonymise")))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "rules": [r.to_dict() for r in self.rules], "default": self.default.to_dict(),
                "zones": [z.to_dict() for z in self.zones], "unknown_location": self.unknown_location}

    @property
    def sha256(self) -> str:
        """Hash of the canonical JSON of the rules and zones (what decides what a job may read)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    def rule_for(self, source: str, region: str) -> Rule:
        """The most specific rule matching ``source`` and ``region`` (or the default)."""
        matching = [r for r in self.rules if r.matches(source, region)]
        return max(matching, key=lambda r: r.specificity) if matching else self.default

    def misspelt_rule(self, source: str, region: str) -> Rule | None:
        """A rule for ``region`` naming a source spelt almost like ``source`` (``nu-scenes``, ``nuscene`` for
        ``nuscenes``), if no rule names ``source`` itself: meant for these frames, it matches none of them."""
        named = [r for r in self.rules if r.source != ANY and r.region in (ANY, region)]
        name = source.lower()
        if any(r.source == name for r in named):
            return None
        alike = [r for r in named if difflib.SequenceMatcher(None, _letters(r.source), _letters(name)).ratio()
                 >= NEAR_MISS]  # 1.0 for 'nu-scenes', 'Nu Scenes'; 0.93 for 'nuscene'; 0.8 for 'nuscenes-mini'
        return alike[0] if alike else None

    def decide(self, source: str, region: str, compute_region: str | None, anonymising: bool) -> Decision:
        """May a job in ``compute_region`` (None: undeclared) read ``source``'s frames of ``region``?"""
        misspelt = self.misspelt_rule(source, region)
        if misspelt is not None:
            # Refused wherever the job runs: the rule meant for these frames would be skipped, at home too (where it
            # decides whether frames may leave as images).
            resides, name = misspelt.resides_in or region, source.lower()
            fallback = self.rule_for(source, region)
            return Decision(source, region, misspelt, resides, compute_region, compute_region == resides, False, False,
                            False, f"{misspelt.where}: field 'source' is {misspelt.source!r}, spelt almost like this "
                            f"source's name {name!r} but not matching it, so the rule would be skipped for these frames "
                            f"and they would fall to {fallback.where}. Expected {name!r} (Frame.source) or '{ANY}': "
                            f"correct the rule's source, or, if {misspelt.source!r} is another dataset, add a rule "
                            f"naming {name!r}")
        rule = self.rule_for(source, region)
        resides = rule.resides_in or region
        home = compute_region is not None and compute_region == resides
        where = "an undeclared compute region (compute_region=null counts as abroad)" if compute_region is None \
            else f"compute region '{compute_region}'"
        mode = rule.process_abroad
        if home or mode == "allowed":
            # Frames read raw may leave only if the rule lets them go anywhere (or they are anonymised and may).
            exportable = mode == "allowed" or (mode == "anonymised_only" and anonymising)
            why = ("the job runs where the data resides" if home else f"{rule.describe()} allows processing abroad")
            return Decision(source, region, rule, resides, compute_region, home, True, False, exportable, why)
        if mode == "never":
            return Decision(source, region, rule, resides, compute_region, False, False, False, False,
                            f"{rule.describe()}: data resides in '{resides}' and may not be processed in {where}")
        ok = anonymising
        why = (f"{rule.describe()}: read through the anonymiser" if ok else
               f"{rule.describe()}: data resides in '{resides}' and may be processed in {where} only anonymised, but "
               f"anonymisation is off (set governance.anonymise.enabled=true)")
        return Decision(source, region, rule, resides, compute_region, False, ok, True, ok, why)

    def zones_for(self, region: str) -> list[Zone]:
        return [z for z in self.zones if z.applies_to(region)]
