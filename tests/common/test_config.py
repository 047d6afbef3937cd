"""Config: defaults from docs/architecture.md, TOML overrides, typos and wrong types refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.config import Config, load_config, parse_config
from common.errors import ConfigError


def test_defaults_match_design() -> None:
    config = Config(prefix=Path("/p"))
    assert config.mirror.intranet_template == "http://axt.{region}.alibaba-inc.com:8080/assist/"
    assert config.mirror.metadata_url == "http://100.100.100.200/latest/meta-data/region-id"
    assert config.mirror.metadata_timeout == 1.0
    assert (config.update.health_timeout, config.update.settle, config.update.max_failures) == (
        60.0,
        10.0,
        2,
    )
    assert config.update.keep_versions == 3
    assert (config.agent.max_running, config.agent.max_queued, config.agent.output_quota) == (
        10,
        50,
        24 * 1024,
    )
    assert config.layout.state_dir == Path("/p/state")


def test_toml_overrides_and_int_to_float() -> None:
    config = parse_config('[mirror]\nmirrors = ["http://127.0.0.1:1/"]\n[update]\nsettle = 2\n')
    assert config.mirror.mirrors == ["http://127.0.0.1:1/"]
    assert config.update.settle == 2.0 and isinstance(config.update.settle, float)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[update]\nsetle = 2\n", "unknown key"),
        ("[updates]\n", "unknown section"),
        ("[update]\nkeep_versions = 'three'\n", "must be int"),
        ("[update]\nkeep_versions = true\n", "must be int"),
        ("[update\n", "invalid TOML"),
    ],
)
def test_bad_config_is_refused_with_clear_error(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert fragment in str(info.value)


def test_load_config_from_prefix(tmp_path: Path) -> None:
    assert load_config(prefix=tmp_path).prefix == tmp_path
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "assist.toml").write_text("[agent]\nserver = 'http://127.0.0.1:9/'\n")
    config = load_config(prefix=tmp_path)
    assert config.agent.server == "http://127.0.0.1:9/" and config.prefix == tmp_path
    with pytest.raises(ConfigError):
        load_config(tmp_path / "missing.toml")
