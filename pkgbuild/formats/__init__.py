"""Artifact formats: turn one payload into signed .deb, .rpm, .exe and .tar.gz files.

`build_artifacts` is the orchestrator (payload per target, then each format, then an atomic move
into the output directory); each format module only knows its own tool.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from common.errors import ToolError, UsageError
from common.hashing import file_sha256
from common.platform import normalize_arch
from common.progress import open_steps, progress_enabled
from pkgbuild.keys import load_keys_json
from pkgbuild.naming import FORMATS, artifact_filename
from pkgbuild.payload import (
    AGENT_PACKAGE,
    DEFAULT_PREFIX,
    PayloadSpec,
    build_payload,
    normalise_modes,
    project_root,
    validate_package_name,
    validate_version,
)

log = logging.getLogger(__name__)

ARCHES = ("x86_64", "aarch64")
TOOLS = {
    "deb": ("dpkg-deb",),
    "rpm": ("rpmbuild", "rpmsign", "gpg"),
    "exe": ("makensis", "osslsigncode"),
    "tar.gz": (),
}


@dataclass(frozen=True)
class BuildRequest:
    """What `assist-pkgbuild build` was asked for; empty lists mean the defaults."""

    version: str
    keys: Path
    source: Path | None = None
    arches: Sequence[str] = ()
    formats: Sequence[str] = ()
    package: str = AGENT_PACKAGE
    out: Path = Path("dist")
    vendor: bool = True
    wheel_cache: Path | None = None
    # The agent's own CPython (docs/runtime.md): on for Linux unless --no-runtime or --no-vendor.
    with_runtime: bool = True
    runtime_cache: Path | None = None  # default: pkgbuild.runtime.cache_root()
    build_runtime: bool = False  # build a missing runtime (tens of minutes) instead of failing
    windows_runtime: Path | None = None  # the official CPython embeddable zip


@dataclass(frozen=True)
class Artifact:
    """One built file."""

    path: Path
    package: str
    version: str
    arch: str
    format: str
    size: int
    sha256: str

    def to_dict(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "package": self.package,
            "version": self.version,
            "arch": self.arch,
            "format": self.format,
            "size": self.size,
            "sha256": self.sha256,
        }


@dataclass(frozen=True)
class Stage:
    """A prepared payload for one target, as the format builders see it."""

    package: str
    version: str
    arch: str  # ours: x86_64 | aarch64
    root: Path  # filesystem-root layout: root/<prefix>/…
    prefix: str  # /usr/local/share/aliyun-assist or /opt/NAME
    is_agent: bool
    workdir: Path  # scratch space for the format builder
    keys: Path
    extras: Mapping[str, str] = field(default_factory=dict)

    @property
    def prefix_dir(self) -> Path:
        return self.root / self.prefix.lstrip("/")


def run_tool(
    cmd: Sequence[str], env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run an external tool; a missing tool or a failure becomes a one-line ToolError."""
    log.debug("running %s", " ".join(cmd))
    try:
        proc = subprocess.run(
            list(cmd), capture_output=True, text=True, env=dict(env) if env else None, cwd=cwd,
            check=False, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except FileNotFoundError as exc:
        raise ToolError(f"{cmd[0]} is not installed", hint="run `make install`") from exc
    if proc.returncode != 0:
        log.debug("%s output:\n%s", cmd[0], proc.stderr + proc.stdout)
        raise ToolError(
            f"{os.path.basename(cmd[0])} failed (exit {proc.returncode}): {_gist(proc)}",
            hint="rerun with --debug to see the tool's output",
        )
    return proc


def _gist(proc: subprocess.CompletedProcess[str]) -> str:
    """The line of a failed tool's output that says why: its last error line, and for a failed
    build step ("Bad exit status from …") also the line the step printed before it."""
    lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
    errors = [i for i, ln in enumerate(lines) if "error" in ln.lower()]
    if not errors:
        lines = lines or [ln.strip() for ln in proc.stdout.splitlines() if ln.strip()]
        return lines[-1] if lines else "no output"
    last = errors[-1]
    if "bad exit status" in lines[last].lower() and last > 0:
        return f"{lines[last]} after: {lines[last - 1]}"
    return lines[last]


def resolve_request(request: BuildRequest) -> tuple[list[str], list[str]]:
    """Validate the request and return (arches, formats) with defaults applied."""
    validate_version(request.version)
    validate_package_name(request.package)
    load_keys_json(request.keys)
    formats = list(dict.fromkeys(request.formats or FORMATS))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise UsageError(
            f"unknown format(s): {', '.join(unknown)}", hint=f"use {','.join(FORMATS)}"
        )
    arches = [normalize_arch(a) for a in (request.arches or [platform.machine()])]
    arches = list(dict.fromkeys(arches))
    bad = [a for a in arches if a not in ARCHES]
    if bad:
        raise UsageError(f"unsupported arch(es): {', '.join(bad)}", hint="use x86_64 or aarch64")
    missing = sorted({t for f in formats for t in TOOLS[f] if shutil.which(t) is None})
    if missing:
        raise ToolError(f"missing build tools: {', '.join(missing)}", hint="run `make install`")
    _check_windows_runtime(request, formats)
    return arches, formats


def _check_windows_runtime(request: BuildRequest, formats: Sequence[str]) -> None:
    """An agent .exe that vendors must carry a CPython: a fresh Windows has none."""
    is_agent = request.package == AGENT_PACKAGE
    if "exe" not in formats or not is_agent or not request.vendor:
        return
    if request.windows_runtime is None:
        raise UsageError(
            "an agent .exe needs a Windows runtime: a fresh Windows has no Python",
            hint="pass --windows-runtime python-3.11.X-embed-amd64.zip (the official CPython "
            "embeddable zip), or leave exe out of --formats",
        )
    if not request.windows_runtime.is_file():
        raise UsageError(
            f"--windows-runtime {request.windows_runtime} does not exist",
            hint="download python-3.11.X-embed-amd64.zip once and pass its path",
        )


def build_artifacts(request: BuildRequest) -> list[Artifact]:
    """Build every requested format for every requested arch; return what was written."""
    from pkgbuild.formats import deb, exe, rpm, tarball

    arches, formats = resolve_request(request)
    source = (request.source or project_root()).resolve()
    keys = request.keys.resolve()
    out = request.out
    out.mkdir(parents=True, exist_ok=True)
    linux_formats = [f for f in formats if f != "exe"]
    builders = {"deb": deb.build_deb, "rpm": rpm.build_rpm, "tar.gz": tarball.build_tarball}
    built: list[Artifact] = []
    with tempfile.TemporaryDirectory(prefix="assist-build-") as tmp:
        work = Path(tmp)
        plans = [(arch, "linux", linux_formats) for arch in arches if linux_formats]
        if "exe" in formats:
            plans.append(("x86_64", "windows", ["exe"]))
        total = sum(len(fmts) for _, _, fmts in plans)
        with open_steps("build", total, "artifact", progress_enabled(None)) as bar:
            for arch, os_name, fmts in plans:
                stage = _prepare_stage(request, source, keys, arch, os_name, work)
                for fmt in fmts:
                    name = artifact_filename(request.package, request.version, arch, fmt)
                    scratch = stage.workdir / fmt.replace(".", "_")
                    scratch.mkdir(parents=True)
                    staged = scratch / name
                    if fmt == "exe":
                        exe.build_exe(stage, staged)
                    else:
                        builders[fmt](stage, staged)
                    built.append(_publish_file(staged, out / name, request, arch, fmt))
                    bar.update(1)
    return built


def _prepare_stage(
    request: BuildRequest, source: Path, keys: Path, arch: str, os_name: str, work: Path
) -> Stage:
    """Build the payload for one target into a filesystem-root layout."""
    target = f"{os_name}-{arch}"
    is_agent = request.package == AGENT_PACKAGE
    prefix = DEFAULT_PREFIX if is_agent else f"/opt/{request.package}"
    root = work / target / "root"
    runtime = _runtime_for(request, arch, os_name) if is_agent and request.vendor else None
    spec = PayloadSpec(
        package=request.package,
        version=request.version,
        target=target,
        keys=keys,
        source=source,
        vendor=request.vendor and is_agent,
        wheel_cache=request.wheel_cache,
        runtime=runtime,
    )
    prefix_dir = root / prefix.lstrip("/")
    prefix_dir.mkdir(parents=True)
    build_payload(spec, prefix_dir)
    normalise_modes(prefix_dir)
    return Stage(
        package=request.package,
        version=request.version,
        arch=arch,
        root=root,
        prefix=prefix,
        is_agent=is_agent,
        workdir=work / target,
        keys=keys,
    )


def _runtime_for(request: BuildRequest, arch: str, os_name: str) -> Path | None:
    """The runtime an agent payload ships: the embeddable zip on Windows, a cached build on Linux."""
    if os_name == "windows":
        return request.windows_runtime
    if not request.with_runtime:
        return None
    from pkgbuild import wheels
    from pkgbuild.runtime import PYTHON_VERSION, ensure_runtime, find_runtime

    # A wheel cache gap is found in a second, before a runtime build that can take half an hour.
    wheels.cached_wheels(f"{os_name}-{arch}", request.wheel_cache, pythons=(PYTHON_VERSION,))
    if request.build_runtime:
        return ensure_runtime(arch, request.runtime_cache)
    return find_runtime(arch, request.runtime_cache)


def _publish_file(staged: Path, dest: Path, request: BuildRequest, arch: str, fmt: str) -> Artifact:
    """Move a finished artifact into the output directory atomically and describe it."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.copyfile(staged, tmp)
    os.chmod(tmp, 0o644)
    os.replace(tmp, dest)
    log.info("built %s", dest)
    return Artifact(
        path=dest.resolve(),
        package=request.package,
        version=request.version,
        arch="x86_64" if fmt == "exe" else arch,
        format=fmt,
        size=dest.stat().st_size,
        sha256=file_sha256(dest),
    )
