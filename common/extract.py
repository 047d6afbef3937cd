"""Safe unpacking of untrusted tar archives: the one extractor every unpacker uses.

Updater staging (tar.gz, the data.tar of a deb, an rpm's payload), the streamed stager, the
installer and `assist-mirror import` all unpack through `extract_tar`. The rule it keeps
(docs/SECURITY.md, "crafted archives"): extraction never follows a link. Every member is
created relative to an open directory descriptor of its parent (openat semantics), each path
component is opened with O_NOFOLLOW, so a symlink made by an earlier member can never redirect
a later write, mkdir or chmod out of the tree; a directory member over an existing symlink is
refused instead of "merged". Symlinks are created as given (never followed), and once the
whole archive is unpacked every symlink must really resolve inside the tree, chains included.
A refused archive therefore changes nothing outside `dest`; the caller removes `dest`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import posixpath
import shutil
import stat
import tarfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from common.errors import VerificationError

log = logging.getLogger(__name__)

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_HAVE_DIRFD = os.open in os.supports_dir_fd and os.mkdir in os.supports_dir_fd
_NOT_A_REAL_DIR = (errno.ELOOP, errno.ENOTDIR, errno.EMLINK)
MAX_DEPTH = 256  # path components of a member: deeper trees defeat os.walk and shutil.rmtree
T = TypeVar("T")


def member_path(name: str, prefix: str = "") -> str | None:
    """Path of a member relative to `prefix`; None for the prefix or one of its ancestors.

    Refuses absolute paths, backslashes, `..` and anything outside `prefix` (fail closed).
    """
    if name.startswith("/") or "\\" in name or "\0" in name:
        raise VerificationError(f"archive member has an absolute or odd path: {name!r}")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise VerificationError(f"archive member escapes with '..': {name!r}")
    if len(parts) > MAX_DEPTH:
        raise VerificationError(
            f"archive member nested too deep ({len(parts)} levels): {name[:80]!r}…",
            hint="the archive is malformed or malicious",
        )
    rel = "/".join(parts)
    if rel == "" or rel + "/" == prefix or prefix.startswith(rel + "/"):
        return None
    if not (rel + "/").startswith(prefix):
        raise VerificationError(
            f"archive member outside {prefix}: {name!r}", hint="the artifact is malformed"
        )
    return rel[len(prefix) :]


def check_link_text(rel: str, link: str) -> None:
    """A symlink target must be relative and lexically inside the tree (the cheap first check)."""
    if not link or link.startswith("/") or "\\" in link or "\0" in link:
        raise VerificationError(f"symlink {rel!r} points to an absolute or odd path {link!r}")
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(rel), link))
    if resolved == ".." or resolved.startswith("../"):
        raise VerificationError(f"symlink {rel!r} points outside the payload: {link!r}")


def extract_tar(tar: tarfile.TarFile, dest: Path, prefix: str = "") -> int:
    """Unpack the members of `tar` under `prefix` into the existing directory `dest`.

    Raises VerificationError for anything unsafe (and OSError for the filesystem's own
    failures); either way nothing outside `dest` was touched. Returns the members written.
    """
    count = 0
    with _Tree(dest) as tree:
        for member in tar:
            rel = member_path(member.name, prefix)
            if rel is None:
                if not member.isdir():
                    raise VerificationError(f"archive member outside the tree: {member.name!r}")
                continue
            tree.create(tar, member, rel, prefix)
            count += 1
    check_links_inside(dest)
    return count


def check_links_inside(tree: Path) -> None:
    """Every symlink under `tree` must really resolve inside it (chains and dangling ones too).

    Fails closed: a directory the walk cannot list (one deeper than PATH_MAX, which openat
    could create) is a refused tree, not a skipped one; realpath would not see through it either.
    """
    root = os.path.realpath(tree)
    for dirpath, dirnames, filenames in os.walk(tree, onerror=_refuse_unwalkable):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                try:
                    real = os.path.realpath(path)
                except RecursionError:
                    raise VerificationError(
                        f"symlink {path} starts a chain of links too long to follow"
                    ) from None
                if real != root and not real.startswith(root + os.sep):
                    raise VerificationError(f"symlink {path} resolves outside the payload")


def _refuse_unwalkable(exc: OSError) -> None:
    """os.walk's error hook: a directory whose links cannot be checked refuses the tree."""
    if exc.errno == errno.ENAMETOOLONG:
        raise VerificationError(
            "archive tree too deep to check its links (a path longer than PATH_MAX)",
            hint="the archive is malformed or malicious",
        ) from exc
    raise VerificationError(
        f"cannot check the links under {exc.filename}: {exc.strerror or exc}"
    ) from exc


