"""The payload: one directory tree `versions/V/` that every artifact format carries.

    versions/V/bin/assist-agent, assist-update, assist-install    POSIX sh launchers (+ .cmd on Windows)
    versions/V/lib/            common, agent, updater, installer (+ wheels when there is no runtime)
    versions/V/runtime/        the agent's own CPython with the wheels in its site-packages
                               (docs/runtime.md); absent in --no-vendor builds
    versions/V/share/root.json              the TUF trust anchor (KEYDIR/root.json)
    versions/V/share/keys/                  pinned native-signature keys
    versions/V/share/aliyun-assist.service  systemd unit
    versions/V/share/aliyun-assist.init     SysV script
    versions/V/VERSION

A plain package (any other --package NAME) is the --source directory as-is.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from packaging.version import InvalidVersion, Version

from common.errors import ConfigError, UsageError
from pkgbuild import wheels

log = logging.getLogger(__name__)

AGENT_PACKAGE = "aliyun-assist"
DEFAULT_PREFIX = "/usr/local/share/aliyun-assist"
WINDOWS_PREFIX = r"C:\ProgramData\aliyun\assist"
OUR_PACKAGES = ("common", "agent", "updater", "installer")
LAUNCHERS = {
    "assist-agent": "agent.cli",
    "assist-update": "updater.cli",
    "assist-install": "installer.cli",
}
PINNED_KEYS = ("RPM-GPG-KEY-assist", "authenticode.crt", "archive-keyring.gpg")
IGNORED = shutil.ignore_patterns(
    "__pycache__", "*.pyc", "*.pyo", "tests", ".pytest_cache", ".mypy_cache", ".ruff_cache",
    ".git", ".cache", "*.egg-info", ".venv",
)  # fmt: skip
TEMPLATES = Path(__file__).resolve().parent / "templates"
# Valid for PEP 440, Debian (no revision: no '-') and RPM (no '-'), and safe as a path segment.
_VERSION_CHARS = re.compile(r"^[0-9][0-9A-Za-z.+~]*$")
_PACKAGE_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]{0,63}$")


@dataclass(frozen=True)
class PayloadSpec:
    """What to put in a payload."""

    package: str
    version: str
    target: str  # linux-x86_64 | linux-aarch64 | windows-x86_64
    keys: Path
    source: Path
    vendor: bool = True
    wheel_cache: Path | None = None
    runtime: Path | None = None  # a built runtime (pkgbuild.runtime) or an embeddable zip (Windows)

    @property
    def is_agent(self) -> bool:
        return self.package == AGENT_PACKAGE


def validate_version(version: str) -> str:
    """Accept a version that PEP 440, dpkg and rpm all read the same way; return it unchanged."""
    if not _VERSION_CHARS.match(version) or ".." in version:
        raise UsageError(
            f"invalid version {version!r}",
            hint="use digits, letters and dots like 2.2.5 (no '-', '/', or leading 'v')",
        )
    try:
        Version(version)
    except InvalidVersion as exc:
        raise UsageError(
            f"invalid version {version!r}: not a PEP 440 version", hint="use a version like 2.2.5"
        ) from exc
    return version


def validate_package_name(name: str) -> str:
    """Accept a lower-case Debian/RPM-safe package name."""
    if not _PACKAGE_NAME.match(name):
        raise UsageError(
            f"invalid package name {name!r}", hint="use lower-case letters, digits, '.', '+', '-'"
        )
    return name


def project_root() -> Path:
    """This project's own source tree (the parent of the pkgbuild package)."""
    return Path(__file__).resolve().parent.parent


def render_template(name: str, **values: str) -> str:
    """Fill @KEY@ placeholders of a template file."""
    text = (TEMPLATES / name).read_text(encoding="utf-8")
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    leftover = re.findall(r"@[A-Z_]+@", text)
    if leftover:
        raise AssertionError(f"template {name} has unfilled {sorted(set(leftover))}")
    return text


