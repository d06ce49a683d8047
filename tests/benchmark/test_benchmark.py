"""visionpilot-benchmark on tiny models: it runs and writes both files with the documented fields (not its speed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import hydra
import onnx
import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import nn

from visionpilot.export.benchmark import (
    ROW_FIELDS,
    ProcessRunner,
    Target,
    WorkerError,
    benchmark,
    contention_note,
    detect_precision,
    measure,
    model_specs,
    summarise,
)
from visionpilot.export.onnx_export import export_onnx, save_onnx_atomic, set_metadata
from visionpilot.export.scaling import linear_fit
from visionpilot.export.timing import OthersCpu
from visionpilot.paths import config_dir
from visionpilot.training.finetune import write_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# One forward camera at 64 x 176 with the tiny BEV branch: every part of the network, milliseconds per call.
TINY = ["rig=front1", "data.image_size=[64,176]", "data.regions=[us]", "model/bev=tiny"]
FAST = ["iters=3", "warmup=1", "batches=[1,2]", "batch_iters=2", "scaling.enabled=false", "threads=1"]
MACHINE_FIELDS = {"cpu", "cores", "cores_available", "cpu_flags", "torch", "onnxruntime", "onnxruntime_providers",
                  "threads", "flush_denormal", "memory_method", "load_avg_1m"}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A stand-alone checkpoint (random weights), its ONNX export, and an external ONNX graph (a small conv net
    with dynamic batch and size, like a detector someone already runs)."""
    tmp = tmp_path_factory.mktemp("bench-models")
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.output_dir={tmp}", *TINY])
    torch.manual_seed(0)
    net = hydra.utils.instantiate(cfg.model.net).eval()
    ckpt = write_checkpoint(tmp / "run" / "checkpoints" / "last.ckpt", net, cfg,
                            {"camera_names": ["CAM_FRONT"], "image_size": [64, 176], "regions": ["us"]})
    graph = set_metadata(export_onnx(net, (64, 176), 1, raw_outputs=False),
                         {"camera_names": ["CAM_FRONT"], "input_size": [64, 176], "precision": "fp32"})
    ours = save_onnx_atomic(graph, tmp / "fp32" / "model.onnx")
    conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    external = tmp / "detector.onnx"
    torch.onnx.export(conv, (torch.rand(1, 3, 32, 48),), str(external), dynamo=False, input_names=["pixels"],
                      output_names=["out"], dynamic_axes={"pixels": {0: "b", 2: "h", 3: "w"}, "out": {0: "b"}})
    return {"ckpt": ckpt, "onnx": ours, "external": external}