def remove_tree(path: Path) -> None:
    """Remove a file, symlink or directory tree if it exists, never following a link."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


class _Tree:
    """The destination directory, written only through descriptors opened without following links."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.root_fd = -1
        self._held: tuple[tuple[str, ...], int] | None = None  # the last parent and its fd

    def __enter__(self) -> _Tree:
        if _HAVE_DIRFD:
            self.root_fd = os.open(self.dest, os.O_RDONLY | _O_DIRECTORY)
        return self

    def __exit__(self, *_: object) -> None:
        if self._held is not None:
            os.close(self._held[1])
            self._held = None
        if self.root_fd >= 0:
            os.close(self.root_fd)

    def create(self, tar: tarfile.TarFile, member: tarfile.TarInfo, rel: str, prefix: str) -> None:
        """Create one member: a directory, regular file, symlink or hard link; refuse the rest."""
        parts = rel.split("/")
        with self.parent(parts, member.name) as parent:
            name = parts[-1]
            if member.isdir():
                self.make_dir(parent, name, member)
            elif member.isreg():
                self.write_file(tar, parent, name, member)
            elif member.issym():
                check_link_text(rel, member.linkname)
                _refuse_existing(lambda: _symlink(member.linkname, parent, name), member.name)
            elif member.islnk():
                self.hard_link(parent, name, member, prefix)
            else:
                raise VerificationError(
                    f"archive member of a refused type (device/fifo): {member.name!r}"
                )

    @contextlib.contextmanager
    def parent(self, parts: Sequence[str], shown: str, create: bool = True) -> Iterator[int | str]:
        """The parent directory of `parts` (a descriptor, or a checked path without openat),
        each component a real directory (created 0755 when missing), never a symlink.

        The last parent opened for writing stays open for the next member (archives list a
        directory's files together). That is safe: extraction never removes or replaces a
        directory, so a held descriptor keeps naming the directory it was checked as.
        """
        if not _HAVE_DIRFD:
            yield self._parent_path(parts, shown, create)
            return
        key = tuple(parts[:-1])
        if self._held is not None and self._held[0] == key:
            yield self._held[1]
            return
        fd = self._walk(key, shown, create)
        if not create:  # a hard link's source, looked up while a parent is in use: not kept
            try:
                yield fd
            finally:
                os.close(fd)
            return
        if self._held is not None:
            os.close(self._held[1])
        self._held = (key, fd)
        yield fd

    def _walk(self, parts: Sequence[str], shown: str, create: bool) -> int:
        """Open the directory `parts` below the root component by component with O_NOFOLLOW."""
        fd = os.dup(self.root_fd)
        try:
            for part in parts:
                if create:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o755, dir_fd=fd)
                try:
                    child = os.open(part, os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW, dir_fd=fd)
                except FileNotFoundError as exc:
                    raise VerificationError(f"archive member {shown!r} refers to nothing") from exc
                except OSError as exc:
                    raise _through_link(exc, shown) from exc
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _parent_path(self, parts: Sequence[str], shown: str, create: bool) -> str:
        """Without openat (Windows): check every component with lstat before using it."""
        path = os.fspath(self.dest)
        for part in parts[:-1]:
            path = os.path.join(path, part)
            if create and not os.path.lexists(path):
                os.mkdir(path, 0o755)
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                raise VerificationError(f"archive member {shown!r} would be written through a link")
        return path

    def make_dir(self, parent: int | str, name: str, member: tarfile.TarInfo) -> None:
        """A directory member: create it or reuse a real directory; never one behind a symlink."""
        mode = (member.mode & 0o755) | 0o700
        with contextlib.suppress(FileExistsError):
            _call(os.mkdir, parent, name, 0o700)
        if isinstance(parent, str):
            path = os.path.join(parent, name)
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                raise VerificationError(f"directory member {member.name!r} over a link or file")
            os.chmod(path, mode)
            return
        try:
            fd = os.open(name, os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW, dir_fd=parent)
        except OSError as exc:
            raise _through_link(exc, member.name) from exc
        try:
            os.fchmod(fd, mode)
        finally:
            os.close(fd)

    def write_file(
        self, tar: tarfile.TarFile, parent: int | str, name: str, member: tarfile.TarInfo
    ) -> None:
        """A regular file, created exclusively (never over a link or an earlier member)."""
        mode = member.mode & 0o755 if member.mode else 0o644
        source = tar.extractfile(member)
        if source is None:
            raise VerificationError(f"archive member unreadable: {member.name!r}")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | getattr(os, "O_BINARY", 0)
        fd: int = _refuse_existing(lambda: _call(os.open, parent, name, flags, mode), member.name)
        with os.fdopen(fd, "wb") as out:
            if hasattr(os, "fchmod"):
                os.fchmod(out.fileno(), mode)
            shutil.copyfileobj(source, out, 1 << 20)

    def hard_link(self, parent: int | str, name: str, member: tarfile.TarInfo, prefix: str) -> None:
        """A hard link to a regular file unpacked earlier in the same tree."""
        source_rel = member_path(member.linkname, prefix)
        if not source_rel:
            raise VerificationError(f"hard link {member.name!r} points outside the payload")
        parts = source_rel.split("/")
        with self.parent(parts, member.name, create=False) as source_parent:
            try:
                info = _call(os.lstat, source_parent, parts[-1])
            except FileNotFoundError:
                info = None
            if info is None or not stat.S_ISREG(info.st_mode):
                raise VerificationError(f"hard link {member.name!r} to a non-file")
            if isinstance(parent, str) or isinstance(source_parent, str):
                link = lambda: os.link(  # noqa: E731
                    os.path.join(str(source_parent), parts[-1]), os.path.join(str(parent), name)
                )
            else:
                src_fd, dst_fd = source_parent, parent
                link = lambda: os.link(  # noqa: E731
                    parts[-1], name, src_dir_fd=src_fd, dst_dir_fd=dst_fd, follow_symlinks=False
                )
            _refuse_existing(link, member.name)


