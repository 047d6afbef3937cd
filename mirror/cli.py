"""assist-mirror command line (placeholder until the capability lands)."""

from __future__ import annotations

import sys

from common.cli import not_built

main = not_built("assist-mirror", "Mirror a release repository into a region")

if __name__ == "__main__":
    sys.exit(main(None))
