"""The region's bootstrap/ scripts: installer templates with the mirror URL and key baked in.

The templates are package data of `installer` (bootstrap.sh, bootstrap.ps1), read with
importlib.resources, so they are found wherever the code is installed (a wheel, a payload's
lib/); a missing template is a packaging fault and fails the sync loudly.
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING

from common.errors import LocalStateError

if TYPE_CHECKING:
    from importlib.abc import Traversable

TEMPLATE_PACKAGE = "installer"
TEMPLATES = ("bootstrap.sh", "bootstrap.ps1")


def render(template: str, mirror_url: str, fingerprint: str, channel: str) -> str:
    """Fill the @MIRROR_URL@, @GPG_FINGERPRINT@ and @CHANNEL@ placeholders."""
    return (
        template.replace("@MIRROR_URL@", mirror_url)
        .replace("@GPG_FINGERPRINT@", fingerprint)
        .replace("@CHANNEL@", channel)
    )


def read_template(name: str, templates: Traversable | None = None) -> str:
    """One template's text; LocalStateError naming the file when the package lacks it."""
    where = templates if templates is not None else resources.files(TEMPLATE_PACKAGE)
    try:
        return where.joinpath(name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LocalStateError(
            f"the bootstrap template {name} is missing from {where}: {exc}",
            hint="reinstall aliyun-assist (the installer package data is incomplete)",
        ) from exc


def render_bootstraps(
    mirror_url: str, fingerprint: str, channel: str, templates: Traversable | None = None
) -> dict[str, str]:
    """Rendered scripts by file name (none without a URL); every template must exist."""
    if not mirror_url:
        return {}
    return {
        name: render(read_template(name, templates), mirror_url, fingerprint, channel)
        for name in TEMPLATES
    }
