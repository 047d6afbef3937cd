"""Fake agent payloads for updater tests (until/besides real `assist-pkgbuild build` artifacts).

The fake agent is a tiny POSIX sh launcher at versions/V/bin/assist-agent: `run --prefix P`
writes P/state/health.json for its version and then execs a sleeping Python (same pid), like the real agent
once its main loop runs. A broken one exits at start without reporting.
"""

from __future__ import annotations

import io
import sys
import tarfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

AGENT_SH = """#!/bin/sh
# fake assist-agent for tests: reports health for its version, then sleeps under the same pid
prefix=""
while [ $# -gt 0 ]; do
  case "$1" in --prefix) prefix="$2"; shift 2;; *) shift;; esac
done
if [ "@BROKEN@" = "yes" ]; then echo "broken agent exits at start" >&2; exit 1; fi
mkdir -p "$prefix/state"
printf '{"version": "@VERSION@", "pid": %s, "started": "%s", "connected": true}\\n' \\
  "$$" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" > "$prefix/state/.health.tmp"
mv "$prefix/state/.health.tmp" "$prefix/state/health.json"
# sleep on under the same pid, keeping `--prefix P` in the command line (the service manager
# checks it before it signals a recorded pid)
exec "@PYTHON@" -c "import time; time.sleep(600)" run --prefix "$prefix"
"""


UNIT = (
    "[Service]\nExecStart=/usr/local/share/aliyun-assist/current/bin/assist-agent run "
    "--prefix /usr/local/share/aliyun-assist\nRestart=on-failure\n"
)
INIT = '#!/bin/sh\nPREFIX="/usr/local/share/aliyun-assist"\n'


def agent_script(version: str, broken: bool = False) -> str:
    script = AGENT_SH.replace("@VERSION@", version).replace("@PYTHON@", sys.executable)
    return script.replace("@BROKEN@", "yes" if broken else "no")


def payload_files(version: str, broken: bool = False) -> dict[str, tuple[bytes, int]]:
    """relative path -> (content, mode) of a fake payload."""
    return {
        "bin/assist-agent": (agent_script(version, broken).encode(), 0o755),
        "VERSION": (f"{version}\n".encode(), 0o644),
        "lib/placeholder.txt": (b"fake lib\n", 0o644),
        "share/keys/README": (b"no keys in the fake payload\n", 0o644),
        "share/aliyun-assist.service": (UNIT.encode(), 0o644),
        "share/aliyun-assist.init": (INIT.encode(), 0o755),
    }


def write_tree(dest: Path, version: str, broken: bool = False) -> Path:
    """Write a fake payload tree into dest (= versions/V)."""
    for rel, (data, mode) in payload_files(version, broken).items():
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(mode)
    return dest


def add_file(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    info.mtime = int(time.time())
    tar.addfile(info, io.BytesIO(data))


def add_special(tar: tarfile.TarFile, name: str, kind: bytes, linkname: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = 0o777 if kind == tarfile.SYMTYPE else 0o644
    tar.addfile(info)


def make_tarball(
    out: Path, version: str, broken: bool = False, extra: Sequence[tuple[str, bytes, str]] = ()
) -> Path:
    """A tar.gz artifact with versions/V/... (extra: (name, type, linkname) members appended)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w:gz") as tar:
        add_special(tar, "versions", tarfile.DIRTYPE)
        add_special(tar, f"versions/{version}", tarfile.DIRTYPE)
        for rel, (data, mode) in payload_files(version, broken).items():
            add_file(tar, f"versions/{version}/{rel}", data, mode)
        for name, kind, link in extra:
            if kind == tarfile.REGTYPE:
                add_file(tar, name, b"x")
            else:
                add_special(tar, name, kind, link)
    return out


def install_version(
    prefix: Path, version: str, *, current: bool = False, broken: bool = False
) -> None:
    """Put a fake version under prefix/versions (and point current at it)."""
    write_tree(prefix / "versions" / version, version, broken)
    for sub in ("state", "log"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    if current:
        link = prefix / "current"
        if link.is_symlink():
            link.unlink()
        link.symlink_to(f"versions/{version}")


class LocalRepo:
    """A stand-in for TrustedRepository serving local artifacts (state-machine tests only)."""

    def __init__(self, artifacts: dict[str, Path], fmt: str = "tar.gz") -> None:
        self.artifacts = artifacts
        self.fmt = fmt
        self.refreshed = 0
        self.length_override: int | None = None

    def refresh(self) -> None:
        self.refreshed += 1

    def versions(self, package: str, **_: object) -> list[str]:
        from packaging.version import Version

        return sorted(self.artifacts, key=Version)

    def find(self, package: str, *, version: str | None = None, **_: object) -> SimpleNamespace:
        version = version or self.versions(package)[-1]
        path = self.artifacts[version]
        length = self.length_override or path.stat().st_size
        return SimpleNamespace(
            path=f"{package}/{version}/{path.name}", length=length, version=version, local=path
        )

    def download(self, target: SimpleNamespace, dest_dir: Path, deliver: object = None) -> Path:
        dest_dir.mkdir(parents=True, exist_ok=True)
        dest = dest_dir / target.local.name
        dest.write_bytes(target.local.read_bytes())
        return dest
