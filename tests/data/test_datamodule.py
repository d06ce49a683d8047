"""The datamodule end to end on the tiny in-memory source."""

from __future__ import annotations

import json
import math
import pickle

import lightning as L
import pytest
import torch

from visionpilot.data.datamodule import EpochSampler, FrameDataset, VisionPilotDataModule, spread_order
from visionpilot.data.sources.base import FrameRef


def _dm(source, **kwargs) -> VisionPilotDataModule:
    kwargs = {"image_size": (32, 56), "batch_size": 2, **kwargs}
    dm = VisionPilotDataModule(source, **kwargs)
    dm.setup("fit")
    return dm


def _batches(loader) -> list[dict]:
    return list(iter(loader))


def _equal(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x[k], y[k]) if isinstance(x[k], torch.Tensor) else x[k] == y[k] for x, y in zip(a, b) for k in x)


def test_end_to_end_batch_contract(tiny_source, batch_contract, tmp_path) -> None:
    contract, lists = batch_contract
    dm = _dm(tiny_source, manifest_path=tmp_path / "splits")
    manifest = json.loads((tmp_path / "splits" / "manifest.json").read_text())
    assert manifest["sha256"] == dm.manifest.sha256
    assert dm.camera_names == ["CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT"]
    counts = dm.frame_counts
    assert sum(n for split in counts.values() for n in split.values()) == len(tiny_source)
    assert all(counts[s]["gb"] > 0 for s in ("train", "val", "test"))  # 3 scenes: one per split
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == set(contract) | set(lists)
    assert batch["images"].shape == (2, 3, 3, 32, 56)
    for key, (dtype, rank) in contract.items():
        assert batch[key].dtype == dtype and batch[key].ndim == rank, key
    assert batch["camera_mask"].all()


def test_val_is_deterministic_and_train_varies_by_epoch(tiny_source) -> None:
    dm = _dm(tiny_source, train_transform={"flip_p": 0.5, "scale_range": (0.8, 1.2)}, drop_last=False)
    assert _equal(_batches(dm.val_dataloader()), _batches(dm.val_dataloader()))
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(0)
    first = _batches(loader)
    assert _equal(first, _batches(loader))  # same epoch, same batches
    loader.sampler.set_epoch(1)
    second = _batches(loader)
    assert not _equal(first, second)
    assert sorted(f for b in first for f in b["frame_id"]) == sorted(f for b in second for f in b["frame_id"])


def test_region_selection(source_factory) -> None:
    src = source_factory({"de": 4, "gb": 3, "us": 3}, frames_per_scene=1)
    dm = _dm(src, regions="gb")
    assert set(dm.frame_counts["train"]) == {"gb"}
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        assert {r for b in loader for r in b["region"]} == {"gb"}
    # Same scenes as a global run: the split does not depend on the region selection.
    glob = _dm(src, regions="global")
    assert glob.manifest.sha256 == dm.manifest.sha256
    with pytest.raises(ValueError, match=r"no frames for \['jp'\]; regions it has: \['de', 'gb', 'us'\]"):
        _dm(src, regions=["gb", "jp"])


def test_spread_order_interleaves_regions_then_scenes() -> None:
    # Region-major storage: de (scenes a, b; 2 frames each), gb (scene c; 3 frames), us (scene d; 1 frame).
    layout = [("de", "a"), ("de", "a"), ("de", "b"), ("de", "b"), ("gb", "c"), ("gb", "c"), ("gb", "c"), ("us", "d")]
    refs = [FrameRef(i, f"f{i}", scene, region) for i, (region, scene) in enumerate(layout)]
    order = spread_order(refs)
    assert order == [0, 4, 7, 2, 5, 1, 6, 3]  # de/a, gb, us, de/b, gb, de/a, gb, de/b
    assert {refs[i].region for i in order[:3]} == {"de", "gb", "us"}  # any 3-frame prefix sees every region
    assert spread_order([]) == []


def test_a_limited_evaluation_sees_every_region(source_factory) -> None:
    # limit_val_batches takes the first batches: with frames stored region-major that used to be the first
    # regions only; the evaluation loaders spread every prefix, and the whole split is still each frame once.
    src = source_factory({"de": 6, "gb": 6, "us": 6}, frames_per_scene=2)
    dm = _dm(src, regions="global", batch_size=3)
    first = next(iter(dm.val_dataloader()))
    assert sorted(first["region"]) == ["de", "gb", "us"]
    ids = [f for b in dm.val_dataloader() for f in b["frame_id"]]
    assert sorted(ids) == sorted(r.frame_id for r in dm.datasets["val"].refs)
    with pytest.raises(ValueError, match="order must be a permutation of 0..3"):
        EpochSampler(4, order=[0, 1, 1, 2])


