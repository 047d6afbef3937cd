"""Atomic writes: temp file in the same directory, fsync, os.replace, fsync the directory."""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from common.errors import AssistError, ConfigError, LocalStateError

_LINUX = sys.platform.startswith("linux")


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a directory entry so a rename survives power loss (no-op where unsupported)."""
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sync_filesystem(path: str | os.PathLike[str]) -> None:
    """Flush every dirty file of the filesystem holding `path` (Linux syncfs; sync elsewhere).

    Before `current` points at a freshly unpacked tree: without it a power cut soon after the
    swap can leave the rename on disk but the tree's files empty (delayed allocation). One
    syncfs costs one journal commit, where an fsync per file would cost one each.
    """
    syncfs = _libc_syncfs() if _LINUX else None
    if syncfs is not None:
        import ctypes

        fd = os.open(os.fspath(path), os.O_RDONLY)
        try:
            failed = syncfs(fd) != 0
            code = ctypes.get_errno()
        finally:
            os.close(fd)
        if not failed:
            return
        if code != errno.ENOSYS:  # writeback failed (EIO, ENOSPC…): the files are not safe
            raise LocalStateError(
                f"cannot flush {path} to disk: {os.strerror(code)}",
                hint="check the disk (dmesg, df) and retry",
            )
    if hasattr(os, "sync"):
        os.sync()


def _libc_syncfs() -> Any:
    """libc's syncfs, or None where it is missing (old glibc, musl without it, no ctypes)."""
    return _libc_function("syncfs")


@functools.cache
def _libc_function(name: str, argtypes: tuple[str, ...] = ()) -> Any:
    """A libc function through ctypes (looked up once), or None where it is missing;
    `argtypes` names its ctypes argument types (needed where an int is wider than C's int)."""
    try:
        import ctypes

        function = getattr(ctypes.CDLL(None, use_errno=True), name, None)
    except (ImportError, OSError):
        return None
    if function is not None and argtypes:
        function.argtypes = [getattr(ctypes, kind) for kind in argtypes]
    return function


_SYNC_FILE_RANGE_WRITE = 2  # linux/fs.h: start write-back of dirty pages, do not wait
_SYNC_FILE_RANGE_ARGS = ("c_int", "c_int64", "c_int64", "c_uint")  # fd, offset, nbytes, flags


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing `length` bytes of `fd` from `offset` to disk, not waiting.

    A large download written without it leaves all its pages dirty, so the fsync (or syncfs)
    at the end waits for the whole file; started chunk by chunk while the rest is received,
    that final flush only waits for the tail. A hint only: where sync_file_range is missing
    (not Linux, old libc) nothing happens and the final fsync does all the work, as before.
    """
    sync_file_range = _libc_function("sync_file_range", _SYNC_FILE_RANGE_ARGS) if _LINUX else None
    if sync_file_range is not None:
        sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)  # errors: the fsync sees them


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: int = 0o644) -> Iterator[IO[bytes]]:
    """Yield a binary file that replaces `path` atomically when the block exits cleanly."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(target.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> None:
    """Replace `path` with `data` atomically."""
    with atomic_open(path, mode) as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str, mode: int = 0o644) -> None:
    """Replace `path` with UTF-8 `text` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"), mode)


def atomic_write_json(path: str | os.PathLike[str], value: Any, mode: int = 0o644) -> None:
    """Replace `path` with `value` as indented, key-sorted JSON atomically."""
    text = json.dumps(value, indent=2, sort_keys=True) + "\n"
    atomic_write_text(path, text, mode)


def atomic_symlink(target: str, link: str | os.PathLike[str]) -> None:
    """Point symlink `link` at `target` atomically (temp link + rename)."""
    link_path = Path(link)
    tmp = link_path.parent / f".{link_path.name}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, link_path)
    fsync_dir(link_path.parent)


def read_json(
    path: str | os.PathLike[str], *, missing: AssistError, unreadable_hint: str | None = None
) -> Any:
    """Parsed JSON of `path`: raise `missing` if it does not exist, ConfigError if unreadable."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise missing from exc
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}", hint=unreadable_hint) from exc
