"""Install and remove packages with the platform's own tool: dpkg, rpm, or a silent exe.

With `root`, dpkg and rpm work on a separate tree (`dpkg --root`, `rpm --root`), which the tests
use; the package databases there are created on first use.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from common.errors import ToolError, UsageError
from common.service import Runner, run_tool

log = logging.getLogger(__name__)


def run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """Run a package tool; ToolError with its output tail when it fails."""
    log.info("running %s", " ".join(argv))
    return run_tool(argv, missing_hint="install it or pick --format")


def dpkg_base(root: Path | None) -> list[str]:
    """dpkg, pointed at `root` (with an initialised database) when given."""
    if root is None:
        return ["dpkg"]
    admin = root / "var" / "lib" / "dpkg"
    for sub in ("info", "updates"):
        (admin / sub).mkdir(parents=True, exist_ok=True)
    (admin / "status").touch()
    return ["dpkg", f"--root={root}", "--force-script-chrootless"]


def rpm_base(root: Path | None, runner: Runner = run) -> list[str]:
    """rpm, pointed at `root` (with an initialised database) when given."""
    if root is None:
        return ["rpm"]
    base = ["rpm", "--root", str(root), "--dbpath", "/var/lib/rpm"]
    if not (root / "var" / "lib" / "rpm").is_dir():
        root.mkdir(parents=True, exist_ok=True)
        runner([*base, "--initdb"])
    return base


def install_native(
    artifact: Path, fmt: str, root: Path | None = None, runner: Runner = run
) -> None:
    """Install a verified artifact with dpkg, rpm or (on Windows) the silent installer."""
    if fmt == "deb":
        runner([*dpkg_base(root), "-i", str(artifact)])
    elif fmt == "rpm":
        # the rpm header signature was checked against the pinned key already (common.trust)
        runner([*rpm_base(root, runner), "-U", "--replacepkgs", "--nodeps", str(artifact)])
    elif fmt == "exe":
        if os.name != "nt" and runner is run:
            raise ToolError("exe packages install only on Windows", hint="use --format deb|rpm")
        runner([str(artifact), "/S"])
    else:
        raise UsageError(
            f"cannot install a {fmt} package natively",
            hint="use --format deb or rpm (tar.gz is for `assist-install agent`)",
        )


def remove_native(name: str, fmt: str, root: Path | None = None, runner: Runner = run) -> None:
    """Remove an installed package by name."""
    if fmt == "deb":
        runner([*dpkg_base(root), "-r", name])
    elif fmt == "rpm":
        runner([*rpm_base(root, runner), "-e", "--nodeps", name])
    else:
        raise UsageError(f"cannot remove a {fmt} package", hint="use --format deb or rpm")


def installed_version(name: str, fmt: str, root: Path | None = None) -> str | None:
    """The installed version of `name`, or None."""
    try:
        if fmt == "deb":
            out = run([*dpkg_base(root), "-s", name]).stdout
            status = [ln for ln in out.splitlines() if ln.startswith("Status:")]
            if not status or "installed" not in status[0].split()[-1:]:
                return None
            return next(
                ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Version:")
            )
        if fmt == "rpm":
            return run([*rpm_base(root), "-q", "--qf", "%{VERSION}", name]).stdout.strip()
    except (ToolError, StopIteration):
        return None
    return None