def test_dataset_is_picklable_and_worker_safe(tiny_source) -> None:
    dm = _dm(tiny_source, num_workers=1, persistent_workers=True, drop_last=False)
    ds = dm.datasets["train"]
    clone = pickle.loads(pickle.dumps(ds))
    assert isinstance(clone, FrameDataset) and len(clone) == len(ds)
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(3)
    in_workers = _batches(loader)
    in_main = list(iter(torch.utils.data.DataLoader(ds, batch_size=2, sampler=EpochSampler(len(ds), True, 0),
                                                    collate_fn=loader.collate_fn)))
    assert not _equal(in_workers, in_main)  # epoch 3 vs epoch 0
    sampler = EpochSampler(len(ds), True, 0)
    sampler.set_epoch(3)
    in_main = list(iter(torch.utils.data.DataLoader(ds, batch_size=2, sampler=sampler, collate_fn=loader.collate_fn)))
    assert _equal(in_workers, in_main)  # persistent workers still see the epoch


def test_bad_transform_spec(tiny_source) -> None:
    with pytest.raises(TypeError, match="field 'train_transform'"):
        VisionPilotDataModule(tiny_source, train_transform=3)


@pytest.mark.parametrize("bad", [[256, 704, 3], [256], 256, "256x704", [256, 0]])
def test_bad_image_size_names_the_field(tiny_source, bad) -> None:
    # A typo in data.image_size used to surface as "too many values to unpack" / "'int' object is not iterable".
    with pytest.raises(ValueError, match=r"field 'image_size' must be \(height, width\)") as err:
        VisionPilotDataModule(tiny_source, image_size=bad)
    assert repr(bad) in str(err.value)


class _Probe(L.LightningModule):
    """Consumes batches; records what it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[tuple[int, tuple[str, ...]]] = []

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self.seen.append((self.current_epoch, tuple(batch["frame_id"])))
        return (self.w * batch["images"].float().mean()).sum()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        assert batch["images"].shape[-2:] == (32, 56)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_lightning_fit_sets_the_epoch(tiny_source, tmp_path) -> None:
    dm = VisionPilotDataModule(tiny_source, image_size=(32, 56), batch_size=2, manifest_path=tmp_path)
    probe = _Probe()
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(probe, datamodule=dm)
    orders = [[ids for e, ids in probe.seen if e == epoch] for epoch in (0, 1)]
    assert orders[0] and orders[0] != orders[1]  # reshuffled: Lightning called set_epoch on our sampler
    assert (tmp_path / "manifest.json").is_file()


def test_a_setup_refused_by_governance_stays_refused(source_factory) -> None:
    # A second setup() (a retry in a notebook, trainer.validate after a failed fit) must not read what the first one
    # was refused: the refusal used to leave the manifest behind, and setup() then skipped the governance check.
    from visionpilot.governance import ResidencyError

    policy = {"name": "t", "rules": [{"source": "*", "region": "de", "resides_in": "de", "process_abroad": "never"}]}
    dm = VisionPilotDataModule(source_factory({"de": 3, "gb": 3}, frames_per_scene=1), image_size=(32, 56),
                               governance=policy, compute_region="us")
    for _ in range(2):
        with pytest.raises(ResidencyError, match="refuses this job"):
            dm.setup("fit")
    assert dm.manifest is None and not dm.datasets


def test_drop_last_keeps_the_only_batch_of_each_ddp_rank(source_factory, monkeypatch) -> None:
    # Under DDP each rank gets ceil(n / world) frames: with fewer than a batch per rank, drop_last would leave every
    # rank without a single training step (silently), as it would on one process with fewer frames than a batch.
    src = source_factory({"de": 3, "gb": 3}, frames_per_scene=2)
    dm = _dm(src, batch_size=4, drop_last=True)
    n = len(dm.datasets["train"])
    assert 4 <= n < 8, n  # a whole batch on one process, less than one on each of two ranks
    monkeypatch.setattr(EpochSampler, "replicas", lambda self: (2, 0))
    batches = _batches(dm.train_dataloader())
    assert len(batches) == 1 and len(batches[0]["frame_id"]) == math.ceil(n / 2)
