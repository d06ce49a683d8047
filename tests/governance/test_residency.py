"""Residency enforced by every datamodule before any frame is read; zones keep frames out of every batch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.data.conftest import TinySource
from visionpilot.cli.data import run as data_run
from visionpilot.data.datamodule import VisionPilotDataModule
from visionpilot.data.replay import ReplayDataModule
from visionpilot.data.shards import write_shards
from visionpilot.data.sources.mixed import MixedSource, SourceDataModule
from visionpilot.data.sources.streaming import ShardSource, StreamingDataModule
from visionpilot.data.sources.synthetic import SyntheticSource
from visionpilot.data.splits import make_splits
from visionpilot.data.vocab import PRIVACY_CLASSES
from visionpilot.governance import ResidencyError, high_frequency_energy
from visionpilot.governance.anonymise import AnonymisedSource, Anonymiser
from visionpilot.governance.zones import haversine_m
from visionpilot.training.train import build, train

from .helpers import TINY, CountingSource, compose_cfg

COUNTING = "data.source._target_=tests.governance.helpers.CountingSource"
PLATE = PRIVACY_CLASSES.index("licence_plate")


def _identity(frame: Any, seed: int) -> Any:
    return frame


def test_us_job_on_cn_data_fails_before_reading_any_frame(tmp_path: Path) -> None:
    CountingSource.reset()
    cfg = compose_cfg("train", tmp_path, [*TINY, COUNTING, "governance=sovereign", "compute_region=US",
                                          "data.regions=[cn,us]", "trainer.max_steps=1"])
    message = (r"(?s)governance policy 'sovereign' refuses this job \(compute_region=us\); no frame was read:.*"
               r"synthetic / cn \(6 frames\): governance.rules\[0\] \(source \*, region cn: process_abroad=never\): "
               r"data resides in 'cn' and may not be processed in compute region 'us'")
    with pytest.raises(ResidencyError, match=message):
        train(cfg)
    assert CountingSource.loads == 0  # not an image, not even a label-only frame
    assert not list(tmp_path.rglob("*.png")) and not list(tmp_path.rglob("*.ckpt"))


def test_cn_job_reads_cn_data_but_withholds_prediction_images(tmp_path: Path) -> None:
    overrides = [*TINY, "trainer.max_steps=1", "trainer.max_epochs=-1", "trainer.limit_val_batches=1"]
    _, objects = train(compose_cfg("train", tmp_path / "cn", [*overrides, "governance=sovereign", "compute_region=cn",
                                                              "data.regions=[cn]"]))
    report = objects["datamodule"].governance_report
    assert report.ok and not report.frames_exportable
    assert not list((tmp_path / "cn").rglob("*.png"))  # frames of CN data never leave as images
    assert objects["model"].num_val_examples == 0
    # The same run on data that may go anywhere writes its prediction images.
    train(compose_cfg("train", tmp_path / "us", [*overrides, "governance=sovereign", "compute_region=cn",
                                                 "data.regions=[us]"]))
    assert list((tmp_path / "us" / "plots").glob("val_s*.png"))


def test_anonymised_only_data_is_read_abroad_only_through_the_anonymiser(tmp_path: Path) -> None:
    # Full-size frames (plates and faces a few pixels tall, as in training) and half the scenes in val/test.
    base = [*TINY, "governance=sovereign", "compute_region=us", "data.regions=[de]", "data.image_size=[256,704]",
            "data.source.scenes_per_region=8", "data.split_fractions={train: 0.5, val: 0.25, test: 0.25}"]
    with pytest.raises(ResidencyError, match=r"synthetic / de \(16 frames\): governance.rules\[1\] \(source \*, region "
                                             r"de: process_abroad=anonymised_only\).* only anonymised, but "
                                             r"anonymisation is off \(set governance.anonymise.enabled=true\)"):
        build(compose_cfg("train", tmp_path, base))["datamodule"].setup("fit")
    dm = build(compose_cfg("train", tmp_path, [*base, "governance.anonymise.enabled=true"]))["datamodule"]
    dm.setup("fit")
    assert dm.governance_report.ok and dm.governance_report.frames_exportable  # anonymised frames may leave
    raw, kept = [], []
    for split in ("train", "val", "test"):
        ds = dm.datasets[split]
        for k, ref in enumerate(ds.refs):
            frame = ds[(0, k)] if split == "train" else ds[k]
            assert frame.meta["anonymised"] == "blur"
            source_cam = dm.source.load(ref.index).cameras[0]
            if split != "train":  # val/test only resize (a no-op here): pixels and boxes line up with the source
                plates = source_cam.privacy_boxes[source_cam.privacy_classes == PLATE]
                raw.append((source_cam.image, plates[(plates[:, 3] - plates[:, 1]) >= 4]))  # text: >= 4 px tall
                kept.append(frame.cameras[0].image)
    pairs = [(img, out, b) for (img, b), out in zip(raw, kept) if len(b)]
    assert len(pairs) >= 2, "too few plates of 4 px or more in the val/test frames"
    before = np.array([high_frequency_energy(img, b) for img, _, b in pairs])
    after = np.array([high_frequency_energy(out, b) for _, out, b in pairs])
    assert (before > 10).all(), f"plates should carry detail before anonymisation: {before}"
    assert (after <= 0.1 * before).all(), f"high-frequency energy drop per frame: {1 - after / before}"
    # At home, the same data is read raw (no anonymiser needed), and its frames stay home.
    home = build(compose_cfg("train", tmp_path, [*base, "compute_region=de"]))["datamodule"]
    home.setup("fit")
    assert home.governance.anonymiser is None and not home.governance_report.frames_exportable


def _zone_around(src: SyntheticSource, region: str, scene: int, radius_m: float) -> tuple[dict, set[str]]:
    """A circle around a scene's first frame, and the ids of every frame of the source inside it."""
    first = src.regions.index(region) * src.scenes_per_region * src.frames_per_scene + scene * src.frames_per_scene
    lat, lon = src.latlon(first)
    zone = {"name": "site", "circle": {"lat": lat, "lon": lon, "radius_m": radius_m}}
    refs = src.index()
    inside = {r.frame_id for r in refs if haversine_m(np.array([src.latlon(r.index)[0]]),
                                                      np.array([src.latlon(r.index)[1]]), lat, lon)[0] <= radius_m}
    return zone, inside


