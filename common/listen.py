"""Listening servers: refuse a busy --listen address with one clear line before a server
starts; the connection limits both HTTP servers take (enforced by common/connguard.py)."""

from __future__ import annotations

import argparse
import errno
import re
import socket
from dataclasses import dataclass

from common.errors import LocalStateError, UsageError


@dataclass(frozen=True)
class ConnLimits:
    """Per-connection deadlines (seconds) and the connection bound of one server process."""

    header_timeout: float = 15.0  # connect or first byte -> end of the request headers
    body_timeout: float = 60.0  # end of headers -> end of the body
    idle_timeout: float = 75.0  # response sent -> next request starts (keep-alive)
    max_connections: int = 4096  # open connections per process (lowered to fit RLIMIT_NOFILE)
    max_header_bytes: int = (
        512 * 1024
    )  # request line + headers (the SDK puts parameters in the URL)


def add_limit_options(parser: argparse.ArgumentParser, idle: float) -> None:
    """--header-timeout, --body-timeout, --idle-timeout, --max-connections (slow-loris guard)."""
    default = ConnLimits()
    seconds = {
        "--header-timeout": (default.header_timeout, "a client has to send its request headers"),
        "--body-timeout": (default.body_timeout, "a client has to send its request body"),
        "--idle-timeout": (idle, "an idle keep-alive connection stays open"),
    }
    for option, (value, what) in seconds.items():
        parser.add_argument(
            option, type=float, default=value, help=f"seconds {what} (default: %(default)s)"
        )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=default.max_connections,
        help="open connections at most, lowered to fit the open-files limit (default: %(default)s)",
    )


def limits_from_args(args: argparse.Namespace) -> ConnLimits:
    """The ConnLimits of --header-timeout/--body-timeout/--idle-timeout/--max-connections."""
    timeouts = (args.header_timeout, args.body_timeout, args.idle_timeout)
    if not all(t > 0 for t in timeouts) or args.max_connections < 1:
        raise UsageError(
            "--header-timeout, --body-timeout, --idle-timeout and --max-connections must be positive"
        )
    return ConnLimits(
        args.header_timeout, args.body_timeout, args.idle_timeout, args.max_connections
    )


def parse_listen(text: str, example: str = "127.0.0.1:8080") -> tuple[str, int]:
    """HOST:PORT (IPv6 as [::1]:8080); ASCII digits only ("²" is a digit to str.isdigit)."""
    host, sep, port = text.rpartition(":")
    if not sep or not re.fullmatch(r"[0-9]{1,5}", port) or not 0 < int(port) < 65536:
        raise UsageError(f"bad --listen {text!r}", hint=f"use HOST:PORT, e.g. {example}")
    return host.strip("[]") or "127.0.0.1", int(port)


def announce(url: str) -> None:
    """The one "listening on" line of a serve command (stdout)."""
    print(f"listening on {url}", flush=True)


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
