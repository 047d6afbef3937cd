"""Staging: unpack a verified artifact's payload into versions/.staging-V, then rename to versions/V.

The payload is the tree `versions/V/…` (tar.gz) or `./usr/local/share/aliyun-assist/versions/V/…`
(the data.tar of a deb, the cpio payload of an rpm). Every format is unpacked by the one safe
extractor, common/extract.py: absolute paths, `..`, anything outside versions/V/, device files,
fifos, links resolving outside the staging directory and anything written through a link are
refused (fail closed), and a refused archive changes nothing outside versions/.staging-V.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import queue
import shutil
import subprocess
import tarfile
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from common.errors import (
    AssistError,
    LocalStateError,
    NoSpaceError,
    ToolError,
    VerificationError,
)
from common.extract import check_links_inside, extract_tar, member_path, remove_tree
from common.layout import STAGING_PREFIX

log = logging.getLogger(__name__)

NATIVE_PREFIX = "usr/local/share/aliyun-assist/"
_AR_MAGIC = b"!<arch>\n"


def payload_prefix(fmt: str, version: str) -> str:
    """Where the version tree sits inside the archive of format `fmt`."""
    base = f"versions/{version}/"
    return NATIVE_PREFIX + base if fmt in ("deb", "rpm") else base


ExeRunner = Callable[[Sequence[str]], object]


def run_exe(argv: Sequence[str]) -> None:
    """Run a signed installer silently (Windows only)."""
    if os.name != "nt":
        raise ToolError("exe installers run only on Windows", hint="use the tar.gz on Linux")
    proc = subprocess.run(list(argv), capture_output=True, check=False)  # pragma: no cover
    if proc.returncode != 0:  # pragma: no cover
        raise ToolError(f"installer exited with {proc.returncode}")


def stage_artifact(
    artifact: Path,
    fmt: str,
    version: str,
    versions_dir: Path,
    *,
    require_agent: bool = True,
    exe_runner: ExeRunner = run_exe,
) -> Path:
    """Unpack `artifact` into versions/.staging-V with all checks, then rename it to versions/V.

    An exe (already Authenticode-checked) is run silently into a scratch prefix
    (`/S /D=versions/.staging-V-exe`); its versions/V tree becomes the staging directory, so
    `current` stays ours to swap.
    """
    versions_dir.mkdir(parents=True, exist_ok=True)
    staging = versions_dir / f"{STAGING_PREFIX}{version}"
    final = versions_dir / version
    remove_tree(staging)
    try:
        if fmt == "exe":
            stage_exe(artifact, version, staging, exe_runner)
        else:
            staging.mkdir()
            with open_payload(artifact, fmt) as tar:
                extract_checked(tar, payload_prefix(fmt, version), staging)
    except BaseException:
        remove_tree(staging)
        raise
    promote_staging(staging, final, require_agent)
    log.info("staged %s into %s", artifact.name, final)
    return final


def promote_staging(staging: Path, final: Path, require_agent: bool) -> None:
    """The last checks of an unpacked tree, then its rename to versions/V (removed if refused)."""
    try:
        check_links_inside(staging)
        if require_agent:
            check_agent_payload(staging, final.name)
    except BaseException:
        remove_tree(staging)
        raise
    remove_tree(final)
    os.replace(staging, final)


class StreamStager:
    """Unpacks a tar.gz into versions/.staging-V from bytes handed over while it downloads.

    The bytes come from the download's piece gate, so each one was checked against the signed
    metadata before it reaches the unpacker; the download's whole-file check still runs, and
    `finish` renames the tree into versions/V only after it. Extraction runs on its own thread
    (zlib and file writes release the GIL), overlapping the network and the disk.
    """

    def __init__(
        self, version: str, versions_dir: Path, length: int, *, require_agent: bool = True
    ) -> None:
        self.version = version
        self.versions_dir = versions_dir
        self.length = length
        self.require_agent = require_agent
        self.received = 0
        versions_dir.mkdir(parents=True, exist_ok=True)
        self.staging = versions_dir / f"{STAGING_PREFIX}{version}"
        remove_tree(self.staging)
        self.staging.mkdir()
        self._pipe = _Pipe()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._extract, name="stage-stream", daemon=True)
        self._thread.start()

    def feed(self, data: bytes) -> None:
        """Checked bytes of the artifact, in order. Once the unpacker failed this raises its
        error, which ends the download instead of fetching the rest for nothing."""
        if self._error is not None:
            raise self._failure()
        self.received += len(data)
        self._pipe.put(data)

    def _extract(self) -> None:
        try:
            with tarfile.open(fileobj=self._pipe, mode="r|gz", bufsize=1 << 20) as tar:
                extract_checked(tar, payload_prefix("tar.gz", self.version), self.staging)
        except BaseException as exc:  # handed to finish(), which raises it on the caller's thread
            self._error = exc
        finally:
            self._pipe.reader_gone()

    def finish(self, artifact: Path) -> Path:
        """After the download verified: complete, check and rename the tree into versions/V.

        When not every byte came through (a download reused from the cache, or a target whose
        pieces are not signed) the artifact file is unpacked the ordinary way instead.
        """
        if self.received < self.length:
            self.abort()
            return stage_artifact(
                artifact,
                "tar.gz",
                self.version,
                self.versions_dir,
                require_agent=self.require_agent,
            )
        self._pipe.put(None)
        self._thread.join()
        if self._error is not None:
            remove_tree(self.staging)
            raise self._failure()
        final = self.versions_dir / self.version
        promote_staging(self.staging, final, self.require_agent)
        log.info("staged %s into %s while it downloaded", artifact.name, final)
        return final

    def _failure(self) -> AssistError:
        """The unpacker's error as the operator should see it: a refused archive is a
        verification failure, a full disk or a permission problem is local."""
        error = self._error
        if isinstance(error, AssistError):
            return error
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            failure: AssistError = NoSpaceError(
                f"disk full while unpacking into {self.staging}: {error}",
                hint="free disk space and retry",
            )
        elif isinstance(error, OSError) and error.errno is not None:  # the filesystem's
            failure = LocalStateError(f"cannot unpack into {self.staging}: {error}")
        else:
            failure = VerificationError(f"payload is not a readable archive: {error}")
        failure.__cause__ = error
        return failure

    def abort(self) -> None:
        """Stop the unpacker and remove what it wrote."""
        self._pipe.abort()
        self._thread.join()
        remove_tree(self.staging)


class _Pipe(io.RawIOBase):
    """A bounded queue of byte strings read as a file; None from the writer means end of data."""

    def __init__(self, depth: int = 4) -> None:
        super().__init__()
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=depth)
        self._view = memoryview(b"")
        self._eof = False
        self._aborted = False
        self._gone = threading.Event()

    def put(self, data: bytes | None) -> None:
        while not self._gone.is_set():
            try:
                self._queue.put(data, timeout=0.05)
                return
            except queue.Full:
                continue

    def reader_gone(self) -> None:
        self._gone.set()

    def abort(self) -> None:
        self._aborted = True
        self.put(None)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._view:
            if self._eof:
                return 0
            item = self._queue.get()
            if self._aborted:
                raise VerificationError("unpacking stopped")
            if item is None:
                self._eof = True
                return 0
            self._view = memoryview(item)
        count = min(len(buffer), len(self._view))
        buffer[:count] = self._view[:count]
        self._view = self._view[count:]
        return count


def stage_exe(artifact: Path, version: str, staging: Path, runner: ExeRunner) -> None:
    """Run the silent installer into a scratch prefix and keep only its versions/V tree."""
    scratch = staging.with_name(staging.name + "-exe")
    remove_tree(scratch)
    scratch.mkdir()
    try:
        runner([str(artifact), "/S", f"/D={scratch}"])  # NSIS: /D must come last, unquoted
        tree = scratch / "versions" / version
        if not tree.is_dir() or tree.is_symlink():
            raise VerificationError(f"the installer did not produce versions/{version}")
        os.replace(tree, staging)
    finally:
        remove_tree(scratch)


@contextlib.contextmanager
def open_payload(artifact: Path, fmt: str) -> Iterator[tarfile.TarFile]:
    """Open the payload of a tar.gz, deb or rpm as a tar archive."""
    if fmt == "tar.gz":
        with _open_tar(artifact) as tar:
            yield tar
    elif fmt == "deb":
        with _open_tar(io.BytesIO(read_deb_data(artifact))) as tar:
            yield tar
    elif fmt == "rpm":
        with tempfile.TemporaryFile() as tmp:
            convert_rpm_payload(artifact, tmp)
            tmp.seek(0)
            with _open_tar(tmp) as tar:
                yield tar
    else:
        raise VerificationError(f"cannot stage a {fmt!r} artifact here", hint="use tar.gz/deb/rpm")


@contextlib.contextmanager
def _open_tar(source: Path | IO[bytes]) -> Iterator[tarfile.TarFile]:
    """tarfile.open with format errors turned into VerificationError."""
    try:
        if isinstance(source, Path):
            tar = tarfile.open(source, "r:*")  # noqa: SIM115 - closed below
        else:
            tar = tarfile.open(fileobj=source, mode="r:*")  # noqa: SIM115
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise VerificationError(f"payload is not a readable archive: {exc}") from exc
    with tar:
        yield tar


def read_deb_data(deb: Path) -> bytes:
    """The data.tar.* member of a deb (an ar archive)."""
    with deb.open("rb") as handle:
        if handle.read(8) != _AR_MAGIC:
            raise VerificationError(f"{deb.name} is not a deb (ar) archive")
        while True:
            header = handle.read(60)
            if len(header) < 60:
                break
            name = header[:16].decode("ascii", "replace").strip().rstrip("/")
            try:
                size = int(header[48:58].decode("ascii").strip())
            except ValueError as exc:
                raise VerificationError(f"{deb.name}: corrupt ar header") from exc
            if name.startswith("data.tar"):
                if name.endswith(".zst"):
                    return _dpkg_fsys_tarfile(deb)
                return handle.read(size)
            handle.seek(size + (size & 1), os.SEEK_CUR)
    raise VerificationError(f"{deb.name} has no data.tar member")


def _dpkg_fsys_tarfile(deb: Path) -> bytes:
    """Fall back to dpkg-deb for compressions tarfile does not read (zstd)."""
    try:
        proc = subprocess.run(
            ["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=False
        )
    except FileNotFoundError as exc:
        raise ToolError("dpkg-deb is needed to read this deb", hint="install dpkg") from exc
    if proc.returncode != 0:
        raise VerificationError(f"dpkg-deb cannot read {deb.name}: {proc.stderr.decode()[-300:]}")
    return proc.stdout


def convert_rpm_payload(rpm: Path, out: IO[bytes]) -> None:
    """Write the rpm's cpio payload to `out` as a tar stream (bsdtar reads rpm directly)."""
    if not shutil.which("bsdtar"):
        raise ToolError("bsdtar is needed to unpack rpm payloads", hint="install libarchive-tools")
    proc = subprocess.run(
        ["bsdtar", "-c", "-f", "-", "--format", "pax", f"@{rpm}"],
        stdout=out,
        stderr=subprocess.PIPE,
        check=False,
    )
    if proc.returncode != 0:
        raise VerificationError(f"cannot read the rpm payload of {rpm.name}: {proc.stderr!r}")


