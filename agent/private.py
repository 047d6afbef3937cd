"""Keep the agent's state private: state/ is 0700 and every file in it 0600 (docs/agent-state.md).

Task output (spool, queued reports in agent.db) may hold secrets a root task printed, so nothing
under state/ is readable by other local users. The agent runs with umask 077 and gives its tasks
the umask it was started with; on start it tightens a tree an older version laid out 0755/0644.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

PRIVATE_UMASK = 0o077
PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def restrict_umask() -> int | None:
    """Set umask 077 for the agent's own files; returns the previous umask (None on Windows)."""
    if os.name == "nt":  # pragma: no cover - Windows: ACLs of the install dir apply
        return None
    return os.umask(PRIVATE_UMASK)


def make_private_dir(path: Path) -> None:
    """Create `path` (and parents) and make it 0700."""
    path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    if os.name != "nt":
        os.chmod(path, PRIVATE_DIR)


def tighten_tree(root: Path) -> int:
    """Make directories under `root` 0700 and files 0600; returns how many modes changed.

    Only entries owned by this process's user are touched, symbolic links are neither followed
    nor changed, and group/other bits are only ever removed (an executable keeps its x bit).
    """
    if os.name == "nt" or not root.is_dir():  # pragma: no cover - Windows
        return 0
    changed = 0
    uid = os.getuid()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in [*dirnames, *filenames]:
            changed += _tighten(Path(dirpath) / name, uid)
    changed += _tighten(root, uid)
    if changed:
        log.warning("tightened the permissions of %d entries under %s", changed, root)
    return changed


def _tighten(path: Path, uid: int) -> int:
    """Drop group/other bits from one entry we own; 1 if its mode changed."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return 0
    if stat.S_ISLNK(info.st_mode) or info.st_uid != uid:
        return 0
    mode = stat.S_IMODE(info.st_mode)
    wanted = PRIVATE_DIR if stat.S_ISDIR(info.st_mode) else (mode | PRIVATE_FILE) & 0o700
    if mode == wanted:
        return 0
    os.chmod(path, wanted)
    return 1
