"""One error hierarchy for the whole project.

Split by whose fault it is, like python-tuf: the repository's content (VerificationError),
the transport (DownloadError), the operator's input (ConfigError, UsageError), the local
machine (LocalStateError). Every error carries a one-line hint saying what to do and a stable
kebab-case reference. The CLI edge turns them into one line and an exit code; nothing here
imports anything internal.
"""

from __future__ import annotations


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


class ToolError(AssistError):
    """An external tool (dpkg, rpm, gpg, makensis, osslsigncode…) failed or is missing."""

    reference = "tool-failed"
