"""OmegaConf resolvers the configs use, registered when ``visionpilot`` is imported.

``${if_native_bf16:ACCELERATOR,A,B}`` is A when the accelerator computes bf16 in hardware, else B: a CUDA GPU that
supports bf16 (Ampere and newer) for ``gpu``/``cuda`` (and ``auto`` with a GPU present), the CPU's flags for ``cpu``
(``utils.machine.native_bf16``). ``experiment=demo`` sizes its training with it: bf16 autocast on such a CPU runs
a step 1.2-1.4x faster at the same quality, so the same minutes buy more steps (docs/benchmarks.md); where bf16
is emulated it is slower than float32.
"""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from visionpilot.utils.machine import native_bf16


def accelerator_has_bf16(accelerator: str) -> bool:
    """Whether Lightning's ``accelerator`` (cpu, gpu, cuda, auto) will train on hardware that computes bf16."""
    import torch

    accelerator = str(accelerator).lower()
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if accelerator in ("cpu", "auto"):
        return native_bf16()
    return False  # mps, tpu, ...: not measured here, so float32


def if_native_bf16(accelerator: str, native: Any, otherwise: Any) -> Any:
    return native if accelerator_has_bf16(accelerator) else otherwise


def register() -> None:
    if not OmegaConf.has_resolver("if_native_bf16"):
        OmegaConf.register_new_resolver("if_native_bf16", if_native_bf16)
