"""Run a command on a pseudo-terminal, as a person at a terminal would, and read what it shows."""

from __future__ import annotations

import os
import pty
import select
import subprocess
from collections.abc import Sequence


def run_on_a_terminal(
    argv: Sequence[str], columns: int = 100, timeout: float = 300
) -> tuple[int, str]:
    """Run `argv` with a pty as stdout and stderr; return its exit code and everything it wrote
    (reading stops after `timeout` s without output; the exit is awaited as long)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        list(argv), stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
        env={**os.environ, "COLUMNS": str(columns), "LINES": "40"},
    )  # fmt: skip
    os.close(slave)
    output = b""
    while select.select([master], [], [], timeout)[0]:  # nothing for `timeout` s: stop reading
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(master)
    return proc.wait(timeout=timeout), output.decode(errors="replace")
