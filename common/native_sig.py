"""Native signature checks on top of TUF: rpm header signatures and Authenticode.

    verify_native(artifact, target.format, keys_dir)

The rpm header signature must be by exactly the pinned release key (`rpmkeys --checksig`), an
`.exe` must carry an Authenticode signature by exactly the pinned publisher certificate
(`osslsigncode verify` off Windows). deb and tar.gz have no signature of their own: TUF covers
them (docs/SECURITY.md). Every failure is a VerificationError with a hint.
"""

from __future__ import annotations

import functools
import hashlib
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from common.errors import ToolError, VerificationError

if TYPE_CHECKING:
    from cryptography import x509

RPM_KEY = "RPM-GPG-KEY-assist"
AUTHENTICODE_CERT = "authenticode.crt"
_TOOL_TIMEOUT = 120.0  # seconds for rpmkeys / osslsigncode
# rpm <= 4.19: "Header V4 RSA/SHA256 Signature, key ID 1a2b3c4d: OK"; newer ones may print a
# fingerprint instead of the short id: both end with the key's last 8 hex digits.
_RPM_SIGNATURE = re.compile(r"[Ss]ignature, key (?:ID|fingerprint):? ([0-9a-fA-F]+): OK$")


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