def _call(func: Callable[..., Any], parent: int | str, name: str, *args: object) -> Any:
    """func(name, *args) relative to a directory descriptor, or on the joined path."""
    if isinstance(parent, str):
        return func(os.path.join(parent, name), *args)
    return func(name, *args, dir_fd=parent)


def _symlink(link: str, parent: int | str, name: str) -> None:
    """Create a symlink (its target is never followed here)."""
    if isinstance(parent, str):
        os.symlink(link, os.path.join(parent, name))
    else:
        os.symlink(link, name, dir_fd=parent)


def _refuse_existing(make: Callable[[], T], shown: str) -> T:
    """Run `make`; an entry already there (an earlier member or a link) is a refused archive."""
    try:
        return make()
    except FileExistsError as exc:
        raise VerificationError(f"archive member appears twice or overwrites: {shown!r}") from exc
    except OSError as exc:
        if exc.errno in _NOT_A_REAL_DIR:
            raise _through_link(exc, shown) from exc
        raise


def _through_link(exc: OSError, shown: str) -> OSError | VerificationError:
    """Opening a path component failed: a symlink or a file in the way is the archive's fault."""
    if exc.errno in _NOT_A_REAL_DIR:
        return VerificationError(
            f"archive member {shown!r} would be written through a symlink or over a file",
            hint="the archive is malformed or malicious",
        )
    return exc
