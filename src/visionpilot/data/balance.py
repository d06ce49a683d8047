"""Class-balanced frame sampling: CBGS (Zhu et al. 2019, "Class-balanced Grouping and Sampling for Point Cloud 3D
Object Detection"), the resampling CenterPoint and most nuScenes detectors since train with (mmdetection3d's
``CBGSDataset``).

Driving data is dominated by cars: in the synthetic demo's val frames, 1,893 cars against 87 buses and 82 cones
within their evaluation ranges; on nuScenes, cars outnumber construction vehicles tens of times. mAP averages the
classes, so a rare class counts as much as cars, but its heatmap sees few positives in a training run. CBGS resamples
the training frames so that each class is present in an equal share of them: with ``n_c`` the frames holding class
``c``, each of the ``C`` classes present gets ``sum_c' n_c' / C`` draws (with replacement) from its ``n_c`` frames
(mmdetection3d's ``n_c * ratio_c``, ``ratio_c = (1 / C) / (n_c / sum n)``); a frame holding several classes can be
drawn for each. The list is drawn once, from a seed, so every run (and every DDP rank) trains on the same one; the
epoch sampler then shuffles it as any split.

Deviation from mmdetection3d: frames without any object are kept once each instead of dropped (here a frame also
carries lane labels, which CBGS was not written for).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: ``data.balance`` values: None (every train frame once per epoch) or ``"classes"`` (CBGS).
BALANCE_MODES = (None, "classes")


def class_balanced_indices(frame_classes: Sequence[Sequence[int]], num_classes: int, seed: int = 0) -> list[int]:
    """CBGS: frame indices (with repeats) in which every class present is held by an equal share of draws.

    Args:
        frame_classes: per frame, the object classes it holds (repeats and order do not matter).
        num_classes: size of the vocabulary; classes outside ``[0, num_classes)`` raise.
        seed: the draw's seed.

    Returns:
        Sorted frame indices: for each of the ``C`` classes present in any frame, ``floor(sum_c n_c / C)`` draws
        from the ``n_c`` frames holding it; and every frame without objects once.
    """
    holders: list[list[int]] = [[] for _ in range(num_classes)]
    empty = []
    for i, classes in enumerate(frame_classes):
        present = {int(c) for c in classes}
        bad = sorted(c for c in present if not 0 <= c < num_classes)
        if bad:
            raise ValueError(f"class_balanced_indices: frame {i} holds class indices {bad} outside [0, {num_classes})")
        if not present:
            empty.append(i)
        for c in present:
            holders[c].append(i)
    present_classes = [c for c in range(num_classes) if holders[c]]
    total = sum(len(holders[c]) for c in present_classes)
    rng = np.random.default_rng(seed)
    drawn: list[int] = []
    count = total // max(len(present_classes), 1)
    for c in present_classes:
        drawn.extend(rng.choice(holders[c], size=count, replace=True).tolist())
    return sorted(drawn + empty)
