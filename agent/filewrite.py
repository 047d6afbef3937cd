"""SendFile on the VM: write one file atomically into TargetDir, never through a symlink.

The server lists file tasks beside the command tasks in the signed task list
(docs/agent-protocol.md, File task); a refused (unsigned, tampered) list writes nothing. The
writer walks TargetDir from `/` one component at a time with O_DIRECTORY | O_NOFOLLOW (creating
missing directories 0755), so a TargetDir that is, or passes through, a symlink is refused with
FilePathInvalid and nothing is written anywhere. The file is written to a temporary name in the
target directory, chowned and chmodded on its descriptor, fsynced, then moved into place: a
rename with Overwrite, else a hard link that fails if the name exists (FileAlreadyExists), so
a concurrent writer cannot be overwritten either. Windows targets are not supported here.
"""

from __future__ import annotations

import base64
import binascii
import errno
import logging
import os
import re
import secrets
import stat
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.outbox import AgentDatabase

log = logging.getLogger(__name__)

MAX_CONTENT = 32 * 1024  # bytes after decoding, as the real API
MAX_NAME = 255
MAX_TARGET_DIR = 255
_FILE_ID = re.compile(r"^f-[A-Za-z0-9]{1,60}$")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_NOFOLLOW", 0) | os.O_CLOEXEC


