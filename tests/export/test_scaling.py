"""The latency sweep against cameras and resolution: a point that fails is a status, not the end of the sweep."""

from __future__ import annotations

import pytest

from visionpilot.export.scaling import scaling_sweep

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.mark.parametrize("warmup", [0, 1])
def test_a_point_that_fails_in_torch_eager_is_recorded_and_the_sweep_goes_on(build_net, hw, warmup: int) -> None:
    # torch-eager builds a point without running it, so a size the network cannot take failed in the timed calls
    # and ended the whole sweep (on onnxruntime it fails while exporting, and was recorded).
    result = scaling_sweep(build_net("tiny"), 1, hw, [1], [hw, (0, hw[1])], backend="torch-eager", warmup=warmup,
                           iters=2)
    good, bad = result["resolution"]
    assert good["status"] == "ok" and good["p50_ms"] > 0 and result["cameras"][0]["p50_ms"] > 0
    assert bad["status"].startswith("error: RuntimeError") and bad["p50_ms"] is None


def test_no_timed_calls_is_refused_before_building(build_net, hw) -> None:
    with pytest.raises(ValueError, match=r"scaling\.iters must be >= 1, found 0"):
        scaling_sweep(build_net("tiny"), 1, hw, [1], [hw], backend="torch-eager", iters=0)
