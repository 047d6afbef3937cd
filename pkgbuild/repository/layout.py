"""Where things live in a release repository, its private state file and its publish lock.

The state file (REPO/.pkgbuild.json) keeps what `init` chose (the expiry of every role) so later
publishes reuse it. It is not metadata for clients; a mirror may skip it.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from common.atomic import atomic_write_json, read_json
from common.errors import ConfigError, UsageError

ROLES = ("root", "targets", "snapshot", "timestamp")
DEFAULT_EXPIRES = {
    "root": datetime.timedelta(days=365),
    "targets": datetime.timedelta(days=90),
    "snapshot": datetime.timedelta(days=30),
    "timestamp": datetime.timedelta(days=7),
}
STATE_FILE = ".pkgbuild.json"
LOCK_FILE = ".pkgbuild.lock"
STATE_FORMAT = 1
_CHANNEL = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class RepoState:
    """What `init` decided for this repository."""

    expires: dict[str, datetime.timedelta]

    def to_dict(self) -> dict[str, object]:
        """JSON form: expiries in whole seconds."""
        seconds = {role: int(delta.total_seconds()) for role, delta in self.expires.items()}
        return {"format": STATE_FORMAT, "expires": seconds}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> RepoState:
        """Parse the JSON form, refusing anything incomplete."""
        raw = data.get("expires")
        if data.get("format") != STATE_FORMAT or not isinstance(raw, dict):
            raise ConfigError("unreadable repository state", hint=f"re-run init ({STATE_FILE})")
        try:
            expires = {role: datetime.timedelta(seconds=int(raw[role])) for role in ROLES}
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"repository state lacks an expiry: {exc}") from exc
        return cls(expires)


def resolve_expires(expires: dict[str, datetime.timedelta] | None) -> dict[str, datetime.timedelta]:
    """Fill in default expiries and refuse unknown roles or non-positive durations."""
    result = dict(DEFAULT_EXPIRES)
    for role, delta in (expires or {}).items():
        if role not in ROLES:
            raise UsageError(f"unknown TUF role {role!r}", hint=f"roles are {', '.join(ROLES)}")
        if delta <= datetime.timedelta(0):
            raise UsageError(f"expiry of {role} must be positive, got {delta}")
        result[role] = datetime.timedelta(seconds=int(delta.total_seconds()))
    return result


def check_channel(channel: str) -> str:
    """Refuse channel names that would not be safe as a path component."""
    if not _CHANNEL.match(channel):
        raise UsageError(
            f"invalid channel name {channel!r}",
            hint="use lowercase letters, digits, '.', '_' or '-' (e.g. stable, beta)",
        )
    return channel


def state_path(repo: Path) -> Path:
    """REPO/.pkgbuild.json."""
    return Path(repo) / STATE_FILE


def load_state(repo: Path) -> RepoState:
    """Read the state `init` wrote, or explain that the repository is not initialised."""
    path = state_path(repo)
    missing = ConfigError(
        f"{repo} is not an initialised release repository",
        hint="create it with `assist-pkgbuild init --repo REPO --keys KEYDIR`",
    )
    data = read_json(path, missing=missing)
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not a JSON object", hint="re-run init into a new directory")
    return RepoState.from_dict(data)


def save_state(repo: Path, state: RepoState) -> None:
    """Write REPO/.pkgbuild.json atomically."""
    atomic_write_json(state_path(repo), state.to_dict())


@contextlib.contextmanager
def repo_lock(repo: Path, create: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on REPO so two writers never interleave (waits for the other)."""
    if create:
        Path(repo).mkdir(parents=True, exist_ok=True)
    elif not state_path(repo).is_file():
        load_state(repo)  # raises the "not initialised" error without creating anything
    fd = os.open(Path(repo) / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
