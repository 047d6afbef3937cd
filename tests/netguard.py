"""Loopback-only network guard for the test suite (and every Python subprocess it starts).

`install()` wraps socket connect/sendto/getaddrinfo so that any attempt to resolve or reach an
address outside 127.0.0.0/8 / ::1 raises NetworkGuardError and is appended to the file named by
$ASSIST_NETGUARD_LOG. The conftest fails the test during which such a line appeared, even if the
code under test swallowed the exception. `tests/netguard_site/sitecustomize.py` installs the same
guard into every Python subprocess (our console scripts) through PYTHONPATH.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import traceback
from typing import Any

LOG_ENV = "ASSIST_NETGUARD_LOG"
_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}
_installed = False


class NetworkGuardError(OSError):
    """A test tried to reach a non-loopback address."""


def is_loopback_host(host: Any) -> bool:
    """True for loopback IP literals and the local host names."""
    if host is None or host == "":
        return True
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    host = str(host).strip("[]").split("%", 1)[0]
    if host.lower() in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _refuse(what: str, host: Any) -> None:
    message = f"network guard: refused {what} to non-loopback {host!r} (pid {os.getpid()})"
    path = os.environ.get(LOG_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(message + "\n" + "".join(traceback.format_stack(limit=12)) + "\n")
    raise NetworkGuardError(message)


def _check_address(what: str, family: int, address: Any) -> None:
    inet = family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple)
    if inet and not is_loopback_host(address[0]):
        _refuse(what, address[0])


def install() -> None:
    """Install the guard in this process (idempotent)."""
    global _installed
    if _installed:
        return
    _installed = True
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_sendto = socket.socket.sendto
    real_getaddrinfo = socket.getaddrinfo

    def connect(self: socket.socket, address: Any) -> Any:
        _check_address("connect", self.family, address)
        return real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> Any:
        _check_address("connect", self.family, address)
        return real_connect_ex(self, address)

    def sendto(self: socket.socket, data: Any, *args: Any) -> Any:
        _check_address("sendto", self.family, args[-1])
        return real_sendto(self, data, *args)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not is_loopback_host(host):
            _refuse("name lookup", host)
        return real_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
    socket.socket.sendto = sendto  # type: ignore[method-assign,assignment]
    socket.getaddrinfo = getaddrinfo
