"""``benchmark(cfg)``: the plain function behind ``visionpilot-benchmark`` — how fast a model runs, and where.

Times PyTorch models (a checkpoint or a region delta: eager, optionally ``torch.compile``; bf16 autocast too on a
GPU) and ONNX files under onnxruntime (CPU, and the CUDA / TensorRT execution providers when installed) on the
same inputs, and writes ``benchmark.json`` and ``benchmark.md`` in the run dir:

- rows, one per model x backend x precision x batch (``batches``): latency p50 / p90 / p99, frames/s, ms per
  camera, model size, and for batch 1 the session creation time, the first run's time and the peak memory;
- ``machine``: CPU model and flags, cores, threads, library versions, providers, load average;
- ``scaling`` (:mod:`~visionpilot.export.scaling`): latency against the camera count and the input resolution.

What is timed is what the vehicle runs: for a PyTorch model ``net.decode(net(images, intrinsics, extrinsics))``
(the ONNX graph is exactly that), on random uint8 frames and a ring of cameras (``onnx_export.example_inputs``);
for an external ONNX file (another detector, to compare with) random inputs of the graph's dtypes at the
``input_shape`` given. How:

- every model is loaded, warmed up and called in a worker process of its own (``isolate=true``,
  :class:`ProcessRunner`): models sharing a process slow each other down — eager PyTorch ran the demo model at
  37 ms alone and 54-97 ms with onnxruntime sessions alive beside it (idle ones too), which made onnxruntime look
  up to 2x faster than it is; a worker that does not answer within ``worker_timeout_s`` is killed, and a model
  that fails anywhere (loading, a batch size, mid-timing) keeps a row with the error as its status;
- warm-up runs first; then ``iters`` timed calls per row, interleaved round-robin across the models (rotating
  the order every round) so that a change in outside load falls on every backend's calls alike. It does not hurt
  them alike: eager PyTorch's OpenMP threads meet at a barrier after every operator, and with a busy loop on one
  of two cores the demo model ran 5.7x slower in eager PyTorch and 1.6x slower in onnxruntime. So each row
  records how many cores other processes kept busy during its calls (``others_cores``, hypervisor steal
  included: :class:`~visionpilot.export.timing.OthersCpu`), and ``benchmark.md`` says when that contended a row;
- torch and onnxruntime get the same intra-op thread count (``threads``; recorded), onnxruntime one inter-op
  thread, ``ORT_ENABLE_ALL`` graph optimisation and no spin-waiting (``ort_spinning=false``: each session has its
  own thread pool, and an idle pool that spins takes a core from the model timed next — on 2 cores it made eager
  PyTorch 1.6x slower and int8 onnxruntime 1.2x slower in the same run); denormals are flushed in both (random-init weights decay
  into denormals, which make CPU kernels orders of magnitude slower and would make a benchmark lie);
- on a GPU, PyTorch rows take inputs already on the device and synchronise after each call; onnxruntime rows
  are fed numpy arrays, so their times include the host <-> device copies (as an application calling
  ``session.run`` pays them);
- peak memory over loading, the first run and the warm-up at batch 1 (:class:`~visionpilot.export.timing.PeakMemory`:
  Linux ``VmHWM`` reset per model, above the resident size before loading).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from visionpilot.export.onnx_export import example_inputs, read_metadata
from visionpilot.export.timing import (
    OthersCpu,
    PeakMemory,
    call_interleaved,
    machine_info,
    release_memory,
    summarise,
    time_call,
    timed_session_options,
)
from visionpilot.utils.io import write_json_atomic, write_text_atomic
from visionpilot.utils.machine import available_cores, keep_freed_memory

log = logging.getLogger(__name__)

#: onnxruntime execution providers by short name (``providers=[cpu, cuda]``) and the backend name of their rows.
PROVIDERS = {"cpu": ("CPUExecutionProvider", "onnxruntime-cpu"),
             "cuda": ("CUDAExecutionProvider", "onnxruntime-cuda"),
             "tensorrt": ("TensorrtExecutionProvider", "onnxruntime-tensorrt")}
#: Graph element types -> numpy dtypes for random inputs of external models.
ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
              "tensor(uint8)": np.uint8, "tensor(int8)": np.int8, "tensor(int32)": np.int32,
              "tensor(int64)": np.int64, "tensor(bool)": np.bool_}
#: Fields every row has (shared/DESIGN.md); more follow them.
ROW_FIELDS = ("model", "backend", "precision", "batch", "cameras", "height", "width", "p50_ms", "p90_ms", "p99_ms",
              "fps", "size_mb", "status")


# --- what is timed -----------------------------------------------------------------------------------------------

class DecodedNet(nn.Module):
    """``net.decode(net(...))``: the computation of the exported graph, for PyTorch timing."""

    def __init__(self, net: nn.Module, image_size: Sequence[int]) -> None:
        super().__init__()
        self.net = net
        self.image_size = (int(image_size[0]), int(image_size[1]))

    def forward(self, images: Tensor, intrinsics: Tensor, extrinsics: Tensor) -> dict[str, Tensor]:
        return self.net.decode(self.net(images, intrinsics, extrinsics), self.image_size)


@dataclass
class Target:
    """One model on one backend at one precision: how to load it, feed it and call it.

    ``load()`` returns a ``make(batch) -> run`` factory; ``run()`` executes one batch (synchronised on GPU).
    """

    model: str
    backend: str
    precision: str
    device: str
    path: Path
    cameras: int
    height: int
    width: int
    size_mb: float
    load: Callable[[], Callable[[int], Callable[[], Any]]]
    dynamic_batch: bool = True
    static_batch: int = 1
    extra: dict[str, Any] = field(default_factory=dict)
    status: str = "ok"
    #: How a fresh process rebuilds this target: (factory kind, its keyword arguments, index in what it returns).
    recipe: tuple[str, dict[str, Any], int] | None = None

    def row(self, batch: int) -> dict[str, Any]:
        return {"model": self.model, "backend": self.backend, "precision": self.precision, "batch": batch,
                "cameras": self.cameras, "height": self.height, "width": self.width, "p50_ms": None,
                "p90_ms": None, "p99_ms": None, "fps": None, "size_mb": round(self.size_mb, 3),
                "status": self.status, "device": self.device, "path": str(self.path), **self.extra}


def torch_targets(name: str, spec: str, device: str, compile_mode: str | None, torch_compile: bool,
                  seed: int) -> list[Target]:
    """Eager (and ``torch.compile``) rows for a checkpoint or a region delta (``delta.safetensors`` or
    ``base.ckpt+delta.safetensors``); fp32, plus bf16 autocast on CUDA."""
    from visionpilot.training.finetune import load_model

    loaded = load_model(spec)
    path = loaded.path  # the delta of base+delta
    net = loaded.net.eval()
    cameras, (height, width) = len(loaded.camera_names) or 1, loaded.image_size
    # Size: the weights as the process holds them (fp32 parameters and buffers), not the checkpoint file, which
    # also carries the optimiser state.
    weights = sum(t.numel() * t.element_size() for t in [*net.parameters(), *net.buffers()]) / 2**20
    channels_last = bool(getattr(net, "channels_last", False))
    del loaded, net
    precisions = ["fp32", "bf16"] if device == "cuda" else ["fp32"]
    backends = ["torch-eager", "torch-compile"] if torch_compile else ["torch-eager"]
    out = []
    for backend in backends:
        for precision in precisions:
            def load(backend: str = backend, precision: str = precision) -> Callable[[int], Callable[[], Any]]:
                module: nn.Module = DecodedNet(load_model(spec).net.eval(), (height, width)).to(device)
                if backend == "torch-compile":
                    module = torch.compile(module, mode=compile_mode)  # compiles at the first call
                amp = precision == "bf16"

                def make(batch: int) -> Callable[[], Any]:
                    feed = [t.to(device) for t in example_inputs(cameras, (height, width), batch=batch, seed=seed)]

                    def run() -> Any:
                        with torch.inference_mode(), torch.autocast(device, torch.bfloat16, enabled=amp):
                            out = module(*feed)
                        if device == "cuda":
                            torch.cuda.synchronize()
                        return out
                    return run
                return make

            out.append(Target(name, backend, precision, device, path, cameras, height, width, weights, load,
                              extra={"channels_last": channels_last}))
    return out


def detect_precision(model: onnx.ModelProto) -> str:
    """``int8`` when the graph holds quantised ops, ``fp16`` when most weights are half, else ``fp32``."""
    ops = {n.op_type for n in model.graph.node}
    if ops & {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger", "MatMulInteger", "QLinearMatMul"}:
        return "int8"
    kinds = [t.data_type for t in model.graph.initializer]
    half = sum(k == onnx.TensorProto.FLOAT16 for k in kinds)
    return "fp16" if kinds and half > len(kinds) / 2 else "fp32"


def _shape_error(path: Path, name: str, dims: Sequence[Any], found: str) -> ValueError:
    return ValueError(f"{path}: field 'input_shape' for input '{name}': expected a shape that fits the graph's "
                      f"{list(dims)} (dynamic dims by name), found {found}; give the shape to time it at, e.g. "
                      f"input_shape=[1,3,384,640] (or {{{name}: [...]}} per input)")


def external_shapes(path: Path, inputs: Sequence[Any], given: Any) -> dict[str, list[int]]:
    """Concrete input shapes of a non-visionpilot ONNX file: the graph's static dims, else ``given``."""
    given = OmegaConf.to_container(given) if OmegaConf.is_config(given) else given
    if isinstance(given, (list, tuple)):
        if len(inputs) != 1:
            raise ValueError(f"{path}: field 'input_shape' is one shape, but the graph has {len(inputs)} inputs "
                             f"{[i.name for i in inputs]}; expected {{input_name: shape}} for each")
        given = {inputs[0].name: given}
    given = dict(given or {})
    shapes = {}
    for inp in inputs:
        dims = list(inp.shape)
        if inp.name in given:
            shape = [int(s) for s in given[inp.name]]
            bad = len(shape) != len(dims) or any(isinstance(d, int) and d != s for d, s in zip(dims, shape))
            if bad:
                raise _shape_error(path, inp.name, dims, str(shape))
            shapes[inp.name] = shape
        elif all(isinstance(d, int) and d > 0 for d in dims):
            shapes[inp.name] = [int(d) for d in dims]
        else:
            raise _shape_error(path, inp.name, dims, "none")
    return shapes


