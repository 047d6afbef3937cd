"""The servers fail fast and stop on request: an unopenable SQLite path is one line at once (not
a hang), serve announces itself once, and SIGTERM/SIGINT stop serve cleanly (exit 0, port free)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.listen import check_port_free
from devkit.mounts import read_only_mount
from devkit.server import REPO_ROOT, _env, free_port, stop_group, wait_http

GENEROUS = 30  # seconds: a hang fails the test; this is no timing assertion


@contextlib.contextmanager
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory on a real read-only filesystem (a tmpfs mounted ro)."""
    with read_only_mount(tmp_path / "ro", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs") as target:
        yield target


@contextlib.contextmanager
def unopenable(kind: str, tmp_path: Path) -> Iterator[Path]:
    """A SQLite path that cannot be opened: a directory, under a file, on a read-only fs."""
    if kind == "directory":
        yield tmp_path
    elif kind == "under-a-file":
        (tmp_path / "plain").write_text("not a directory\n")
        yield tmp_path / "plain" / "assist.db"
        assert (tmp_path / "plain").read_text() == "not a directory\n"
    else:
        with read_only_dir(tmp_path) as ro:
            yield ro / "assist.db"
            assert list(ro.iterdir()) == []


COMMANDS = {
    "migrate": ["migrate"],
    "accesskey-create": ["accesskey", "create"],
    "accesskey-list": ["accesskey", "list"],
    "serve": ["serve", "--listen", "PORT"],
}


@pytest.mark.parametrize("kind", ["directory", "under-a-file", "read-only-fs"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_unopenable_database_fails_at_once_with_one_line(
    kind: str, command: str, tmp_path: Path
) -> None:
    with unopenable(kind, tmp_path) as path:
        args = [a.replace("PORT", f"127.0.0.1:{free_port()}") for a in COMMANDS[command]]
        try:
            done = subprocess.run(
                [sys.executable, "-m", "server.cli", *args, "--db", f"sqlite:///{path}"],
                capture_output=True,
                text=True,
                cwd=REPO_ROOT,
                env=_env(),
                timeout=GENEROUS,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"assist-server {command} hung on {path}")
    lines = done.stderr.strip().splitlines()
    assert done.returncode in (1, 2), done.stderr
    assert len(lines) == 1 and str(path.parent if kind != "directory" else path) in lines[0]
    assert "--db" in lines[0] and "[internal]" not in lines[0] and "Traceback" not in done.stderr
    assert "listening on" not in done.stdout


def start(args: list[str], tmp_path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", *args],
        stdout=subprocess.PIPE,
        stderr=(tmp_path / "stderr.log").open("w"),
        text=True,
        cwd=REPO_ROOT,
        env=_env(),
        start_new_session=True,
    )


def serve_args(kind: str, tmp_path: Path, port: int) -> tuple[list[str], str]:
    listen = f"127.0.0.1:{port}"
    if kind == "server":
        db = f"sqlite:///{tmp_path / 'assist.db'}"
        return ["server.cli", "serve", "--listen", listen, "--db", db], "/healthz"
    root = tmp_path / "mirror"
    root.mkdir()
    (root / "hello.txt").write_text("hi\n")
    return ["mirror.cli", "serve", "--root", str(root), "--listen", listen], "/hello.txt"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("kind", ["server", "mirror"])
def test_serve_stops_cleanly_on_a_signal_and_frees_its_port(
    kind: str, sig: signal.Signals, tmp_path: Path
) -> None:
    port = free_port()
    args, path = serve_args(kind, tmp_path, port)
    proc = start(args, tmp_path)
    try:
        wait_http(f"http://127.0.0.1:{port}{path}", proc, 60)
        os.kill(proc.pid, sig)
        try:
            out, _ = proc.communicate(timeout=GENEROUS)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{kind} serve ignored {sig.name}")
    finally:
        stop_group(proc, signal.SIGKILL)
    assert proc.returncode == 0, (tmp_path / "stderr.log").read_text()
    assert out.splitlines() == [f"listening on http://127.0.0.1:{port}"]
    check_port_free("127.0.0.1", port)  # raises if the socket were still bound
    assert "Traceback" not in (tmp_path / "stderr.log").read_text()
