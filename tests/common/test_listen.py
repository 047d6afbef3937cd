"""A busy --listen address is one clear line and exit 1 for both servers, never a traceback."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        yield holder.getsockname()[1]


@pytest.mark.parametrize(
    "argv",
    [
        ["assist-server", "serve", "--db", "sqlite:///{tmp}/a.db"],
        ["assist-mirror", "serve", "--root", "{tmp}"],
    ],
)
def test_busy_port_is_one_clear_line(argv: list[str], busy_port: int, tmp_path: Path) -> None:
    cmd = [str(BIN / argv[0]), *(a.format(tmp=tmp_path) for a in argv[1:])]
    proc = subprocess.run(
        [*cmd, "--listen", f"127.0.0.1:{busy_port}"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"{argv[0]}: error: 127.0.0.1:{busy_port} is already in use — stop the other server or "
        "pick another --listen [local-state]"
    ]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (
            ["migrate", "--db", "postgresql://u@127.0.0.1:9/db"],
            "cannot open the database postgresql://u@127.0.0.1:9/db",
        ),
        (
            ["accesskey", "create", "--db", "sqlite:////proc/nope/s.db"],
            "cannot open the database sqlite:////proc/nope/s.db",
        ),
    ],
)
def test_unreachable_database_is_one_clear_line(args: list[str], fragment: str) -> None:
    proc = subprocess.run(
        [str(BIN / "assist-server"), *args], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    assert fragment in line and "check --db" in line and "Traceback" not in proc.stderr