def onnx_bytes(path: Path, proto: onnx.ModelProto) -> int:
    """The model's size on disk: the .onnx file and the external-data files its initializers name (> 2 GB models
    and any saved with ``save_as_external_data`` keep their weights beside the graph)."""
    files = {entry.value for tensor in proto.graph.initializer
             if tensor.data_location == onnx.TensorProto.EXTERNAL
             for entry in tensor.external_data if entry.key == "location"}
    return path.stat().st_size + sum((path.parent / f).stat().st_size for f in files if (path.parent / f).is_file())


def onnx_targets(name: str, path: Path, providers: Sequence[str], threads: int, input_shape: Any,
                 seed: int, spinning: bool = False) -> list[Target]:
    """One row per execution provider for an ONNX file (a visionpilot export, or any graph given its shape).
    ``spinning``: onnxruntime's intra-op threads spin-wait for work (its default) or sleep at once."""
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf's DecodeError does not say which file
        raise ValueError(f"{path}: not a readable ONNX model ({type(err).__name__}: {err})") from err
    meta = read_metadata(proto)
    precision = str(meta.get("precision") or detect_precision(proto))
    names = [i.name for i in proto.graph.input]
    ours = "images" in names and "input_size" in meta
    probe = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])  # input types and shapes
    inputs = probe.get_inputs()
    del probe
    if ours:
        cameras = len(meta.get("camera_names") or []) or int(inputs[0].shape[1])
        height, width = (int(s) for s in meta["input_size"])
        shapes, dynamic, static = {}, True, 1
    else:
        shapes = external_shapes(path, inputs, input_shape)
        image = max(shapes.values(), key=len)  # the image-like input: the one with most dims
        cameras = int(image[1]) if len(image) == 5 else 1
        height, width = (int(image[-2]), int(image[-1])) if len(image) >= 4 else (0, 0)
        dynamic = all(not isinstance(i.shape[0], int) for i in inputs if len(i.shape) > 0)
        static = int(image[0]) if image else 1
    size_mb = onnx_bytes(path, proto) / 2**20
    out = []
    for short in providers:
        provider, backend = PROVIDERS[short]

        def load(provider: str = provider) -> Callable[[int], Callable[[], Any]]:
            options = timed_session_options(threads, spinning)
            chain = [provider] + (["CPUExecutionProvider"] if provider != "CPUExecutionProvider" else [])
            session = ort.InferenceSession(str(path), options, providers=chain)
            if session.get_providers()[0] != provider:
                raise RuntimeError(f"onnxruntime did not take {provider} (got {session.get_providers()})")
            out_names = [o.name for o in session.get_outputs()]

            def make(batch: int) -> Callable[[], Any]:
                if ours:
                    feed = dict(zip(("images", "intrinsics", "extrinsics"),
                                    (t.numpy() for t in example_inputs(cameras, (height, width), batch, seed))))
                    feed = {k: v for k, v in feed.items() if k in names}
                else:
                    feed = random_feed(session.get_inputs(), shapes, batch if dynamic else None, seed)
                return lambda: session.run(out_names, feed)
            return make

        out.append(Target(name, backend, precision, provider.replace("ExecutionProvider", "").lower(), path,
                          cameras, height, width, size_mb, load, dynamic_batch=dynamic, static_batch=static,
                          extra={"external": not ours}))
    return out


