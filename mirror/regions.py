"""The region table: which intranet mirror URL each region's clients use (DESIGN.md §4, §7)."""

from __future__ import annotations

import sys
from pathlib import Path

from common.errors import ConfigError, UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - VM side only
    import tomli as tomllib

DEFAULT_TEMPLATE = "http://axt.{region}.alibaba-inc.com:8080/assist/"
DEFAULT_REGIONS: tuple[str, ...] = (
    "cn-hangzhou",
    "cn-shanghai",
    "cn-beijing",
    "cn-shenzhen",
    "cn-qingdao",
    "cn-zhangjiakou",
    "cn-huhehaote",
    "cn-chengdu",
    "cn-hongkong",
    "ap-southeast-1",
    "ap-southeast-3",
    "ap-southeast-5",
    "ap-northeast-1",
    "ap-south-1",
    "us-west-1",
    "us-east-1",
    "eu-central-1",
    "eu-west-1",
    "me-east-1",
)


def default_table(template: str = DEFAULT_TEMPLATE) -> dict[str, str]:
    """Every known region mapped to its intranet mirror URL template."""
    return dict.fromkeys(DEFAULT_REGIONS, template)


def load_table(path: Path | None, template: str = DEFAULT_TEMPLATE) -> dict[str, str]:
    """The default table (with `template`, e.g. [mirror] intranet_template of assist.toml),
    overridden per region by `[regions]` (region = template) of a TOML file."""
    table = default_table(template)
    if path is None:
        return table
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read region table {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML in {path}: {exc}", hint="fix the region table") from exc
    regions = data.get("regions", {})
    if not isinstance(regions, dict) or not all(isinstance(v, str) for v in regions.values()):
        raise ConfigError(
            f"[regions] in {path} must map region ids to URL strings",
            hint='e.g. cn-hangzhou = "http://mirror.example:8080/assist/"',
        )
    table.update(regions)
    return table


def region_url(region: str, table: dict[str, str]) -> str:
    """The mirror URL clients in `region` use, ending in a slash."""
    if region not in table:
        raise UsageError(
            f"unknown region {region!r}",
            hint=f"known regions: {', '.join(sorted(table))}; add others in a [regions] table",
        )
    url = table[region].format(region=region)
    return url if url.endswith("/") else url + "/"
