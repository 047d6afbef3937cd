"""The guard itself: non-loopback lookups and connects fail, loopback works."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import netguard
import pytest


def test_refuses_metadata_service_connect() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        with pytest.raises(netguard.NetworkGuardError):
            sock.connect(("100.100.100.200", 80))
    finally:
        sock.close()
    _forget_violations()


def test_refuses_public_name_lookup() -> None:
    with pytest.raises(netguard.NetworkGuardError):
        socket.getaddrinfo("repository-iso.oss-cn-beijing.aliyuncs.com", 443)
    _forget_violations()


def test_refuses_private_address_in_subprocess() -> None:
    code = "import socket; socket.create_connection(('10.0.0.1', 80), timeout=1)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "network guard: refused" in proc.stderr
    _forget_violations()


def test_allows_loopback() -> None:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.create_connection(server.getsockname(), timeout=2)
    client.close()
    server.close()
    assert netguard.is_loopback_host("::1") and netguard.is_loopback_host("localhost")
    assert not netguard.is_loopback_host("100.100.100.200")


def _forget_violations() -> None:
    """These tests trip the guard on purpose; clear the log so the autouse check passes."""
    log = Path(os.environ[netguard.LOG_ENV])
    log.write_text("")
