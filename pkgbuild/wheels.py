"""The wheel cache: runtime dependencies for every target, downloaded once, vendored offline.

`python -m pkgbuild.wheels --cache DIR` (run by `make install` / `make wheels`) fills DIR with
`pip download --only-binary=:all:` of the runtime dependencies of pyproject.toml, for manylinux
x86_64 and aarch64 and win_amd64, CPython 3.9–3.13. A build then unpacks the wheels matching its
target into the payload's lib/ without touching the network.

Selection per project (pure, see `select_wheels`): the newest version in the cache; of it, every
pure wheel once, the abi3 wheel with the lowest Python floor once, and one version-specific wheel
per CPython (their extension modules carry distinct cpython-3XY suffixes, so they coexist).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.tags import Tag
from packaging.utils import InvalidWheelFilename, parse_wheel_filename
from packaging.version import Version

from common.errors import LocalStateError, ToolError, UsageError

log = logging.getLogger(__name__)

PYTHONS = ("3.9", "3.10", "3.11", "3.12", "3.13")
# Oldest manylinux first: a VM with glibc 2.17 (CentOS 7 era) can still run the payload.
PLATFORMS: dict[str, tuple[str, ...]] = {
    "linux-x86_64": ("manylinux2014_x86_64", "manylinux_2_17_x86_64"),
    "linux-aarch64": ("manylinux2014_aarch64", "manylinux_2_17_aarch64"),
    "windows-x86_64": ("win_amd64",),
}
# pip evaluates environment markers of dependencies against the running interpreter, not the
# target: dependencies that only the target needs are named here (tqdm needs colorama on Windows).
TARGET_EXTRAS: dict[str, tuple[str, ...]] = {"windows-x86_64": ("colorama",)}
# Projects of the dependency closure that payloads leave out. charset-normalizer: requests only
# uses it to guess the charset of a text answer that names none, and falls back to utf-8 without
# it (Response.apparent_encoding); we read bytes and JSON. Leaving it out keeps ~1.7 MB of
# memory out of every idle agent (docs/runtime.md, Memory).
NOT_VENDORED = frozenset({"charset_normalizer"})
HINT = "run `make wheels` (needs access to the package index) or build with --no-vendor"


@dataclass(frozen=True)
class Wheel:
    """One wheel file in the cache, with its parsed name."""

    path: Path
    project: str
    version: Version
    tags: frozenset[Tag]


def default_cache() -> Path:
    """The project's wheel cache, .cache/wheels next to pyproject.toml."""
    return Path(__file__).resolve().parent.parent / ".cache" / "wheels"


