"""assist-pkgbuild command line (placeholder until the capability lands)."""

from __future__ import annotations

import sys

from common.cli import not_built

main = not_built("assist-pkgbuild", "Build signed artifacts and the release repository")

if __name__ == "__main__":
    sys.exit(main(None))
