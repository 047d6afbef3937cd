"""Run one `apply` in a separate process so a test can kill it (ASSIST_UPDATE_CRASH_AT=phase).

    python crashdriver.py PREFIX DIST VERSION
DIST holds fake tar.gz artifacts named *-V-linux-*.tar.gz.
"""

from __future__ import annotations

import sys
from pathlib import Path

from updaterkit import make_updater

from devkit.fakepayload import LocalRepo


def main() -> int:
    prefix, dist, version = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    artifacts = {p.name.split("-")[2]: p for p in dist.glob("*.tar.gz")}
    outcome = make_updater(prefix, LocalRepo(artifacts), health_timeout=2.0).apply(version)
    print(outcome.result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
