"""Helpers for mirror tests: the real `assist-mirror` CLI and a hash of a published tree.

Release repositories and their packages come from devkit.release.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from devkit.release import Release, mirror_sync_args
from devkit.server import free_port, wait_listening


def tree_hash(root: Path) -> str:
    """A hash over every published path (not .mirror/), its kind, symlink target and bytes."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if rel == ".mirror" or rel.startswith(".mirror/"):
            continue
        digest.update(rel.encode() + b"\0")
        if path.is_symlink():
            digest.update(b"L" + os.readlink(path).encode())
        elif path.is_file():
            digest.update(b"F" + hashlib.sha256(path.read_bytes()).digest())
        else:
            digest.update(b"D")
    return digest.hexdigest()


def sync_args(origin: Release, url: str, root: Path) -> list[str]:
    """`assist-mirror sync` of ORIGIN served at URL into ROOT with its trust root only: the
    one trust anchor (the OpenPGP keyring comes from the signed keys/ targets)."""
    args = mirror_sync_args(url, root, origin.keys)
    at = args.index("--keyring")
    return args[:at] + args[at + 2 :]


def mirror_cli(
    *args: str, check: bool = True, python_args: bool = False, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    """Run `assist-mirror ARGS` (python -m mirror) and return the finished process; with
    `python_args`, ARGS starting with "-X" options go to the interpreter first."""
    interpreter: list[str] = []
    while python_args and args and args[0] == "-X":
        interpreter, args = [*interpreter, *args[:2]], args[2:]
    proc = subprocess.run(
        [sys.executable, *interpreter, "-m", "mirror", *args],
        capture_output=True,
        text=True,
        check=False,
        **kwargs,  # type: ignore[call-overload]
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"assist-mirror {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


@contextmanager
def serving(root: Path) -> Iterator[str]:
    """`assist-mirror serve --root ROOT` on a free loopback port; yields its base URL. A port
    that another process takes first is replaced by another one."""
    for _ in range(4):
        port = free_port()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mirror",
                "serve",
                "--root",
                str(root),
                "--listen",
                f"127.0.0.1:{port}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=os.environ.copy(),
        )
        url = f"http://127.0.0.1:{port}/"

        def answers(url: str = url) -> bool:
            requests.get(url + "metadata/timestamp.json", timeout=1)
            return True

        def stderr(proc: subprocess.Popen[bytes] = proc) -> str:
            return proc.communicate()[1].decode() if proc.poll() is not None else ""

        if wait_listening(proc, port, answers, stderr, "assist-mirror serve", 20):
            break
    else:
        raise AssertionError("assist-mirror serve found every port it tried taken")
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