class FileRefused(Exception):
    """The file cannot be written; `code` is the API's ErrorCode for it."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class FileTask:
    """A file task as the server lists it (docs/agent-protocol.md, File task)."""

    invoke_id: str
    name: str
    content: bytes
    target_dir: str
    file_mode: str = "0644"
    file_owner: str = "root"
    file_group: str = "root"
    overwrite: bool = False
    timeout: int = 60

    @classmethod
    def from_wire(cls, raw: dict[str, Any]) -> FileTask:
        """Build a FileTask from the server's JSON (content is base64 of the file's bytes)."""
        try:
            content = base64.b64decode(str(raw.get("content") or ""), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"content is not base64: {exc}") from exc
        return cls(
            invoke_id=str(raw["invoke_id"]),
            name=str(raw.get("name") or ""),
            content=content,
            target_dir=str(raw.get("target_dir") or ""),
            file_mode=str(raw.get("file_mode") or "0644"),
            file_owner=str(raw.get("file_owner") or "root"),
            file_group=str(raw.get("file_group") or "root"),
            overwrite=bool(raw.get("overwrite")),
            timeout=int(raw.get("timeout") or 60),
        )


def parse_mode(text: str) -> int:
    """FileMode as chmod takes it: octal digits, at most 0o7777."""
    digits = text.strip()
    if not digits or len(digits) > 5 or any(c not in "01234567" for c in digits):
        raise FileRefused("FileAuthorityInvalid", f"FileMode {text!r} is not an octal mode")
    mode = int(digits, 8)
    if mode > 0o7777:
        raise FileRefused("FileAuthorityInvalid", f"FileMode {text!r} is larger than 7777")
    return mode


def check_name(name: str) -> None:
    """A plain file name: no '/', not '.' or '..', no NUL, at most 255 characters."""
    if not name or name in (".", "..") or "/" in name or "\x00" in name or len(name) > MAX_NAME:
        raise FileRefused("FileNameInvalid", f"{name!r} is not a valid file name")


def target_parts(target_dir: str) -> list[str]:
    """The components of an absolute TargetDir; '..' is refused, '.' and '//' are dropped."""
    if sys.platform == "win32" or (len(target_dir) > 1 and target_dir[1] == ":"):
        raise FilePathInvalid("Windows target directories are not supported by this agent")
    if not target_dir.startswith("/") or "\x00" in target_dir or len(target_dir) > MAX_TARGET_DIR:
        raise FilePathInvalid(f"TargetDir {target_dir!r} must be an absolute path")
    parts = [p for p in target_dir.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise FilePathInvalid(f"TargetDir {target_dir!r} must not contain '..'")
    return parts


def FilePathInvalid(message: str) -> FileRefused:  # noqa: N802 - reads like the error code
    return FileRefused("FilePathInvalid", message)


def open_target_dir(target_dir: str) -> int:
    """A descriptor of TargetDir, reached without following any symlink; missing directories
    are created (0755, owned by the agent's user)."""
    parts = target_parts(target_dir)
    fd = os.open("/", _DIR_FLAGS)
    walked = ""
    for part in parts:
        walked += "/" + part
        fd = _step(fd, part, walked)  # closes the parent, whatever happens
    return fd


def _step(parent: int, part: str, walked: str) -> int:
    """Open directory `part` below `parent` (closing `parent`), creating it if missing."""
    try:
        for _ in range(2):
            try:
                return os.open(part, _DIR_FLAGS, dir_fd=parent)
            except FileNotFoundError:
                try:
                    os.mkdir(part, 0o755, dir_fd=parent)
                except FileExistsError:
                    pass  # made meanwhile: open it (still without following a link)
        raise FilePathInvalid(f"{walked} cannot be created")
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
            if stat.S_ISLNK(os.lstat(part, dir_fd=parent).st_mode):
                raise FilePathInvalid(f"{walked} is a symbolic link; refused") from exc
            raise FilePathInvalid(f"{walked} is not a directory") from exc
        raise FilePathInvalid(f"{walked}: {exc.strerror}") from exc
    finally:
        os.close(parent)


def owner_ids(owner: str, group: str) -> tuple[int, int]:
    """uid and gid of FileOwner / FileGroup by name."""
    import grp
    import pwd

    try:
        uid = pwd.getpwnam(owner).pw_uid
    except KeyError as exc:
        raise FileRefused("AccountNotExists", f"no user {owner!r} on this instance") from exc
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError as exc:
        raise FileRefused("UserGroupNotExists", f"no group {group!r} on this instance") from exc
    return uid, gid


def write_file(task: FileTask) -> str:
    """Write the task's file; returns its path, or raises FileRefused with the ErrorCode."""
    if len(task.content) > MAX_CONTENT:
        raise FileRefused(
            "FileContentTooLarge", f"{len(task.content)} bytes; at most {MAX_CONTENT} are allowed"
        )
    check_name(task.name)
    mode = parse_mode(task.file_mode)
    uid, gid = owner_ids(task.file_owner, task.file_group)
    dir_fd = open_target_dir(task.target_dir)
    try:
        _refuse_existing(dir_fd, task)
        temp = f".{task.name[:200]}.assist-{secrets.token_hex(6)}.tmp"
        fd = os.open(
            temp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=dir_fd,
        )
        try:
            try:
                _fill(fd, task.content, uid, gid, mode)
            finally:
                os.close(fd)
            _publish(dir_fd, temp, task)
        finally:
            _unlink_quietly(temp, dir_fd)
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return task.target_dir.rstrip("/") + "/" + task.name


def _refuse_existing(dir_fd: int, task: FileTask) -> None:
    try:
        existing = os.lstat(task.name, dir_fd=dir_fd)
    except FileNotFoundError:
        return
    if not task.overwrite:
        raise FileRefused("FileAlreadyExists", f"{task.name} exists and Overwrite is false")
    if stat.S_ISDIR(existing.st_mode):
        raise FilePathInvalid(f"{task.name} is a directory in {task.target_dir}")


def _fill(fd: int, content: bytes, uid: int, gid: int, mode: int) -> None:
    """Content, owner, mode (after chown, which clears set-id bits), then fsync."""
    view = memoryview(content)
    while view:
        view = view[os.write(fd, view) :]
    try:
        os.fchown(fd, uid, gid)
    except PermissionError as exc:
        raise FileRefused(
            "FileAuthorityInvalid", f"the agent may not give the file to {uid}:{gid}: {exc}"
        ) from exc
    os.fchmod(fd, mode)
    os.fsync(fd)


def _publish(dir_fd: int, temp: str, task: FileTask) -> None:
    """Move the written file to its name: replace with Overwrite, else only if absent."""
    if task.overwrite:
        os.rename(temp, task.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        return
    try:
        os.link(temp, task.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    except FileExistsError as exc:
        raise FileRefused(
            "FileAlreadyExists", f"{task.name} exists and Overwrite is false"
        ) from exc


def _unlink_quietly(name: str, dir_fd: int) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass


FILE_EXECUTION = "0"  # a file task has one execution, named as a one-shot task's
REPORT_PATH = "/v1/file/report"


def deliver_files(store: AgentDatabase, listed: list[Any]) -> None:
    """Write every listed file not written here before, and queue its report (outbox)."""
    for raw in listed:
        try:
            task = FileTask.from_wire(raw)
        except (KeyError, ValueError, TypeError) as exc:
            log.error("ignoring a malformed file task: %s", exc)
            continue
        if not _FILE_ID.match(task.invoke_id):
            log.error("ignoring a file task with the id %r", task.invoke_id)
            continue
        if store.execution_known(task.invoke_id, FILE_EXECUTION):
            continue  # written (or refused) already; its report is queued or acknowledged
        started = int(time.time() * 1000)
        try:
            path = write_file(task)
            log.info("%s: wrote %s", task.invoke_id, path)
            status, code, message = "Success", "", ""
        except FileRefused as exc:
            log.error("%s: file refused (%s): %s", task.invoke_id, exc.code, exc.message)
            status, code, message = "Failed", exc.code, exc.message
        except OSError as exc:
            log.error("%s: file not written: %s", task.invoke_id, exc)
            status, code, message = "Failed", "FilePathInvalid", str(exc)
        report_file(store, task.invoke_id, status, code, message, started)


def report_file(
    store: AgentDatabase, invoke_id: str, status: str, code: str, message: str, started: int
) -> None:
    """Record the file task as done and queue its report, in one transaction."""
    body = {
        "invoke_id": invoke_id,
        "status": status,
        "error_code": code,
        "error_message": message[:4096],
        "start_time": started,
        "end_time": int(time.time() * 1000),
    }
    key = f"file/{invoke_id}"
    store.finish_execution(invoke_id, FILE_EXECUTION, key, REPORT_PATH, body)
