"""The real agent's command line, as tests, the demo and the benchmarks call it."""

from __future__ import annotations

import signal
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.layout import Layout


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


def write_loopback_config(
    prefix: Path, mirror_url: str, origin_url: str, server_url: str, agent_extra: str = ""
) -> Path:
    """An installed agent's config/assist.toml where every default URL is on loopback.

    The region's intranet mirror is `mirror_url`, the internet origin `origin_url`, the metadata
    service a closed port; no update schedule; the `process` service manager.
    """
    config = Layout(prefix).config_file
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(
        "[mirror]\n"
        'region = "cn-hangzhou"\n'
        f'intranet_template = "{mirror_url}"\n'
        f'internet_origin = "{origin_url}"\n'
        'metadata_url = "http://127.0.0.1:9/latest/meta-data/region-id"\n'
        "[update]\n"
        'service = "process"\n'
        "health_timeout = 30.0\n"
        "settle = 3.0\n"
        'schedule = ""\n'
        "[agent]\n"
        f'server = "{server_url}"\n' + agent_extra
    )
    return config


def mirror_args(prefix: Path, mirror_url: str, keys: Path) -> list[str]:
    """`--prefix P --mirror URL --trust-root KEYS/root.json`: where assist-install and
    assist-update install, what they read from, and the root they trust."""
    return [
        "--prefix",
        str(prefix),
        "--mirror",
        mirror_url,
        "--trust-root",
        str(keys / "root.json"),
    ]


def serve_until_sigterm(agents: Sequence[Any]) -> None:
    """A host process of in-process agents: print each instance id, then READY, wait for SIGTERM,
    stop every agent."""
    for agent in agents:
        print(agent.options.identity.instance_id, flush=True)
    print("READY", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    for agent in agents:
        agent.stop()