def _batch_ids(dm: VisionPilotDataModule) -> list[str]:
    return [fid for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()) for batch in loader
            for fid in batch["frame_id"]]


@pytest.mark.parametrize("replay", [False, True])
def test_frames_in_a_restricted_zone_never_reach_a_batch(replay: bool) -> None:
    src = SyntheticSource("front1", regions=["gb", "us"], scenes_per_region=4, frames_per_scene=4,
                          image_size=(32, 88), fps=0.1)  # 10 s steps: a scene spans ~0.5 km, partly in the zone
    zone, inside = _zone_around(src, "us", 1, 150.0)
    assert 0 < len(inside) < 4, inside
    kwargs = {"image_size": (32, 88), "batch_size": 3, "drop_last": False, "train_transform": _identity,
              "val_transform": _identity, "governance": {"zones": [zone]}}
    if replay:  # the zone lies in the replay region: replay frames are governed too
        dm = ReplayDataModule(src, regions=["gb"], replay_regions=["us"], replay_fraction=0.34, **kwargs)
    else:
        dm = VisionPilotDataModule(src, regions=["gb", "us"], **kwargs)
    dm.setup("fit")
    assert dm.governance_report.excluded_ids == inside
    seen = _batch_ids(dm)
    assert seen and not inside & set(seen)
    if not replay:
        assert set(seen) == {r.frame_id for r in src.index()} - inside  # everything else is read
        counts = dm.frame_counts
        assert sum(counts[s]["us"] for s in counts) == 16 - len(inside)
    else:
        us_train = {r.frame_id for r in dm.manifest.select(src.index(), "train", ["us"])}
        assert {r.frame_id for r in dm.datasets["train"].replay.refs} == us_train - inside
        assert dm.replay_frame_counts["us"] == len(us_train - inside)


