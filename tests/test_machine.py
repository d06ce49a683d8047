"""What the machine's CPU can do: the flags that decide bf16 autocast for the demo."""

from __future__ import annotations

import pytest

from visionpilot.utils import machine


@pytest.mark.parametrize(("cpuinfo", "model", "native"), [
    ("processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n",
     "AMD EPYC 9R14", True),
    ("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8481C\nflags\t\t: avx2 avx512f amx_bf16 amx_int8\n",
     "Intel(R) Xeon(R) Platinum 8481C", True),
    ("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\nflags\t\t: avx2 avx512f avx512_vnni\n",
     "Intel(R) Xeon(R) CPU @ 2.20GHz", False),
    ("processor\t: 0\nBogoMIPS\t: 2100.00\nFeatures\t: fp asimd sve bf16 i8mm\n", None, True),  # Arm: Graviton 3
])
def test_native_bf16_reads_the_cpu_flags(tmp_path, monkeypatch, cpuinfo: str, model: str | None,
                                         native: bool) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo)
    real_path = machine.Path
    monkeypatch.setattr(machine, "Path", lambda p: path if p == "/proc/cpuinfo" else real_path(p))
    machine.cpu_info.cache_clear()
    try:
        assert machine.native_bf16() is native
        if model is not None:
            assert machine.cpu_model() == model
    finally:
        machine.cpu_info.cache_clear()
