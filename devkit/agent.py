"""The real agent's command line, as tests, the demo and the benchmarks call it."""

from __future__ import annotations

from pathlib import Path


def register_args(server_url: str, activation: tuple[str, str], prefix: Path) -> list[str]:
    """`assist-agent register` arguments for an activation (id, code) into `prefix`."""
    activation_id, code = activation
    return [
        "register",
        "--server",
        server_url,
        "--activation-id",
        activation_id,
        "--activation-code",
        code,
        "--prefix",
        str(prefix),
    ]