def test_frames_without_a_position_follow_unknown_location() -> None:
    zone = {"name": "site", "circle": {"lat": 0.0, "lon": 0.0, "radius_m": 10.0}, "regions": ["de"]}
    src = TinySource({"de": 3, "gb": 3})
    common = {"image_size": None, "batch_size": 2, "train_transform": _identity, "val_transform": _identity}
    with pytest.raises(ResidencyError, match=r"tiny / de: 6 frames have no position, but zones \['site'\] apply to "
                                             r"region 'de' \(governance.unknown_location=error"):
        VisionPilotDataModule(src, governance={"zones": [zone], "unknown_location": "error"}, **common).setup()
    dm = VisionPilotDataModule(src, governance={"zones": [zone], "unknown_location": "exclude"}, **common)
    dm.setup()
    assert {r.region for r in dm.refs} == {"gb"} and dm.governance_report.excluded_count == 6
    dm = VisionPilotDataModule(src, governance={"zones": [zone], "unknown_location": "keep"}, **common)
    dm.setup()
    assert dm.governance_report.excluded_count == 0 and dm.governance_report.groups[0].no_location == 6


class FleetSource(TinySource):
    name = "fleet"


def test_mixed_sources_are_ruled_by_their_own_names() -> None:
    mixed = MixedSource({"fleet": FleetSource({"us": 3}), "public": TinySource({"us": 3})})
    gov = {"rules": [{"source": "fleet", "region": "us", "process_abroad": "never"}]}
    dm = SourceDataModule(mixed, image_size=None, governance=gov, compute_region="gb")
    with pytest.raises(ResidencyError, match=r"fleet / us \(6 frames\): governance.rules\[0\]") as err:
        dm.setup()
    assert "tiny / us" not in str(err.value)
    dm = SourceDataModule(mixed, image_size=None, governance=gov, compute_region="us")
    dm.setup()
    assert {(g.source, g.region, g.frames) for g in dm.governance_report.groups} == {("fleet", "us", 6),
                                                                                      ("tiny", "us", 6)}


def test_replay_regions_are_ruled_only_when_replay_frames_are_read() -> None:
    source = SyntheticSource(rig="front1", regions=["cn", "gb"], scenes_per_region=3, frames_per_scene=2,
                             image_size=(32, 88))
    gov = {"rules": [{"region": "cn", "process_abroad": "never"}]}
    kwargs = {"regions": ["gb"], "replay_regions": ["cn"], "batch_size": 4, "image_size": (32, 88),
              "governance": gov, "compute_region": "gb"}
    with pytest.raises(ResidencyError, match=r"synthetic / cn"):
        ReplayDataModule(source, replay_fraction=0.25, **kwargs).setup("fit")
    dm = ReplayDataModule(source, replay_fraction=0.0, **kwargs)  # no CN frame is read: nothing to refuse
    dm.setup("fit")
    assert {g.region for g in dm.governance_report.groups} == {"gb"}


def test_shards_of_a_mixed_source_are_ruled_by_their_members_names(tmp_path: Path) -> None:
    # A shard root records the source it was written from; for a mixed source that name is "mixed", which no rule
    # names: without the members' names a rule for "fleet" would not apply to streamed fleet frames (fail open).
    mixed = MixedSource({"fleet": FleetSource({"us": 3}), "public": TinySource({"us": 3})})
    refs = mixed.index()
    write_shards(mixed, refs, make_splits(refs, seed=0), ["us"], tmp_path / "shards", chunk_bytes="40KB")
    gov = {"rules": [{"source": "fleet", "region": "us", "process_abroad": "never"}]}
    dm = StreamingDataModule(tmp_path / "shards", image_size=None, batch_size=2, governance=gov, compute_region="gb")
    with pytest.raises(ResidencyError, match=r"fleet / us \(6 frames\): governance.rules\[0\]"):
        dm.setup("fit")
    dm = StreamingDataModule(tmp_path / "shards", image_size=None, batch_size=2, governance=gov, compute_region="us")
    dm.setup("fit")
    assert {(g.source, g.region, g.frames) for g in dm.governance_report.groups} == {("fleet", "us", 6),
                                                                                      ("tiny", "us", 6)}
    # A root written before the members were recorded cannot be ruled by source: refused, naming file and field.
    meta_path = tmp_path / "shards" / "visionpilot.json"
    meta = json.loads(meta_path.read_text())
    del meta["members"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"visionpilot.json: field 'members' is missing: .* re-shard"):
        ShardSource(tmp_path / "shards")