def classify_member(name: str, prefix: str) -> str | None:
    """Path of a member relative to the version tree; None for an ancestor dir; refuse the rest."""
    return member_path(name, prefix)


def extract_checked(tar: tarfile.TarFile, prefix: str, dest: Path) -> None:
    """Extract members under `prefix` into `dest` with the safe extractor (common/extract.py)."""
    extract_tar(tar, dest, prefix)


def check_agent_payload(tree: Path, version: str) -> None:
    """An agent payload has bin/assist-agent and a VERSION that matches the signed version."""
    launchers = (tree / "bin" / "assist-agent", tree / "bin" / "assist-agent.cmd")
    if not any(launcher.is_file() for launcher in launchers):
        raise VerificationError(f"payload of {version} has no bin/assist-agent")
    stamp = tree / "VERSION"
    if stamp.is_file():
        text = stamp.read_text(encoding="utf-8").strip()
        if text != version:
            raise VerificationError(f"payload says version {text!r}, signed metadata {version!r}")


def clean_staging(versions_dir: Path) -> list[str]:
    """Remove leftover staging directories of interrupted updates."""
    removed: list[str] = []
    if not versions_dir.is_dir():
        return removed
    for entry in versions_dir.iterdir():
        if entry.name.startswith(STAGING_PREFIX):
            remove_tree(entry)
            removed.append(entry.name)
    return removed


def ensure_free_space(path: Path, needed: int) -> None:
    """Refuse to start when the filesystem holding `path` has less than `needed` bytes free."""
    free = shutil.disk_usage(path).free
    if free < needed:
        raise NoSpaceError(
            f"only {free // (1 << 20)} MiB free under {path}, need {needed // (1 << 20)} MiB",
            hint="free disk space (3× the artifact size is required) and retry",
        )
