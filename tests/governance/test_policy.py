"""Residency rules and restricted zones as plain functions: parsing, decisions, geometry, errors people can read."""

from __future__ import annotations

import numpy as np
import pytest

from visionpilot.governance.policy import CONTAINER_SOURCES, Policy, ResidencyError, normalise_region_code
from visionpilot.governance.zones import haversine_m, points_in_polygon, zone_from_config

from .helpers import policy


def test_sovereign_preset_decides_per_region_and_compute_region() -> None:
    p = Policy.from_config(policy("sovereign"))
    assert p.name == "sovereign" and issubclass(ResidencyError, PermissionError)
    # CN data: never abroad; in China, fine — but its frames may never leave as images.
    cn_us = p.decide("synthetic", "cn", "us", anonymising=True)
    assert not cn_us.allowed and "governance.rules[0]" in cn_us.reason and "never" in cn_us.reason
    cn_cn = p.decide("synthetic", "cn", "cn", anonymising=False)
    assert cn_cn.allowed and cn_cn.in_residence and not cn_cn.exportable
    # DE data: abroad only anonymised (then exportable); at home raw, but raw frames stay home.
    de_us = p.decide("nuscenes", "de", "us", anonymising=False)
    assert not de_us.allowed and de_us.needs_anonymisation and "governance.anonymise.enabled=true" in de_us.reason
    de_us_anon = p.decide("nuscenes", "de", "us", anonymising=True)
    assert de_us_anon.allowed and de_us_anon.exportable
    de_de = p.decide("nuscenes", "de", "de", anonymising=False)
    assert de_de.allowed and not de_de.needs_anonymisation and not de_de.exportable
    # Everything else goes anywhere; an undeclared compute region counts as abroad.
    assert p.decide("synthetic", "us", None, anonymising=False).exportable
    undeclared = p.decide("synthetic", "cn", None, anonymising=False)
    assert not undeclared.allowed and "undeclared" in undeclared.reason


def test_most_specific_rule_wins_and_duplicates_are_refused() -> None:
    p = Policy.from_config({"rules": [
        {"source": "*", "region": "us", "process_abroad": "anonymised_only"},
        {"source": "fleet", "region": "*", "process_abroad": "never"},
        {"source": "fleet", "region": "us", "process_abroad": "allowed", "resides_in": "ca"},
    ]})
    assert p.rule_for("fleet", "us").where == "governance.rules[2]"  # source + region
    assert p.rule_for("nuscenes", "us").where == "governance.rules[0]"  # region beats source
    assert p.rule_for("fleet", "gb").where == "governance.rules[1]"
    assert p.rule_for("nuscenes", "gb").where == "governance.default"
    assert p.decide("fleet", "us", "ca", False).in_residence  # resides_in overrides the data's region
    with pytest.raises(ValueError, match=r"governance.rules\[1\]: source 'a' and region 'us' are already ruled by "
                                         r"governance.rules\[0\]"):
        Policy.from_config({"rules": [{"source": "a", "region": "us"}, {"source": "a", "region": "US"}]})


