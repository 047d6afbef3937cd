"""assist-install command line (placeholder until the capability lands)."""

from __future__ import annotations

import sys

from common.cli import not_built

main = not_built(
    "assist-install", "Install, remove and list signed packages from the nearest mirror"
)

if __name__ == "__main__":
    sys.exit(main(None))
