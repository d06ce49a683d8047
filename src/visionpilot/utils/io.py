"""Atomic writes: a crash mid-write never leaves a truncated result file behind."""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_atomic(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file in ``path``'s folder, then rename it to ``path`` atomically.

    Any writer that takes a file name fits (``torch.save``, ``onnx.save_model``, ``safetensors``' ``save_file``);
    on any error the temporary file is removed and ``path`` is left as it was. Durable as well as atomic: the file's
    data is flushed to disk before the rename and the folder's entry after it, so a power cut leaves the old file
    or the new one, never an empty one under the new name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        _fsync_file(tmp)  # the writer has closed it
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the result the permissions open() would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def fsync_dir(folder: str | Path) -> None:
    """Persist a rename: the directory entry must reach the disk too (POSIX; a no-op where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # folders cannot be opened on every OS
        return
    _fsync_fd(fd, strict=False)


def _fsync_file(path: str | Path) -> None:
    """Flush a closed file's data to disk (any descriptor of the file does)."""
    _fsync_fd(os.open(path, os.O_RDWR), strict=True)


#: fsync errors of a file system that cannot sync (a write there is atomic, not durable), not of a failing disk
_CANNOT_SYNC = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS}


def _fsync_fd(fd: int, strict: bool) -> None:
    try:
        os.fsync(fd)
    except OSError as err:
        if strict and err.errno not in _CANNOT_SYNC:  # EIO: the data did not reach the disk; the write fails
            raise
    finally:
        os.close(fd)


def _umask() -> int:
    """The process's umask: read from /proc where Linux shows it; elsewhere by setting and restoring it (Python has
    no getter), which changes it process-wide for a moment, for files other threads create meanwhile."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` via a temporary file in the same folder, flushed to disk, and an atomic rename."""
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text))


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN/Inf become null (strict JSON has no NaN), numpy/torch scalars become Python numbers."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 0) == 0:
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON (sorted keys) atomically."""
    return write_text_atomic(path, json.dumps(_clean(obj), indent=2, sort_keys=True) + "\n")


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
