"""The trusted repository behind the ranked mirrors: shared by the updater and the installer."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import common
from common.cli import check_region_option, check_trust_root_option
from common.config import Config, load_config
from common.errors import ConfigError, UsageError
from common.layout import Layout
from common.mirrors import select_mirrors

log = logging.getLogger(__name__)


def command_config(args: argparse.Namespace) -> tuple[Config, Layout]:
    """The config and install layout of an assist-install or assist-update command, after its
    --region and --trust-root were checked (a typo is refused before anything is saved)."""
    config = load_config(args.config, prefix=args.prefix)
    check_region_option(
        getattr(args, "region", None), config.mirror.region, config.mirror.intranet_template
    )
    check_trust_root_option(getattr(args, "trust_root", None))
    return config, Layout(config.prefix)


Handler = Callable[[argparse.Namespace, Config, Layout], int]


def run_command(args: argparse.Namespace, handlers: Mapping[str, Handler]) -> int:
    """Run the handler of `args.command` with the checked config and layout (`command_config`)."""
    config, layout = command_config(args)
    return handlers[args.command](args, config, layout)


def bundled_file(*parts: str) -> Path:
    """A file of the payload this code runs from (versions/V/share/...)."""
    return Path(common.__file__).resolve().parent.parent.parent.joinpath(*parts)


def find_trust_root(layout: Layout, explicit: str | Path | None = None) -> Path | None:
    """The TUF trust anchor: --trust-root, else the installed one, else our own payload's."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"trust root {path} not found", hint="pass an existing root.json")
        return path
    for candidate in (
        layout.tuf_dir / "root.json",
        layout.current / "share" / "root.json",
        bundled_file("share", "root.json"),
    ):
        if candidate.is_file():
            return candidate
    return None


def find_keys_dir(layout: Layout, explicit: str | Path | None = None) -> Path:
    """Pinned native-signature keys: --keys, else the installed ones, else our own payload's."""
    if explicit:
        if not Path(explicit).is_dir():
            raise UsageError(
                f"--keys {explicit}: no such directory",
                hint="point it at the pinned keys (RPM-GPG-KEY-assist, authenticode.crt)",
            )
        return Path(explicit)
    for candidate in (layout.keys_dir(), bundled_file("share", "keys")):
        if candidate.is_dir():
            return candidate
    return layout.keys_dir()


def open_repository(
    config: Config,
    layout: Layout,
    *,
    mirrors: Sequence[str] = (),
    region: str | None = None,
    trust_root: str | Path | None = None,
) -> tuple[Any, list[str]]:
    """Pick mirrors (region, tiers, probing); open the TUF repository over them (+ the ranking)."""
    from common.fetch import Fetcher
    from common.trust import TrustedRepository

    layout.state_dir.mkdir(parents=True, exist_ok=True)
    ranked = select_mirrors(
        config.mirror, cli_mirrors=mirrors, cli_region=region, region_file=layout.region_file
    )
    log.info("mirrors, best first: %s", ", ".join(ranked))
    mc = config.mirror
    fetcher = Fetcher(
        ranked,
        timeout=mc.probe_timeout,
        read_timeout=mc.read_timeout,
        retries=mc.retries,
        proxy=mc.proxy or None,
    )
    root = find_trust_root(layout, trust_root)
    if root is None:
        raise ConfigError(
            "no TUF trust root (root.json) found",
            hint="pass --trust-root FILE (the repository's initial root.json)",
        )
    repo = TrustedRepository(fetcher, layout.tuf_dir, trust_root=root, cache_dir=layout.cache_dir)
    return repo, ranked
