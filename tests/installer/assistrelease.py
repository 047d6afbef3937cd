"""Real releases for installer/updater end-to-end tests: `assist-pkgbuild` keygen, build, init,
publish run as subprocesses, and a copy of the project whose agent exits at start."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
OUR_PACKAGES = ("common", "agent", "updater", "installer")


def pkgbuild(*args: str) -> str:
    """Run assist-pkgbuild; fail the test with its stderr if it fails."""
    proc = subprocess.run(
        [sys.executable, "-m", "pkgbuild", *args], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, f"assist-pkgbuild {' '.join(args)}:\n{proc.stderr}"
    return proc.stdout


def keygen(keys: Path) -> Path:
    pkgbuild("keygen", "--out", str(keys))
    return keys


def build(
    keys: Path,
    version: str,
    out: Path,
    formats: str = "tar.gz",
    source: Path | None = None,
    package: str | None = None,
) -> list[Path]:
    """Build artifacts (no vendored wheels: the tests' interpreter has the deps)."""
    args = [
        "build",
        "--version",
        version,
        "--keys",
        str(keys),
        "--formats",
        formats,
        "--out",
        str(out),
        "--no-vendor",
    ]
    if source is not None:
        args += ["--source", str(source)]
    if package is not None:
        args += ["--package", package]
    before = set(out.glob("*")) if out.exists() else set()
    pkgbuild(*args)
    return sorted(set(out.glob("*")) - before)


def broken_source(dest: Path) -> Path:
    """A copy of this project whose agent exits at start (for the failed-update path)."""
    for name in OUR_PACKAGES:
        shutil.copytree(REPO_ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    (dest / "agent" / "cli.py").write_text(
        '"""Deliberately broken agent for tests: exits at start."""\n'
        "import sys\n\n\ndef main(argv=None):\n"
        '    sys.stderr.write("broken agent: exiting at start\\n")\n    return 1\n\n\n'
        'if __name__ == "__main__":\n    sys.exit(main())\n'
    )
    return dest


def init_repo(repo: Path, keys: Path) -> Path:
    pkgbuild("init", "--repo", str(repo), "--keys", str(keys))
    return repo


def publish(repo: Path, keys: Path, artifacts: Sequence[Path], channel: str = "stable") -> None:
    pkgbuild(
        "publish",
        "--repo",
        str(repo),
        "--keys",
        str(keys),
        "--channel",
        channel,
        *map(str, artifacts),
    )