def runtime_requirements(pyproject: Path | None = None) -> list[str]:
    """The `dependencies` of pyproject.toml: what every payload vendors."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    path = pyproject or Path(__file__).resolve().parent.parent / "pyproject.toml"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LocalStateError(f"cannot read {path}: {exc}") from exc
    return [str(dep) for dep in data["project"]["dependencies"]]


def platform_matches(tag: Tag, target: str) -> bool:
    """Whether a wheel platform tag can run on target (linux-x86_64, linux-aarch64, windows-x86_64)."""
    if tag.platform == "any":
        return True
    os_name, arch = target.split("-", 1)
    if os_name == "windows":
        return tag.platform == {"x86_64": "win_amd64", "aarch64": "win_arm64"}.get(arch)
    return tag.platform.startswith("manylinux") and tag.platform.endswith("_" + arch)


def _python_floor(tag: Tag) -> tuple[int, int]:
    """The CPython version a tag like cp39 names (py3 counts as 3.0)."""
    digits = tag.interpreter.lstrip("cpy")
    if not digits:
        return (3, 0)
    return (int(digits[0]), int(digits[1:] or 0))


def scan_cache(cache: Path) -> list[Wheel]:
    """Every parseable wheel in the cache directory."""
    wheels = []
    for path in sorted(cache.glob("*.whl")):
        try:
            name, version, _build, tags = parse_wheel_filename(path.name)
        except InvalidWheelFilename:
            log.warning("ignoring %s: not a wheel name", path.name)
            continue
        wheels.append(Wheel(path, str(name), version, frozenset(tags)))
    return wheels


def select_wheels(
    wheels: Iterable[Wheel], target: str, pythons: Sequence[str] = PYTHONS
) -> list[Wheel]:
    """The wheels to unpack for `target`: per project the newest version that serves every Python."""
    by_project: dict[str, list[Wheel]] = defaultdict(list)
    for wheel in wheels:
        if any(platform_matches(tag, target) for tag in wheel.tags):
            by_project[wheel.project].append(wheel)
    chosen: list[Wheel] = []
    for project in sorted(by_project):
        versions = sorted({w.version for w in by_project[project]}, reverse=True)
        for version in versions:
            same = [w for w in by_project[project] if w.version == version]
            picked = _cover_pythons(same, pythons)
            if picked:
                chosen.extend(picked)
                break
        else:
            raise LocalStateError(
                f"wheel cache has no version of {project} for {target} that serves "
                f"CPython {pythons[0]}–{pythons[-1]}",
                hint=HINT,
            )
    return chosen


def _cover_pythons(candidates: list[Wheel], pythons: Sequence[str] = PYTHONS) -> list[Wheel]:
    """Wheels of one version that together serve every Python in `pythons`, or [] if they cannot."""
    pure = [w for w in candidates if any(t.platform == "any" for t in w.tags)]
    if pure:
        return [pure[0]] if _requires_python_ok(pure[0], pythons) else []
    abi3 = [w for w in candidates if any(t.abi == "abi3" for t in w.tags)]
    if abi3:
        best = min(abi3, key=lambda w: min(_python_floor(t) for t in w.tags))
        floor = min(_python_floor(t) for t in best.tags)
        return [best] if floor <= _version_tuple(pythons[0]) else []
    per_python: dict[tuple[int, int], Wheel] = {}
    for wheel in candidates:
        for tag in wheel.tags:
            per_python.setdefault(_python_floor(tag), wheel)
    if any(_version_tuple(p) not in per_python for p in pythons):
        return []
    wanted = {_version_tuple(p) for p in pythons}
    return sorted({w for v, w in per_python.items() if v in wanted}, key=lambda w: w.path.name)


def _version_tuple(python: str) -> tuple[int, int]:
    """'3.9' -> (3, 9)."""
    major, minor = python.split(".")
    return (int(major), int(minor))


def _requires_python_ok(wheel: Wheel, pythons: Sequence[str] = PYTHONS) -> bool:
    """Whether a pure wheel's Requires-Python admits every Python in `pythons`."""
    from packaging.specifiers import SpecifierSet

    with zipfile.ZipFile(wheel.path) as archive:
        names = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        text = archive.read(names[0]).decode("utf-8", "replace") if names else ""
    for line in text.splitlines():
        if not line.strip():
            break  # end of the headers
        if line.lower().startswith("requires-python:"):
            spec = SpecifierSet(line.split(":", 1)[1].strip())
            return all(spec.contains(p + ".0") for p in pythons)
    return True


def marker_environment(target: str, python: str) -> dict[str, str]:
    """The environment-marker values of a target platform and CPython version."""
    windows = target.startswith("windows")
    arch = target.split("-", 1)[1]
    return {
        "python_version": python,
        "python_full_version": python + ".0",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "sys_platform": "win32" if windows else "linux",
        "platform_system": "Windows" if windows else "Linux",
        "os_name": "nt" if windows else "posix",
        "platform_machine": ("AMD64" if arch == "x86_64" else "ARM64") if windows else arch,
    }


def target_requirements(requirements: Sequence[str], target: str, python: str) -> list[str]:
    """The requirements that apply to target + python, markers evaluated and removed."""
    env = marker_environment(target, python)
    result = []
    for text in [*requirements, *TARGET_EXTRAS.get(target, ())]:
        try:
            req = Requirement(text)
        except InvalidRequirement as exc:
            raise UsageError(f"invalid requirement {text!r}: {exc}") from exc
        if req.marker is None or req.marker.evaluate(env):
            req.marker = None
            result.append(str(req))
    return result


def _required_projects(
    requirements: Sequence[str], target: str, pythons: Sequence[str] = PYTHONS
) -> set[str]:
    """Project names a target needs on any of `pythons`."""
    from packaging.utils import canonicalize_name

    names = set()
    for python in pythons:
        for text in target_requirements(requirements, target, python):
            names.add(str(canonicalize_name(Requirement(text).name)).replace("-", "_"))
    return names


def cached_wheels(
    target: str,
    cache: Path | None = None,
    requirements: Sequence[str] | None = None,
    pythons: Sequence[str] = PYTHONS,
) -> list[Wheel]:
    """The cached wheels a payload for `target` needs; a gap in the cache is an error."""
    cache = cache or default_cache()
    if not cache.is_dir():
        raise LocalStateError(f"wheel cache {cache} does not exist", hint=HINT)
    selected = select_wheels(scan_cache(cache), target, pythons)
    have = {w.project.replace("-", "_") for w in selected}
    needed = _required_projects(requirements or runtime_requirements(), target, pythons)
    missing = sorted(needed - have)
    if missing:
        raise LocalStateError(
            f"wheel cache {cache} has no {target} wheel for: {', '.join(missing)}", hint=HINT
        )
    return selected


