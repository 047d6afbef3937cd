"""python -m pkgbuild: the assist-pkgbuild command line."""

from __future__ import annotations

import sys

from pkgbuild.cli import main

sys.exit(main())