def test_shards_of_a_mixed_source_stay_ruled_by_their_members_names_when_re_sharded(tmp_path: Path) -> None:
    """Re-sharding shards (``action=shard data=streaming``, e.g. anonymised, to ship abroad) wrote no 'members': the
    new root was unreadable ("field 'members' is missing ... re-shard"), whatever the user re-sharded with."""
    mixed = MixedSource({"fleet": FleetSource({"us": 3}), "public": TinySource({"us": 3})})
    refs = mixed.index()
    write_shards(mixed, refs, make_splits(refs, seed=0), ["us"], tmp_path / "a", chunk_bytes="40KB")
    first = ShardSource(tmp_path / "a")
    anonymised = AnonymisedSource(first, Anonymiser(detector=lambda image: (np.zeros((0, 4)), np.zeros(0))))
    for i, source in enumerate([first, anonymised]):
        write_shards(source, first.index(), first.manifest, ["us"], tmp_path / f"b{i}", chunk_bytes="40KB")
        again = ShardSource(tmp_path / f"b{i}")
        assert again.name == "mixed" and again.member_names == {"fleet": "fleet", "public": "tiny"}
        gov = {"rules": [{"source": "fleet", "region": "us", "process_abroad": "never"}]}
        dm = StreamingDataModule(tmp_path / f"b{i}", image_size=None, batch_size=2, governance=gov,
                                 compute_region="gb")
        with pytest.raises(ResidencyError, match=r"fleet / us \(6 frames\): governance.rules\[0\]"):
            dm.setup("fit")


def test_streaming_refuses_shards_that_hold_zone_frames(tmp_path: Path) -> None:
    src = SyntheticSource("front1", regions=["us"], scenes_per_region=3, frames_per_scene=2, image_size=(32, 88))
    refs = src.index()
    write_shards(src, refs, make_splits(refs, seed=0), ["us"], tmp_path / "shards", chunk_bytes="40KB")
    # Shards keep the face and plate boxes, so streamed frames can be anonymised like rendered ones.
    index_of = {r.frame_id: r.index for r in refs}
    shard_src = ShardSource(tmp_path / "shards")
    for ref in shard_src.index():
        a, b = src.load(index_of[ref.frame_id]).cameras[0], shard_src.load(ref.index).cameras[0]
        assert np.array_equal(a.privacy_boxes, b.privacy_boxes) and np.array_equal(a.privacy_classes,
                                                                                   b.privacy_classes)
    lat, lon = src.latlon(0)
    gov = {"name": "sites", "zones": [{"name": "site", "circle": {"lat": lat, "lon": lon, "radius_m": 1.0}}]}
    dm = StreamingDataModule(tmp_path / "shards", image_size=None, batch_size=2, governance=gov)
    with pytest.raises(ResidencyError, match=r"the shards hold 1 frames inside restricted zones \['site'\] .* "
                                             r"visionpilot-data action=shard governance=sites"):
        dm.setup("fit")


