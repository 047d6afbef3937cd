"""assist-update: status, check, apply, rollback, recover, unblock, schedule (docs/cli.md).

Exit codes of apply: 0 updated or nothing to do, 3 the new version failed and was rolled back,
4 refused (verification, blocklist, downgrade, no space, locked), 1 other errors.
check: 0 up to date, 100 an update is available.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from common.cli import (
    add_common_options,
    print_json,
    run_cli,
)
from common.config import Config
from common.errors import LocalStateError, NotFoundError
from common.health import read_health
from common.layout import Layout, installed_versions
from common.platform import detect_platform
from common.service import MANAGERS, ServiceManager, make_service
from updater import journal as jr
from updater.engine import LAST_RESULT_FILE, Outcome, Updater, UpdateSettings
from updater.lock import hold_lock
from updater.policy import NOTHING, REFUSE, load_blocklist, save_blocklist, unblock
from updater.recovery import recover
from updater.remote import find_keys_dir, open_repository, run_command
from updater.swap import read_pointer

EXIT_ROLLED_BACK = 3
EXIT_UPDATE_AVAILABLE = 100


# One example per command and subcommand, shown at the end of its --help (docs/cli.md).
EXAMPLES = {
    "": "assist-update apply --mirror http://mirror:8081/",
    "status": "assist-update status --json",
    "check": "assist-update check --channel stable",
    "apply": "assist-update apply --mirror http://mirror:8081/ --health-timeout 60",
    "rollback": "assist-update rollback",
    "recover": "assist-update recover",
    "unblock": "assist-update unblock 2.2.5",
    "schedule": "assist-update schedule --json",
}


def build_parser() -> argparse.ArgumentParser:
    """The assist-update command line."""
    parser = argparse.ArgumentParser(prog="assist-update", description="Self-update the agent")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str, remote: bool = False) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_common_options(p)
        p.add_argument("--prefix", help="install prefix (default: from config / env)")
        p.add_argument("--config", help="config file (default <prefix>/config/assist.toml)")
        p.add_argument("--service", choices=MANAGERS, help="service manager (default: config)")
        if remote:
            p.add_argument("--mirror", action="append", default=[], help="mirror base URL")
            p.add_argument("--region", help="region id (default: detect)")
            p.add_argument("--channel", help="release channel (default: config, stable)")
            p.add_argument("--trust-root", help="TUF root.json if none is installed")
            p.add_argument("--format", choices=["tar.gz", "deb", "rpm", "exe"], help="artifact")
            p.add_argument("--keys", help="pinned native-signature keys directory")
        return p

    p = command("status", "current, previous, installed versions, journal phase, blocklist")
    p.add_argument("--json", action="store_true")
    p = command("check", "is an update available? exit 100 if so", remote=True)
    p.add_argument("--json", action="store_true")
    p = command("apply", "update now (verify, stage, swap, health check, roll back)", remote=True)
    p.add_argument("--version", help="update to this version")
    p.add_argument("--health-timeout", type=float, help="seconds (default: config, 60)")
    p.add_argument("--settle", type=float, help="seconds the new pid must live (default 10)")
    p.add_argument(
        "--allow-downgrade", action="store_true", help="allow --version older than the current one"
    )
    p.add_argument("--splay", type=float, default=0.0, help="random delay first, in seconds")
    p.add_argument("--json", action="store_true")
    command("rollback", "go back to the previous version")
    command("recover", "finish or undo an interrupted update")
    p = command("unblock", "forget the failures of a blocklisted version so it can be tried again")
    p.add_argument("version", metavar="VERSION", help="the blocklisted version")
    p.add_argument("--json", action="store_true")
    p = command("schedule", "when the next scheduled update runs (cron + splay)")
    p.add_argument("--wait", action="store_true", help="sleep until then, then apply")
    p.add_argument("--json", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("assist-update", build_parser(), dispatch, argv, examples=EXAMPLES)


def dispatch(args: argparse.Namespace) -> int:
    return run_command(args, HANDLERS)


def _service(args: argparse.Namespace, config: Config, layout: Layout) -> ServiceManager:
    return make_service(args.service or config.update.service, layout.prefix)


def _settings(args: argparse.Namespace, config: Config) -> UpdateSettings:
    plat = detect_platform()
    uc = config.update
    return UpdateSettings(
        os=plat.os,
        arch=plat.arch,
        format=getattr(args, "format", None) or ("exe" if plat.os == "windows" else "tar.gz"),
        channel=getattr(args, "channel", None) or uc.channel,
        health_timeout=_opt(args, "health_timeout", uc.health_timeout),
        settle=_opt(args, "settle", uc.settle),
        max_failures=uc.max_failures,
        keep_versions=uc.keep_versions,
    )


def _opt(args: argparse.Namespace, name: str, default: float) -> float:
    value = getattr(args, name, None)
    return default if value is None else float(value)


def _updater(args: argparse.Namespace, config: Config, layout: Layout, remote: bool) -> Updater:
    from common.native_sig import verify_native

    repo = None
    if remote:
        layout.ensure()
        repo, _ = open_repository(
            config, layout, mirrors=args.mirror, region=args.region, trust_root=args.trust_root
        )
    keys = find_keys_dir(layout, getattr(args, "keys", None))

    def verify(artifact: Path, fmt: str, _keys: Path) -> None:
        verify_native(artifact, fmt, keys)

    return Updater(
        layout,
        repo,  # type: ignore[arg-type]
        _service(args, config, layout),
        _settings(args, config),
        verify_native=verify,
    )


def cmd_status(args: argparse.Namespace, config: Config, layout: Layout) -> int:
    info = gather_status(layout, _service(args, config, layout))
    if args.json:
        print_json(info)
        return 0
    journal = info["journal"]
    print(f"prefix:    {info['prefix']}")
    print(f"current:   {info['current'] or '-'}")
    print(f"previous:  {info['previous'] or '-'}")
    print(f"installed: {', '.join(info['installed']) or '-'}")
    print(f"journal:   {journal['phase']} {journal['from_version']} -> {journal['to_version']}")
    if journal["error"]:
        print(f"           {journal['error']}")
    print(f"blocklist: {', '.join(info['blocklist']['blocked']) or '-'}")
    for version in info["blocklist"]["blocked"]:
        reason = info["blocklist"]["reasons"].get(version, "")
        failures = info["blocklist"]["failures"].get(version, 0)
        print(f"           {version}: {failures} failed update(s); last: {reason or '-'}")
    health = info["health"]
    if health:
        state = "alive" if health["running"] else "not running"
        print(f"health:    {health['version']} pid {health['pid']} ({state})")
    return 0


def gather_status(layout: Layout, service: ServiceManager) -> dict[str, Any]:
    """Everything `status` reports, as plain data."""
    journal = jr.load_journal(layout.state_dir)
    blocklist = load_blocklist(layout.state_dir)
    health = read_health(layout.health_file)
    pid = service.main_pid()
    last: Any = None
    try:
        last = json.loads((layout.state_dir / LAST_RESULT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    return {
        "prefix": str(layout.prefix),
        "current": read_pointer(layout),
        "previous": read_pointer(layout, "previous"),
        "installed": installed_versions(layout),
        "journal": {
            "phase": journal.phase,
            "from_version": journal.from_version,
            "to_version": journal.to_version,
            "error": journal.error,
            "history": list(journal.history),
            "updated": journal.updated,
        },
        "blocklist": {
            "failures": blocklist.failures,
            "blocked": blocklist.blocked,
            "reasons": blocklist.reasons,
        },
        "last_update": last,
        "service": {"name": service.name, "pid": pid},
        "health": None
        if health is None
        else {
            "version": health.version,
            "pid": health.pid,
            "connected": health.connected,
            "running": pid is not None and pid == health.pid,
        },
    }


def cmd_check(args: argparse.Namespace, config: Config, layout: Layout) -> int:
    if read_pointer(layout) is None:  # read-only: say so, create nothing
        raise LocalStateError(
            f"no agent is installed in {layout.prefix}",
            hint="install it with `assist-install agent`, or pass the --prefix of an installation",
        )
    plan = _updater(args, config, layout, remote=True).check()
    current = read_pointer(layout)
    available = plan.action not in (NOTHING, REFUSE)
    if args.json:
        print_json(
            {
                "current": current,
                "update_available": available,
                "version": plan.version if available else None,
                "action": plan.action,
                "reason": plan.reason,
            }
        )
    elif available:
        print(plan.version)
    else:
        print(f"up to date ({current}){': ' + plan.reason if plan.action == REFUSE else ''}")
    return EXIT_UPDATE_AVAILABLE if available else 0


def cmd_apply(args: argparse.Namespace, config: Config, layout: Layout) -> int:
    if args.splay > 0:
        time.sleep(random.uniform(0, args.splay))
    outcome = _updater(args, config, layout, remote=True).apply(
        args.version, allow_downgrade=args.allow_downgrade
    )
    _report(args, outcome)
    return EXIT_ROLLED_BACK if outcome.result == "rolled_back" else 0


def _report(args: argparse.Namespace, outcome: Outcome) -> None:
    if getattr(args, "json", False):
        print_json(vars(outcome))
        return
    if outcome.result == "updated":
        print(f"updated {outcome.from_version or '-'} -> {outcome.to_version}")
    elif outcome.result == "installed":
        print(
            f"installed {outcome.from_version or '-'} -> {outcome.to_version}, "
            f"but the agent is NOT running: {outcome.reason}"
        )
    elif outcome.result == "up_to_date":
        print(f"up to date ({outcome.to_version})")
    else:
        print(
            f"update to {outcome.to_version} failed and was rolled back to "
            f"{outcome.from_version}: {outcome.reason}",
            file=sys.stderr,
        )


def cmd_rollback(args: argparse.Namespace, config: Config, layout: Layout) -> int:
    outcome = _updater(args, config, layout, remote=False).rollback()
    print(f"rolled back {outcome.from_version} -> {outcome.to_version}")
    return 0


def cmd_recover(args: argparse.Namespace, config: Config, layout: Layout) -> int:
    result = recover(layout.prefix, service=_service(args, config, layout))
    print(result)
    return 0


def cmd_unblock(args: argparse.Namespace, config: Config, layout: Layout) -> int:
    """Remove VERSION from the blocklist (under the update lock, like every state change)."""
    if not layout.state_dir.is_dir():
        raise NotFoundError(
            f"no agent is installed under {layout.prefix}", hint="pass --prefix of the install"
        )
    with hold_lock(layout.state_dir):
        before = load_blocklist(layout.state_dir)
        save_blocklist(layout.state_dir, unblock(before, args.version))
    was_blocked = args.version in before.blocked
    if args.json:
        print_json({"version": args.version, "was_blocked": was_blocked, "unblocked": True})
    else:
        print(f"{args.version} unblocked; the next apply may try it again")
    return 0


def cmd_schedule(args: argparse.Namespace, config: Config, layout: Layout) -> int:
    from updater.schedule import next_update_time  # croniter: only this command needs it

    now = datetime.now(timezone.utc)
    when = next_update_time(config.update.schedule, now, config.update.splay, random.Random())
    if args.json:
        print_json({"schedule": config.update.schedule, "next": when})
    else:
        print(when.isoformat() if when else "scheduled updates are disabled")
    if args.wait and when is not None:
        time.sleep(max(0.0, (when - datetime.now(timezone.utc)).total_seconds()))
        argv = ["apply", "--prefix", str(layout.prefix)]
        if args.config:
            argv += ["--config", args.config]
        if args.service:
            argv += ["--service", args.service]
        return dispatch(build_parser().parse_args(argv))
    return 0


# assist-update COMMAND -> its handler
HANDLERS = {
    "status": cmd_status,
    "check": cmd_check,
    "apply": cmd_apply,
    "rollback": cmd_rollback,
    "recover": cmd_recover,
    "unblock": cmd_unblock,
    "schedule": cmd_schedule,
}


if __name__ == "__main__":
    sys.exit(main())
