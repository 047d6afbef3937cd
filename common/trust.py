"""Trust: the TUF client (python-tuf's ngclient behind our Fetcher) and native signature checks.

    repo = TrustedRepository(fetcher, prefix / "state/tuf", trust_root=payload / "share/root.json")
    repo.refresh()
    target = repo.find("aliyun-assist", os="linux", arch="x86_64", format="deb")
    artifact = repo.download(target, cache_dir)
    verify_native(artifact, target.format, keys_dir)

Every byte used is covered by signed TUF metadata (length + sha256 of each artifact); the native
checks (rpm header signature, Authenticode pinned to the publisher's certificate) come on top.
Every failure is a VerificationError with a hint; nothing here trusts a location.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from common.atomic import atomic_symlink, atomic_write_bytes
from common.errors import (
    AssistError,
    ConfigError,
    DownloadError,
    ExpiredMetadataError,
    LocalStateError,
    NotFoundError,
    ToolError,
    VerificationError,
)
from common.fetch import EndlessDataError, Fetcher
from common.hashing import PieceGate, valid_pieces
from common.imports import optional_sdks_hidden
from common.version import version_sort_key

with optional_sdks_hidden():  # tuf's signer registry would load unused cloud SDKs on every start
    from tuf.api import exceptions as tuf_errors
    from tuf.api.metadata import TargetFile
    from tuf.ngclient import FetcherInterface, Updater, UpdaterConfig

if TYPE_CHECKING:
    from cryptography import x509

log = logging.getLogger(__name__)

EXPIRED_HINT = (
    "the mirror's metadata expired: sync the mirror (assist-mirror sync) or use another mirror"
)
REPOSITORY_HINT = (
    "the repository's signed metadata failed verification: the mirror may be tampered with or "
    "half-synced; sync it (assist-mirror sync) or use another mirror"
)
RPM_KEY = "RPM-GPG-KEY-assist"
AUTHENTICODE_CERT = "authenticode.crt"
_TOOL_TIMEOUT = 120.0  # seconds for rpmkeys / osslsigncode
# rpm <= 4.19: "Header V4 RSA/SHA256 Signature, key ID 1a2b3c4d: OK"; newer ones may print a
# fingerprint instead of the short id: both end with the key's last 8 hex digits.
_RPM_SIGNATURE = re.compile(r"[Ss]ignature, key (?:ID|fingerprint):? ([0-9a-fA-F]+): OK$")


@dataclass(frozen=True)
class TargetInfo:
    """One artifact as the signed targets metadata describes it."""

    path: str  # target path: <package>/<version>/<filename>
    length: int  # bytes
    sha256: str  # hex
    package: str
    version: str
    os: str
    arch: str
    format: str
    channels: tuple[str, ...]

    @property
    def filename(self) -> str:
        return self.path.rsplit("/", 1)[-1]


class _TufFetcher(FetcherInterface):
    """python-tuf's transport seam, served by our Fetcher (streaming, capped, failing over)."""

    def __init__(self, fetcher: Fetcher) -> None:
        self._fetcher = fetcher
        self._base = fetcher.mirrors[0]

    def _relative(self, url: str) -> str:
        """The path of `url` below the first mirror, so every mirror can be asked for it."""
        if not url.startswith(self._base):
            raise tuf_errors.DownloadError(f"{url} is not below the mirror {self._base}")
        return url[len(self._base) :]

    def _fetch(self, url: str) -> Iterator[bytes]:
        return translate_stream(self._fetcher.stream(self._relative(url)))

    def download_bytes(self, url: str, max_length: int) -> bytes:
        """Fetch at most max_length bytes (refused beyond, without reading them)."""
        with translate_errors():
            return self._fetcher.fetch_bytes(self._relative(url), max_length)

    @contextlib.contextmanager
    def download_file(self, url: str, max_length: int) -> Iterator[IO[bytes]]:
        """Like download_bytes, into a temporary file."""
        with tempfile.TemporaryFile() as handle:
            with translate_errors():
                for chunk in self._fetcher.stream(self._relative(url), max_length):
                    handle.write(chunk)
            handle.seek(0)
            yield handle


