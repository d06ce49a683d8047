"""Per-region evaluation: route each sample to its region's metric, plus one metric over everything.

Regions are a first-class axis of visionpilot (see :mod:`visionpilot.data.regions`), so every metric is reported
per region and overall::

    metric = PerRegionMetric(CULaneF1, regions=["de", "gb"])
    metric.update(batch["region"], preds, targets)   # each argument indexed by sample
    metric.compute()   # {"all": {"lane_f1": ...}, "de": {...}, "gb": {...}}
    flatten_region_results(metric.compute(), prefix="val")   # {"val/lane_f1": ..., "val/de/lane_f1": ...}
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.wrappers.abstract import WrapperMetric

#: Key of the metric that sees every sample.
OVERALL = "all"


class _SampleCounts(Metric):
    """Samples seen per routing key; sum-reduced so that every process knows which keys have data."""

    full_state_update = False

    def __init__(self, num_keys: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("counts", default=torch.zeros(num_keys, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, counts: Tensor) -> None:
        self.counts += counts.to(self.counts.device)

    def compute(self) -> Tensor:
        return self.counts


def select_samples(value: Any, index: Sequence[int], name: str, batch: int) -> Any:
    """The entries ``index`` of a per-sample argument (a tensor / array with a leading sample axis, or a sequence)."""
    length = value.shape[0] if isinstance(value, (Tensor, np.ndarray)) and value.ndim else None
    if length is None:
        if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
            raise ValueError(f"PerRegionMetric: argument '{name}' must be per sample (a sequence, tensor or array "
                             f"of length {batch}), found {type(value).__name__}")
        length = len(value)
    if length != batch:
        raise ValueError(f"PerRegionMetric: argument '{name}' must have one entry per sample ({batch} regions "
                         f"given), found {length}")
    if isinstance(value, Tensor):
        return value[torch.as_tensor(list(index), dtype=torch.long, device=value.device)]
    if isinstance(value, np.ndarray):
        return value[np.asarray(index, dtype=np.int64)]
    return [value[i] for i in index]


class PerRegionMetric(WrapperMetric):
    """One metric per region plus one over all samples, each built by ``metric_factory``.

    Every positional and keyword argument of :meth:`update` after ``regions`` must be *per sample* (indexable by
    sample); settings that are not per sample belong in the factory. Each child is a full torchmetrics ``Metric``,
    so it syncs its own states across DDP processes when computed. The region list is fixed at construction,
    because every process must compute the same children in the same order (collective calls must match).

    Args:
        metric_factory: builds one fresh metric (a class or a ``functools.partial``).
        regions: region codes (ISO 3166-1 alpha-2, any case; stored lower-case).
        overall: key of the metric that sees every sample.
    """

    def __init__(self, metric_factory: Callable[[], Metric], regions: Sequence[str], overall: str = OVERALL) -> None:
        super().__init__()
        codes = [str(r).lower() for r in regions]
        if len(set(codes)) != len(codes) or overall in codes:
            raise ValueError(f"PerRegionMetric: regions must be unique and differ from '{overall}', found {codes}")
        self.overall = overall
        self.keys = [overall, *codes]
        self.metrics = nn.ModuleDict({key: metric_factory() for key in self.keys})
        self.counts = _SampleCounts(len(self.keys))

    @property
    def regions(self) -> list[str]:
        return self.keys[1:]

    def update(self, regions: Sequence[str], *args: Any, **kwargs: Any) -> None:
        """Update the overall metric with everything and each region's metric with its samples.

        Args:
            regions: (B,) region code of each sample.
            *args, **kwargs: the wrapped metric's ``update`` arguments, each with one entry per sample.
        """
        codes = [str(r).lower() for r in regions]
        unknown = sorted(set(codes) - set(self.regions))
        if unknown:
            raise ValueError(f"PerRegionMetric: region(s) {unknown} not among the configured regions "
                             f"{self.regions}; configure them up front (every DDP process needs the same list)")
        batch = len(codes)
        counts = torch.zeros(len(self.keys), dtype=torch.long)
        counts[0] = batch
        # Split everything before updating anything, so that a bad argument leaves no metric half-updated.
        routed = []
        for code in sorted(set(codes)):
            index = [i for i, c in enumerate(codes) if c == code]
            counts[self.keys.index(code)] = len(index)
            sub_args = [select_samples(a, index, f"#{j + 1}", batch) for j, a in enumerate(args)]
            sub_kwargs = {k: select_samples(v, index, k, batch) for k, v in kwargs.items()}
            routed.append((code, sub_args, sub_kwargs))
        self.metrics[self.overall].update(*args, **kwargs)
        for code, sub_args, sub_kwargs in routed:
            self.metrics[code].update(*sub_args, **sub_kwargs)
        self.counts.update(counts)

    def compute(self) -> dict[str, dict[str, Tensor]]:
        """``{key: metric.compute()}`` for the overall key and every region that saw at least one sample."""
        out: dict[str, dict[str, Tensor]] = {}
        with warnings.catch_warnings():
            # A region may have no data on this process; its child still joins the sync, and its value is dropped.
            warnings.filterwarnings("ignore", message=r".*was called before the ``update`` method.*")
            counts = self.counts.compute()
            for i, key in enumerate(self.keys):
                value = self.metrics[key].compute()
                if int(counts[i]) > 0:
                    out[key] = value
        return out

    def reset(self) -> None:
        super().reset()
        for metric in self.metrics.values():
            metric.reset()
        self.counts.reset()

    def merge_state(self, incoming_state: PerRegionMetric | Mapping[str, Any]) -> None:  # type: ignore[override]
        """Merge another :class:`PerRegionMetric` with the same keys (child by child)."""
        if not isinstance(incoming_state, PerRegionMetric) or incoming_state.keys != self.keys:
            raise ValueError("PerRegionMetric.merge_state expects a PerRegionMetric with the same regions")
        for key in self.keys:
            self.metrics[key].merge_state(incoming_state.metrics[key])
        self.counts.merge_state(incoming_state.counts)

    def forward(self, *args: Any, **kwargs: Any) -> None:
        """Accumulate only (per-batch values of set metrics such as mAP are not meaningful)."""
        self.update(*args, **kwargs)


def flatten_region_results(results: Mapping[str, Mapping[str, Tensor | float]], prefix: str = "",
                           overall: str = OVERALL) -> dict[str, float]:
    """Flatten ``{region: {name: value}}`` to the ``metrics.json`` keys: ``<prefix>/<name>`` for the overall
    entry and ``<prefix>/<region>/<name>`` per region (``prefix=""`` drops the leading part)."""
    flat: dict[str, float] = {}
    for key, values in results.items():
        parts = [prefix] if prefix else []
        if key != overall:
            parts.append(key)
        for name, value in values.items():
            flat["/".join([*parts, name])] = float(value)
    return flat
