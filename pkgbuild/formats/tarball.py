"""The .tar.gz: the payload relative to the install prefix, owned by root, reproducible."""

from __future__ import annotations

import gzip
import os
import tarfile
from pathlib import Path

from pkgbuild.formats import Stage


def source_date_epoch() -> int:
    """The timestamp every entry gets: $SOURCE_DATE_EPOCH, else a fixed date."""
    try:
        return int(os.environ["SOURCE_DATE_EPOCH"])
    except (KeyError, ValueError):
        return 1767225600  # 2026-01-01T00:00:00Z


def _normalise(info: tarfile.TarInfo, mtime: int) -> tarfile.TarInfo:
    """Root ownership, fixed time, sane modes."""
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mtime = mtime
    if info.isdir():
        info.mode = 0o755
    elif info.isfile():
        info.mode = 0o755 if info.mode & 0o111 else 0o644
    return info


def build_tarball(stage: Stage, dest: Path) -> Path:
    """Write the .tar.gz: entries versions/V/… (agent) or the package's files (plain)."""
    base = stage.prefix_dir
    top = base / "versions" / stage.version if stage.is_agent else base
    mtime = source_date_epoch()
    entries = [top, *sorted(top.rglob("*"))]
    with dest.open("wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=mtime, compresslevel=6) as gz:
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for path in entries:
                    arcname = path.relative_to(base).as_posix()
                    if arcname == ".":
                        continue
                    info = _normalise(tar.gettarinfo(str(path), arcname), mtime)
                    if info.isfile():
                        with path.open("rb") as handle:
                            tar.addfile(info, handle)
                    else:
                        tar.addfile(info)
    return dest