def build_payload(spec: PayloadSpec, dest: Path) -> Path:
    """Write the payload for `spec` into `dest` (versions/V for the agent); return that directory."""
    validate_version(spec.version)
    if not spec.source.is_dir():
        raise UsageError(f"source directory {spec.source} does not exist", hint="check --source")
    if not spec.is_agent:
        return _build_plain_payload(spec, dest)
    root = dest / "versions" / spec.version
    if root.exists():
        shutil.rmtree(root)
    lib = root / "lib"
    lib.mkdir(parents=True)
    _copy_our_packages(spec.source, lib)
    (root / "VERSION").write_text(spec.version + "\n", encoding="utf-8")
    _write_launchers(root / "bin", windows=spec.target.startswith("windows"))
    _write_share(root / "share", spec.keys)
    if spec.runtime is not None:
        _ship_runtime(spec, root / "runtime")
    elif spec.vendor:
        wheels.vendor_wheels(lib, spec.target, spec.wheel_cache)
    log.info("payload for %s %s (%s) in %s", spec.package, spec.version, spec.target, root)
    return root


def _ship_runtime(spec: PayloadSpec, dest: Path) -> None:
    """Put the runtime into the payload and install the dependency wheels for its Python into it."""
    from pkgbuild import runtime, windows_runtime

    assert spec.runtime is not None
    if spec.target.startswith("windows"):
        python = windows_runtime.unpack_embeddable(spec.runtime, dest)
        site = windows_runtime.site_packages(dest)
    else:
        runtime.copy_runtime(spec.runtime, dest)
        python = runtime.PYTHON_VERSION
        site = runtime.site_packages(dest)
    if spec.vendor:
        wheels.vendor_wheels(site, spec.target, spec.wheel_cache, pythons=(python,))
    if not spec.target.startswith("windows"):
        runtime.compile_bytecode([dest / "lib", dest.parent / "lib"])


def _build_plain_payload(spec: PayloadSpec, dest: Path) -> Path:
    """A plain package: the source directory as it is (without Python caches), into `dest`."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(spec.source, dest, ignore=ignore, dirs_exist_ok=True)
    return dest


def _copy_our_packages(source: Path, lib: Path) -> None:
    """Copy common, agent, updater, installer from `source` into lib/ (no tests or caches)."""
    if not (source / "common" / "__init__.py").is_file():
        raise UsageError(
            f"{source} is not an Aliyun Assist source tree (no common/__init__.py)",
            hint="point --source at the project root, or use --package NAME for other software",
        )
    for name in OUR_PACKAGES:
        package = source / name
        if not (package / "__init__.py").is_file():
            log.warning("source %s has no %s package; the payload will lack it", source, name)
            continue
        shutil.copytree(package, lib / name, ignore=IGNORED, symlinks=False)


def _write_launchers(bin_dir: Path, windows: bool) -> None:
    """POSIX sh launchers for every console script (and .cmd twins for Windows payloads)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for command, module in LAUNCHERS.items():
        script = bin_dir / command
        script.write_text(
            render_template("launcher.sh.tmpl", COMMAND=command, MODULE=module), encoding="utf-8"
        )
        script.chmod(0o755)
        if windows:
            cmd = render_template("launcher.cmd.tmpl", COMMAND=command, MODULE=module)
            (bin_dir / f"{command}.cmd").write_bytes(cmd.replace("\n", "\r\n").encode("utf-8"))


def _write_share(share: Path, keys: Path) -> None:
    """Trust anchor, pinned keys, systemd unit and SysV script."""
    (share / "keys").mkdir(parents=True, exist_ok=True)
    root_json = keys / "root.json"
    if not root_json.is_file():
        raise ConfigError(
            f"{keys} has no root.json", hint="create keys with `assist-pkgbuild keygen`"
        )
    shutil.copyfile(root_json, share / "root.json")
    for name in PINNED_KEYS:
        src = keys / "public" / name
        if not src.is_file():
            raise ConfigError(f"{keys} lacks public/{name}", hint="regenerate the keys")
        shutil.copyfile(src, share / "keys" / name)
    (share / "aliyun-assist.service").write_text(
        render_template("aliyun-assist.service", PREFIX=DEFAULT_PREFIX), encoding="utf-8"
    )
    init = share / "aliyun-assist.init"
    init.write_text(render_template("aliyun-assist.init", PREFIX=DEFAULT_PREFIX), encoding="utf-8")
    init.chmod(0o755)


def normalise_modes(root: Path) -> None:
    """Directories 0755, files 0644, executables 0755: nothing group/world-writable ships."""
    for dirpath, dirnames, filenames in os.walk(root):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                continue
            executable = os.stat(path).st_mode & 0o111
            os.chmod(path, 0o755 if executable else 0o644)
        dirnames.sort()