def random_feed(inputs: Sequence[Any], shapes: Mapping[str, Sequence[int]], batch: int | None,
                seed: int) -> dict[str, np.ndarray]:
    """Random inputs of the graph's dtypes (images-like ranges: uint8 0..255, floats 0..1, integers 0/1)."""
    rng = np.random.default_rng(seed)
    feed = {}
    for inp in inputs:
        shape = list(shapes[inp.name])
        if batch is not None and shape:
            shape[0] = batch
        dtype = ORT_DTYPES.get(inp.type)
        if dtype is None:
            raise ValueError(f"input '{inp.name}': element type {inp.type} is not supported; expected one of "
                             f"{sorted(ORT_DTYPES)}")
        if dtype == np.uint8:
            feed[inp.name] = rng.integers(0, 256, shape, dtype=np.uint8)
        elif np.issubdtype(dtype, np.floating):
            feed[inp.name] = rng.random(shape, dtype=np.float32).astype(dtype)
        else:
            feed[inp.name] = rng.integers(0, 2, shape).astype(dtype)
    return feed


def _error(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"error: {type(err).__name__}: {text[0][:200] if text else ''}"


def _status(err: BaseException) -> str:
    """A row's status for a failure: the worker's own report, or this process's exception."""
    return err.status if isinstance(err, WorkerError) else _error(err)


def _serve(conn: Any, kind: str, kwargs: dict[str, Any], index: int, threads: int) -> None:
    """A worker process: rebuild one target, then answer the parent's commands (:class:`ProcessRunner`)."""
    torch.set_flush_denormal(True)
    keep_freed_memory()  # as in the parent (run): eager PyTorch's tensors reuse freed memory, like onnxruntime's arena
    torch.set_num_threads(threads)
    runner: LocalRunner | None = None
    while True:
        try:
            command, *args = conn.recv()
        except EOFError:  # the parent is gone
            break
        if command == "stop":
            break
        try:
            if runner is None:
                runner = LocalRunner(build_target(kind, kwargs, index))
            conn.send(("ok", getattr(runner, command)(*args)))
        except Exception as err:  # reported to the parent, which turns it into the row's status
            conn.send(("error", _error(err)))
    conn.close()


#: What builds the targets of a model, by kind; a target's ``recipe`` names one.
TARGET_FACTORIES: dict[str, Callable[..., list[Target]]] = {"torch": torch_targets, "onnx": onnx_targets}


def build_target(kind: str, kwargs: Mapping[str, Any], index: int) -> Target:
    """The target ``index`` of ``TARGET_FACTORIES[kind](**kwargs)`` (in a worker process)."""
    return TARGET_FACTORIES[kind](**kwargs)[index]


class WorkerError(RuntimeError):
    """A command failed in a worker process; ``status`` is the row status it reported."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


class LocalRunner:
    """A target loaded and called in this process."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.make: Callable[[int], Callable[[], Any]] | None = None
        self.run: Callable[[], Any] | None = None

    def load(self, warmup: int) -> dict[str, Any]:
        """Load, first call and warm-up at batch 1; session / first-run seconds and peak memory."""
        t = self.target
        loading: dict[str, Any] = {"worker_pid": os.getpid()}
        with PeakMemory() as mem:
            t0 = time.perf_counter()
            self.make = t.load()
            loading["session_s"] = time.perf_counter() - t0
            self.run = self.make(1 if t.dynamic_batch else t.static_batch)
            # lazy initialisation, kernel selection; torch.compile compiles here
            loading["first_run_s"] = time_call(self.run)
            for _ in range(warmup):
                self.run()
        loading["peak_rss_mb"] = mem.mb
        return loading

    def prepare(self, batch: int, warmup: int) -> None:
        """Inputs of ``batch`` and ``warmup`` untimed calls."""
        self.run = self.make(batch)
        for _ in range(warmup):
            self.run()

    def call(self) -> float:
        """One timed call, seconds."""
        return time_call(self.run)

    def release(self) -> None:
        self.run = None
        release_memory()

    def close(self) -> None:
        self.make = self.run = None


class ProcessRunner:
    """A target loaded and called in a worker process of its own, driven through a pipe.

    Why: models sharing a process slow each other down. On the 2-vCPU AMD EPYC of docs/benchmarks.md, eager
    PyTorch ran the demo model at 37 ms alone and 54-97 ms with onnxruntime sessions alive in the same process
    (idle ones included, spinning off) — so in-process rows flattered onnxruntime. A worker that waits on the pipe
    holds no core; each call is timed inside the worker, so the pipe's round trip is not in the figure.
    """

    def __init__(self, target: Target, threads: int, timeout_s: float | None = None) -> None:
        if target.recipe is None:
            raise ValueError(f"{target.model} ({target.backend}): no recipe to rebuild it in a worker process")
        self.timeout_s = timeout_s  # None: wait for every answer as long as it takes
        ctx = mp.get_context("spawn")  # a fresh interpreter: no threads or allocator state inherited
        self.conn, child = ctx.Pipe()
        kind, kwargs, index = target.recipe
        # Not a daemon: torch.compile's inductor may start worker processes of its own, which daemons cannot. A
        # worker whose parent died reads EOF from the pipe and exits.
        self.process = ctx.Process(target=_serve, args=(child, kind, kwargs, index, threads))
        self.process.start()
        child.close()

    def _ask(self, command: str, *args: Any) -> Any:
        if not self.process.is_alive():
            raise WorkerError(f"error: worker process exited with code {self.process.exitcode}")
        self.conn.send((command, *args))
        # poll() is also true at EOF, so a dead worker falls through to recv()'s EOFError below.
        if self.timeout_s is not None and not self.conn.poll(self.timeout_s):
            self.process.kill()  # a hung call (a deadlock, a runaway compile) must not hang the benchmark
            self.process.join(timeout=30)
            raise WorkerError(f"error: no answer to '{command}' within worker_timeout_s={self.timeout_s:g} s; "
                              f"worker killed")
        try:
            status, value = self.conn.recv()
        except EOFError:  # the worker died (a crash in native code, out of memory)
            raise WorkerError(f"error: worker process exited with code {self.process.exitcode}") from None
        if status == "error":
            raise WorkerError(value)
        return value

    def load(self, warmup: int) -> dict[str, Any]:
        return self._ask("load", warmup)

    def prepare(self, batch: int, warmup: int) -> None:
        self._ask("prepare", batch, warmup)

    def call(self) -> float:
        return self._ask("call")

    def release(self) -> None:
        self._ask("release")

    def close(self) -> None:
        with contextlib.suppress(OSError, BrokenPipeError):
            self.conn.send(("stop",))
        self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.kill()
        self.conn.close()


def measure(targets: Sequence[Target], batches: Sequence[int], warmup: int, iters: int, batch_iters: int,
            interleave: bool = True, isolate: bool = True, threads: int = 1,
            timeout_s: float | None = None) -> list[dict[str, Any]]:
    """Load every target (timed, with its peak memory), then time each batch size; one row per target and batch
    (a graph with a static batch: one row, at its batch). ``isolate``: each target in a worker process of its own
    (:class:`ProcessRunner`, which gives up on a command after ``timeout_s``); else all in this one. A target that
    fails while loading, preparing or being timed gets the error as its status; the others go on."""
    runners: dict[int, LocalRunner | ProcessRunner] = {}
    loading: dict[int, dict[str, Any]] = {}
    try:
        for i, t in enumerate(targets):
            loading[i] = {"session_s": None, "first_run_s": None, "peak_rss_mb": None}
            if t.status != "ok":
                continue
            log.info("loading %s (%s, %s)%s", t.model, t.backend, t.precision, " in a worker process" * isolate)
            runner = ProcessRunner(t, threads, timeout_s) if isolate else LocalRunner(t)
            try:
                loading[i] = runner.load(warmup)
                runners[i] = runner
            except Exception as err:  # one backend failing (compile, a provider) must not lose the others
                log.warning("%s on %s failed: %s", t.model, t.backend, err)
                t.status = _status(err)
                runner.close()
        rows = []
        for batch in batches:
            wanted = [i for i, t in enumerate(targets) if batch == 1 or t.dynamic_batch]
            active: dict[int, LocalRunner | ProcessRunner] = {}
            for i in (i for i in wanted if i in runners and targets[i].status == "ok"):
                try:  # batch 1 was warmed up while loading
                    runners[i].prepare(batch if targets[i].dynamic_batch else targets[i].static_batch,
                                       warmup if batch != 1 else 0)
                    active[i] = runners[i]
                except Exception as err:  # e.g. out of memory at a large batch
                    targets[i].status = _status(err)
            n = iters if batch == 1 else batch_iters
            log.info("timing batch %d: %d calls of %d models%s", batch, n, len(active),
                     " (interleaved)" * interleave)
            order = list(active)
            ours = [os.getpid()] + [r.process.pid for r in runners.values() if isinstance(r, ProcessRunner)]
            others = {i: OthersCpu(ours) for i in order}
            calls = [_watched(_guarded(targets[i], active[i]), others[i]) for i in order]
            if interleave:
                times = dict(zip(order, call_interleaved(calls, n)))
            else:
                times = {i: call_interleaved([call], n)[0] for i, call in zip(order, calls)}
            for i in wanted:
                t = targets[i]
                row = t.row(batch if t.dynamic_batch else t.static_batch)
                if batch == 1:
                    row.update(loading[i])
                if i in times and t.status == "ok":
                    stats = summarise(times[i], row["batch"])
                    # per camera image: a batch-8 call runs 8 frames of every camera
                    row.update(stats, per_camera_ms=stats["p50_ms"] / max(t.cameras * int(row["batch"]), 1))
                    cores = others[i].cores
                    row["others_cores"] = None if cores is None else round(cores, 2)
                rows.append(row)
            for i, runner in active.items():
                if targets[i].status == "ok":
                    runner.release()
        return rows
    finally:
        for runner in runners.values():
            runner.close()


def _watched(call: Callable[[], float], others: OthersCpu) -> Callable[[], float]:
    """``call``, with what other processes used meanwhile added up in ``others`` (read between the calls, outside
    the timed region)."""
    def run() -> float:
        others.start()
        try:
            return call()
        finally:
            others.stop()
    return run


def _guarded(target: Target, runner: LocalRunner | ProcessRunner) -> Callable[[], float]:
    """``runner.call`` that, once it has failed, records the error as the target's status and returns NaN from then
    on, so the models timed beside it keep their rows."""
    def call() -> float:
        if target.status != "ok":
            return math.nan
        try:
            return runner.call()
        except Exception as err:
            log.warning("%s on %s failed while being timed: %s", target.model, target.backend, err)
            target.status = _status(err)
            return math.nan
    return call


# --- the job -----------------------------------------------------------------------------------------------------

def model_specs(models: Any) -> dict[str, dict[str, Any]]:
    """``{name: {"path": ..., "input_shape": ...}}`` from ``{name: path}``, ``{name: {path, input_shape}}`` or a
    list of paths (named by their run folder: ``runs/x/checkpoints/last.ckpt`` -> ``x``, ``export/int8/model.onnx``
    -> ``int8``)."""
    from visionpilot.training.checkpoints import split_model_spec

    models = OmegaConf.to_container(models, resolve=True) if OmegaConf.is_config(models) else models
    if isinstance(models, str):
        models = [models]
    if isinstance(models, Mapping):
        items = list(models.items())
    else:
        items = []
        for spec in models or []:
            path = split_model_spec(spec["path"] if isinstance(spec, Mapping) else spec, must_exist=False)[1]
            parent = path.parent.parent if path.parent.name == "checkpoints" else path.parent
            generic = path.stem in ("model", "last", "delta") and parent.name
            items.append((parent.name if generic else path.stem, spec))
    out: dict[str, dict[str, Any]] = {}
    for name, spec in items:
        entry = dict(spec) if isinstance(spec, Mapping) else {"path": spec}
        if "path" not in entry:
            raise ValueError(f"models.{name}: expected a path or {{path: ..., input_shape: [...]}}, found {entry}")
        if str(name) in out:
            raise ValueError(f"models: two models would be named '{name}' ({out[name]['path']} and {entry['path']});"
                             f" name them, e.g. models={{pytorch: ..., onnx-int8: ...}}")
        out[str(name)] = {**entry, "path": str(entry["path"])}
    return out


def _timeout(value: Any) -> float | None:
    """``worker_timeout_s``: seconds (> 0), or null / 0 for no limit."""
    if value is None or value == 0:
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if not seconds > 0:
        raise ValueError(f"field 'worker_timeout_s': expected seconds > 0, or null for no limit, found {value!r}")
    return seconds


def _check_path(name: str, spec: str) -> Path:
    from visionpilot.training.checkpoints import split_model_spec

    try:
        base, path = split_model_spec(spec)
    except (FileNotFoundError, ValueError) as err:
        raise type(err)(f"models.{name}: {err}") from None
    files = [f for f in (base, path) if f is not None]
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"models.{name}: file not found: {f}")
    if files[-1].suffix not in (".onnx", ".ckpt", ".safetensors"):
        raise ValueError(f"models.{name}: expected a .onnx file, a .ckpt checkpoint or a .safetensors region delta, "
                         f"found {files[-1]}")
    return files[-1]


