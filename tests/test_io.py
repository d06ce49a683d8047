"""Atomic writes keep what a plain open() would give: the content, and permissions by the process's umask."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from visionpilot.utils.io import write_atomic, write_text_atomic


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_files_get_the_permissions_of_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    # mkstemp creates 0600 files: checkpoints and shards were unreadable for the rest of a team.
    old = os.umask(umask)
    try:
        path = write_text_atomic(tmp_path / "metrics.json", "{}")
    finally:
        os.umask(old)
    assert path.read_text() == "{}" and stat.S_IMODE(path.stat().st_mode) == mode


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = write_text_atomic(tmp_path / "last.ckpt", "old")

    def crash(tmp: str) -> None:
        Path(tmp).write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, crash)
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="Linux shows the umask in /proc/self/status")
def test_atomic_writes_read_the_umask_without_changing_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Setting and restoring the umask to read it changed it process-wide for a moment: a file another thread created
    # then got 0o022's permissions instead of the process's.
    old = os.umask(0o027)
    try:
        monkeypatch.setattr(os, "umask", lambda mask: pytest.fail(f"os.umask({mask:o}) called"))
        write_text_atomic(tmp_path / "x.json", "{}")
    finally:
        monkeypatch.undo()
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.json").stat().st_mode) == 0o640


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names the synced files through /proc")
def test_every_atomic_write_reaches_the_disk_before_and_after_its_rename(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The rename is atomic, not durable: the file's bytes must be on disk before it (a power cut could leave an
    empty file under the new name) and the folder's entry after it — for any writer, not only the ones that synced
    themselves (metrics plots, frame dumps and exports did not sync the folder)."""
    synced: list[tuple[str, int]] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append((os.readlink(f"/proc/self/fd/{fd}"), os.fstat(fd).st_size))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    path = write_atomic(tmp_path / "plot.png", lambda tmp: Path(tmp).write_bytes(b"\x89PNG" + bytes(60)))
    (file_name, size), (folder, _) = synced
    assert Path(file_name).name.startswith(".plot.png.") and size == 64 == path.stat().st_size
    assert folder == str(tmp_path)


@pytest.mark.parametrize(("code", "fails"), [(errno.EINVAL, False), (errno.EIO, True)])
def test_a_file_system_that_cannot_sync_still_gets_atomic_writes_and_a_failing_disk_fails_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, fails: bool) -> None:
    write_text_atomic(tmp_path / "metrics.json", "old")

    def fsync(fd: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", fsync)
    if fails:
        with pytest.raises(OSError, match=os.strerror(errno.EIO)):
            write_text_atomic(tmp_path / "metrics.json", "new")
    else:
        write_text_atomic(tmp_path / "metrics.json", "new")
    assert (tmp_path / "metrics.json").read_text() == ("old" if fails else "new")
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
