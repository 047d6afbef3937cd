"""Listening sockets: refuse a busy --listen address with one clear line before a server starts."""

from __future__ import annotations

import errno
import socket

from common.errors import LocalStateError


def check_port_free(host: str, port: int) -> None:
    """Raise LocalStateError when `host:port` cannot be bound (in use, or not this machine's)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise LocalStateError(
                    f"{host}:{port} is already in use",
                    hint="stop the other server or pick another --listen",
                ) from exc
            raise LocalStateError(
                f"cannot listen on {host}:{port}: {exc.strerror}", hint="check --listen"
            ) from exc
