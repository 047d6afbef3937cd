"""The region's bootstrap/ scripts: installer templates with the mirror URL and key baked in."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

TEMPLATE_DIR = Path(__file__).resolve().parents[1] / "installer"
TEMPLATES = ("bootstrap.sh", "bootstrap.ps1")


def render(template: str, mirror_url: str, fingerprint: str, channel: str) -> str:
    """Fill the @MIRROR_URL@, @GPG_FINGERPRINT@ and @CHANNEL@ placeholders."""
    return (
        template.replace("@MIRROR_URL@", mirror_url)
        .replace("@GPG_FINGERPRINT@", fingerprint)
        .replace("@CHANNEL@", channel)
    )


def render_bootstraps(
    mirror_url: str, fingerprint: str, channel: str, template_dir: Path = TEMPLATE_DIR
) -> dict[str, str]:
    """Rendered scripts by file name, for the templates that exist (none without a URL)."""
    if not mirror_url:
        return {}
    scripts = {}
    for name in TEMPLATES:
        path = template_dir / name
        if path.is_file():
            scripts[name] = render(
                path.read_text(encoding="utf-8"), mirror_url, fingerprint, channel
            )
        else:
            log.info("no %s template in %s; bootstrap/%s not written", name, template_dir, name)
    return scripts
