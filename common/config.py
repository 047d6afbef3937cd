"""Configuration: dataclasses with the defaults of docs/architecture.md, loaded from TOML.

`<prefix>/config/assist.toml` has one table per dataclass below (`[mirror]`, `[update]`,
`[agent]`). Unknown keys are refused so a typo does not silently fall back to a default.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.errors import ConfigError
from common.layout import Layout

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on the VM side only
    import tomli as tomllib

if os.name == "nt":  # pragma: no cover
    DEFAULT_PREFIX = r"C:\ProgramData\aliyun\assist"
else:
    DEFAULT_PREFIX = "/usr/local/share/aliyun-assist"

PREFIX_ENV = "ALIYUN_ASSIST_PREFIX"
REGION_ENV = "ALIYUN_ASSIST_REGION"
PROXY_ENV = "ALIYUN_ASSIST_PROXY"
SERVER_ENV = "ALIYUN_ASSIST_SERVER_HOST"


@dataclass
class MirrorConfig:
    """Where releases come from (docs/architecture.md, Mirror selection)."""

    mirrors: list[str] = field(default_factory=list)  # explicit mirrors, tier 0
    region: str = ""  # empty: detect
    intranet_template: str = "http://axt.{region}.alibaba-inc.com:8080/assist/"
    internet_origin: str = "https://repository-iso.oss-cn-beijing.aliyuncs.com/download/"
    metadata_url: str = "http://100.100.100.200/latest/meta-data/region-id"
    metadata_timeout: float = 1.0  # seconds
    probe_timeout: float = 3.0  # seconds, per candidate
    read_timeout: float = 10.0  # seconds without a byte before a mirror is left behind
    retries: int = 3  # per mirror, per file
    proxy: str = ""  # empty: ALIYUN_ASSIST_PROXY, then the standard env vars


@dataclass
class UpdateConfig:
    """Self-update policy (docs/architecture.md, Self-update)."""

    channel: str = "stable"
    health_timeout: float = 60.0  # seconds for state/health.json to appear
    settle: float = 10.0  # seconds the new pid must stay alive
    max_failures: int = 2  # failures before a version is blocklisted
    keep_versions: int = 3
    schedule: str = "0 0 3 * * *"  # seconds-first cron; empty disables scheduled updates
    splay: float = 3600.0  # seconds of random delay after each scheduled time
    service: str = "process"  # systemd | sysv | windows | process | none


@dataclass
class AgentConfig:
    """The agent daemon (docs/architecture.md, The agent)."""

    server: str = ""  # empty: ALIYUN_ASSIST_SERVER_HOST, then region rules
    max_running: int = 10
    max_queued: int = 50
    output_quota: int = 24 * 1024  # bytes of final output kept (the tail)
    chunk_interval: float = 1.0  # seconds between running-output reports
    chunk_size: int = 8 * 1024  # bytes per running-output report
    heartbeat: float = 60.0  # seconds between heartbeats (jittered)
    poll_timeout: float = 50.0  # seconds a long-poll may wait (the server allows up to 60)
    ca_file: str = ""  # PEM CA an https server must chain to (empty: the system's store)


@dataclass
class Config:
    """Everything a VM-side command reads."""

    prefix: Path = field(default_factory=lambda: Path(os.environ.get(PREFIX_ENV, DEFAULT_PREFIX)))
    mirror: MirrorConfig = field(default_factory=MirrorConfig)
    update: UpdateConfig = field(default_factory=UpdateConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)

    @property
    def layout(self) -> Layout:
        """Where everything lives under the prefix."""
        return Layout(self.prefix)


_SECTIONS = {"mirror": MirrorConfig, "update": UpdateConfig, "agent": AgentConfig}


def _build_section(cls: type, name: str, values: Any) -> Any:
    """Build one dataclass from a TOML table, refusing unknown keys and wrong types."""
    if not isinstance(values, dict):
        raise ConfigError(f"[{name}] must be a table", hint="see docs for the config format")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown key(s) in [{name}]: {', '.join(unknown)}",
            hint=f"valid keys: {', '.join(sorted(known))}",
        )
    defaults = cls()
    for key, value in values.items():
        expected = type(getattr(defaults, key))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
            values[key] = value
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ConfigError(
                f"[{name}] {key} must be {expected.__name__}, got {type(value).__name__}"
            )
    return cls(**values)


def parse_config(text: str, prefix: Path | None = None) -> Config:
    """Parse TOML text into a Config; pure, no disk access."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}", hint="fix the syntax of the config file") from exc
    config = Config() if prefix is None else Config(prefix=prefix)
    if "prefix" in data and prefix is None:
        config.prefix = Path(str(data.pop("prefix")))
    else:
        data.pop("prefix", None)
    for name, value in data.items():
        if name not in _SECTIONS:
            raise ConfigError(
                f"unknown section [{name}]", hint=f"valid sections: {', '.join(_SECTIONS)}"
            )
        setattr(config, name, _build_section(_SECTIONS[name], name, value))
    return config


def load_config(
    path: str | os.PathLike[str] | None = None, prefix: str | os.PathLike[str] | None = None
) -> Config:
    """Load the config for `prefix` from `path` (default `<prefix>/config/assist.toml`).

    A missing default file means all defaults; a missing explicit file is an error.
    """
    base = Path(prefix) if prefix else None
    config_path = Path(path) if path else Layout(base or Config().prefix).config_file
    if not config_path.exists():
        if path:
            raise ConfigError(f"config file not found: {config_path}", hint="check --config")
        return Config() if base is None else Config(prefix=base)
    try:
        text = config_path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {config_path}: {exc.strerror}") from exc
    return parse_config(text, base)
