"""assist-pkgbuild: keys, signed artifacts and the release repository."""

from __future__ import annotations

import argparse
import datetime
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.cli import add_common_options, print_json, run_cli
from common.errors import UsageError

PROG = "assist-pkgbuild"
DEFAULT_EXPIRES = {"timestamp": "7d", "snapshot": "30d", "targets": "90d", "root": "365d"}
_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


# --- pure parsers -----------------------------------------------------------------------------


def parse_duration(text: str) -> datetime.timedelta:
    """Parse 7d, 12h, 30m, 3600s, 2w (a bare number is seconds) into a positive timedelta."""
    match = _DURATION.match(text)
    if not match or int(match.group(1)) <= 0:
        raise UsageError(
            f"invalid duration {text!r}", hint="use a positive number with s, m, h, d or w: 7d"
        )
    return datetime.timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def parse_assignments(text: str, option: str) -> dict[str, str]:
    """Parse `a=1,b=2` into {"a": "1", "b": "2"}."""
    result: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise UsageError(f"invalid {option} item {part!r}", hint=f"use {option} role=value,…")
        result[name.strip()] = value.strip()
    return result


def parse_thresholds(text: str) -> dict[str, int]:
    """Parse --threshold root=2,targets=1."""
    result = {}
    for role, value in parse_assignments(text, "--threshold").items():
        if not value.isdigit():
            raise UsageError(f"threshold for {role} must be a number, got {value!r}")
        result[role] = int(value)
    return result


def parse_expires(text: str | None) -> dict[str, datetime.timedelta]:
    """Parse --expires timestamp=7d,… on top of the defaults."""
    from pkgbuild.keys import ROLES

    values = dict(DEFAULT_EXPIRES)
    if text:
        given = parse_assignments(text, "--expires")
        unknown = sorted(set(given) - set(ROLES))
        if unknown:
            raise UsageError(
                f"unknown role(s) in --expires: {', '.join(unknown)}",
                hint=f"roles are {', '.join(ROLES)}",
            )
        values.update(given)
    return {role: parse_duration(value) for role, value in values.items()}


def parse_list(text: str) -> list[str]:
    """Split a comma-separated option value."""
    return [item.strip() for item in text.split(",") if item.strip()]


# --- dispatch ---------------------------------------------------------------------------------


def cmd_keygen(args: argparse.Namespace) -> int:
    """Generate a key directory and print its fingerprints."""
    from pkgbuild.keys import generate_keys

    thresholds = parse_thresholds(args.threshold) if args.threshold else None
    content = generate_keys(Path(args.out), thresholds)
    if args.json:
        print_json({"keydir": str(Path(args.out).resolve()), **content})
        return 0
    print(f"keys written to {args.out}")
    print(f"  OpenPGP fingerprint:        {content['gpg_fingerprint']}")
    print(f"  Authenticode cert sha256:   {content['authenticode_sha256']}")
    for role, info in content["roles"].items():
        ids = ", ".join(content["tuf_keyids"][name][:16] for name in info["keys"])
        print(f"  TUF {role:<9} threshold {info['threshold']}: {ids}")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    """Build the payload and the signed artifacts."""
    from pkgbuild.formats import BuildRequest, build_artifacts

    request = BuildRequest(
        version=args.version,
        keys=Path(args.keys),
        source=Path(args.source) if args.source else None,
        arches=parse_list(args.arch) if args.arch else [],
        formats=parse_list(args.formats) if args.formats else [],
        package=args.package,
        out=Path(args.out),
        vendor=not args.no_vendor,
        wheel_cache=Path(args.wheel_cache) if args.wheel_cache else None,
        with_runtime=not args.no_runtime,
        runtime_cache=Path(args.runtime_cache) if args.runtime_cache else None,
        windows_runtime=Path(args.windows_runtime) if args.windows_runtime else None,
    )
    built = build_artifacts(request)
    if args.json:
        print_json([artifact.to_dict() for artifact in built])
        return 0
    for artifact in built:
        print(f"{artifact.path}  {artifact.size} bytes  sha256 {artifact.sha256}")
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    """Create an empty release repository."""
    from pkgbuild.repository import init_repository

    init_repository(Path(args.repo), Path(args.keys), parse_expires(args.expires))
    print(f"repository initialised in {args.repo}")
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    """Publish artifacts into a release repository."""
    from pkgbuild.repository import publish_artifacts

    targets = publish_artifacts(
        Path(args.repo), Path(args.keys), [Path(a) for a in args.artifacts], args.channel
    )
    _print_targets(args, targets)
    return 0


def cmd_yank(args: argparse.Namespace) -> int:
    """Withdraw a version from a channel."""
    from pkgbuild.repository import yank_version

    targets = yank_version(
        Path(args.repo), Path(args.keys), args.package, args.version, args.channel
    )
    _print_targets(args, targets)
    return 0


def cmd_rotate_key(args: argparse.Namespace) -> int:
    """Replace the keys of one TUF role and re-sign."""
    from pkgbuild.repository import rotate_key

    rotate_key(Path(args.repo), Path(args.keys), args.role)
    print(f"rotated the {args.role} key of {args.repo}")
    return 0


def _print_targets(args: argparse.Namespace, targets: list[str]) -> None:
    """Print target paths, one per line or as JSON."""
    if args.json:
        print_json(targets)
    else:
        for target in targets:
            print(target)


# --- parser -----------------------------------------------------------------------------------


