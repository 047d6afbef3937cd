"""`assist settings show|set-upgrade`: the region's Cloud Assistant settings (AgentUpgradeConfig)
through DescribeCloudAssistantSettings / ModifyCloudAssistantSettings (docs/cli.md)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from common.cli import add_common_options, print_json
from common.errors import UsageError

UPGRADE = "AgentUpgradeConfig"
Call = Callable[[str, dict[str, Any]], dict[str, Any]]  # (action, params) -> answer

EXAMPLES = {
    "settings": "assist settings show --region cn-hangzhou",
    "settings show": "assist settings show --region cn-hangzhou --json",
    "settings set-upgrade": "assist settings set-upgrade --enable --window 02:00-03:00 "
    "--window 22:00-00:30 --time-zone Asia/Shanghai",
}


def add_parser(sub: Any) -> None:
    """The `settings` command and its subcommands."""
    settings = sub.add_parser("settings", help="the region's Cloud Assistant settings")
    add_common_options(settings)
    actions = settings.add_subparsers(dest="settings_command", required=True)
    show = actions.add_parser("show", help="print AgentUpgradeConfig")
    upgrade = actions.add_parser(
        "set-upgrade", help="change AgentUpgradeConfig (fields not given keep their values)"
    )
    for parser in (show, upgrade):
        add_common_options(parser)
        parser.add_argument("--region", default="", help="region id (default: the configured one)")
        parser.add_argument("--json", action="store_true")
    _switch(
        upgrade, "enabled", ("--enable", "custom settings on: scheduled updates only inside the windows"),
        ("--no-enable", "custom settings off: each agent's own [update] schedule"),
    )  # fmt: skip
    upgrade.add_argument(
        "--window",
        action="append",
        metavar="HH:MM-HH:MM",
        help="an allowed upgrade window (repeat; replaces the windows; may wrap midnight)",
    )
    upgrade.add_argument("--time-zone", help="IANA name or GMT+8:00 (default UTC)")
    _switch(
        upgrade, "disable", ("--disable-upgrade", "no scheduled update and no KickAgentUpdate at all"),
        ("--allow-upgrade", "undo --disable-upgrade"),
    )  # fmt: skip


def _switch(parser: Any, dest: str, on: tuple[str, str], off: tuple[str, str]) -> None:
    """Two exclusive flags (name, help) setting `dest` True / False; None when neither is given."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(on[0], dest=dest, action="store_true", default=None, help=on[1])
    group.add_argument(off[0], dest=dest, action="store_false", help=off[1])


def render(region: str, config: dict[str, Any]) -> str:
    """AgentUpgradeConfig as lines for a terminal."""
    windows = config["AllowedUpgradeWindows"]["AllowedUpgradeWindow"]
    return "\n".join(
        [
            f"{UPGRADE} ({region or 'configured region'})",
            f"  Enabled:              {str(config['Enabled']).lower()}",
            f"  AllowedUpgradeWindow: {', '.join(windows) or '-'}",
            f"  TimeZone:             {config['TimeZone']}",
            f"  DisableUpgrade:       {str(config['DisableUpgrade']).lower()}",
        ]
    )


def cmd_settings(args: argparse.Namespace, call: Call) -> int:
    """`assist settings show` / `assist settings set-upgrade`."""
    region = {"RegionId": args.region} if args.region else {}
    if args.settings_command == "set-upgrade":
        fields: dict[str, Any] = {}
        if args.enabled is not None:
            fields["Enabled"] = args.enabled
        if args.window is not None:
            fields["AllowedUpgradeWindow"] = args.window
        if args.time_zone is not None:
            fields["TimeZone"] = args.time_zone
        if args.disable is not None:
            fields["DisableUpgrade"] = args.disable
        if not fields:
            raise UsageError(
                "nothing to change",
                hint="give --enable/--no-enable, --window, --time-zone or --disable-upgrade",
            )
        params = {"SettingType": UPGRADE, UPGRADE: json.dumps(fields), **region}
        call("ModifyCloudAssistantSettings", params)
    answer = call("DescribeCloudAssistantSettings", {"SettingType.1": UPGRADE, **region})
    if args.json:
        print_json(answer)
    else:
        print(render(args.region, answer[UPGRADE]))
    return 0