def _cfg(out: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("benchmark", overrides=[f"paths.output_dir={out}", *overrides])


def test_benchmark_writes_json_and_md_with_documented_fields(models: dict[str, Path], tmp_path: Path) -> None:
    specs = (f"models={{pytorch: '{models['ckpt']}', onnx-fp32: '{models['onnx']}', "
             f"det: {{path: '{models['external']}', input_shape: [1,3,32,48]}}}}")
    # A visionpilot-eval report over the files (matched by path, whatever the evaluation named them).
    evaluation = {"models": ["torch", "x"], "model_info": {"torch": {"path": str(models["ckpt"])},
                                                           "x": {"path": str(models["onnx"])}},
                  "overall": {"torch": {"lane_f1": 0.25}, "x": {"lane_f1": 0.2}}}
    (tmp_path / "eval.json").write_text(json.dumps(evaluation))
    report = benchmark(_cfg(tmp_path, specs, *FAST, f"eval_json={tmp_path / 'eval.json'}", "scaling.enabled=true",
                            "scaling.cameras=[1,2]",
                            "scaling.sizes=[[64,176],[32,96]]", "scaling.iters=2", "scaling.warmup=1"))
    data = json.loads((tmp_path / "benchmark.json").read_text())
    assert data["rows"] == json.loads(json.dumps(report["rows"]))
    assert set(data["machine"]) >= MACHINE_FIELDS and data["machine"]["threads"]["onnxruntime_intra_op"] == 1
    assert data["settings"]["interleave"] is True and data["settings"]["ort_spinning"] is False
    assert data["settings"]["isolate"] is True and data["settings"]["worker_timeout_s"] == 600
    assert data["settings"]["allocator"].startswith(("glibc:", "unchanged:"))
    rows = data["rows"]
    # Each model was loaded and timed in a worker process of its own, not in this one.
    pids = {r["model"]: r["worker_pid"] for r in rows if r["batch"] == 1}
    assert len(set(pids.values())) == 3 and os.getpid() not in pids.values()
    # One row per model x backend x precision x batch; every documented field, with sane types and order.
    keys = {(r["model"], r["backend"], r["precision"]) for r in rows}
    assert keys == {("pytorch", "torch-eager", "fp32"), ("onnx-fp32", "onnxruntime-cpu", "fp32"),
                    ("det", "onnxruntime-cpu", "fp32")}
    assert sorted((r["model"], r["batch"]) for r in rows) == [("det", 1), ("det", 2), ("onnx-fp32", 1),
                                                              ("onnx-fp32", 2), ("pytorch", 1), ("pytorch", 2)]
    for r in rows:
        assert set(ROW_FIELDS) <= set(r), set(ROW_FIELDS) - set(r)
        assert r["status"] == "ok", r["status"]
        assert isinstance(r["batch"], int) and isinstance(r["cameras"], int) and isinstance(r["height"], int)
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] and r["fps"] > 0 and r["size_mb"] > 0
        assert r["per_camera_ms"] == pytest.approx(r["p50_ms"] / (r["cameras"] * r["batch"]))  # per camera image
        assert r["others_cores"] is None or r["others_cores"] >= 0  # what other processes used meanwhile
    first = {r["model"]: r for r in rows if r["batch"] == 1}
    assert (first["pytorch"]["cameras"], first["pytorch"]["height"], first["pytorch"]["width"]) == (1, 64, 176)
    assert (first["det"]["cameras"], first["det"]["height"], first["det"]["width"]) == (1, 32, 48)
    assert first["det"]["external"] is True and first["onnx-fp32"]["external"] is False
    assert (first["pytorch"]["metric"], first["onnx-fp32"]["metric"], first["det"]["metric"]) == (0.25, 0.2, None)
    for r in first.values():  # loading figures are batch-1 figures
        assert r["session_s"] > 0 and r["first_run_s"] > 0
        assert r["peak_rss_mb"] is None or r["peak_rss_mb"] >= 0
    # The markdown table: one row per model x backend x precision.
    md = (tmp_path / "benchmark.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| ") and "---" not in line]
    assert table[0].startswith("| model | backend | precision | status | MB | lane_f1 | p50 ms")
    assert sorted(line.split(" | ")[0][2:] for line in table[1:] if "ok" in line.split(" | ")) == [
        "det", "onnx-fp32", "pytorch"]
    assert "Other processes while timing" in md or "**Contended:**" in md
    # Scaling: both sweeps, their fits and the plot.
    sc = data["scaling"]
    assert sc["status"] == "ok" and sc["model"] == "pytorch" and sc["backend"] == "onnxruntime-cpu"
    assert [p["cameras"] for p in sc["cameras"]] == [1, 2] and all(p["p50_ms"] > 0 for p in sc["cameras"])
    assert [(p["height"], p["width"]) for p in sc["resolution"]] == [(64, 176), (32, 96)]
    assert set(sc["cameras_fit"]) == {"fixed_ms", "per_camera_ms", "r2"}
    assert (tmp_path / "scaling.png").stat().st_size > 0 and "Latency vs cameras" in md


