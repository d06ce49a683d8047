"""Writers: frames (e.g. the synthetic world) written out in real dataset formats.

They exercise the real loaders end to end (the tests use them as fixture writers) and let the synthetic world be
used by tools that read those formats. Every file is written atomically (a temp file in the same folder, then
``os.replace``), so an interrupted export never leaves a truncated file that a loader would half-read; and the index
files a loader starts from (nuScenes' tables, CULane's lists, TuSimple's label files) are removed first and written
last, so an export killed half-way into an existing root leaves one no loader reads as complete, rather than new
images under an earlier export's labels. TuSimple's two label files are optional in the format, so a root with only
one of them looks whole; its writer also keeps ``visionpilot_export.json`` at ``writing`` until the last label file
is in place, and the loader refuses a root whose status is not ``complete``.

    write_nuscenes(frames, root)   nuScenes v1.0 tables + images + map expansion v1.3 lane dividers
    write_culane(frames, root)     CULane list files, images and .lines.txt (front camera, 2D lanes)
    write_tusimple(frames, root)   TuSimple label_data_*.json / test_label.json lines and clips/ images
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from visionpilot.data.writers._common import stable_token, write_bytes_atomic, write_image_atomic
from visionpilot.data.writers.culane import write_culane
from visionpilot.data.writers.nuscenes import write_nuscenes
from visionpilot.data.writers.tusimple import write_tusimple

#: Format name -> writer ``(frames, root, **options) -> root``.
WRITERS: dict[str, Callable[..., Path]] = {"nuscenes": write_nuscenes, "culane": write_culane,
                                           "tusimple": write_tusimple}

__all__ = ["WRITERS", "stable_token", "write_bytes_atomic", "write_culane", "write_image_atomic", "write_nuscenes",
           "write_tusimple"]
