"""``data.balance=classes``: CBGS resampling of the train split, every object class held by an equal share."""

from __future__ import annotations

from collections import Counter

import pytest

from visionpilot.data.balance import class_balanced_indices
from visionpilot.data.datamodule import VisionPilotDataModule
from visionpilot.data.replay import ReplayDataModule
from visionpilot.data.sources.synthetic import SyntheticSource
from visionpilot.data.vocab import OBJECT_CLASSES


def _held(order: list[int], classes: list[list[int]]) -> Counter:
    return Counter(c for i in order for c in set(classes[i]))


def test_every_class_gets_an_equal_share_of_the_draws() -> None:
    # 8 frames of cars (one with a bus too), 2 of buses only, one empty: 11 class memberships, 2 classes -> 5 draws
    # from the car frames and 5 from the bus frames (of which some hold a car as well), plus the empty frame once.
    car, bus = 0, 2
    classes = [[car]] * 7 + [[car, bus, car], [bus], [bus], []]
    order = class_balanced_indices(classes, len(OBJECT_CLASSES), seed=0)
    assert len(order) == 11 and order == sorted(order)
    assert order.count(10) == 1  # the frame without objects, once
    assert set(order) - {10} <= set(range(10))
    drawn_for_bus = [i for i in order if bus in classes[i]]
    assert len(drawn_for_bus) >= 5  # the bus's 5 draws (a car draw of frame 7 holds a bus too)
    held = _held(order, classes)
    assert held[bus] >= 5 and held[bus] / len(order) > 3 / 11  # 3 of 11 frames held a bus before
    assert class_balanced_indices(classes, len(OBJECT_CLASSES), seed=0) == order  # seeded
    assert any(class_balanced_indices(classes, len(OBJECT_CLASSES), seed=s) != order for s in range(1, 6))


def test_class_indices_outside_the_vocabulary_are_refused_by_frame() -> None:
    with pytest.raises(ValueError, match=r"frame 1 holds class indices \[6\] outside \[0, 6\)"):
        class_balanced_indices([[0], [6]], 6)
    assert class_balanced_indices([[], []], 6) == [0, 1]  # nothing to balance: every frame once


class ImageCountingSource(SyntheticSource):
    """The synthetic world, counting the frames this process renders with their images."""

    image_loads = 0

    def load(self, index, with_images=True):
        type(self).image_loads += int(with_images)
        return super().load(index, with_images)


@pytest.mark.parametrize("cache", [None, "ram"])
def test_the_train_split_is_resampled_from_its_own_frames_without_rendering_images(cache) -> None:
    source = ImageCountingSource(rig="nuscenes6", regions=["de", "us"], scenes_per_region=6, frames_per_scene=2,
                                 image_size=(32, 88))
    plain = VisionPilotDataModule(source, image_size=(32, 88), batch_size=2, seed=3)
    plain.setup("fit")
    ImageCountingSource.image_loads = 0
    dm = VisionPilotDataModule(source, image_size=(32, 88), batch_size=2, seed=3, cache=cache, cache_workers=1,
                               balance="classes")
    dm.setup("fit")
    loaded = ImageCountingSource.image_loads
    assert loaded == (0 if cache is None else len(dm.frame_cache))  # labels only, or the cache's own fill

    train, before = dm.datasets["train"].refs, plain.datasets["train"].refs
    assert {r.index for r in train} <= {r.index for r in before} and len(set(train)) < len(train)  # repeats
    assert dm.datasets["val"].refs == plain.datasets["val"].refs  # only the train split is resampled

    def shares(refs) -> dict[int, float]:
        frames = {r.index: source.load(r.index, with_images=False) for r in set(refs)}
        held = Counter(c for r in refs for c in set(frames[r.index].boxes_3d.classes.tolist())
                       | {int(k) for cam in frames[r.index].cameras for k in cam.classes_2d})
        return {c: n / len(refs) for c, n in held.items()}

    old, new = shares(before), shares(train)
    rarest = min(old, key=old.get)
    assert new[rarest] > old[rarest]  # the rarest class is in a larger share of the frames drawn
    assert max(new.values()) - min(new.values()) < max(old.values()) - min(old.values())

    dm.setup("fit")  # a second setup (Lightning calls it per stage) does not resample the resampled split
    assert dm.datasets["train"].refs == train
    again = VisionPilotDataModule(source, image_size=(32, 88), batch_size=2, seed=3, balance="classes")
    again.setup("fit")
    assert again.datasets["train"].refs == train  # the same list from the same seed
    assert len(list(dm.train_dataloader())) == len(train) // 2


def test_bad_balance_settings_are_refused_by_name() -> None:
    source = SyntheticSource(rig="front1", regions=["gb", "us"], scenes_per_region=3, frames_per_scene=2,
                             image_size=(32, 88))
    with pytest.raises(ValueError, match=r"VisionPilotDataModule: field 'balance' must be one of \[None, 'classes'\] "
                                         r".*found 'boxes'"):
        VisionPilotDataModule(source, balance="boxes")
    replay = ReplayDataModule(source, regions=["gb"], replay_regions=["us"], replay_fraction=0.5, batch_size=2,
                              image_size=(32, 88), balance="classes")
    with pytest.raises(TypeError, match=r"ReplayDataModule: field 'balance' resamples a FrameDataset's refs"):
        replay.setup("fit")
