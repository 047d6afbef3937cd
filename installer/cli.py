"""assist-install: list, install, remove signed packages; first install of the agent (docs/cli.md)."""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.cli import (
    ACTIVATION_CODE_ENV,
    add_common_options,
    print_json,
    read_activation_code,
    run_cli,
)
from common.config import Config
from common.errors import AssistError, ConfigError, UsageError, VerificationError
from common.layout import Layout
from common.platform import detect_platform
from common.service import MANAGERS, default_service_name, make_service
from installer.agent import AgentInstall, install_agent, render_config
from installer.native import install_native, installed_version, remove_native
from updater.remote import find_keys_dir, find_trust_root, open_repository, run_command

log = logging.getLogger(__name__)


# One example per command and subcommand, shown at the end of its --help (docs/cli.md).
EXAMPLES = {
    "": "assist-install agent --region cn-hangzhou --service systemd --trust-root root.json",
    "list": "assist-install list --mirror http://mirror:8081/ --trust-root root.json",
    "install": "assist-install install aliyun-assist==2.2.5 --mirror http://mirror:8081/ --trust-root root.json",
    "remove": "assist-install remove aliyun-assist",
    "agent": "ALIYUN_ASSIST_ACTIVATION_CODE=CODE assist-install agent --mirror http://mirror:8081/ --trust-root root.json --service systemd --server https://assist.example:8443 --activation-id ID",
}


