"""The safe extractor (common/extract.py) against tarfile's own `extractall(filter="data")`.

Both unpack the same in-memory tar (5,000 files of 2 KB in 50 directories, like a vendored
payload's lib/) into a fresh directory; medians of several runs, ours / baseline.
"""

from __future__ import annotations

import io
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.figures import median_figure
from common.extract import extract_tar

RUNS = 5


def make_tar(dirs: int = 50, files: int = 100, size: int = 2000) -> bytes:
    """An uncompressed tar of dirs × files regular files."""
    buf = io.BytesIO()
    data = b"x" * size
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in range(dirs):
            for f in range(files):
                info = tarfile.TarInfo(f"lib/d{d}/f{f}.py")
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def timed(unpack: Callable[[Path], object]) -> float:
    """Seconds one unpack into a fresh directory takes (its removal not counted)."""
    dest = Path(tempfile.mkdtemp(prefix="bench-extract-"))
    try:
        start = time.perf_counter()
        unpack(dest)
        return time.perf_counter() - start
    finally:
        shutil.rmtree(dest)


def unpack_ours(raw: bytes, dest: Path) -> None:
    """common.extract.extract_tar."""
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        extract_tar(tar, dest)


def unpack_tarfile(raw: bytes, dest: Path) -> None:
    """The standard library's extractall with the "data" filter."""
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        tar.extractall(dest, filter="data")


def main() -> None:
    raw = make_tar()
    ours: list[float] = []
    baseline: list[float] = []
    for _ in range(RUNS):  # interleaved, so load on the machine hits both alike
        ours.append(timed(lambda d: unpack_ours(raw, d)))
        baseline.append(timed(lambda d: unpack_tarfile(raw, d)))
    median_figure("extract_5000_files", ours, baseline, "<= 1.5x", files=5000)


if __name__ == "__main__":
    main()
