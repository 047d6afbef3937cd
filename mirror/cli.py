"""assist-mirror: mirror a release repository into a region, serve it, check it, move it."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from common.cli import add_common_options, print_json, run_cli
from common.config import Config, load_config
from common.errors import UsageError
from common.imports import preload_tuf
from common.listen import add_limit_options, limits_from_args, parse_listen
from common.regions import load_table, region_url
from mirror.plan import Filters

if TYPE_CHECKING:
    from mirror.storage import Storage

log = logging.getLogger(__name__)

PROG = "assist-mirror"
DEFAULT_ROOT = "/var/lib/aliyun-assist-mirror"


# One example per command and subcommand, shown at the end of its --help (docs/cli.md).
EXAMPLES = {
    "": "assist-mirror sync --region cn-hangzhou --upstream http://origin:8081/ --root /srv/mirror --trust-root root.json",
    "sync": "assist-mirror sync --region cn-hangzhou --upstream http://origin:8081/ --root /srv/mirror --trust-root root.json --public-url http://mirror:8081/",
    "serve": "assist-mirror serve --root /srv/mirror --listen 0.0.0.0:8081",
    "verify": "assist-mirror verify --root /srv/mirror",
    "status": "assist-mirror status --root /srv/mirror --json",
    "prune": "assist-mirror prune --root /srv/mirror --keep 3",
    "export": "assist-mirror export --root /srv/mirror --out bundle.tar --since site-state.json",
    "import": "assist-mirror import bundle.tar --root /srv/mirror",
}


def build_parser() -> argparse.ArgumentParser:
    """The command line of assist-mirror (docs/cli.md), plus a few options of our own."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Mirror a release repository into a region"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sync", help="pull the upstream repository into --root, verified")
    p.add_argument("--region", required=True, help="region id, e.g. cn-hangzhou")
    p.add_argument(
        "--upstream", metavar="URL", help="parent mirror or origin (default: the internet origin)"
    )
    p.add_argument(
        "--root", default=DEFAULT_ROOT, type=Path, help=f"mirror directory ({DEFAULT_ROOT})"
    )
    p.add_argument(
        "--dest",
        action="append",
        default=[],
        metavar="s3://BUCKET/PREFIX",
        help="also publish to S3-compatible storage",
    )
    p.add_argument(
        "--channel", action="append", default=[], help="channels to mirror (default all)"
    )
    p.add_argument(
        "--os", action="append", default=[], choices=["linux", "windows"], help="OSes to mirror"
    )
    p.add_argument(
        "--arch", action="append", default=[], help="architectures to mirror (x86_64, aarch64)"
    )
    p.add_argument(
        "--keep", type=int, default=0, metavar="N", help="newest versions per package (0: all)"
    )
    p.add_argument("--workers", type=int, default=8, metavar="N", help="parallel downloads (8)")
    p.add_argument("--trust-root", type=Path, metavar="FILE", help="pinned TUF root.json")
    p.add_argument(
        "--keyring",
        type=Path,
        metavar="FILE",
        help="OpenPGP keyring for apt/yum, overriding the signed keys/archive-keyring.gpg target",
    )
    p.add_argument(
        "--public-url",
        metavar="URL",
        help="this mirror's URL for bootstrap/ (default: the region's)",
    )
    p.add_argument(
        "--regions",
        type=Path,
        metavar="TOML",
        help="region table overrides ([regions] region = URL)",
    )
    p.add_argument(
        "--config", metavar="FILE", help="assist.toml ([mirror] internet_origin, proxy, timeouts)"
    )
    p.add_argument("--s3-endpoint", metavar="URL", help="S3 endpoint (default AWS_ENDPOINT_URL)")
    p.add_argument("--s3-access-key", metavar="ID", help="default AWS_ACCESS_KEY_ID")
    p.add_argument(
        "--s3-secret-key",
        metavar="KEY",
        help="default AWS_SECRET_ACCESS_KEY; visible to every user in `ps`: prefer the "
        "AWS_SECRET_ACCESS_KEY environment variable",
    )
    p.add_argument(
        "--s3-instance-metadata",
        action="store_true",
        help="let boto3 take S3 credentials from the cloud instance metadata service "
        "(off: only options and AWS_* environment variables are used)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_common_options(p)

    def on_mirror(name: str, help_text: str, json: bool = True) -> argparse.ArgumentParser:
        """A subcommand on an existing mirror directory: --root, and --json for a report."""
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--root", required=True, type=Path, help="the mirror's directory")
        if json:
            p.add_argument("--json", action="store_true")
        add_common_options(p)
        return p

    p = on_mirror("serve", "serve --root over HTTP (Range, ETag)", json=False)
    p.add_argument(
        "--listen", default="127.0.0.1:8081", metavar="HOST:PORT", help="address to serve on"
    )
    add_limit_options(p, idle=15.0)
    on_mirror("verify", "exit 0 only if every file matches signed metadata")
    on_mirror("status", "versions, bytes, last sync, metadata expiry")
    p = on_mirror("prune", "keep only the newest N versions per package")
    p.add_argument(
        "--keep", required=True, type=int, metavar="N", help="versions to keep per package"
    )
    p = on_mirror("export", "write a bundle for a site with no network path")
    p.add_argument(
        "--out", required=True, type=Path, metavar="BUNDLE.tar", help="the bundle to write"
    )
    p.add_argument(
        "--since",
        type=Path,
        metavar="STATEFILE",
        help="the site's .mirror/state.json: only what it lacks",
    )
    p = on_mirror("import", "sync from a bundle, verified like a sync")
    p.add_argument("bundle", type=Path, metavar="BUNDLE.tar", help="a bundle from export")
    p.add_argument(
        "--trust-root", type=Path, metavar="FILE", help="the TUF root.json the bundle must chain to"
    )
    p.add_argument(
        "--keyring", type=Path, metavar="FILE", help="OpenPGP keyring overriding the signed keys/"
    )
    p.add_argument("--region", default="", help="region id (for bootstrap/)")
    p.add_argument("--public-url", metavar="URL", help="this mirror's URL for bootstrap/")
    return parser


def _filters(args: argparse.Namespace) -> Filters:
    if args.keep < 0:
        raise UsageError("--keep must be 0 or more")
    return Filters(tuple(args.channel), tuple(args.os), tuple(args.arch), args.keep)


def cmd_sync(args: argparse.Namespace) -> int:
    """assist-mirror sync."""
    from mirror.options import SyncOptions
    from mirror.source import HttpSource
    from mirror.storage import S3Storage, make_s3_client, parse_s3_url
    from mirror.sync import sync

    if args.workers < 1:
        raise UsageError("--workers must be at least 1")
    for url in args.dest:
        parse_s3_url(url)  # before any client exists: a bad URL never reaches boto3
    config = load_config(args.config) if args.config else Config()
    table = load_table(args.regions, config.mirror.intranet_template)
    public_url = args.public_url or region_url(args.region, table)
    upstream = args.upstream or config.mirror.internet_origin
    source = HttpSource(
        upstream,
        timeout=config.mirror.probe_timeout,
        read_timeout=config.mirror.read_timeout,
        retries=config.mirror.retries,
        proxy=config.mirror.proxy or None,
        progress=False,  # no bar per file: the sync shows one overall bar
    )
    dests: list[Storage] = []
    for url in args.dest:
        client = make_s3_client(
            args.s3_endpoint,
            args.s3_access_key,
            args.s3_secret_key,
            instance_metadata=args.s3_instance_metadata,
        )
        dests.append(S3Storage(url, client=client))
    report = sync(
        SyncOptions(
            root=args.root,
            source=source,
            filters=_filters(args),
            region=args.region,
            public_url=public_url,
            workers=args.workers,
            trust_root=args.trust_root,
            keyring=args.keyring,
            dests=dests,
            progress=None,  # one tqdm bar (files and bytes) on a terminal only
        )
    )
    if args.json:
        print_json(dataclasses.asdict(report))
    elif report.changed:
        print(
            f"synced timestamp v{report.timestamp_version}: fetched {report.fetched_files} files "
            f"({report.fetched_bytes} bytes); {report.total_files} files mirrored"
        )
    else:
        print(f"up to date (timestamp v{report.timestamp_version})")
    if not args.public_url and report.changed:
        log.warning(
            "no --public-url: bootstrap/ scripts point at %s (the region's default mirror); "
            "pass --public-url with the URL your VMs use",
            public_url,
        )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """assist-mirror serve."""
    from mirror.serve import serve

    host, port = parse_listen(args.listen, "127.0.0.1:8081")
    return serve(args.root, host, port, limits_from_args(args))


def cmd_verify(args: argparse.Namespace) -> int:
    """assist-mirror verify."""
    from mirror.check import verify_tree

    problems = verify_tree(args.root)
    if args.json:
        print_json({"ok": not problems, "problems": problems})
    for problem in problems:
        print(f"{PROG}: {problem}", file=sys.stderr)
    if problems:
        print(
            f"{PROG}: error: {len(problems)} file(s) do not match signed metadata — run sync to repair [verification-failed]",
            file=sys.stderr,
        )
        return 4
    if not args.json:
        print("ok: every file matches signed metadata")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """assist-mirror status."""
    from mirror.check import format_status, mirror_status

    status = mirror_status(args.root)
    if args.json:
        print_json(status)
    else:
        print(format_status(status))
    for warning in status["warnings"]:
        log.warning("%s", warning)
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    """assist-mirror prune."""
    from mirror.check import prune

    removed = prune(args.root, args.keep)
    if args.json:
        print_json({"removed": removed})
    else:
        print(f"removed {len(removed)} file(s)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """assist-mirror export."""
    from mirror.bundle import export_bundle

    count = export_bundle(args.root, args.out, args.since)
    if args.json:
        print_json({"bundle": str(args.out), "files": count})
    else:
        print(f"wrote {args.out} ({count} files)")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """assist-mirror import."""
    from mirror.bundle import import_bundle

    report = import_bundle(
        args.bundle,
        args.root,
        trust_root=args.trust_root,
        keyring=args.keyring,
        region=args.region,
        public_url=args.public_url or "",
    )
    if args.json:
        print_json(dataclasses.asdict(report))
    else:
        print(f"imported timestamp v{report.timestamp_version}: {report.fetched_files} new files")
    return 0


COMMANDS = {
    "sync": cmd_sync,
    "serve": cmd_serve,
    "verify": cmd_verify,
    "status": cmd_status,
    "prune": cmd_prune,
    "export": cmd_export,
    "import": cmd_import,
}


# Commands that read TUF metadata on every run; sync loads tuf only when there is work
# (mirror.sync), serve never: a no-op sync's one request comes before any heavy import.
NEEDS_TUF = frozenset({"verify", "status", "prune", "export", "import"})


def dispatch(args: argparse.Namespace) -> int:
    if args.command in NEEDS_TUF:
        preload_tuf()  # without the cloud SDKs; --dest s3:// imports boto3 itself later
    return COMMANDS[args.command](args)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(PROG, build_parser(), dispatch, argv, examples=EXAMPLES)


if __name__ == "__main__":
    sys.exit(main(None))