def build_parser() -> argparse.ArgumentParser:
    """The assist-install command line."""
    parser = argparse.ArgumentParser(
        prog="assist-install", description="Install signed packages from the nearest mirror"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str, remote: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_common_options(p)
        p.add_argument("--prefix", help="agent prefix; TUF state lives in <prefix>/state")
        p.add_argument("--config", help="config file (default <prefix>/config/assist.toml)")
        if remote:
            p.add_argument("--mirror", action="append", default=[], help="mirror base URL")
            p.add_argument("--region", help="region id (default: detect)")
            p.add_argument("--trust-root", help="TUF root.json (default: the installed one)")
            p.add_argument("--channel", help="release channel (default: config, stable)")
            p.add_argument("--keys", help="pinned native-signature keys directory")
        return p

    p = command("list", "list published packages")
    p.add_argument("--json", action="store_true")
    p = command("install", "verify and install packages with dpkg/rpm (or the exe)")
    p.add_argument(
        "packages",
        nargs="+",
        metavar="NAME[==V]",
        help="packages, each at its newest or a given version",
    )
    p.add_argument("--root", help="install into this root (dpkg --root / rpm --root)")
    p.add_argument("--format", choices=["deb", "rpm", "exe"], help="default: this platform's")
    p.add_argument("--dry-run", action="store_true", help="resolve and print, change nothing")
    p.add_argument("--json", action="store_true")
    p = command("remove", "remove installed packages", remote=False)
    p.add_argument("packages", nargs="+", metavar="NAME", help="installed packages to remove")
    p.add_argument("--root", help="remove from this root")
    p.add_argument("--format", choices=["deb", "rpm"], help="default: this platform's")
    p = command("agent", "first install of the agent into the versions layout, then start it")
    p.add_argument("--version", help="agent version (default: newest)")
    p.add_argument("--service", choices=MANAGERS, help="default: systemd/sysv/windows/process")
    p.add_argument(
        "--format",
        choices=["tar.gz", "deb", "rpm"],
        default="tar.gz",
        help="artifact whose payload is unpacked (default tar.gz)",
    )
    p.add_argument("--health-timeout", type=float, default=60.0, help="seconds; 0: do not wait")
    p.add_argument("--no-start", action="store_true", help="install but do not start")
    p.add_argument(
        "--server", help="also register with this server before starting (needs --activation-id)"
    )
    p.add_argument("--activation-id", help="activation to register with (`CreateActivation`)")
    p.add_argument(
        "--activation-code",
        help=f"its code; '-' reads it from stdin (default: ${ACTIVATION_CODE_ENV}); "
        "on the command line it shows in `ps`",
    )
    p.add_argument("--instance-name", default="", help="name shown to operators")
    p.add_argument("--json", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    handlers = {"list": cmd_list, "install": cmd_install, "remove": cmd_remove, "agent": cmd_agent}
    dispatch = functools.partial(run_command, handlers=handlers)
    return run_cli("assist-install", build_parser(), dispatch, argv, examples=EXAMPLES)


def _open(args: argparse.Namespace, config: Config, layout: Layout) -> tuple[Any, list[str]]:
    repo, mirrors = open_repository(
        config, layout, mirrors=args.mirror, region=args.region, trust_root=args.trust_root
    )
    try:
        repo.refresh()
    except VerificationError as exc:
        if args.trust_root and type(exc) is VerificationError:  # not expiry: maybe the wrong root
            exc.hint = (
                f"check that --trust-root {args.trust_root} is this repository's root.json; "
                + (exc.hint or "")
            )
        raise
    return repo, mirrors


def is_installed(layout: Layout) -> bool:
    """Whether the prefix holds an installation (or the TUF state of an earlier command)."""
    return os.path.lexists(layout.current) or (layout.tuf_dir / "root.json").is_file()


def cmd_list(args: argparse.Namespace, config: Config, layout: Layout) -> int:
    """List the repository's targets; read-only: without an installation, state goes to a temp dir."""
    if is_installed(layout):
        return show_targets(args, *_open(args, config, layout))
    if not args.trust_root and find_trust_root(Layout(layout.prefix), None) is None:
        raise ConfigError(
            f"no agent is installed in {layout.prefix}, so there is no trust root to list with",
            hint="pass --trust-root FILE (the repository's root.json) to list without installing, "
            "or the --prefix of an installation",
        )
    with tempfile.TemporaryDirectory(prefix="assist-list-") as scratch:
        return show_targets(args, *_open(args, config, Layout(Path(scratch))))


def show_targets(args: argparse.Namespace, repo: Any, mirrors: list[str]) -> int:
    """Print the repository's targets (a table, or JSON with --json)."""
    rows = [
        {
            "package": t.package,
            "version": t.version,
            "os": t.os,
            "arch": t.arch,
            "format": t.format,
            "channels": list(t.channels),
            "length": t.length,
            "path": t.path,
        }
        for t in repo.targets()
    ]
    rows.sort(key=lambda r: (r["package"], r["format"], r["arch"], r["path"]))
    if args.json:
        print_json({"mirror": mirrors[0], "targets": rows})
        return 0
    for row in rows:
        print(
            f"{row['package']:<24} {row['version']:<12} {row['os']}/{row['arch']:<8} "
            f"{row['format']:<7} {','.join(row['channels'])}"
        )
    return 0


def parse_spec(spec: str) -> tuple[str, str | None]:
    """NAME or NAME==V."""
    name, sep, version = spec.partition("==")
    if not name or (sep and not version):
        raise UsageError(f"bad package spec {spec!r}", hint="use NAME or NAME==VERSION")
    return name, version or None


def _verifier(args: argparse.Namespace, layout: Layout) -> Any:
    from common.native_sig import verify_native

    keys = find_keys_dir(layout, getattr(args, "keys", None))
    return lambda artifact, fmt: verify_native(artifact, fmt, keys)


def cmd_install(args: argparse.Namespace, config: Config, layout: Layout) -> int:
    plat = detect_platform()
    fmt = args.format or plat.package_format
    if fmt == "tar.gz":
        raise UsageError("no native package tool detected", hint="pass --format deb or rpm")
    root = Path(args.root).resolve() if args.root else None
    repo, mirrors = _open(args, config, layout)
    channel = args.channel or config.update.channel
    targets = []
    for spec in args.packages:
        name, version = parse_spec(spec)
        targets.append(
            repo.find(
                name,
                version=version,
                channel=channel,
                os="windows" if fmt == "exe" else plat.os,
                arch=_arch(fmt, plat.arch),
                format=fmt,
            )
        )
    done = []
    verify = _verifier(args, layout)
    for target in targets:
        if not args.dry_run:
            artifact = repo.download(target, layout.cache_dir / "packages")
            verify(artifact, fmt)
            install_native(artifact, fmt, root)
        done.append({"package": target.package, "version": target.version, "path": target.path})
    if args.json:
        print_json({"mirror": mirrors[0], "dry_run": args.dry_run, "installed": done})
    else:
        verb = "would install" if args.dry_run else "installed"
        for item in done:
            print(f"{verb} {item['package']} {item['version']} (from {mirrors[0]})")
    return 0


def _arch(fmt: str, arch: str) -> str | None:
    """Architecture filter: none for formats that may be built noarch (exe is x86_64)."""
    return None if fmt == "exe" else arch


def cmd_remove(args: argparse.Namespace, config: Config, layout: Layout) -> int:
    fmt = args.format or detect_platform().package_format
    root = Path(args.root).resolve() if args.root else None
    for name in args.packages:
        if installed_version(name, fmt, root) is None:
            raise UsageError(f"{name} is not installed", hint="see `dpkg -l` / `rpm -qa`")
        remove_native(name, fmt, root)
        print(f"removed {name}")
    return 0


@dataclass(frozen=True)
class Registration:
    """What `assist-install agent` registers the new agent with (one step)."""

    server: str
    activation_id: str
    code: str = field(repr=False)  # a secret: never logged, never on a command line
    instance_name: str = ""


def registration_from_args(args: argparse.Namespace) -> Registration | None:
    """--server + --activation-id (+ the code from the option, stdin or env), or None."""
    if not args.server and not args.activation_id:
        return None
    if not (args.server and args.activation_id):
        raise UsageError(
            "--server and --activation-id go together",
            hint="pass both to register in the same step, or neither and register later",
        )
    code = read_activation_code(args.activation_code, os.environ)
    os.environ.pop(ACTIVATION_CODE_ENV, None)  # the agent started later must not inherit it
    return Registration(args.server, args.activation_id, code, args.instance_name)


def register_installed(layout: Layout, reg: Registration) -> dict[str, Any]:
    """Run the installed agent's `register`, the code on its stdin; skip if already registered."""
    if (layout.state_dir / "identity.json").is_file():
        log.warning("already registered (%s): keeping that registration", layout.state_dir)
        return {"registered": "kept"}
    launcher = layout.current / "bin" / ("assist-agent.cmd" if os.name == "nt" else "assist-agent")
    argv = [str(launcher), "register", "--server", reg.server, "--activation-id"]
    argv += [reg.activation_id, "--activation-code", "-", "--prefix", str(layout.prefix), "--json"]
    if reg.instance_name:
        argv += ["--instance-name", reg.instance_name]
    env = {k: v for k, v in os.environ.items() if k != ACTIVATION_CODE_ENV}
    proc = subprocess.run(
        argv, input=reg.code + "\n", capture_output=True, text=True, env=env, check=False
    )
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"]
        error = ConfigError if proc.returncode == 2 else AssistError
        raise error(
            f"the agent is installed but did not register: {lines[-1]}",
            hint=f"fix that, then run {launcher} register --server URL --activation-id ID "
            f"(code from ${ACTIVATION_CODE_ENV}); it is not started",
        )
    instance_id = json.loads(proc.stdout)["instance_id"]
    log.info("registered as %s with %s", instance_id, reg.server)
    return {"registered": "now", "instance_id": instance_id}


def cmd_agent(args: argparse.Namespace, config: Config, layout: Layout) -> int:
    plat = detect_platform()
    service_name = args.service or default_service_name()
    registration = registration_from_args(args)  # before any download: a usage error is cheap
    repo, mirrors = _open(args, config, layout)
    spec = AgentInstall(
        os=plat.os,
        arch=plat.arch,
        format=args.format,
        version=args.version,
        channel=args.channel or config.update.channel,
        health_timeout=args.health_timeout,
        start=not args.no_start,
    )
    result = install_agent(
        layout,
        repo,
        make_service(service_name, layout.prefix),
        spec,
        verify_native=_verifier(args, layout),
        config_text=render_config(service_name, args.mirror, args.region),
        before_start=None
        if registration is None
        else lambda: register_installed(layout, registration),
    )
    result["mirror"] = mirrors[0]
    result["mirrors"] = mirrors
    if args.json:
        print_json(result)
    else:
        print(
            f"installed agent {result['version']} into {result['prefix']} from {mirrors[0]} "
            f"(service {result['service']}{', healthy' if result['healthy'] else ''})"
            + (f", registered as {result['instance_id']}" if result.get("instance_id") else "")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