def vendor_wheels(
    lib: Path,
    target: str,
    cache: Path | None = None,
    requirements: Sequence[str] | None = None,
    pythons: Sequence[str] = PYTHONS,
) -> list[str]:
    """Unpack the cached wheels for `target` (and `pythons`) into `lib`; return their names."""
    selected = [
        wheel
        for wheel in cached_wheels(target, cache, requirements, pythons)
        if wheel.project.replace("-", "_") not in NOT_VENDORED
    ]
    lib.mkdir(parents=True, exist_ok=True)
    for wheel in selected:
        _unpack_wheel(wheel.path, lib)
    log.info("vendored %d wheels for %s into %s", len(selected), target, lib)
    return [w.path.name for w in selected]


def _unpack_wheel(path: Path, lib: Path) -> None:
    """Extract a wheel into lib/ like an installer would, refusing entries that would escape it."""
    root = lib.resolve()
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            name = _install_name(info.filename)
            if name is None or info.is_dir():
                continue
            dest = (root / name).resolve()
            if root not in dest.parents:
                raise LocalStateError(f"wheel {path.name} has an unsafe entry {info.filename!r}")
            dest.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as src, dest.open("wb") as out:
                shutil.copyfileobj(src, out)
            mode = (info.external_attr >> 16) & 0o777
            dest.chmod(0o755 if mode & 0o111 else 0o644)


def _install_name(entry: str) -> str | None:
    """Where a wheel entry goes under lib/: <name>.data/purelib|platlib/x -> x; other .data skipped."""
    first, _, rest = entry.partition("/")
    if not first.endswith(".data"):
        return entry
    scheme, _, inner = rest.partition("/")
    return inner if scheme in ("purelib", "platlib") and inner else None


def fill_cache(
    cache: Path,
    requirements: Sequence[str] | None = None,
    targets: Sequence[str] = tuple(PLATFORMS),
    pythons: Sequence[str] = PYTHONS,
) -> None:
    """pip download binary wheels for every target and Python, one version set per target.

    The oldest Python resolves first; its versions then constrain the newer Pythons, so one
    version of each project serves them all.
    """
    cache.mkdir(parents=True, exist_ok=True)
    reqs = list(requirements or runtime_requirements())
    for target in targets:
        with tempfile.TemporaryDirectory(prefix="assist-wheels-") as tmp:
            first = Path(tmp) / "first"
            _pip_download(first, reqs, target, pythons[0], None)
            pins = Path(tmp) / "constraints.txt"
            pins.write_text(
                "".join(f"{w.project}=={w.version}\n" for w in scan_cache(first)), encoding="utf-8"
            )
            for path in first.glob("*.whl"):
                shutil.move(str(path), cache / path.name)
            for python in pythons[1:]:
                _pip_download(cache, reqs, target, python, pins)


def _pip_download(
    dest: Path, reqs: Sequence[str], target: str, python: str, constraints: Path | None
) -> None:
    """One `pip download --only-binary=:all:` for a target platform and CPython version."""
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check"]
    cmd += ["--only-binary=:all:", "--implementation", "cp", "--python-version", python]
    for platform in PLATFORMS[target]:
        cmd += ["--platform", platform]
    if constraints:
        cmd += ["--constraint", str(constraints)]
    cmd += ["--dest", str(dest), *target_requirements(reqs, target, python)]
    log.info("downloading wheels for %s, CPython %s", target, python)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        raise ToolError(
            f"pip download for {target} / CPython {python} failed: "
            f"{lines[-1] if lines else proc.returncode}",
            hint="check access to the package index; builds can use --no-vendor",
        )


def main(argv: Sequence[str] | None = None) -> int:
    """python -m pkgbuild.wheels --cache DIR."""
    from common.cli import add_common_options, run_cli

    parser = argparse.ArgumentParser(
        prog="python -m pkgbuild.wheels", description="Fill the wheel cache for vendoring."
    )
    add_common_options(parser)
    parser.add_argument("--cache", default=str(default_cache()), help="cache directory")
    parser.add_argument(
        "--target", action="append", choices=sorted(PLATFORMS), help="only these targets"
    )
    parser.add_argument("--python", action="append", choices=PYTHONS, help="only these Pythons")

    def dispatch(args: argparse.Namespace) -> int:
        cache = Path(args.cache)
        fill_cache(cache, targets=args.target or tuple(PLATFORMS), pythons=args.python or PYTHONS)
        print(f"{len(list(cache.glob('*.whl')))} wheels in {cache}")
        return 0

    return run_cli(parser.prog, parser, dispatch, argv)


if __name__ == "__main__":
    sys.exit(main())
