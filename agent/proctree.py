"""Ending a task's processes: the script's process alone (TerminationMode Process) or its whole
tree (ProcessTree).

Every execution starts in its own session, so its process group id is the script's pid. The tree
is that group, every descendant of it found by walking parent links in /proc (a child that called
setsid left the group but is still a descendant), and every process whose environment carries the
execution's marker (a descendant orphaned by its parent's exit, reparented to init, is found that
way). Each process is recorded with its kernel start time so a reused pid is never signalled.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

IS_WINDOWS = os.name == "nt"
KILL = getattr(signal, "SIGKILL", signal.SIGTERM)
MARKER_ENV = "ALIYUN_ASSIST_EXECUTION"  # set in every task's environment (runner._spawn)

Reaper = Callable[[], object] | None


def process_start_stamp(pid: int) -> str:
    """The kernel's start time of `pid` (field 22 of /proc/pid/stat), to spot pid reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[-1].split()[19]


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/pid/stat after the command name (state, ppid, pgrp, …)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
    except (OSError, IndexError):
        return None


def _pids() -> list[int]:
    try:
        return [int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit()]
    except OSError:
        return []


def kill_group(pgid: int, sig: int) -> bool:
    """Signal a whole process group; False if it no longer exists."""
    if IS_WINDOWS:  # pragma: no cover - Windows only
        subprocess.run(["taskkill", "/T", "/F", "/PID", str(pgid)], capture_output=True)
        return False
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def group_alive(pgid: int) -> bool:
    """True while a process group has a member that is not a zombie."""
    if not Path("/proc").is_dir():
        return kill_group(pgid, 0)
    for pid in _pids():
        fields = _stat(pid)
        if fields and int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def terminate_group(pgid: int, grace: float, reap: Reaper = None) -> None:
    """SIGTERM a process group, wait up to `grace` seconds for it to go, then SIGKILL it."""
    if not kill_group(pgid, signal.SIGTERM):
        return
    if not _wait(lambda: group_alive(pgid), grace, reap):
        kill_group(pgid, KILL)


def _wait(alive: Callable[[], bool], grace: float, reap: Reaper) -> bool:
    """Poll until `alive()` is false (True) or `grace` seconds passed (False)."""
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if reap is not None:
            reap()
        if not alive():
            return True
        time.sleep(0.02)
    return False


def _has_marker(pid: int, marker: bytes) -> bool:
    try:
        return marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:  # gone, or another user's process
        return False


class ProcessTree:
    """The processes of one execution, as far as /proc shows them; remembered once seen."""

    def __init__(self, root: int, marker: str = "") -> None:
        self.root = root
        self.marker = f"{MARKER_ENV}={marker}".encode() if marker else b""
        self.known: dict[int, str] = {}  # pid -> start stamp

    def scan(self) -> dict[int, str]:
        """Add the group, its descendants and the marked processes to `known`; the live ones."""
        table: dict[int, tuple[int, int, str]] = {}
        for pid in _pids():
            fields = _stat(pid)
            if fields and fields[0] != "Z":
                table[pid] = (int(fields[1]), int(fields[2]), fields[19])
        members = {pid for pid, (_, pgrp, _) in table.items() if pgrp == self.root}
        if self.root in table:
            members.add(self.root)
        members.update(p for p in table if self.marker and _has_marker(p, self.marker))
        children: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        seen = {p for p, stamp in self.known.items() if p in table and table[p][2] == stamp}
        todo = list(members | seen)
        members |= seen
        while todo:
            for child in children.get(todo.pop(), []):
                if child not in members:
                    members.add(child)
                    todo.append(child)
        for pid in members:
            self.known.setdefault(pid, table[pid][2])
        return {p: s for p, s in self.known.items() if p in table and table[p][2] == s}

    def signal(self, sig: int) -> int:
        """Send `sig` to the group and every live process of the tree; how many were live."""
        live = self.scan()
        kill_group(self.root, sig)
        for pid in live:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        return len(live)

    def terminate(self, grace: float, reap: Reaper = None) -> None:
        """SIGTERM the tree, wait up to `grace` seconds, then SIGKILL what is left, until /proc
        shows none of it (a process forking while it dies is caught on the next pass)."""
        if IS_WINDOWS:  # pragma: no cover - Windows only
            kill_group(self.root, KILL)
            return
        if not self.signal(signal.SIGTERM):
            return
        if _wait(lambda: bool(self.scan()), grace, reap):
            return
        for _ in range(20):
            if not self.signal(KILL):
                return
            if _wait(lambda: bool(self.scan()), 0.2, reap):
                return


def terminate_process(pid: int, grace: float, reap: Reaper = None) -> None:
    """SIGTERM one process, wait up to `grace` seconds for it to exit, then SIGKILL it; its
    children are left alone (TerminationMode Process)."""
    if IS_WINDOWS:  # pragma: no cover - Windows only
        subprocess.run(["taskkill", "/F", "/PID", str(pid)], capture_output=True)
        return
    stamp = process_start_stamp(pid)

    def alive() -> bool:
        fields = _stat(pid)
        return fields is not None and fields[0] != "Z" and process_start_stamp(pid) == stamp

    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if not _wait(alive, grace, reap):
        try:
            os.kill(pid, KILL)
        except ProcessLookupError:
            pass
