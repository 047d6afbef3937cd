"""One error hierarchy for the whole project.

Split by whose fault it is, like python-tuf: the repository's content (VerificationError),
the transport (DownloadError), the operator's input (ConfigError, UsageError), the local
machine (LocalStateError). Every error carries a one-line hint saying what to do and a stable
kebab-case reference. The CLI edge turns them into one line and an exit code; nothing here
imports anything internal.
"""

from __future__ import annotations

import errno


class AssistError(Exception):
    """Base of every error this project raises on purpose."""

    reference = "assist-error"
    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(AssistError):
    """The command line or an argument is wrong."""

    reference = "usage"
    exit_code = 2


class ConfigError(AssistError):
    """A configuration file or value is missing or invalid."""

    reference = "config"
    exit_code = 2


class DownloadError(AssistError):
    """Transport failed: connection, HTTP status, timeout, too much data."""

    reference = "download-failed"


class VerificationError(AssistError):
    """Content failed a security check: signature, hash, length, expiry, rollback."""

    reference = "verification-failed"
    exit_code = 4


class ExpiredMetadataError(VerificationError):
    """Signed metadata is past its expiry date."""

    reference = "metadata-expired"


class NotFoundError(AssistError):
    """A package, version, target or resource does not exist."""

    reference = "not-found"


class LocalStateError(AssistError):
    """The local machine is in the way: disk full, lock held, bad layout."""

    reference = "local-state"


class LockedError(LocalStateError):
    """Another process holds the lock."""

    reference = "locked"
    exit_code = 4


class NoSpaceError(LocalStateError):
    """Not enough free disk space."""

    reference = "no-space"
    exit_code = 4


class PathError(LocalStateError):
    """A local path cannot be used: no permission, read-only, a file in the way, missing."""

    reference = "bad-path"


class ToolError(AssistError):
    """An external tool (dpkg, rpm, gpg, makensis, osslsigncode…) failed or is missing."""

    reference = "tool-failed"


# errno → (what happened to the path, what to do). Only faults a user can cause by the paths
# and the machine they chose; any other OSError stays a bug ("internal") at the CLI edge.
_PATH_FAULTS: dict[int, tuple[str, str]] = {
    errno.EACCES: ("permission denied", "run as a user allowed to use it (e.g. root)"),
    errno.EPERM: ("operation not permitted", "run as a user allowed to use it (e.g. root)"),
    errno.EROFS: ("read-only file system", "remount it read-write"),
    errno.ENOTDIR: ("not a directory", "move the file in the way"),
    errno.EEXIST: ("already exists", "move it away"),
    errno.EISDIR: ("is a directory, a file was expected", "name a file, not a directory"),
    errno.ENOENT: ("no such file or directory", "check the path"),
    errno.ENAMETOOLONG: ("file name too long", "use a shorter path"),
    errno.ELOOP: ("too many levels of symbolic links", "fix the symbolic link"),
    errno.EMFILE: ("too many open files", "raise the open-file limit (ulimit -n)"),
}
_SPACE_FAULTS = (errno.ENOSPC, errno.EDQUOT)


def is_path_fault(exc: OSError) -> bool:
    """Whether an OSError is the user's machine or path choice rather than a bug of ours."""
    return exc.errno in _PATH_FAULTS or exc.errno in _SPACE_FAULTS


def path_error(
    exc: OSError, *, blocker: str | None = None, option: str | None = None
) -> AssistError:
    """The one-line error for an OSError a user caused: names the path and what to do.

    `blocker` is a file found where a directory is needed (ENOTDIR, EEXIST); `option` the
    command-line option whose value holds the path, so the hint can say what to change. Call only
    when is_path_fault(exc).
    """
    name = str(exc.filename) if exc.filename is not None else None
    other = f" or pass another {option}" if option else " or choose another path" if name else ""
    if exc.errno in _SPACE_FAULTS:
        where = f" writing {name}" if name else ""
        return NoSpaceError(
            f"no space left on the device{where}", hint="free some disk space" + other
        )
    what, todo = _PATH_FAULTS[exc.errno or 0]
    if blocker is not None:
        needed = f" (for {name})" if name and name != blocker else ""
        return PathError(
            f"{blocker} is a file where a directory is needed{needed}",
            hint="move that file away" + other,
        )
    return PathError(f"{name}: {what}" if name else what, hint=todo + other)
