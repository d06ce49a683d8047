"""Provenance end to end, as docs/governance.md runs it: a global model trained abroad on the regions it may read,
fine-tuned inside China on CN data, the delta merged and exported there. Every artefact names its sources, regions,
frame counts, split manifests, compute regions, base model, config and code; lineage survives the delta merge
(``load_model``) and the export; ``visionpilot-data action=lineage`` prints it."""

from __future__ import annotations

from pathlib import Path

import pytest

from visionpilot.cli.data import run as data_run
from visionpilot.export.onnx_export import read_metadata
from visionpilot.export.pipeline import export
from visionpilot.governance import ResidencyError, read_lineage
from visionpilot.governance.provenance import LINEAGE_FORMAT, format_lineage, lineage_summary
from visionpilot.training.checkpoints import file_sha256, read_checkpoint
from visionpilot.training.finetune import finetune, load_model, read_delta_metadata
from visionpilot.training.train import train

from .helpers import TINY, compose_cfg

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript ONNX exporter
RUN = ["trainer.max_steps=1", "trainer.max_epochs=-1", "trainer.limit_val_batches=1", "model/bev=tiny"]


@pytest.fixture(scope="module")
def workflow(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """global (US, on us+gb) -> adapter fine-tune in CN -> delta -> ONNX exported in CN."""
    tmp = tmp_path_factory.mktemp("lineage")
    train(compose_cfg("train", tmp / "global", [*TINY, *RUN, "governance=sovereign", "compute_region=us",
                                                 "data.regions=[us,gb]"]))
    base = tmp / "global" / "checkpoints" / "last.ckpt"
    if not base.is_file():  # the periodic checkpoint writes last.ckpt every N steps; the best one is always there
        base = next((tmp / "global" / "checkpoints").glob("epoch*.ckpt"))
    finetune(compose_cfg("finetune", tmp / "ft-cn", [
        f"ckpt_path={base}", "region=cn", "strategy=adapter", "strategy.rank=4", "trainer.max_steps=1",
        "trainer.limit_val_batches=1", "data.num_workers=0", "data.persistent_workers=false",
        "callbacks.progress_bar=null", "logger=csv", "governance=sovereign", "compute_region=cn"]))
    delta = tmp / "ft-cn" / "delta.safetensors"
    export(compose_cfg("export", tmp / "export-cn", [
        f"ckpt_path={base}", f"delta_path={delta}", "parity.frames=2", "parity.batch_size=2",
        "governance=sovereign", "compute_region=cn"]))
    return {"tmp": tmp, "base": base, "ft_dir": tmp / "ft-cn", "tuned": tmp / "ft-cn" / "checkpoints" /
            "finetuned.ckpt", "delta": delta, "onnx": tmp / "export-cn" / "model.onnx"}


def _check_record(rec: dict, artefact: str, compute_region: str) -> None:
    assert rec["format"] == LINEAGE_FORMAT and rec["artefact"] == artefact
    assert rec["compute_region"] == compute_region and rec["governance"]["policy"] == "sovereign"
    assert rec["code_version"].startswith("visionpilot ") and len(rec["config_sha256"]) == 64


def test_checkpoint_carries_its_lineage(workflow: dict[str, Path]) -> None:
    entry = read_checkpoint(workflow["base"])["visionpilot"]
    rec = entry["lineage"]
    _check_record(rec, "checkpoint", "us")
    data = rec["data"]
    assert set(data["sources"]) == {"synthetic"} and set(data["sources"]["synthetic"]) == {"gb", "us"}
    assert data["frame_counts"]["train"] == entry["frame_counts"] and data["manifest_sha256"] == entry[
        "manifest_sha256"]
    assert rec["base_sha256"] is None and rec["parents"] == []  # trained from scratch
    # What the file says about itself: its name and hash added.
    read = read_lineage(workflow["base"])
    assert read["sha256"] == file_sha256(workflow["base"]) and read["file"] == workflow["base"].name


def test_delta_and_finetuned_checkpoint_name_their_base_and_region(workflow: dict[str, Path]) -> None:
    base_sha = file_sha256(workflow["base"])
    delta = read_delta_metadata(workflow["delta"])["lineage"]
    _check_record(delta, "region_delta", "cn")
    assert delta["region"] == "cn" and delta["strategy"] == "adapter" and delta["base_sha256"] == base_sha
    assert "cn" in delta["data"]["sources"]["synthetic"] and delta["data"]["regions"] == ["cn"]
    assert delta["data"]["replay_frame_counts"].keys() == {"gb", "us"}  # replay of the base's regions, read in CN
    parent = delta["parents"][0]
    assert parent["sha256"] == base_sha and parent["compute_region"] == "us" and parent["artefact"] == "checkpoint"
    tuned = read_lineage(workflow["tuned"])
    _check_record(tuned, "checkpoint", "cn")
    assert tuned["base_sha256"] == base_sha and tuned["parents"][0]["sha256"] == base_sha
    # CN frames may not leave China as images: the in-region run wrote none (prediction images withheld).
    assert tuned["governance"]["frames_exportable"] is False
    assert not list(workflow["ft_dir"].rglob("*.png")) and not list(workflow["ft_dir"].rglob("*.jpg"))


def test_lineage_survives_the_delta_merge_and_the_export(workflow: dict[str, Path]) -> None:
    base_sha, delta_sha = file_sha256(workflow["base"]), file_sha256(workflow["delta"])
    merged = load_model(workflow["delta"]).meta["lineage"]  # base + delta as one model
    assert merged["artefact"] == "region_delta" and merged["sha256"] == delta_sha
    assert merged["parents"][0]["sha256"] == base_sha and merged["parents"][0]["compute_region"] == "us"
    onnx = read_metadata(workflow["onnx"])["lineage"]
    _check_record(onnx, "onnx", "cn")
    assert onnx["precision"] == "fp32" and onnx["delta_sha256"] == delta_sha and onnx["base_sha256"] == base_sha
    assert onnx["data"]["role"] == "parity_calibration" and onnx["data"]["regions"] == ["cn"]
    model = onnx["parents"][0]  # the merged model: the delta, whose parent is the base
    assert model["sha256"] == delta_sha and model["region"] == "cn"
    assert model["parents"][0]["sha256"] == base_sha
    summary = lineage_summary(read_lineage(workflow["onnx"]))
    assert summary["compute_regions"] == ["cn", "us"]
    assert set(summary["sources"]["synthetic"]) == {"cn", "gb", "us"}  # training data of the whole tree
    assert len(summary["manifests"]) == 2  # the global run's split manifest and the fine-tune's


def test_lineage_cli_prints_every_artefact(workflow: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    for key in ("base", "delta", "onnx"):
        result = data_run(compose_cfg("data", workflow["tmp"] / f"lineage-{key}", ["action=lineage",
                                                                                    f"path={workflow[key]}"]))
        assert result["lineage"]["sha256"] == file_sha256(workflow[key])
    out = capsys.readouterr().out
    assert "model.onnx  [onnx, precision fp32]" in out and "delta.safetensors  [region_delta, region cn, " \
                                                             "strategy adapter]" in out
    assert "compute region cn" in out and "compute region us" in out and "policy sovereign" in out
    assert "data (parity_calibration): synthetic: cn " in out
    assert "compute regions: cn, us" in out
    with pytest.raises(ValueError, match=r"action=lineage: field 'path' is required"):
        data_run(compose_cfg("data", workflow["tmp"] / "lineage-none", ["action=lineage"]))
    with pytest.raises(ValueError, match=r"expected a .ckpt, .safetensors or .onnx file, found '.json'"):
        data_run(compose_cfg("data", workflow["tmp"] / "lineage-json", ["action=lineage",
                                                                         f"path={workflow['ft_dir'] / 'finetune.json'}"]))


def test_exporting_a_cn_model_abroad_reads_no_cn_frames(workflow: dict[str, Path]) -> None:
    """The delta's parity frames default to its region: abroad, that is refused before any frame is read."""
    cfg = compose_cfg("export", workflow["tmp"] / "export-us", [
        f"ckpt_path={workflow['base']}", f"delta_path={workflow['delta']}", "governance=sovereign",
        "compute_region=us"])
    with pytest.raises(ResidencyError, match=r"synthetic / cn .* process_abroad=never"):
        export(cfg)
    assert not (workflow["tmp"] / "export-us" / "model.onnx").exists()


def test_evaluating_on_cn_frames_abroad_is_refused(workflow: dict[str, Path]) -> None:
    """visionpilot-eval reads its frames under the job's own policy and compute region, not the checkpoint's."""
    from visionpilot.cli.eval import run as eval_run

    models = f"models={{global: '{workflow['base']}', adapter-cn: '{workflow['delta']}'}}"
    cfg = compose_cfg("eval", workflow["tmp"] / "eval-us", [models, "regions=[cn,us]", "governance=sovereign",
                                                            "compute_region=us", "data.num_workers=0"])
    with pytest.raises(ResidencyError, match=r"(?s)compute_region=us.*synthetic / cn .* process_abroad=never"):
        eval_run(cfg)
    assert not (workflow["tmp"] / "eval-us" / "eval.json").exists()


def test_evaluating_cn_frames_at_home_scores_them_but_draws_none(workflow: dict[str, Path]) -> None:
    """In CN the job may read CN frames, but its prediction images would carry them out as pictures: withheld."""
    from visionpilot.cli.eval import run as eval_run

    out = workflow["tmp"] / "eval-cn"
    models = f"models={{global: '{workflow['base']}', adapter-cn: '{workflow['delta']}'}}"
    report = eval_run(compose_cfg("eval", out, [models, "regions=[cn,us]", "governance=sovereign",
                                                "compute_region=cn", "data.num_workers=0", "plots=1"]))
    assert set(report["results"]["adapter-cn"]) == {"cn", "us"} and (out / "eval.json").is_file()
    assert [p.name for p in out.rglob("*.png")] == ["cross_region.png"]  # the matrix, no frame


def test_code_version_names_no_commit_of_a_repository_the_package_is_not_from(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """An installed (non-editable) package in a virtual environment inside some git checkout recorded that
    checkout's commit as the code's version, whatever code the wheel holds."""
    import subprocess

    import visionpilot
    from visionpilot.governance.provenance import code_version

    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "other project"], check=True)
    package = tmp_path / ".venv" / "lib" / "python3.11" / "site-packages" / "visionpilot" / "__init__.py"
    package.parent.mkdir(parents=True)
    package.touch()
    code_version.cache_clear()
    try:
        monkeypatch.setattr(visionpilot, "__file__", str(package))
        assert code_version() == f"visionpilot {visionpilot.__version__}"
        monkeypatch.undo()  # the source checkout itself still names its commit
        code_version.cache_clear()
        checkout = Path(visionpilot.__file__).resolve().parents[2]
        assert code_version().startswith(f"visionpilot {visionpilot.__version__}+g") or not (checkout / ".git").exists()
    finally:
        code_version.cache_clear()


def test_the_summary_keeps_the_regions_of_records_rebuilt_from_older_files() -> None:
    """A base checkpoint written before lineage existed has a record with regions but no sources: the summary of the
    shipped model's training data left its regions out ("synthetic: cn" for a model also trained on de and us)."""
    old_base = {"format": LINEAGE_FORMAT, "artefact": "checkpoint", "note": "rebuilt from checkpoint facts",
                "file": "old.ckpt", "data": {"role": "training", "regions": ["de", "us"],
                                             "frame_counts": {"train": {"de": 4, "us": 4}}}, "parents": []}
    delta = {"format": LINEAGE_FORMAT, "artefact": "region_delta", "file": "delta.safetensors", "compute_region": "cn",
             "data": {"role": "training", "sources": {"synthetic": {"cn": 6}}, "regions": ["cn"]},
             "parents": [old_base]}
    summary = lineage_summary(delta)
    assert summary["sources"] == {"synthetic": ["cn"], "(source not recorded)": ["de", "us"]}
    assert "training data (whole lineage): synthetic: cn; (source not recorded): de, us" in format_lineage(delta)
