"""First install of the agent into the versions layout (common/layout.py), then service + start."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.atomic import atomic_write_text
from common.errors import LocalStateError
from common.layout import AGENT_PACKAGE, Layout, is_runnable
from common.service import ServiceManager
from updater.health import wait_healthy
from updater.lock import hold_lock
from updater.staging import ensure_free_space, stage_artifact
from updater.swap import read_pointer, swap_current

log = logging.getLogger(__name__)


@dataclass
class AgentInstall:
    """What to install and how to run it."""

    os: str
    arch: str
    format: str = "tar.gz"
    version: str | None = None
    channel: str = "stable"
    health_timeout: float = 60.0  # seconds; 0 = do not wait
    start: bool = True


def render_config(service: str, mirrors: Sequence[str], region: str | None) -> str:
    """A first config/assist.toml remembering the choices of the install."""
    lines = ["# written by assist-install agent", "[mirror]"]
    if mirrors:
        lines.append(f"mirrors = [{', '.join(json.dumps(m) for m in mirrors)}]")
    if region:
        lines.append(f"region = {json.dumps(region)}")
    lines += ["", "[update]", f"service = {json.dumps(service)}", ""]
    return "\n".join(lines)


def install_agent(
    layout: Layout,
    repo: Any,
    service: ServiceManager,
    spec: AgentInstall,
    *,
    verify_native: Callable[[Path, str], None],
    config_text: str | None = None,
    before_start: Callable[[], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Download, verify, stage versions/V, point current at it, register and start the service.

    `before_start` runs once `current` and the config are in place and before the service is
    set up (e.g. registering the installed agent); its result is merged into the returned one.
    """
    layout.ensure()
    with hold_lock(layout.state_dir):
        repo.refresh()
        target = repo.find(
            AGENT_PACKAGE,
            version=spec.version,
            channel=spec.channel,
            os=spec.os,
            arch=spec.arch,
            format=spec.format,
        )
        version = target.version
        if read_pointer(layout) == version and is_runnable(layout, version):
            log.info("agent %s is already installed", version)
        else:
            ensure_free_space(layout.prefix, 3 * int(target.length))
            artifact = repo.download(target, layout.cache_dir / version)
            verify_native(artifact, spec.format)
            stage_artifact(artifact, spec.format, version, layout.versions_dir)
            swap_current(layout, version)
        config_file = layout.config_file
        if config_text is not None and not config_file.exists():
            atomic_write_text(config_file, config_text)
        extra = before_start() if before_start is not None else {}
        service.install()
        result: dict[str, Any] = {
            "version": version,
            "prefix": str(layout.prefix),
            "service": service.name,
            "target": target.path,
            "healthy": None,
            **extra,
        }
        if spec.start:
            not_before = time.time()
            service.restart()
            if spec.health_timeout > 0 and service.name != "none":
                ok, reason = wait_healthy(
                    layout.health_file,
                    version,
                    timeout=spec.health_timeout,
                    settle=0.5,
                    not_before=not_before,
                    service_pid=service.main_pid,
                )
                result["healthy"] = ok
                if not ok:
                    raise LocalStateError(
                        f"agent {version} installed but not healthy: {reason}",
                        hint=f"see {layout.agent_log}",
                    )
        return result
