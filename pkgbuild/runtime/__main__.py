"""python -m pkgbuild.runtime [--arch A] [--cache DIR]: build (or find) the agent's runtime."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from common.cli import add_common_options, run_cli


def main(argv: Sequence[str] | None = None) -> int:
    """Print the path of the cached runtime for each arch, building what is missing."""
    from pkgbuild.runtime import ZIG_TARGETS, cache_root, ensure_runtime

    parser = argparse.ArgumentParser(
        prog="python -m pkgbuild.runtime",
        description="Build the agent's relocatable CPython once per recipe (docs/runtime.md).",
    )
    add_common_options(parser)
    parser.add_argument("--arch", action="append", choices=sorted(ZIG_TARGETS), help="x86_64")
    parser.add_argument("--cache", help=f"cache directory (default {cache_root()})")
    parser.add_argument("--jobs", type=int, default=2, help="parallel compile jobs (2)")

    def dispatch(args: argparse.Namespace) -> int:
        for arch in args.arch or ["x86_64"]:
            cache = Path(args.cache) if args.cache else None
            print(ensure_runtime(arch, cache, jobs=max(1, args.jobs)))
        return 0

    return run_cli(parser.prog, parser, dispatch, argv)


if __name__ == "__main__":
    sys.exit(main())