def resolve_providers(providers: Any) -> list[str]:
    """``auto``: CPU plus CUDA and TensorRT when this onnxruntime has them; else the listed short names."""
    available = set(ort.get_available_providers())
    if providers in (None, "auto"):
        return [short for short, (full, _) in PROVIDERS.items() if full in available]
    names = [providers] if isinstance(providers, str) else list(providers)
    bad = [p for p in names if p not in PROVIDERS]
    if bad:
        raise ValueError(f"field 'providers' must be 'auto' or a list of {list(PROVIDERS)}, found {bad}")
    return names


def _metric(evaluation: Mapping[str, Any] | None, name: str, path: Path, metric: str) -> float | None:
    """The model's overall ``metric`` from a ``visionpilot-eval`` report, matched by file, else by model name."""
    if evaluation is None:
        return None
    from visionpilot.export.report import _eval_metrics

    values = _eval_metrics(evaluation, path)
    if values is None and name in (evaluation.get("overall") or {}):
        values = evaluation["overall"][name]
    return None if values is None else values.get(metric)


def benchmark(cfg: DictConfig) -> dict[str, Any]:
    """Time ``cfg.models``; write ``benchmark.json``, ``benchmark.md`` (and ``scaling.png``); return the report."""
    start = time.perf_counter()
    worker_timeout_s = _timeout(cfg.get("worker_timeout_s", 600))
    iters, batch_iters = int(cfg.iters), int(cfg.get("batch_iters") or cfg.iters)
    sc = cfg.get("scaling") or {}
    counts = [("iters", iters), ("batch_iters", batch_iters)]
    if sc.get("enabled"):
        counts.append(("scaling.iters", int(sc.get("iters", 10))))
    for key, value in counts:
        if value < 1:  # no timed calls, no percentiles: an IndexError once every model was loaded and warmed up
            raise ValueError(f"field '{key}': expected at least 1 timed call, found {value}")
    specs = model_specs(cfg.get("models"))
    if not specs:
        raise ValueError("visionpilot-benchmark: field 'models' is empty; give {name: path} pairs or a list of "
                         ".ckpt / .safetensors / .onnx paths")
    paths = {name: _check_path(name, spec["path"]) for name, spec in specs.items()}
    eval_json = cfg.get("eval_json")
    if eval_json and not Path(eval_json).is_file():
        raise FileNotFoundError(f"field 'eval_json': eval report not found: {eval_json}")
    evaluation = json.loads(Path(eval_json).read_text()) if eval_json else None
    device = str(cfg.get("device") or "auto")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("field 'device' is 'cuda', but torch sees no CUDA device; use device=cpu or auto")
    providers = resolve_providers(cfg.get("providers", "auto"))
    available = set(ort.get_available_providers())
    threads = int(cfg.get("threads") or available_cores())
    seed = int(cfg.get("seed") or 0)
    batches = [int(b) for b in cfg.get("batches") or [1]]
    if 1 not in batches:
        batches.insert(0, 1)  # latency, session and memory figures are batch-1 figures
    settings = {"threads": threads, "device": device, "providers": providers, "batches": batches,
                "warmup": int(cfg.warmup), "iters": iters, "batch_iters": batch_iters,
                "interleave": bool(cfg.get("interleave", True)), "isolate": bool(cfg.get("isolate", True)),
                "worker_timeout_s": worker_timeout_s,
                "torch_compile": bool(cfg.get("torch_compile")),
                "ort_spinning": bool(cfg.get("ort_spinning", False)), "seed": seed,
                # PyTorch has no CPU caching allocator: glibc would fault every call's fresh tensors in again
                # (10-15 % of the demo's eager latency); onnxruntime has its arena. Same footing: see keep_freed_memory
                "allocator": keep_freed_memory(),
                "eval_json": str(eval_json) if eval_json else None}

    torch.set_flush_denormal(True)  # see the module docstring: random-init weights otherwise mislead
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        targets: list[Target] = []
        for name, spec in specs.items():
            if paths[name].suffix == ".onnx":
                shape = spec.get("input_shape", cfg.get("input_shape"))
                shape = OmegaConf.to_container(shape) if OmegaConf.is_config(shape) else shape
                kind, kwargs = "onnx", {"name": name, "path": paths[name], "providers": providers,
                                        "threads": threads, "input_shape": shape, "seed": seed,
                                        "spinning": settings["ort_spinning"]}
            else:
                kind, kwargs = "torch", {"name": name, "spec": spec["path"], "device": device,
                                         "compile_mode": cfg.get("compile_mode"),
                                         "torch_compile": settings["torch_compile"], "seed": seed}
            built = TARGET_FACTORIES[kind](**kwargs)
            for index, target in enumerate(built):
                target.recipe = (kind, kwargs, index)
            targets += built
        for t in targets:  # a provider asked for by name but not installed: a row that says so
            full = next((f for f, b in PROVIDERS.values() if b == t.backend), None)
            if full is not None and full not in available:
                t.status = f"skipped: {full} not in this onnxruntime ({sorted(available)})"
        machine = machine_info(threads)
        rows = measure(targets, batches, settings["warmup"], settings["iters"], settings["batch_iters"],
                       interleave=settings["interleave"], isolate=settings["isolate"], threads=threads,
                       timeout_s=settings["worker_timeout_s"])
        metric = str(cfg.get("metric") or "lane_f1")
        for row in rows:
            row["metric"] = _metric(evaluation, row["model"], Path(row["path"]), metric)
        out_dir = Path(cfg.paths.output_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        report: dict[str, Any] = {"machine": machine, "rows": rows, "metric": metric if evaluation else None,
                                  "settings": settings, "scaling": None}
        if sc.get("enabled"):
            report["scaling"] = run_scaling(sc, specs, paths, threads, seed, out_dir)
    finally:
        torch.set_num_threads(previous_threads)  # the setting is process-wide
    report["machine"]["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    report["seconds"] = time.perf_counter() - start
    write_json_atomic(out_dir / "benchmark.json", report)
    write_text_atomic(out_dir / "benchmark.md", format_markdown(report) + "\n")
    return report


def run_scaling(sc: Mapping[str, Any], specs: Mapping[str, Mapping[str, Any]], paths: Mapping[str, Path],
                threads: int, seed: int, out_dir: Path) -> dict[str, Any]:
    """The camera / resolution sweep on the first PyTorch model given (it needs a network to rebuild)."""
    from visionpilot.export.scaling import plot_scaling, scaling_sweep
    from visionpilot.training.finetune import load_model

    name = next((n for n, p in paths.items() if p.suffix != ".onnx"), None)
    if name is None:
        return {"status": "skipped: the sweep rebuilds the network per rig and needs a checkpoint in 'models'"}
    loaded = load_model(specs[name]["path"])
    cameras = len(loaded.camera_names) or 1
    sizes = [list(s) for s in (sc.get("sizes") or [])] or [list(loaded.image_size)]
    result = scaling_sweep(loaded.net, cameras, loaded.image_size, [int(n) for n in sc.get("cameras") or [cameras]],
                           sizes, backend=str(sc.get("backend") or "onnxruntime-cpu"), threads=threads,
                           warmup=int(sc.get("warmup", 2)), iters=int(sc.get("iters", 10)), seed=seed)
    result.update(model=name, status="ok", plot=str(plot_scaling(result, out_dir / "scaling.png").name))
    return result


# --- the report --------------------------------------------------------------------------------------------------

def _f(value: Any, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def contention_note(rows: Sequence[Mapping[str, Any]], cores: int, threads: int) -> list[str]:
    """The lines under the table on what other processes used while the rows were timed: a warning naming the
    contended rows when they took more than the cores the benchmark left free (``cores - threads``, + 0.1 for
    the odd daemon), else one line saying the machine was quiet."""
    seen = [r for r in rows if r.get("others_cores") is not None]
    if not seen:
        return []
    free = max(cores - threads, 0)
    hit = [r for r in seen if r["others_cores"] > free + 0.1]
    if not hit:
        return [f"Other processes while timing: at most {max(r['others_cores'] for r in seen):.2f} cores busy "
                f"({free} left free): uncontended."]
    names = ", ".join(f"{r['model']} ({r['backend']}, {r['precision']}, batch {r['batch']}: "
                      f"{r['others_cores']:.2f})" for r in hit)
    return [f"**Contended:** other processes kept cores busy (hypervisor steal included) beyond the {free} this "
            f"benchmark left free while these rows were timed: {names}. Their times are too slow, eager PyTorch's "
            f"most (its threads wait for each other at every operator); rerun on a quiet machine or with fewer "
            f"'threads'."]


def format_markdown(report: Mapping[str, Any]) -> str:
    """``benchmark.md``: the machine, one table row per model x backend x precision (batch-1 latency and the
    frames/s of every batch), the ratio to the first row that ran, and the scaling tables."""
    m, s = report["machine"], report["settings"]
    rows = report["rows"]
    batches = [b for b in s["batches"] if b != 1]
    metric = report.get("metric")
    lines = [f"Machine: {m['cpu']}, {m['cores_available']} of {m['cores']} cores ({', '.join(m['cpu_flags']) or '-'})"
             + (f", GPU {m['gpu']}" if m.get("gpu") else "") + f"; torch {m['torch']}, onnxruntime {m['onnxruntime']}; "
             f"{s['threads']} thread{'s' * (s['threads'] != 1)}; load average {m['load_avg_1m']} -> "
             f"{m.get('load_avg_1m_end', '?')}",
             f"Latency: batch 1, {s['iters']} calls per row after {s['warmup']} warm-up calls"
             + (", interleaved across models" if s["interleave"] else "")
             + (", each model in a process of its own" if s.get("isolate") else ", all models in one process")
             + (f"; frames/s at batch {', '.join(map(str, batches))}: {s['batch_iters']} calls" if batches else ""), ""]
    header = (["model", "backend", "precision", "status", "MB"] + ([metric] if metric else [])
              + ["p50 ms", "p90 ms", "p99 ms", "min ms", "ms / camera", "vs first", "FPS (b1)"]
              + [f"FPS (b{b})" for b in batches] + ["session s", "first run s", "peak MB"])
    lines += ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    firsts: dict[tuple[str, str, str], dict[str, Any]] = {}  # per model x backend x precision, its first batch
    for r in rows:
        firsts.setdefault((r["model"], r["backend"], r["precision"]), r)
    first = list(firsts.values())
    reference = next((r for r in first if r["p50_ms"] is not None), None)
    for r in first:
        fps = {x["batch"]: x["fps"] for x in rows if (x["model"], x["backend"], x["precision"]) ==
               (r["model"], r["backend"], r["precision"])}
        ratio = (r["p50_ms"] / reference["p50_ms"]) if reference and r["p50_ms"] is not None else None
        cells = [r["model"], r["backend"], r["precision"], r["status"], _f(r["size_mb"], ".1f")]
        if metric:
            cells.append(_f(None if r["metric"] is None else 100 * r["metric"], ".2f"))
        cells += [_f(r["p50_ms"], ".1f"), _f(r["p90_ms"], ".1f"), _f(r["p99_ms"], ".1f"), _f(r.get("min_ms"), ".1f"),
                  _f(r.get("per_camera_ms"), ".1f"), _f(ratio, ".2f"), _f(fps.get(r["batch"]), ".1f")]
        cells += [_f(fps.get(b), ".1f") for b in batches]
        cells += [_f(r.get("session_s"), ".2f"), _f(r.get("first_run_s"), ".2f"), _f(r.get("peak_rss_mb"), ".0f")]
        lines.append("| " + " | ".join(cells) + " |")
    if reference:
        lines.append(f"\n'vs first': p50 / p50 of {reference['model']} ({reference['backend']}, "
                     f"{reference['precision']}); 'peak MB': {m['memory_method']}")
    lines += contention_note(rows, m["cores_available"], s["threads"])
    sc = report.get("scaling")
    if sc and sc.get("status") == "ok":
        from visionpilot.export.scaling import scaling_markdown

        lines += ["", f"## Scaling ({sc['model']}; plot: {sc['plot']})", "", scaling_markdown(sc)]
    elif sc:
        lines += ["", f"Scaling: {sc['status']}"]
    return "\n".join(lines)