# One example per command and subcommand, shown at the end of its --help (docs/cli.md).
EXAMPLES = {
    "": "assist-pkgbuild build --version 2.2.5 --keys /secure/keys --out dist",
    "keygen": "assist-pkgbuild keygen --out /secure/keys",
    "build": "assist-pkgbuild build --version 2.2.5 --keys /secure/keys --arch x86_64,aarch64 --out dist",
    "init": "assist-pkgbuild init --repo /srv/origin --keys /secure/keys --expires timestamp=7d,snapshot=30d",
    "publish": "assist-pkgbuild publish --repo /srv/origin --keys /secure/keys --channel stable dist/*",
    "yank": "assist-pkgbuild yank --repo /srv/origin --keys /secure/keys --package aliyun-assist --version 2.2.5",
    "rotate-key": "assist-pkgbuild rotate-key --repo /srv/origin --keys /secure/keys --role timestamp",
}


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree for every subcommand."""
    from pkgbuild.keys import ROLES

    parser = argparse.ArgumentParser(
        prog=PROG, description="Build signed artifacts and the release repository."
    )
    add_common_options(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_common_options(p)  # also after the subcommand (SUPPRESS keeps `-v build` intact)
        p.add_argument("--json", action="store_true", help="print JSON on stdout")
        return p

    p = command("keygen", "generate TUF role keys, an OpenPGP key and an Authenticode cert")
    p.add_argument("--out", required=True, metavar="KEYDIR", help="new key directory")
    p.add_argument(
        "--threshold", metavar="ROLE=N,…", help="signature threshold and key count per role"
    )
    p.set_defaults(func=cmd_keygen)

    p = command("build", "build the agent payload and signed .deb/.rpm/.exe/.tar.gz artifacts")
    p.add_argument("--version", required=True, metavar="V", help="version to stamp")
    p.add_argument("--keys", required=True, metavar="KEYDIR", help="key directory (keygen)")
    p.add_argument("--source", metavar="DIR", help="source tree (default: this project)")
    p.add_argument("--arch", metavar="ARCH,…", help="x86_64 and/or aarch64 (default: host)")
    p.add_argument("--formats", metavar="FMT,…", help="deb,rpm,exe,tar.gz (default: all)")
    p.add_argument("--package", default="aliyun-assist", metavar="NAME", help="package name")
    p.add_argument("--out", default="dist", metavar="DIST", help="output directory (./dist)")
    p.add_argument(
        "--no-vendor",
        action="store_true",
        help="code only, no runtime and no wheels (dev/test builds: run on the host's python3)",
    )
    p.add_argument("--wheel-cache", metavar="DIR", help="wheel cache (default .cache/wheels)")
    p.add_argument(
        "--no-runtime",
        action="store_true",
        help="Linux: vendor the wheels for the VM's python3 instead of shipping our own CPython",
    )
    p.add_argument(
        "--runtime-cache",
        metavar="DIR",
        help="built runtimes (default /var/cache/aliyun-assist-build or $ASSIST_RUNTIME_CACHE)",
    )
    p.add_argument(
        "--windows-runtime",
        metavar="ZIP",
        help="the official CPython embeddable zip for the agent .exe (required to build it)",
    )
    p.set_defaults(func=cmd_build)

    p = command("init", "create an empty signed release repository")
    _repo_options(p)
    p.add_argument(
        "--expires",
        metavar="ROLE=DUR,…",
        help="metadata lifetimes, e.g. timestamp=7d,snapshot=30d,targets=90d,root=365d",
    )
    p.set_defaults(func=cmd_init)

    p = command("publish", "add artifacts to the repository and re-sign")
    _repo_options(p)
    p.add_argument("--channel", default="stable", help="channel (stable)")
    p.add_argument(
        "artifacts",
        nargs="*",
        metavar="ARTIFACT",
        help="built artifact files (none: only re-sign metadata past half its lifetime)",
    )
    p.set_defaults(func=cmd_publish)

    p = command("yank", "withdraw a package version from a channel")
    _repo_options(p)
    p.add_argument("--package", required=True, metavar="NAME", help="package to withdraw")
    p.add_argument("--version", required=True, metavar="V", help="version to withdraw")
    p.add_argument("--channel", default="stable", help="channel (stable)")
    p.set_defaults(func=cmd_yank)

    p = command("rotate-key", "replace a TUF role's keys and re-sign the metadata")
    _repo_options(p)
    p.add_argument(
        "--role", required=True, choices=ROLES, help="the TUF role whose key is replaced"
    )
    p.set_defaults(func=cmd_rotate_key)
    return parser


def _repo_options(parser: argparse.ArgumentParser) -> None:
    """--repo and --keys, shared by the repository commands."""
    parser.add_argument("--repo", required=True, metavar="REPO", help="repository directory")
    parser.add_argument("--keys", required=True, metavar="KEYDIR", help="key directory (keygen)")


def dispatch(args: argparse.Namespace) -> int:
    """Run the chosen subcommand."""
    func: Any = args.func
    try:
        return int(func(args) or 0)
    finally:
        keys = getattr(args, "keys", None)
        if keys:  # signing started a gpg-agent for KEYDIR/gpg: leave no daemon behind
            from pkgbuild.keys import stop_gpg_agent

            stop_gpg_agent(Path(keys))


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point."""
    return run_cli(PROG, build_parser(), dispatch, argv, examples=EXAMPLES)


if __name__ == "__main__":
    sys.exit(main())