@pytest.mark.parametrize(("spec", "message"), [
    ({"rules": [{"region": "cn", "process_abroad": "sometimes"}]},
     r"governance.rules\[0\]: field 'process_abroad' must be one of \['never', 'anonymised_only', 'allowed'\], "
     r"found 'sometimes'"),
    ({"rules": [{"region": "china"}]}, r"governance.rules\[0\].region: expected an ISO 3166-1 alpha-2 code"),
    ({"rules": [{"region": "cn", "stays": True}]}, r"governance.rules\[0\]: unknown field\(s\) \['stays'\]"),
    ({"zone": []}, r"governance: unknown field\(s\) \['zone'\]"),
    ({"unknown_location": "ignore"}, r"'unknown_location' must be one of \['keep', 'exclude', 'error'\]"),
    ({"zones": [{"name": "z", "circle": {"lat": 10, "lon": 10}}]},
     r"governance.zones\[0\].circle \('z'\): missing field\(s\) \['radius_m'\]"),
    ({"zones": [{"name": "z", "circle": {"lat": 95, "lon": 10, "radius_m": 5}}]}, r"latitude in \[-90, 90\]"),
    ({"zones": [{"name": "z", "polygon": [[0, 0], [1, 1]]}]}, r"at least 3 \[lat, lon\] vertices"),
    ({"zones": [{"name": "z"}]}, r"exactly one of 'circle'"),
])
def test_bad_policies_name_the_field_expected_and_found(spec: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Policy.from_config(spec)


def test_compute_region_codes() -> None:
    assert normalise_region_code("US") == "us" and normalise_region_code(None) is None
    assert normalise_region_code("null") is None and normalise_region_code("") is None
    with pytest.raises(ValueError, match=r"compute_region: expected an ISO 3166-1 alpha-2 code .* found 'USA'"):
        normalise_region_code("USA")


def test_circle_and_polygon_zones() -> None:
    # One degree of latitude is 111.2 km on the mean sphere; a degree of longitude shrinks with cos(latitude).
    assert haversine_m(np.array([0.0]), np.array([0.0]), 1.0, 0.0)[0] == pytest.approx(111_195, rel=1e-4)
    assert haversine_m(np.array([60.0]), np.array([0.0]), 60.0, 1.0)[0] == pytest.approx(55_597, rel=2e-3)
    circle = zone_from_config({"name": "site", "circle": {"lat": 31.23, "lon": 121.474, "radius_m": 1000},
                               "regions": ["CN"]}, "governance.zones[0]")
    assert circle.applies_to("cn") and not circle.applies_to("us")
    north = 31.23 + np.array([0.0085, 0.0095]) * 1.0  # ~946 m and ~1056 m north
    assert circle.contains(north, np.full(2, 121.474)).tolist() == [True, False]
    # A concave (L-shaped) polygon: the notch is outside.
    ell = zone_from_config({"name": "base", "polygon": [[0, 0], [0, 2], [1, 2], [1, 1], [2, 1], [2, 0]]}, "z")
    inside = ell.contains(np.array([0.5, 1.5, 1.5, 0.5, -0.1]), np.array([0.5, 0.5, 1.5, 1.5, 0.5]))
    assert inside.tolist() == [True, True, False, True, False]
    assert points_in_polygon(np.array([0.5]), np.array([0.5]), ell.polygon).tolist() == [True]
    with pytest.raises(ValueError, match="antimeridian"):
        zone_from_config({"name": "pacific", "polygon": [[0, 179], [1, -179], [-1, -179]]}, "z")


@pytest.mark.parametrize(("regions", "expected"), [("cn", ("cn",)), (["CN", "jp"], ("cn", "jp"))])
def test_zone_regions_are_region_codes(regions: object, expected: tuple[str, ...]) -> None:
    """``regions: cn`` (a bare string, not a list) is one code, not the regions 'c' and 'n' that match no frame."""
    zone = zone_from_config({"name": "site", "circle": {"lat": 31.23, "lon": 121.474, "radius_m": 1000},
                             "regions": regions}, "governance.zones[0]")
    assert zone.regions == expected and zone.applies_to("cn")


@pytest.mark.parametrize(("regions", "found"), [(["china"], "'china'"), ([False], "False")])
def test_zone_regions_that_match_no_frame_are_refused(regions: list, found: str) -> None:
    """A zone whose region is no ISO code (``china``, or YAML's ``no`` read as false) would silently exclude nothing."""
    with pytest.raises(ValueError, match=rf"governance.zones\[0\].regions: expected an ISO 3166-1 alpha-2 code .* "
                                         rf"found {found}"):
        zone_from_config({"name": "site", "circle": {"lat": 31.23, "lon": 121.474, "radius_m": 1000},
                          "regions": regions}, "governance.zones[0]")


@pytest.mark.parametrize("field", ["source", "region"])
@pytest.mark.parametrize("value", [None, ""])
def test_a_rule_with_an_empty_source_or_region_is_refused(field: str, value: object) -> None:
    """YAML ``source:`` (null) made a rule for a source named 'None' that matched nothing (CN data then read abroad
    under the default), and ``region:`` silently became every region; both are errors naming the field."""
    rule = {"source": "*", "region": "cn", "process_abroad": "never", field: value}
    with pytest.raises(ValueError, match=rf"governance.rules\[0\]: field '{field}' must be .* or '\*', found "
                                         rf"{value!r}"):
        Policy.from_config({"rules": [rule]})


def test_a_typo_in_the_anonymiser_settings_is_refused_even_while_it_is_off() -> None:
    """``anonymise: {enable: true}`` left the anonymiser silently off: the settings are checked at parse time."""
    with pytest.raises(ValueError, match=r"governance.anonymise: unknown field\(s\) \['enable'\]; valid: .*'enabled'"):
        Policy.from_config({"anonymise": {"enable": True, "method": "blur"}})
    with pytest.raises(ValueError, match=r"governance.anonymise: field 'method' must be one of \['blur', 'fill'\], "
                                         r"found 'pixelate'"):
        Policy.from_config({"anonymise": {"enabled": False, "method": "pixelate"}})
    assert Policy.from_config(policy("sovereign")).anonymise["enabled"] is False  # the presets parse


@pytest.mark.parametrize(("spec", "message"), [
    ("sovereign", r"governance: expected a mapping \(name, rules, default, zones, .*\), found 'sovereign'"),
    ({"rules": {"region": "cn", "process_abroad": "never"}},
     r"governance.rules: expected a list of rules \[\{source, region, .*\}, ...\], found a mapping"),
    ({"rules": ["cn"]}, r"governance.rules\[0\]: expected a mapping \{source, region, .*\}, found 'cn'"),
    ({"default": "never"}, r"governance.default: expected a mapping \{.*process_abroad.*\}, found 'never'"),
    ({"zones": {"name": "z", "circle": {"lat": 1, "lon": 1, "radius_m": 5}}},
     r"governance.zones: expected a list of zones .*, found a mapping"),
    ({"zones": ["z"]}, r"governance.zones\[0\]: expected a mapping \{name, circle \| polygon, .*\}, found 'z'"),
    ({"zones": [{"name": "z", "circle": {"lat": "31.2N", "lon": 1, "radius_m": 5}}]},
     r"governance.zones\[0\].circle \('z'\): field 'lat' must be a number, found '31.2N'"),
    ({"zones": [{"name": "z", "polygon": [[1, 2], [3], [4, 5]]}]},
     r"governance.zones\[0\].polygon \('z'\): expected at least 3 \[lat, lon\] vertices \(numbers\), found "
     r"\[\[1, 2\], \[3\]"),
    ({"anonymise": "on"}, r"governance.anonymise: expected a mapping \{enabled, method, .*\}, found 'on'"),
])
def test_policies_of_the_wrong_type_name_the_field(spec: object, message: str) -> None:
    """Wrong types gave Python's own errors ('dictionary update sequence element #0 has length 1')."""
    with pytest.raises(ValueError, match=message):
        Policy.from_config(spec)  # type: ignore[arg-type]


@pytest.mark.parametrize("spelt", ["nuScenes", "NUSCENES", " nuscenes "])
def test_a_rule_names_its_source_in_any_case(spelt: str) -> None:
    """``source: nuScenes`` (the dataset's own spelling) never matched Frame.source 'nuscenes': the rule did nothing
    and DE nuScenes data that must stay in Germany was read abroad under the default."""
    p = Policy.from_config({"rules": [{"source": spelt, "region": "de", "resides_in": "de", "process_abroad": "never"}]})
    decision = p.decide("nuscenes", "de", "us", anonymising=True)
    assert not decision.allowed and decision.rule.where == "governance.rules[0]"
    assert p.rule_for("NuScenes", "de").where == "governance.rules[0]"  # a source's own name in any case, too
    assert p.decide("synthetic", "de", "us", anonymising=False).allowed  # other sources keep the default
    with pytest.raises(ValueError, match=r"governance.rules\[1\]: source 'nuscenes' and region 'de' are already "
                                         r"ruled by governance.rules\[0\]"):
        Policy.from_config({"rules": [{"source": spelt, "region": "de"}, {"source": "nuscenes", "region": "de"}]})


def test_policy_hashes_of_lower_case_policies_are_unchanged() -> None:
    """Lineage records name policies by sha256: names are lower-cased, so a policy already written in lower case
    keeps the hash it had (values computed before the change); one spelt otherwise hashes as what it now means."""
    team = {"name": "team", "rules": [{"source": "nuscenes", "region": "de", "process_abroad": "never"},
                                      {"source": "fleet", "process_abroad": "anonymised_only", "resides_in": "us"}]}
    assert Policy.from_config(policy("sovereign")).sha256.startswith("9e28c48577f0c534")  # docs/governance.md
    assert Policy.from_config(team).sha256.startswith("3bba6a348f169dd7")
    team["rules"][0]["source"] = "nuScenes"
    assert Policy.from_config(team).sha256.startswith("3bba6a348f169dd7")


@pytest.mark.parametrize("container", ["mixed", "Shards"])
def test_a_rule_naming_a_container_source_is_refused(container: str) -> None:
    """A mixed source's frames (and streamed shards') carry their datasets' names: a rule for 'mixed' matched none."""
    with pytest.raises(ValueError, match=rf"governance.rules\[0\]: field 'source' must be the name of the dataset "
                                         rf"the frames come from .* or '\*', found '{container}': .* so this rule "
                                         rf"would match no frame"):
        Policy.from_config({"rules": [{"source": container, "region": "cn", "process_abroad": "never"}]})
    from visionpilot.data.sources.mixed import MixedSource
    from visionpilot.data.sources.streaming import ShardSource

    assert set(CONTAINER_SOURCES) == {MixedSource.name, ShardSource.name}


@pytest.mark.parametrize("spelt", ["nu-scenes", "nu_scenes", "Nu Scenes", "nuscene", "nuscenes-mini", "nuscense"])
@pytest.mark.parametrize("compute_region", ["us", "de"])
def test_a_rule_spelt_almost_like_a_source_the_job_reads_refuses_its_frames(spelt: str, compute_region: str) -> None:
    """A rule meant for nuScenes but misspelt matched none of its frames, which then fell to the default (read
    abroad, and their images exportable at home): the frames are refused, naming the field, expected and found."""
    p = Policy.from_config({"name": "team", "rules": [{"source": spelt, "region": "de", "process_abroad": "never"}]})
    decision = p.decide("nuscenes", "de", compute_region, anonymising=True)
    assert not decision.allowed and not decision.exportable and decision.rule.where == "governance.rules[0]"
    assert decision.reason == (
        f"governance.rules[0]: field 'source' is {spelt.strip().lower()!r}, spelt almost like this source's name "
        f"'nuscenes' but not matching it, so the rule would be skipped for these frames and they would fall to "
        f"governance.default. Expected 'nuscenes' (Frame.source) or '*': correct the rule's source, or, if "
        f"{spelt.strip().lower()!r} is another dataset, add a rule naming 'nuscenes'")
    assert p.decide("synthetic", "de", compute_region, anonymising=False).allowed  # other sources: the default
    assert p.decide("nuscenes", "gb", compute_region, anonymising=False).allowed  # regions the rule does not name


def test_custom_source_names_stay_legitimate() -> None:
    """Rules for the team's own sources (not read by every job) and for similar names ruled each by its own rule
    are not mistaken for misspellings."""
    p = Policy.from_config({"rules": [{"source": "fleet", "process_abroad": "never", "resides_in": "us"},
                                      {"source": "fleet2", "process_abroad": "anonymised_only"},
                                      {"source": "nuscene", "region": "de", "process_abroad": "never"},
                                      {"source": "NuScenes", "region": "de", "process_abroad": "allowed"}]})
    assert p.decide("synthetic", "gb", "us", False).rule.where == "governance.default"
    assert not p.decide("Fleet", "gb", "gb", False).allowed and p.decide("fleet", "gb", "us", False).allowed
    assert p.decide("fleet2", "gb", "us", False).needs_anonymisation
    assert p.decide("nuscenes", "de", "us", False).rule.where == "governance.rules[3]"  # named itself: no near miss


@pytest.mark.parametrize("where", ["rules", "default", "zones"])
def test_a_null_note_is_no_note(where: str) -> None:
    """``note: null`` (or ``note:`` left empty in YAML) was stored, shown and hashed as the text 'None'."""
    spec = {"rules": [{"region": "cn", "process_abroad": "never", "note": None}], "default": {"note": None},
            "zones": [{"name": "site", "circle": {"lat": 1, "lon": 1, "radius_m": 5}, "note": None}]}
    p = Policy.from_config(spec)
    assert p.rules[0].note == p.default.note == p.zones[0].note == ""
    left_out = {"rules": [{"region": "cn", "process_abroad": "never"}], "zones": [{"name": "site", "circle": {
        "lat": 1, "lon": 1, "radius_m": 5}}]}
    assert p.sha256 == Policy.from_config(left_out).sha256  # null and left out are the same policy
    assert Policy.from_config({"default": {"note": "ok"}}).default.note == "ok"


@pytest.mark.parametrize(("spec", "message"), [
    ({"rules": [{"region": "cn", "note": ["no", "export"]}]},
     r"governance.rules\[0\]: field 'note' must be text \(quote it in YAML\) or null, found \['no', 'export'\]"),
    ({"default": {"note": 2024}}, r"governance.default: field 'note' must be text .* found 2024"),
    ({"zones": [{"name": "site", "circle": {"lat": 1, "lon": 1, "radius_m": 5}, "note": {"law": "x"}}]},
     r"governance.zones\[0\] \('site'\): field 'note' must be text .* found \{'law': 'x'\}"),
])
def test_a_note_that_is_not_text_is_refused(spec: dict, message: str) -> None:
    """A list or number (a YAML slip) was stored as its Python repr: refused, naming the field and what was found."""
    with pytest.raises(ValueError, match=message):
        Policy.from_config(spec)


@pytest.mark.parametrize("second", ["site", "Site "])
def test_duplicate_zone_names_are_refused(second: str) -> None:
    """Audits count excluded frames by zone name: two zones of one name each showed the other's frames too."""
    zones = [{"name": "site", "circle": {"lat": 1, "lon": 1, "radius_m": 5}},
             {"name": "other", "polygon": [[0, 0], [0, 1], [1, 1]]},
             {"name": second, "circle": {"lat": 2, "lon": 2, "radius_m": 5}}]
    with pytest.raises(ValueError, match=rf"governance.zones\[2\]: field 'name' is {second!r}, already the name of "
                                         rf"governance.zones\[0\]; give every zone its own name"):
        Policy.from_config({"zones": zones})
    unnamed = [{"circle": {"lat": 1, "lon": 1, "radius_m": 5}}, {"circle": {"lat": 2, "lon": 2, "radius_m": 5}}]
    assert [z.name for z in Policy.from_config({"zones": unnamed}).zones] == ["governance.zones[0]",
                                                                             "governance.zones[1]"]


def test_a_null_policy_name_is_custom() -> None:
    """``name: null`` named the policy 'None' in errors, audits and every lineage record."""
    assert Policy.from_config({"name": None}).name == Policy.from_config({}).name == "custom"