def test_audit_prints_what_would_be_read_without_reading_images(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    CountingSource.reset()
    cfg = compose_cfg("data", tmp_path, ["action=audit", "governance=sovereign", "compute_region=us", "rig=front1",
                                         "data.regions=[cn,de,us]", COUNTING, "data.source.scenes_per_region=3",
                                         "data.source.frames_per_scene=2"])
    result = data_run(cfg)
    out = capsys.readouterr().out
    assert CountingSource.image_loads == 0
    assert "| synthetic | cn | 6 | cn | never | governance.rules[0] | REFUSED |" in out
    assert "| synthetic | de | 6 | de | anonymised_only | governance.rules[1] | REFUSED |" in out
    assert "| synthetic | us | 6 | us | allowed | governance.default | read (in residence) | 0 | 6 |" in out
    assert "verdict: the job would FAIL before reading any image" in out
    assert result["audit"]["groups"][0]["region"] == "cn" and (tmp_path / "audit.json").is_file()
    # The same data CLI action that would read frames refuses, naming the rule.
    cfg = compose_cfg("data", tmp_path, ["action=stats", "governance=sovereign", "compute_region=us", "rig=front1",
                                         "data.regions=[cn]", COUNTING])
    with pytest.raises(ResidencyError, match=r"synthetic / cn"):
        data_run(cfg)
    assert CountingSource.loads == 0


class NuScenesLike(TinySource):
    name = "nuscenes"


@pytest.mark.parametrize(("spelt", "message"), [
    ("nuScenes", r"nuscenes / de \(6 frames\): governance.rules\[0\] \(source nuscenes, region de: "
                 r"process_abroad=never\): data resides in 'de'"),
    ("nu-scenes", r"nuscenes / de \(6 frames\): governance.rules\[0\]: field 'source' is 'nu-scenes', spelt almost "
                  r"like this source's name 'nuscenes'"),
])
def test_a_rule_for_a_source_spelt_otherwise_still_refuses_its_frames(spelt: str, message: str) -> None:
    """``source: nuScenes`` matched no frame (Frame.source is 'nuscenes'): DE data was read in the US, silently."""
    src = NuScenesLike({"de": 3, "gb": 3})
    gov = {"rules": [{"source": spelt, "region": "de", "process_abroad": "never"}]}
    dm = VisionPilotDataModule(src, image_size=None, batch_size=2, governance=gov, compute_region="us")
    with pytest.raises(ResidencyError, match=message):
        dm.setup("fit")
    assert not src._cache  # refused on the index: no frame was loaded
    dm = VisionPilotDataModule(src, regions=["gb"], image_size=None, batch_size=2, governance=gov, compute_region="us")
    dm.setup("fit")  # the rule's region only


@pytest.mark.parametrize("check", ["enforce", "audit"])
def test_a_misspelt_rule_is_refused_with_advice_to_correct_it(check: str) -> None:
    """A misspelt rule is refused wherever the job runs: the advice to run where the data resides (or anonymise)
    sent people to the wrong fix; it says to correct the spelling, and keeps the usual advice for other refusals."""
    from visionpilot.governance import Governance

    src = NuScenesLike({"de": 3, "gb": 3})
    refs = src.index()
    gov = Governance.from_config({"rules": [{"source": "nu-scenes", "region": "de", "process_abroad": "never"}]},
                                 compute_region="de")

    def message(gov: Governance) -> str:
        with pytest.raises(ResidencyError) as err:
            gov.enforce(src, refs, ["de", "gb"]) if check == "enforce" else \
                gov.audit(src, refs, ["de", "gb"]).raise_if_refused()
        return str(err.value)

    text = message(gov)
    assert "field 'source' is 'nu-scenes', spelt almost like this source's name 'nuscenes'" in text
    assert "Correct the source name in governance.rules[0] to the name the job reads (or '*')" in text
    assert "Run it where the data resides" not in text and "enable anonymisation" not in text
    both = Governance.from_config({"rules": [{"source": "nu-scenes", "region": "de", "process_abroad": "never"},
                                             {"region": "gb", "process_abroad": "never"}]}, compute_region="us")
    text = message(both)
    assert "Correct the source name in governance.rules[0]" in text and "Run it where the data resides" in text
    plain = Governance.from_config({"rules": [{"source": "nuscenes", "region": "de", "process_abroad": "never"}]},
                                   compute_region="us")
    text = message(plain)
    assert "Run it where the data resides" in text and "Correct the source name" not in text
