"""Geometry tests draw floats with hypothesis, which refuses to run while the CPU flushes subnormal floats to zero
(training code turns flushing on for speed, and it is process-wide)."""

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _subnormals_kept() -> Iterator[None]:
    torch.set_flush_denormal(False)
    yield
    torch.set_flush_denormal(True)
