"""The region table: which intranet mirror URL each region's clients use.

One table and one lookup for every component: the installer's and updater's intranet tier
(common.mirrors) and the mirror's own public URL (assist-mirror sync). A region id is a short
lowercase slug; a well-formed region the table does not know is refused with a hint, unless
the operator configured an intranet URL template of their own (then every region maps through
it). See README.md, "Run a regional mirror".
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from common.errors import ConfigError, UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - VM side only
    import tomli as tomllib

DEFAULT_TEMPLATE = "http://axt.{region}.alibaba-inc.com:8080/assist/"
ANY_REGION = "*"  # table key: the template of every region not listed by name
_REGION = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
UNKNOWN_REGION_HINT = (
    "pass the mirror explicitly: --mirror URL (assist-install, assist-update) or --public-url "
    "URL (assist-mirror sync); or add the region to a [regions] table (--regions FILE), or set "
    "[mirror] intranet_template in assist.toml"
)
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
    "cn-wulanchabu",
    "cn-guangzhou",
    "cn-heyuan",
    "cn-nanjing",
    "cn-fuzhou",
    "ap-southeast-1",
    "ap-southeast-3",
    "ap-southeast-2",
    "ap-southeast-5",
    "ap-southeast-6",
    "ap-southeast-7",
    "ap-northeast-1",
    "ap-northeast-2",
    "ap-south-1",
    "us-west-1",
    "us-east-1",
    "eu-central-1",
    "eu-west-1",
    "me-east-1",
    "me-central-1",
)


def valid_region(region: str) -> bool:
    """A region id is a short lowercase slug (cn-hangzhou); anything else is refused."""
    return bool(_REGION.match(region))


def default_table(template: str = DEFAULT_TEMPLATE) -> dict[str, str]:
    """Every known region mapped to its intranet mirror URL template; a template of the
    operator's own (not the default) also maps every other region."""
    table = dict.fromkeys(DEFAULT_REGIONS, template)
    if template != DEFAULT_TEMPLATE:
        table[ANY_REGION] = template
    return table


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
    if not valid_region(region):
        raise ConfigError(f"invalid region id {region!r}", hint="use a region id like cn-hangzhou")
    template = table.get(region, table.get(ANY_REGION))
    if template is None:
        known = ", ".join(sorted(r for r in table if r != ANY_REGION))
        raise UsageError(f"unknown region {region!r} (known: {known})", hint=UNKNOWN_REGION_HINT)
    url = template.replace("{region}", region)
    return url if url.endswith("/") else url + "/"
