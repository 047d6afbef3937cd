"""The agent's own CPython: a relocatable interpreter built once per recipe and cached.

Every Linux agent payload carries `versions/V/runtime/` (bin/python3, lib/python3.11 with the
runtime dependencies in site-packages), so the agent needs nothing of the VM's Python; see
docs/runtime.md. The recipe (Debian source package versions, the build script, the zig version,
the target) is hashed; a build with the same hash is reused from the cache directory
(`ASSIST_RUNTIME_CACHE`, else /var/cache/aliyun-assist-build when writable, else
$XDG_CACHE_HOME/aliyun-assist-build), which is machine-wide so a fresh clone reuses it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from common.errors import LocalStateError, ToolError, UsageError

log = logging.getLogger(__name__)

PYTHON_VERSION = "3.11"
GLIBC_FLOOR = "2.17"
# Debian bookworm source packages (name -> version) whose upstream tarballs are compiled.
# Pinned so that a recipe hash names one set of sources; a Debian point release that drops a
# version makes `apt-get source` fail with a clear error: bump the pin then.
SOURCES: Mapping[str, str] = {
    "python3.11": "3.11.2-6+deb12u8",
    "openssl": "3.0.20-1~deb12u2",
    "libffi": "3.4.4-1",
    "zlib": "1:1.2.13.dfsg-1",
    "xz-utils": "5.4.1-1+deb12u1",
    "bzip2": "1.0.8-5",
    "sqlite3": "3.40.1-2+deb12u2",
}
ZIG_TARGETS = {
    "x86_64": f"x86_64-linux-gnu.{GLIBC_FLOOR}",
    "aarch64": f"aarch64-linux-gnu.{GLIBC_FLOOR}",
}
BUILD_SCRIPT = Path(__file__).resolve().parent / "build-runtime.sh"
# Autoconf answers that a cross build cannot find out by running a test program on the build host.
CROSS_ENV: Mapping[str, Mapping[str, str]] = {
    "aarch64": {"ac_cv_buggy_getaddrinfo": "no", "READELF": "/usr/bin/readelf"},
}
# What the agent never needs: dropped when a build is copied into a payload.
STRIPPED_DIRS = frozenset(
    {
        "test", "tests", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "pydoc_data",
        "__pycache__", "config-3.11-x86_64-linux-gnu", "config-3.11-aarch64-linux-gnu",
        "include", "pkgconfig", "share",
    }
)  # fmt: skip
STRIPPED_SUFFIXES = (".a", ".pyc", ".pyo", ".exe")
STRIPPED_BIN = (
    "idle3", "idle3.11", "pydoc3", "pydoc3.11", "2to3", "2to3-3.11", "python3-config",
    "python3.11-config",
)  # fmt: skip
HINT = "run `make runtime` (needs Debian's deb-src lists and the ziglang package)"


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the bytes of one runtime build."""

    arch: str
    sources: Mapping[str, str]
    script_sha256: str
    zig_version: str
    env: Mapping[str, str] = field(default_factory=dict)  # extra build environment (cross)

    @property
    def zig_target(self) -> str:
        return ZIG_TARGETS[self.arch]

    def digest(self) -> str:
        """A short hash of the recipe: the cache key."""
        fields: dict[str, object] = {
            "arch": self.arch,
            "sources": dict(sorted(self.sources.items())),
            "script": self.script_sha256,
            "zig": self.zig_version,
            "python": PYTHON_VERSION,
            "floor": GLIBC_FLOOR,
        }
        if self.env:
            fields["env"] = dict(sorted(self.env.items()))
        text = json.dumps(fields, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def zig_command() -> Path:
    """The zig compiler shipped by the `ziglang` wheel."""
    try:
        import ziglang  # type: ignore[import-not-found]
    except ImportError as exc:
        raise ToolError("the ziglang package is not installed", hint=HINT) from exc
    return Path(ziglang.__file__).resolve().parent / "zig"


def zig_version(zig: Path) -> str:
    """`zig version`."""
    proc = subprocess.run([str(zig), "version"], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ToolError(f"{zig} version failed: {proc.stderr.strip()}", hint=HINT)
    return proc.stdout.strip()


def make_recipe(arch: str, zig_ver: str) -> Recipe:
    """The recipe for `arch` with this checkout's build script and source pins."""
    if arch not in ZIG_TARGETS:
        raise UsageError(f"no runtime for arch {arch!r}", hint="use x86_64 or aarch64")
    script = hashlib.sha256(BUILD_SCRIPT.read_bytes()).hexdigest()
    return Recipe(
        arch=arch,
        sources=dict(SOURCES),
        script_sha256=script,
        zig_version=zig_ver,
        env=dict(CROSS_ENV.get(arch, {})),
    )


def cache_root(env: Mapping[str, str] | None = None) -> Path:
    """Where built runtimes live: machine-wide so that a fresh clone (CI) reuses them."""
    env = os.environ if env is None else env
    if env.get("ASSIST_RUNTIME_CACHE"):
        return Path(env["ASSIST_RUNTIME_CACHE"])
    system = Path("/var/cache/aliyun-assist-build")
    if os.access(system if system.exists() else system.parent, os.W_OK):
        return system
    xdg = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "aliyun-assist-build"


def cached_build(recipe: Recipe, root: Path) -> Path:
    """The directory a finished build of `recipe` lives in (it may not exist yet)."""
    return root / f"runtime-{recipe.arch}-{recipe.digest()}"


def is_complete(build: Path) -> bool:
    """A finished build has its interpreter and the marker written last."""
    return (build / "BUILD-INFO.json").is_file() and (build / "bin" / "python3").exists()


def find_runtime(arch: str, root: Path | None = None) -> Path:
    """The cached runtime for `arch`; a missing one is an error that names the command to run."""
    recipe = make_recipe(arch, zig_version(zig_command()))
    root = root or cache_root()
    build = cached_build(recipe, root)
    if not is_complete(build):
        raise LocalStateError(
            f"no {arch} runtime for recipe {recipe.digest()} in {root}",
            hint="build it once per machine with `make runtime` (about half an hour) or "
            "--build-runtime, or build without it: --no-runtime",
        )
    return build


def ensure_runtime(arch: str, root: Path | None = None, jobs: int = 2) -> Path:
    """Return a built runtime for `arch`, building it (tens of minutes) if the cache lacks it.

    One build per recipe at a time: a second caller waits on the recipe's lock file and then
    takes the finished build (two builds in one work directory would corrupt each other).
    """
    zig = zig_command()
    recipe = make_recipe(arch, zig_version(zig))
    root = root or cache_root()
    build = cached_build(recipe, root)
    if is_complete(build):
        log.info("runtime %s from cache %s", recipe.digest(), build)
        return build
    root.mkdir(parents=True, exist_ok=True)
    with _recipe_lock(root / f".lock-{arch}-{recipe.digest()}"):
        if is_complete(build):  # another process built it while we waited
            return build
        _build_into(recipe, zig, root, build, jobs)
    return build


@contextlib.contextmanager
def _recipe_lock(path: Path) -> Iterator[None]:
    """An exclusive flock on `path`, waited for (logging that we wait)."""
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("another process is building this runtime; waiting for it (%s)", path)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build_into(recipe: Recipe, zig: Path, root: Path, build: Path, jobs: int) -> None:
    """Fetch the sources, run the build script, and move the result into place atomically."""
    arch = recipe.arch
    log.warning("building the %s runtime %s (first build: tens of minutes)", arch, recipe.digest())
    sources = fetch_sources(root / "src", recipe.sources)
    # the work directory outlives a failed or killed build: the next run resumes from its stamps
    work = root / f"work-{arch}-{recipe.digest()}"
    # finished stages live on in work/deps; an unfinished one (killed mid-compile, its objects
    # maybe truncated) must start from fresh sources, so no old build tree is kept
    shutil.rmtree(work / "build", ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix=f"runtime-{arch}-", dir=root) as tmp:
        out = Path(tmp) / "out"
        started = time.monotonic()
        run_build(recipe, zig, sources, work, out, jobs)
        smoke_test(out, arch)
        info = {
            "recipe": recipe.digest(),
            "arch": arch,
            "sources": dict(recipe.sources),
            "zig": recipe.zig_version,
            "build_seconds": round(time.monotonic() - started),
        }
        (out / "BUILD-INFO.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        if build.exists():
            shutil.rmtree(build)
        os.replace(out, build)
    shutil.rmtree(work, ignore_errors=True)
    log.info("runtime %s built in %ss into %s", recipe.digest(), info["build_seconds"], build)


SMOKE_IMPORTS = "import ssl, sqlite3, ctypes, lzma, bz2, zlib, hashlib, _decimal"


def smoke_test(build: Path, arch: str) -> None:
    """A build this host can run must import its C extension modules, or it is not cached."""
    if arch != os.uname().machine:
        return  # a cross build is smoke-run under qemu by tests/pkgbuild/test_runtime_built.py
    proc = subprocess.run(
        [str(interpreter(build)), "-I", "-c", SMOKE_IMPORTS],
        capture_output=True, text=True, env={}, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        raise ToolError(
            f"the {arch} runtime build cannot import its extension modules: "
            f"{lines[-1] if lines else proc.returncode}",
            hint="see the build log; the broken build was not cached",
        )


def fetch_sources(dest: Path, sources: Mapping[str, str]) -> Path:
    """`apt-get source --download-only` the pinned source packages into `dest` (once)."""
    dest.mkdir(parents=True, exist_ok=True)
    wanted = [
        f"{name}={version}"
        for name, version in sources.items()
        if not list(dest.glob(f"{name}_{version.split(':')[-1]}.dsc"))
    ]
    if not wanted:
        return dest
    proc = subprocess.run(
        ["apt-get", "source", "--download-only", *wanted],
        cwd=dest, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        raise ToolError(
            f"apt-get source failed: {lines[-1] if lines else proc.returncode}",
            hint="add a deb-src line for bookworm and run apt-get update, or bump "
            "pkgbuild.runtime.SOURCES to the versions Debian now serves",
        )
    return dest


def run_build(recipe: Recipe, zig: Path, sources: Path, work: Path, out: Path, jobs: int) -> None:
    """Run build-runtime.sh at low priority; a failure keeps its log and names it."""
    env = dict(os.environ, **recipe.env, ZIG=str(zig), JOBS=str(jobs), BUILD_PYTHON=_build_python())
    log_path = work.parent / f"build-{recipe.arch}-{recipe.digest()}.log"
    cmd = ["nice", "-n", "15", "sh", str(BUILD_SCRIPT), recipe.zig_target, str(sources)]
    with log_path.open("a", encoding="utf-8") as log_file:
        proc = subprocess.run(
            [*cmd, str(work), str(out)], env=env, stdout=log_file, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, check=False,
        )  # fmt: skip
    if proc.returncode != 0:
        raise ToolError(
            f"the {recipe.arch} runtime build failed (exit {proc.returncode})",
            hint=f"see {log_path}; rerunning resumes after the last finished stage",
        )


def _build_python() -> str:
    """A CPython of the runtime's minor version on the build host (cross builds need one)."""
    if f"{sys.version_info.major}.{sys.version_info.minor}" == PYTHON_VERSION:
        return sys.executable
    found = shutil.which(f"python{PYTHON_VERSION}")
    return found or ""


def keep_in_runtime(relative: Path) -> bool:
    """Whether a file of a build belongs in the shipped runtime (no tests, headers, IDLE...)."""
    parts = relative.parts
    if any(part in STRIPPED_DIRS for part in parts[:-1]):
        return False
    if parts[:1] == ("bin",) and parts[-1] in STRIPPED_BIN:
        return False
    name = parts[-1]
    if name.startswith("_test") or name.startswith("_ctypes_test") or name == "_xxtestfuzz":
        return False
    return not name.endswith(STRIPPED_SUFFIXES)


def copy_runtime(build: Path, dest: Path) -> None:
    """Copy a cached build into a payload's runtime/, leaving out what the agent never needs."""
    if not is_complete(build):
        raise LocalStateError(f"{build} is not a finished runtime build", hint=HINT)
    for dirpath, dirnames, filenames in os.walk(build):
        here = Path(dirpath)
        rel_dir = here.relative_to(build)
        dirnames[:] = sorted(d for d in dirnames if d not in STRIPPED_DIRS)
        target_dir = dest / rel_dir
        target_dir.mkdir(parents=True, exist_ok=True)
        for name in sorted(filenames):
            if not keep_in_runtime(rel_dir / name):
                continue
            src = here / name
            if src.is_symlink():
                os.symlink(os.readlink(src), target_dir / name)
            else:
                shutil.copy2(src, target_dir / name)


def compile_bytecode(dirs: list[Path]) -> bool:
    """Precompile .pyc (unchecked-hash: packaging mtimes do not matter) so that the agent does
    not compile the stdlib at every start on a read-only or unprivileged install.

    Uses this interpreter, which must be the runtime's minor version (one bytecode format per
    minor); returns False (and compiles nothing) otherwise.
    """
    if f"{sys.version_info.major}.{sys.version_info.minor}" != PYTHON_VERSION:
        log.warning("not precompiling: this is Python %s.%s, the runtime %s",
                    sys.version_info.major, sys.version_info.minor, PYTHON_VERSION)  # fmt: skip
        return False
    cmd = [sys.executable, "-m", "compileall", "-q", "-j", "2", "--invalidation-mode",
           "unchecked-hash", *map(str, dirs)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:  # a file that does not compile stays source-only
        log.warning("compileall: %s", (proc.stdout + proc.stderr).strip()[-500:])
    return True


def site_packages(runtime: Path) -> Path:
    """The runtime's site-packages directory."""
    return runtime / "lib" / f"python{PYTHON_VERSION}" / "site-packages"


def interpreter(runtime: Path) -> Path:
    """The runtime's python3."""
    return runtime / "bin" / "python3"
