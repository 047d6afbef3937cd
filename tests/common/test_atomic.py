"""Atomic writes leave either the old or the new content, never a mix or a temp file."""

from __future__ import annotations

import ctypes
import errno
import json
import os
from pathlib import Path

import pytest

import common.atomic
from common.atomic import (
    atomic_open,
    atomic_symlink,
    atomic_write_json,
    atomic_write_text,
    start_writeback,
    sync_filesystem,
)
from common.errors import LocalStateError


def test_write_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "state.json"
    atomic_write_json(target, {"phase": "idle"})
    atomic_write_json(target, {"phase": "staged"})
    assert json.loads(target.read_text()) == {"phase": "staged"}
    assert os.listdir(target.parent) == ["state.json"]


def test_failure_inside_block_keeps_old_content(tmp_path: Path) -> None:
    target = tmp_path / "f"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_open(target) as handle:
        handle.write(b"partial")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["f"]


def test_mode_is_applied(tmp_path: Path) -> None:
    atomic_write_text(tmp_path / "key", "secret", mode=0o600)
    assert (tmp_path / "key").stat().st_mode & 0o777 == 0o600


def test_symlink_swap(tmp_path: Path) -> None:
    (tmp_path / "v1").mkdir()
    (tmp_path / "v2").mkdir()
    atomic_symlink("v1", tmp_path / "current")
    atomic_symlink("v2", tmp_path / "current")
    assert os.readlink(tmp_path / "current") == "v2"
    assert sorted(os.listdir(tmp_path)) == ["current", "v1", "v2"]


def test_sync_filesystem_flushes_for_real(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * 4096)
    sync_filesystem(tmp_path)  # the real syncfs(2) here; nothing to assert but that it returns


def test_sync_filesystem_refuses_when_writeback_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EIO from syncfs means the files did not reach the disk: the swap must not go ahead.
    (A failing disk cannot be staged here: libc's syncfs is replaced by one that fails.)"""

    def failing(fd: int) -> int:
        ctypes.set_errno(errno.EIO)
        return -1

    monkeypatch.setattr(common.atomic, "_libc_syncfs", lambda: failing)
    with pytest.raises(LocalStateError, match="cannot flush"):
        sync_filesystem(tmp_path)


def test_sync_filesystem_without_syncfs_falls_back_to_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(common.atomic, "_libc_syncfs", lambda: None)
    monkeypatch.setattr(os, "sync", lambda: calls.append("sync"))
    sync_filesystem(tmp_path)
    assert calls == ["sync"]


def test_start_writeback_calls_the_real_sync_file_range(tmp_path: Path) -> None:
    """The ctypes signature is right (64-bit offsets): libc accepts a real range beyond 4 GiB
    and refuses a closed descriptor, so the hint reaches the kernel where it exists."""
    sync_file_range = common.atomic._libc_function(
        "sync_file_range", common.atomic._SYNC_FILE_RANGE_ARGS
    )
    if sync_file_range is None:
        pytest.skip("no sync_file_range in this libc")
    path = tmp_path / "f"
    path.write_bytes(b"x" * (1 << 20))
    fd = os.open(path, os.O_RDWR)
    try:
        assert sync_file_range(fd, 5 << 30, 1 << 20, 2) == 0
        start_writeback(fd, 0, 1 << 20)
    finally:
        os.close(fd)
    assert sync_file_range(fd, 0, 1 << 20, 2) == -1
    assert ctypes.get_errno() == errno.EBADF
    assert path.read_bytes() == b"x" * (1 << 20)