def translate_stream(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Re-raise our transport errors as python-tuf's while streaming."""
    with translate_errors():
        yield from chunks


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Our fetch errors -> tuf's (a 404 everywhere must read as DownloadHTTPError 404)."""
    try:
        yield
    except NotFoundError as exc:
        raise tuf_errors.DownloadHTTPError(str(exc), 404) from exc
    except EndlessDataError as exc:
        raise tuf_errors.DownloadLengthMismatchError(str(exc)) from exc
    except (DownloadError, VerificationError) as exc:
        raise tuf_errors.DownloadError(str(exc)) from exc


class TrustedRepository:
    """A release repository read through TUF: refresh, list, find and download targets."""

    def __init__(
        self,
        fetcher: Fetcher,
        metadata_dir: Path,
        *,
        trust_root: Path | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        self.fetcher = fetcher
        self.metadata_dir = Path(metadata_dir)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._bootstrap = load_bootstrap(self.metadata_dir, trust_root)
        self._updater: Updater | None = None

    def refresh(self) -> None:
        """Fetch and verify root -> timestamp -> snapshot -> targets (a fresh TUF session).

        python-tuf persists each role as soon as it verifies (a new timestamp and snapshot stay
        on disk even when the targets metadata they name then fails, e.g. mix-and-match). We
        run it on a copy of the metadata directory and copy the result back only when the whole
        refresh succeeded, so a failed refresh leaves the trusted metadata exactly as it was.
        """
        self._updater = None
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        stage = Path(
            tempfile.mkdtemp(
                prefix=f".{self.metadata_dir.name}-refresh-", dir=self.metadata_dir.parent
            )
        )
        try:
            shutil.copytree(self.metadata_dir, stage, symlinks=True, dirs_exist_ok=True)
            with map_tuf_errors():
                updater = self._new_updater(stage)
                updater.refresh()
            with map_tuf_errors():
                commit_metadata(stage, self.metadata_dir)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        self._bootstrap = None  # the trusted root (possibly rotated) is on disk now
        self._updater = updater
        log.info("TUF metadata refreshed from %s", self.fetcher.mirrors[0])

    def targets(self) -> list[TargetInfo]:
        """All artifacts of the top-level targets role, by target path."""
        files = self._trusted_targets()
        infos = (target_info(path, files[path]) for path in sorted(files))
        return [info for info in infos if info is not None]

    def find(
        self,
        package: str,
        *,
        version: str | None = None,
        channel: str = "stable",
        os: str | None = None,
        arch: str | None = None,
        format: str | None = None,  # noqa: A002 - the TUF custom field's name
    ) -> TargetInfo:
        """The newest matching target (ties broken by target path)."""
        found = [
            t
            for t in self._matching(package, channel, os, arch, format)
            if version is None or t.version == version
        ]
        if not found:
            raise NotFoundError(
                f"no {describe_query(package, version, channel, os, arch, format)} in the "
                f"repository; available: {self._summary(package)}",
                hint="check the name, version, channel and platform (assist-install list)",
            )
        newest = max(version_sort_key(t.version) for t in found)
        return min(
            (t for t in found if version_sort_key(t.version) == newest), key=lambda t: t.path
        )

    def versions(
        self,
        package: str,
        *,
        channel: str = "stable",
        os: str | None = None,
        arch: str | None = None,
        format: str | None = None,  # noqa: A002 - the TUF custom field's name
    ) -> list[str]:
        """Distinct versions of a package, oldest first."""
        found = {t.version for t in self._matching(package, channel, os, arch, format)}
        return sorted(found, key=version_sort_key)

    def download(
        self, target: TargetInfo, dest_dir: Path, deliver: Callable[[bytes], None] | None = None
    ) -> Path:
        """Download (or reuse) a target into dest_dir, verified against the signed metadata.

        `deliver`, when the metadata signs the target's pieces, receives the file's bytes in
        order as each piece is checked, while the rest downloads (nothing for a reused file).
        """
        updater = self._refreshed()
        trusted = self._trusted_targets().get(target.path)
        if trusted is None:
            raise NotFoundError(f"{target.path} is not in the signed targets metadata")
        dest = Path(dest_dir) / target.filename
        if updater.find_cached_target(trusted, str(dest)):
            log.info("%s already downloaded and verified", dest)
            return dest
        sha256 = trusted.hashes.get("sha256")
        if sha256 is None:
            raise VerificationError(f"{target.path} has no sha256 in the signed metadata")
        pieces = valid_pieces(trusted.custom, trusted.length) if deliver is not None else None
        self.fetcher.download(
            self._target_url_path(trusted),
            dest,
            expected_length=trusted.length,
            expected_sha256=sha256,
            gate=PieceGate(*pieces, trusted.length, deliver) if pieces and deliver else None,
            durable=False,  # a cached target is verified again before any use (above)
        )
        if len(trusted.hashes) > 1:
            self._verify_other_hashes(trusted, dest)
        return dest

    def _verify_other_hashes(self, trusted: TargetFile, dest: Path) -> None:
        """Check every hash the metadata lists, not only the sha256 checked while streaming."""
        try:
            with dest.open("rb") as handle:
                trusted.verify_length_and_hashes(handle)
        except tuf_errors.LengthOrHashMismatchError as exc:
            dest.unlink()
            raise VerificationError(f"{trusted.path}: {exc}", hint=REPOSITORY_HINT) from exc

    def _target_url_path(self, trusted: TargetFile) -> str:
        """targets/<dir>/<hash>.<name> under consistent snapshots (python-tuf's rule), else plain."""
        updater = self._refreshed()
        path = trusted.path
        if updater._trusted_set.root.consistent_snapshot:
            dirname, sep, basename = path.rpartition("/")
            path = f"{dirname}{sep}{next(iter(trusted.hashes.values()))}.{basename}"
        return "targets/" + path

    def _new_updater(self, metadata_dir: Path) -> Updater:
        """A python-tuf Updater over our fetcher; its root comes from disk or the trust root."""
        base = self.fetcher.mirrors[0]
        return Updater(
            str(metadata_dir),
            base + "metadata/",
            str(self.cache_dir) if self.cache_dir is not None else None,
            base + "targets/",
            fetcher=_TufFetcher(self.fetcher),
            config=UpdaterConfig(),
            bootstrap=self._bootstrap,
        )

    def _refreshed(self) -> Updater:
        """The updater of the last refresh, refreshing first if there was none."""
        if self._updater is None:
            self.refresh()
        assert self._updater is not None
        return self._updater

    def _trusted_targets(self) -> dict[str, TargetFile]:
        """The verified top-level targets (ngclient has no public listing, so its trusted set)."""
        return dict(self._refreshed()._trusted_set.targets.targets)

    def _matching(
        self, package: str, channel: str | None, os: str | None, arch: str | None, fmt: str | None
    ) -> list[TargetInfo]:
        """Targets of `package` passing the given filters (None = any)."""
        return [
            t
            for t in self.targets()
            if t.package == package
            and (channel is None or channel in t.channels)
            and (os is None or t.os == os)
            and (arch is None or t.arch == arch)
            and (fmt is None or t.format == fmt)
        ]

    def _summary(self, package: str) -> str:
        """A short list of what the repository has for a package, for error messages."""
        items = [
            f"{t.version} {t.os}/{t.arch} {t.format} [{','.join(t.channels)}]"
            for t in self.targets()
            if t.package == package
        ]
        if not items:
            return "nothing for this package"
        return "; ".join(items[:12]) + (f"; … {len(items) - 12} more" if len(items) > 12 else "")


def commit_metadata(stage: Path, metadata_dir: Path) -> None:
    """Copy what a refresh changed into the trusted directory, atomically per file.

    Root history first and timestamp last, so an interruption leaves metadata that python-tuf
    either accepts or refetches.
    """
    order = {"root.json": 1, "targets.json": 2, "snapshot.json": 3, "timestamp.json": 4}
    paths = sorted(stage.rglob("*"), key=lambda p: (order.get(p.name, 0), str(p)))
    for source in paths:
        dest = metadata_dir / source.relative_to(stage)
        if source.is_symlink():
            link = os.readlink(source)
            if not (dest.is_symlink() and os.readlink(dest) == link):
                atomic_symlink(link, dest)
        elif source.is_dir():
            dest.mkdir(exist_ok=True)
        elif source.is_file():
            data = source.read_bytes()
            if dest.is_symlink() or not dest.is_file() or dest.read_bytes() != data:
                atomic_write_bytes(dest, data, mode=0o644)


def load_bootstrap(metadata_dir: Path, trust_root: Path | None) -> bytes | None:
    """None when metadata_dir holds a trusted root already; else the trust root's bytes."""
    if (metadata_dir / "root.json").exists():
        return None
    if trust_root is None or not Path(trust_root).is_file():
        raise ConfigError(
            f"no trusted root: {metadata_dir / 'root.json'} does not exist"
            + (f" and {trust_root} is missing" if trust_root is not None else ""),
            hint="reinstall the agent (its payload carries share/root.json) or pass the "
            "repository's root.json as the trust root",
        )
    return Path(trust_root).read_bytes()


@contextlib.contextmanager
def map_tuf_errors() -> Iterator[None]:
    """python-tuf's errors -> ours, keeping our own transport errors when they are the cause."""
    try:
        yield
    except tuf_errors.ExpiredMetadataError as exc:
        raise ExpiredMetadataError(f"TUF metadata expired: {exc}", hint=EXPIRED_HINT) from exc
    except tuf_errors.RepositoryError as exc:
        raise VerificationError(
            f"TUF verification failed ({type(exc).__name__}): {exc}", hint=REPOSITORY_HINT
        ) from exc
    except tuf_errors.DownloadError as exc:
        cause = exc.__cause__
        if isinstance(cause, AssistError):
            raise cause from exc
        raise DownloadError(f"TUF metadata download failed: {exc}") from exc
    except OSError as exc:
        raise LocalStateError(
            f"cannot use the TUF metadata directory: {exc}",
            hint="check permissions and free space of the state directory",
        ) from exc


def target_info(path: str, target: TargetFile) -> TargetInfo | None:
    """Our view of a TUF target; None (logged) for targets without our custom fields."""
    custom: Any = target.custom or {}
    sha256 = target.hashes.get("sha256")
    if sha256 is None:
        log.debug("target %s has no sha256; ignored", path)
        return None
    try:
        return TargetInfo(
            path=path,
            length=target.length,
            sha256=str(sha256),
            package=str(custom["package"]),
            version=str(custom["version"]),
            os=str(custom["os"]),
            arch=str(custom["arch"]),
            format=str(custom["format"]),
            channels=tuple(str(c) for c in custom.get("channels", ())),
        )
    except (KeyError, TypeError):
        log.debug("target %s has no package custom fields; ignored", path)
        return None


def describe_query(
    package: str,
    version: str | None,
    channel: str | None,
    os: str | None,
    arch: str | None,
    fmt: str | None,
) -> str:
    """`aliyun-assist 2.2.5 for linux/x86_64 (deb) in channel stable`, leaving out what is None."""
    text = package + (f" {version}" if version else "")
    if os or arch:
        text += f" for {os or '*'}/{arch or '*'}"
    if fmt:
        text += f" ({fmt})"
    return text + (f" in channel {channel}" if channel else "")


def require_tool(name: str) -> str:
    """The path of an external tool, or ToolError naming the package to install."""
    path = shutil.which(name)
    if path is None:
        package = {"rpmkeys": "rpm", "osslsigncode": "osslsigncode"}.get(name, name)
        raise ToolError(f"{name} is not installed", hint=f"install it (apt-get install {package})")
    return path


def run_tool(args: list[str]) -> subprocess.CompletedProcess[str]:
    """Run a verification tool, capturing its output (no shell, bounded time)."""
    try:
        return subprocess.run(
            args, capture_output=True, text=True, timeout=_TOOL_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ToolError(f"{Path(args[0]).name} failed to run: {exc}") from exc


def verify_rpm_signature(rpm: Path, key_file: Path) -> None:
    """Require a good header signature by exactly the pinned key (the header binds the payload)."""
    rpmkeys = require_tool("rpmkeys")
    if not Path(rpm).is_file() or not Path(key_file).is_file():
        raise VerificationError(f"cannot check {rpm}: it or the key {key_file} is missing")
    with tempfile.TemporaryDirectory(prefix="assist-rpmdb-") as dbpath:
        imported = run_tool([rpmkeys, "--dbpath", dbpath, "--import", str(key_file)])
        if imported.returncode != 0:
            raise VerificationError(
                f"cannot import the rpm signing key {key_file}: {imported.stderr.strip()}",
                hint="the pinned key file is damaged: reinstall the agent or its keys",
            )
        key_ids = imported_key_ids(dbpath)
        checked = run_tool([rpmkeys, "--dbpath", dbpath, "--checksig", "-v", str(rpm)])
    problem = rpm_signature_problem(checked.returncode, checked.stdout, key_ids)
    if problem:
        raise VerificationError(
            f"{Path(rpm).name}: rpm signature check failed: {problem}",
            hint="the package is not signed by the publisher's key: do not install it; "
            "download it again from another mirror",
        )


def imported_key_ids(dbpath: str) -> set[str]:
    """Short key ids (8 hex, lower case) of the keys in a throw-away rpmdb."""
    rpm = shutil.which("rpm")
    if rpm is None:
        return set()
    listed = run_tool([rpm, "--dbpath", dbpath, "-q", "gpg-pubkey", "--qf", "%{version}\\n"])
    return {line.strip().lower() for line in listed.stdout.splitlines() if line.strip()}


def rpm_signature_problem(returncode: int, output: str, key_ids: set[str]) -> str | None:
    """What is wrong with `rpmkeys --checksig -v` output, or None if signed by one of key_ids."""
    lines = [line.strip() for line in output.splitlines()[1:] if line.strip()]
    if returncode != 0:
        return "; ".join(line for line in lines if not line.endswith(": OK")) or "rpmkeys failed"
    bad = [line for line in lines if not line.endswith(": OK")]
    if bad:
        return "; ".join(bad)
    signers = {m.group(1).lower() for line in lines if (m := _RPM_SIGNATURE.search(line))}
    if not signers:
        return "the package is not signed"
    pinned = {key[-8:].lower() for key in key_ids}
    if not pinned:
        return "the pinned key could not be read back from the rpm database"
    if not any(s[-8:] in pinned for s in signers):
        return f"signed by key {', '.join(sorted(signers))}, not the pinned key"
    if not any(line.startswith("Payload SHA256 digest: OK") for line in lines):
        return "no payload digest in the signed header"
    return None


def verify_authenticode(exe: Path, cert_file: Path) -> None:
    """`osslsigncode verify` against the pinned certificate, and the signer must be exactly it."""
    from cryptography import x509  # only Windows artifacts need it: not on every start
    from cryptography.hazmat.primitives.serialization import Encoding

    tool = require_tool("osslsigncode")
    try:
        pinned = x509.load_pem_x509_certificate(Path(cert_file).read_bytes())
    except (OSError, ValueError) as exc:
        raise VerificationError(
            f"cannot read the pinned Authenticode certificate {cert_file}: {exc}",
            hint="the pinned certificate is damaged: reinstall the agent or its keys",
        ) from exc
    fingerprint = hashlib.sha256(pinned.public_bytes(Encoding.DER)).digest()
    args = [tool, "verify", "-in", str(exe), "-CAfile", str(cert_file)]
    args += ["-require-leaf-hash", f"sha256:{fingerprint.hex()}"]
    if osslsigncode_supports(tool, "-ignore-cdp"):
        args.append("-ignore-cdp")  # never fetch CRLs from the network: the signer is pinned
    verified = run_tool(args)
    output = verified.stdout + verified.stderr
    if verified.returncode != 0 or "Signature verification: ok" not in output:
        raise authenticode_error(exe, first_failure(output))
    serials = signer_serials(output)
    if not serials or serials != {pinned.serial_number}:
        raise authenticode_error(exe, "the signer is not the pinned certificate")
    signers = [c for c in embedded_certificates(tool, exe) if c.serial_number in serials]
    if not signers or any(
        hashlib.sha256(c.public_bytes(Encoding.DER)).digest() != fingerprint for c in signers
    ):
        raise authenticode_error(exe, "the signer certificate differs from the pinned one")


@functools.cache
def osslsigncode_supports(tool: str, option: str) -> bool:
    """Whether this osslsigncode knows `option` (older releases lack -ignore-cdp)."""
    shown = run_tool([tool, "--help"])
    return option in shown.stdout + shown.stderr


def authenticode_error(exe: Path, problem: str) -> VerificationError:
    """The one error for a bad Authenticode signature."""
    return VerificationError(
        f"{Path(exe).name}: Authenticode check failed: {problem}",
        hint="the installer is not signed by the publisher's certificate: do not run it; "
        "download it again from another mirror",
    )


def first_failure(output: str) -> str:
    """The most telling line of a failed osslsigncode run."""
    for needle in ("MISMATCH", "failed", "Failed", "No signature", "Error", "error"):
        for line in output.splitlines():
            if needle in line:
                return " ".join(line.split())
    return "not signed or not verifiable"


def signer_serials(output: str) -> set[int]:
    """Serial numbers listed under "Signer's certificate:" in `osslsigncode verify` output."""
    serials: set[int] = set()
    inside = False
    for line in output.splitlines():
        if line.startswith("Signer's certificate:"):
            inside = True
            continue
        if line and not line[0].isspace():
            inside = False
        match = re.match(r"\s+Serial\s*:\s*([0-9A-Fa-f]+)\s*$", line)
        if inside and match:
            serials.add(int(match.group(1), 16))
    return serials


def embedded_certificates(tool: str, exe: Path) -> list[x509.Certificate]:
    """The certificates inside the signature's PKCS#7 blob."""
    from cryptography.hazmat.primitives.serialization import pkcs7

    with tempfile.TemporaryDirectory(prefix="assist-authenticode-") as tmp:
        blob = Path(tmp) / "signature.der"
        extracted = run_tool([tool, "extract-signature", "-in", str(exe), "-out", str(blob)])
        if extracted.returncode != 0 or not blob.is_file():
            raise authenticode_error(exe, "cannot extract the signature")
        try:
            return list(pkcs7.load_der_pkcs7_certificates(blob.read_bytes()))
        except ValueError as exc:
            raise authenticode_error(exe, f"unreadable signature: {exc}") from exc


def verify_native(artifact: Path, fmt: str, keys_dir: Path) -> None:
    """The format's own signature check: rpm and exe have one, deb and tar.gz rely on TUF."""
    if fmt == "rpm":
        verify_rpm_signature(artifact, Path(keys_dir) / RPM_KEY)
    elif fmt == "exe":
        verify_authenticode(artifact, Path(keys_dir) / AUTHENTICODE_CERT)
    elif fmt not in ("deb", "tar.gz"):
        raise VerificationError(
            f"unknown artifact format {fmt!r}", hint="use one of deb, rpm, exe, tar.gz"
        )
