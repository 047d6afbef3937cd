"""assist-agent command line (placeholder until the capability lands)."""

from __future__ import annotations

import sys

from common.cli import not_built

main = not_built("assist-agent", "The Aliyun Assist agent daemon")

if __name__ == "__main__":
    sys.exit(main(None))
