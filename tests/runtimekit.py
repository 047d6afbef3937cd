"""Helpers for tests that need the real built runtime (pkgbuild/runtime, docs/runtime.md).

Building the runtime is not a test (tens of minutes): these tests use the machine-wide cache that
`make runtime` fills and skip, naming that command, where it is empty.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pkgbuild import runtime

REPO_ROOT = Path(__file__).resolve().parent.parent
_GLIBC = re.compile(r"Name: GLIBC_(\d+)\.(\d+)(?:\.(\d+))?")


def cached_runtime(arch: str) -> Path | None:
    """The finished runtime build for this checkout's recipe, if the cache has it."""
    try:
        recipe = runtime.make_recipe(arch, runtime.zig_version(runtime.zig_command()))
    except runtime.ToolError:
        return None
    build = runtime.cached_build(recipe, runtime.cache_root())
    return build if runtime.is_complete(build) else None


def missing(why: str) -> None:
    """Skip for `why`, or fail where ASSIST_REQUIRE_RUNTIME=1 (CI builds the runtimes first)."""
    if os.environ.get("ASSIST_REQUIRE_RUNTIME") == "1":
        pytest.fail(why)
    pytest.skip(why)


def require_runtime(arch: str = "x86_64") -> Path:
    """The cached runtime for `arch`, or skip the test naming the command that builds it."""
    build = cached_runtime(arch)
    if build is None:
        missing(f"no cached {arch} runtime in {runtime.cache_root()}: run `make runtime`")
    return build


def build_release(keydir: Path, out: Path, formats: str, arch: str = "x86_64") -> dict[str, Path]:
    """`assist-pkgbuild build` as a release is built (with the runtime); {format: path}."""
    proc = subprocess.run(
        [sys.executable, "-m", "pkgbuild.cli", "build", "--version", "1.0.0", "--keys",
         str(keydir), "--formats", formats, "--arch", arch, "--out", str(out), "--json"],
        capture_output=True, text=True, timeout=900, cwd=REPO_ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return {a["format"]: Path(a["path"]) for a in json.loads(proc.stdout)}


def is_elf(path: Path) -> bool:
    """Whether a regular file starts with the ELF magic."""
    if path.is_symlink() or not path.is_file():
        return False
    with path.open("rb") as handle:
        return handle.read(4) == b"\x7fELF"


def glibc_versions(path: Path) -> set[tuple[int, ...]]:
    """The GLIBC_x.y versions an ELF file needs (its .gnu.version_r, read by `readelf -V`)."""
    proc = subprocess.run(
        ["readelf", "-V", "-W", str(path)], capture_output=True, text=True, check=True
    )
    needed = proc.stdout.split(".gnu.version_r", 1)
    if len(needed) < 2:
        return set()  # static, or no versioned references
    return {tuple(int(g) for g in m.groups() if g is not None) for m in _GLIBC.finditer(needed[1])}


def unpack_artifact(artifact: Path, dest: Path) -> Path:
    """Extract a .deb, .rpm or .tar.gz with the real tools into `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    name = artifact.name
    if name.endswith(".deb"):
        subprocess.run(["dpkg-deb", "-x", str(artifact), str(dest)], check=True)
    elif name.endswith(".rpm"):
        subprocess.run(["bsdtar", "-xf", str(artifact), "-C", str(dest)], check=True)
    else:
        subprocess.run(["tar", "-xzf", str(artifact), "-C", str(dest)], check=True)
    return dest


BULLSEYE_ROOT = "bullseye-minbase"  # under runtime.cache_root(), made by `make runtime`


def require_bullseye_root() -> Path:
    """The cached `debootstrap --variant=minbase bullseye` root, or skip naming `make runtime`."""
    root = runtime.cache_root() / BULLSEYE_ROOT
    if not (root / "etc" / "debian_version").is_file():
        pytest.skip(f"no cached Debian 11 root at {root}: run `make runtime`")
    return root
