"""Waiting for a condition, sampling on a thread, and reading every process's command line."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, step: float = 0.1) -> bool:
    """Call `predicate` every `step` seconds until it is true (True) or `timeout` passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def process_cmdlines() -> Iterator[tuple[int, bytes]]:
    """(pid, raw /proc/PID/cmdline) of every process that is still there when read."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            yield int(entry.name), (entry / "cmdline").read_bytes()
        except OSError:
            continue


def processes_mentioning(text: str) -> list[str]:
    """ "PID: command line" of every live process whose command line contains `text` (a work
    directory a test's children should have left)."""
    found = []
    for pid, raw in process_cmdlines():
        cmdline = raw.replace(b"\0", b" ").decode(errors="replace")
        if text in cmdline:
            found.append(f"{pid}: {cmdline}")
    return found


def stop_processes_mentioning(text: str, quiet: float = 1.0, timeout: float = 20.0) -> list[str]:
    """Kill (SIGKILL) every live process whose command line contains `text`, again and again
    until none has appeared for `quiet` seconds (an updater mid-apply may start the agent a test
    just stopped); the "PID: command line" of each one killed."""
    import os
    import signal

    killed: list[str] = []
    deadline = time.monotonic() + timeout
    calm_since = time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - calm_since < quiet:
        found = processes_mentioning(text)
        for line in found:
            try:
                os.kill(int(line.split(":", 1)[0]), signal.SIGKILL)
            except OSError:
                continue
            killed.append(line)
        if found:
            calm_since = time.monotonic()
        time.sleep(0.05)
    return killed


class Sampler:
    """Call `sample()` on a thread every `interval` seconds between `with` entry and exit."""

    interval = 0.02

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def sample(self) -> None:
        raise NotImplementedError

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> Any:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
