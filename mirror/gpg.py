"""OpenPGP checks for apt and yum indexes: gpgv against one pinned keyring, nothing else."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from common.errors import ToolError, VerificationError


def _gpgv(keyring: Path, args: list[str], what: str) -> bytes:
    """Run gpgv with only `keyring` trusted and return its stdout; raise on a bad signature."""
    gpgv = shutil.which("gpgv")
    if gpgv is None:
        raise ToolError("gpgv is not installed", hint="apt-get install gpgv")
    if not keyring.is_file():
        raise VerificationError(
            f"pinned keyring {keyring} is missing", hint="pass --keyring FILE (archive-keyring.gpg)"
        )
    with tempfile.TemporaryDirectory(prefix="assist-gpgv-") as home:
        proc = subprocess.run(
            [gpgv, "--homedir", home, "--keyring", str(keyring.resolve()), *args],
            capture_output=True,
            check=False,
        )
    if proc.returncode != 0:
        detail = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise VerificationError(
            f"bad OpenPGP signature on {what}: {detail[-1] if detail else 'gpgv failed'}",
            hint="the upstream index is not signed by the pinned key; check --upstream and --keyring",
        )
    return proc.stdout


def verify_clearsigned(data: bytes, keyring: Path, what: str) -> bytes:
    """The text a clearsigned document (InRelease) signs, after checking the signature."""
    with tempfile.TemporaryDirectory(prefix="assist-sig-") as tmp:
        signed = Path(tmp) / "signed"
        signed.write_bytes(data)
        return _gpgv(keyring, ["--output", "-", str(signed)], what)


def verify_detached(data: bytes, signature: bytes, keyring: Path, what: str) -> None:
    """Check a detached signature (Release.gpg, repomd.xml.asc) over `data`."""
    with tempfile.TemporaryDirectory(prefix="assist-sig-") as tmp:
        sig = Path(tmp) / "sig"
        body = Path(tmp) / "data"
        sig.write_bytes(signature)
        body.write_bytes(data)
        _gpgv(keyring, [str(sig), str(body)], what)


def keyring_fingerprints(keyring: Path) -> list[str]:
    """Primary key fingerprints in a keyring file (binary or armored)."""
    gpg = shutil.which("gpg")
    if gpg is None:
        raise ToolError("gpg is not installed", hint="apt-get install gnupg")
    with tempfile.TemporaryDirectory(prefix="assist-gpg-") as home:
        proc = subprocess.run(
            [gpg, "--homedir", home, "--batch", "--with-colons", "--show-keys", str(keyring)],
            capture_output=True,
            check=False,
        )
    if proc.returncode != 0:
        raise VerificationError(f"cannot read OpenPGP keys from {keyring}")
    fingerprints = []
    primary = False
    for line in proc.stdout.decode("utf-8", "replace").splitlines():
        fields = line.split(":")
        if fields[0] in ("pub", "sub"):
            primary = fields[0] == "pub"
        elif fields[0] == "fpr" and primary:
            fingerprints.append(fields[9])
            primary = False
    return fingerprints