def test_cli_prints_the_table(models: dict[str, Path], tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "visionpilot.cli.benchmark", f"models=[{models['onnx']}]",
                          "iters=2", "warmup=0", "batches=[1]", "scaling.enabled=false", "threads=1",
                          f"hydra.run.dir={tmp_path}"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "| fp32 | onnxruntime-cpu | fp32 | ok |" in out.stdout  # named by its run folder
    assert (tmp_path / "benchmark.json").is_file() and (tmp_path / "benchmark.md").is_file()


def test_a_failing_backend_is_a_row_not_a_crash(models: dict[str, Path], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def no_compiler(*args: object, **kwargs: object) -> None:
        raise RuntimeError("inductor needs a C++ compiler")

    monkeypatch.setattr(torch, "compile", no_compiler)  # patched in this process: time the models here
    report = benchmark(_cfg(tmp_path, f"models={{pytorch: '{models['ckpt']}'}}", *FAST, "torch_compile=true",
                            "isolate=false"))
    status = {(r["backend"], r["batch"]): r["status"] for r in report["rows"]}
    assert status[("torch-eager", 1)] == "ok" and status[("torch-eager", 2)] == "ok"
    assert status[("torch-compile", 1)] == "error: RuntimeError: inductor needs a C++ compiler"
    failed = next(r for r in report["rows"] if r["backend"] == "torch-compile")
    assert failed["p50_ms"] is None and failed["fps"] is None
    assert "| pytorch | torch-compile | fp32 | error: RuntimeError" in (tmp_path / "benchmark.md").read_text()


def test_a_failure_in_a_worker_process_reaches_the_parent_as_a_status(tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a graph")
    kwargs = {"name": "broken", "path": broken, "providers": ["cpu"], "threads": 1, "input_shape": None, "seed": 0}
    target = Target("broken", "onnxruntime-cpu", "fp32", "cpu", broken, 1, 1, 1, 0.0, load=lambda: None,
                    recipe=("onnx", kwargs, 0))
    runner = ProcessRunner(target, threads=1)
    try:
        with pytest.raises(WorkerError) as info:
            runner.load(0)
        assert info.value.status.startswith("error: ") and "broken.onnx" in info.value.status
    finally:
        runner.close()
    assert not runner.process.is_alive()


def test_a_worker_that_stops_answering_is_killed_after_the_timeout(models: dict[str, Path]) -> None:
    path = models["onnx"]
    kwargs = {"name": "fp32", "path": path, "providers": ["cpu"], "threads": 1, "input_shape": None, "seed": 0}
    target = Target("fp32", "onnxruntime-cpu", "fp32", "cpu", path, 1, 64, 176, 0.0, load=lambda: None,
                    recipe=("onnx", kwargs, 0))
    # Loading (a fresh interpreter importing torch, then an onnxruntime session) took more than 2 s on a busy
    # 2-core machine: the short limit is set only for the call that hangs.
    runner = ProcessRunner(target, threads=1, timeout_s=120)
    try:
        runner.load(0)
        assert runner.call() > 0
        runner.timeout_s = 2
        os.kill(runner.process.pid, signal.SIGSTOP)  # hung: alive, never answers
        with pytest.raises(WorkerError, match=r"no answer to 'call' within worker_timeout_s=2 s; worker killed"):
            runner.call()
        assert not runner.process.is_alive()
        with pytest.raises(WorkerError, match="worker process exited"):  # later commands fail at once
            runner.call()
    finally:
        runner.close()


def test_a_model_failing_while_timed_keeps_the_other_rows(tmp_path: Path) -> None:
    def target(name: str, fail_after: int | None) -> Target:
        calls = []

        def load() -> object:
            def make(batch: int) -> object:
                def run() -> None:
                    calls.append(batch)
                    if fail_after is not None and len(calls) > fail_after:
                        raise MemoryError("out of memory")
                return run
            return make
        return Target(name, "onnxruntime-cpu", "fp32", "cpu", tmp_path / f"{name}.onnx", 1, 8, 8, 0.0, load=load)

    good, bad = target("good", None), target("bad", 4)  # bad: fine while loading (first run + 1 warm-up), then fails
    rows = measure([good, bad], batches=[1, 2], warmup=1, iters=5, batch_iters=3, isolate=False)
    by = {(r["model"], r["batch"]): r for r in rows}
    assert by[("good", 1)]["status"] == "ok" and by[("good", 1)]["p50_ms"] is not None
    assert by[("good", 2)]["status"] == "ok" and by[("good", 2)]["fps"] is not None
    assert by[("bad", 1)]["status"] == "error: MemoryError: out of memory" and by[("bad", 1)]["p50_ms"] is None
    assert ("bad", 2) in by and by[("bad", 2)]["p50_ms"] is None  # still listed, with its status


def test_missing_file_names_the_model_and_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"models\.det: file not found: .*missing\.onnx"):
        benchmark(_cfg(tmp_path, f"models={{det: '{tmp_path / 'missing.onnx'}'}}", *FAST))


def test_external_onnx_needs_its_input_shape(models: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"detector\.onnx: field 'input_shape' for input 'pixels': expected a shape "
                                         r"that fits the graph's \['b', 3, 'h', 'w'\] .*found none"):
        benchmark(_cfg(tmp_path, f"models=[{models['external']}]", *FAST))
    with pytest.raises(ValueError, match=r"'input_shape' for input 'pixels': .*found \[1, 4, 32, 48\]"):
        benchmark(_cfg(tmp_path, f"models=[{models['external']}]", "input_shape=[1,4,32,48]", *FAST))


def test_model_size_counts_external_weights(models: dict[str, Path], tmp_path: Path) -> None:
    import onnx

    from visionpilot.export.benchmark import onnx_bytes

    proto = onnx.load(str(models["external"]))
    onnx.save_model(proto, str(tmp_path / "split.onnx"), save_as_external_data=True, location="split.onnx.data",
                    size_threshold=0)  # weights beside the graph, as models over 2 GB must be saved
    graph, data = tmp_path / "split.onnx", tmp_path / "split.onnx.data"
    assert data.stat().st_size > graph.stat().st_size  # the graph file alone read as "0.0 MB"
    assert onnx_bytes(graph, onnx.load(str(graph), load_external_data=False)) == \
        graph.stat().st_size + data.stat().st_size
    assert onnx_bytes(models["external"], proto) == models["external"].stat().st_size


def test_model_names_and_helpers() -> None:
    specs = model_specs(["runs/a/checkpoints/last.ckpt", "runs/export/int8/model.onnx", "yolo.onnx"])
    assert list(specs) == ["a", "int8", "yolo"]
    with pytest.raises(ValueError, match=r"two models would be named 'int8' \(a/int8/model.onnx and b/int8/model"):
        model_specs(["a/int8/model.onnx", "b/int8/model.onnx"])
    stats = summarise([0.010, 0.020, 0.030, 0.040], batch=2)
    assert stats["p50_ms"] == pytest.approx(25.0) and stats["fps"] == pytest.approx(2 * 4 / 0.1)
    fit = linear_fit([1, 2, 3, 4], [12.0, 14.0, 16.0, 18.0])
    assert fit["intercept"] == pytest.approx(10.0) and fit["slope"] == pytest.approx(2.0) and fit["r2"] == 1.0
    conv = onnx.helper.make_node("QLinearConv", [], [], name="q")
    assert detect_precision(onnx.helper.make_model(onnx.helper.make_graph([conv], "g", [], []))) == "int8"


def test_worker_timeout_must_be_positive_seconds_or_null(tmp_path: Path) -> None:
    for bad in ("-5", "soon"):
        with pytest.raises(ValueError, match=rf"field 'worker_timeout_s': expected seconds > 0, or null .*{bad}"):
            benchmark(_cfg(tmp_path, "models=[x.onnx]", f"worker_timeout_s={bad}"))


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="reads Linux /proc")
def test_others_cpu_counts_other_processes_not_our_own() -> None:
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        others = OthersCpu([os.getpid()])
        others.start()
        subprocess.run(["sleep", "1.5"], check=True)  # a process of its own that sleeps: we idle meanwhile
        others.stop()
    finally:
        busy.kill()
        busy.wait()
    assert others.cores is not None and others.cores >= 0.6  # the busy loop holds one core

    ours = OthersCpu([os.getpid()])
    ours.start()
    deadline = time.perf_counter() + 1.0
    while time.perf_counter() < deadline:  # this process busy: its own ticks are not someone else's
        pass
    ours.stop()
    assert ours.cores is not None and ours.cores < 0.6


def test_contention_is_reported_under_the_table() -> None:
    def row(model: str, others: float | None) -> dict:
        return {"model": model, "backend": "torch-eager", "precision": "fp32", "batch": 1, "others_cores": others}

    quiet = contention_note([row("a", 0.03), row("b", 0.08)], cores=2, threads=2)
    assert quiet == ["Other processes while timing: at most 0.08 cores busy (0 left free): uncontended."]
    hit = contention_note([row("a", 0.03), row("b", 0.8)], cores=2, threads=2)
    assert hit[0].startswith("**Contended:**") and "b (torch-eager, fp32, batch 1: 0.80)" in hit[0] and "a (" not in hit[0]
    # Cores the benchmark does not use may be busy: 8 cores, 2 threads, 5 cores busy elsewhere is not contention.
    assert "uncontended" in contention_note([row("a", 5.0)], cores=8, threads=2)[0]
    assert contention_note([row("a", None)], cores=2, threads=2) == []  # off Linux: nothing to say


def test_no_timed_calls_is_refused_before_loading(models: dict[str, Path], tmp_path: Path) -> None:
    # iters=0 loaded and warmed up every model, then failed on the empty samples' percentiles (IndexError).
    base = ["warmup=0", "batches=[1]", "threads=1", "isolate=false"]
    for settings, field in ((["iters=0", "scaling.enabled=false"], "iters"),
                            (["iters=2", "batch_iters=-1", "scaling.enabled=false"], "batch_iters"),
                            (["iters=2", "scaling.enabled=true", "scaling.iters=0"], "scaling.iters")):
        with pytest.raises(ValueError, match=rf"field '{field}': expected at least 1 timed call, found -?[01]"):
            benchmark(_cfg(tmp_path, f"models=[{models['onnx']}]", *base, *settings))
