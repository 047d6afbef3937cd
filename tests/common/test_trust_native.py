"""Native signature checks with real artifacts: rpmbuild + rpmsign, makensis + osslsigncode.

Fixtures make throw-away keys (gpg RSA, self-signed code-signing certificates) and sign real
packages with them; nothing from pkgbuild is used.
"""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from common.errors import ToolError, VerificationError
from common.native_sig import (
    rpm_signature_problem,
    signer_serials,
    verify_authenticode,
    verify_native,
    verify_rpm_signature,
)
from pkgbuild.keys import code_signing, new_certificate

SPEC = """\
Name: tiny
Version: 1.0
Release: 1
Summary: tiny test package
License: MIT
BuildArch: noarch
%description
tiny
%install
mkdir -p %{buildroot}/opt/tiny
echo hi > %{buildroot}/opt/tiny/hi
%files
/opt/tiny/hi
"""
NSI = 'OutFile "tiny.exe"\nSection\nSectionEnd\n'


def run(args: list[str], **kwargs: object) -> None:
    """Run a fixture-building tool; show its output if it fails."""
    done = subprocess.run(args, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    assert done.returncode == 0, f"{args[0]} failed: {done.stdout}\n{done.stderr}"


def make_gpg_key(home: Path) -> tuple[str, Path]:
    """A passphrase-less RSA signing key in its own GNUPGHOME; its fingerprint and armored export."""
    home.mkdir(mode=0o700)
    gpg = [
        "gpg",
        "--homedir",
        str(home),
        "--batch",
        "--pinentry-mode",
        "loopback",
        "--passphrase",
        "",
    ]
    run(
        [
            *gpg,
            "--quick-gen-key",
            f"Throwaway <{home.name}@test.invalid>",
            "rsa2048",
            "sign",
            "never",
        ]
    )
    listing = subprocess.run(
        [*gpg, "--list-keys", "--with-colons"], capture_output=True, text=True, check=True
    ).stdout
    fingerprint = next(
        line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr")
    )
    exported = home.parent / f"{home.name}.asc"
    exported.write_bytes(
        subprocess.run(
            [*gpg, "--armor", "--export", fingerprint], capture_output=True, check=True
        ).stdout
    )
    return fingerprint, exported


def rpmsign(rpm: Path, home: Path, fingerprint: str) -> None:
    """Sign an rpm in place with the key in `home`."""
    run(
        [
            "rpmsign",
            "--define", f"_gpg_path {home}",
            "--define", f"_gpg_name {fingerprint}",
            "--define", "__gpg /usr/bin/gpg",
            "--addsign", str(rpm),
        ]
    )  # fmt: skip


@pytest.fixture(scope="module")
def rpms(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """good/other/unsigned/corrupt rpms and the good and other public keys."""
    base = tmp_path_factory.mktemp("rpm")
    good_fpr, good_key = make_gpg_key(base / "good")
    other_fpr, other_key = make_gpg_key(base / "other")
    (base / "SPECS").mkdir()
    (base / "SPECS/tiny.spec").write_text(SPEC)
    run(["rpmbuild", "--define", f"_topdir {base}", "-bb", str(base / "SPECS/tiny.spec")])
    built = base / "RPMS/noarch/tiny-1.0-1.noarch.rpm"
    files = {name: base / f"{name}.rpm" for name in ("good", "other", "unsigned", "corrupt")}
    for path in files.values():
        shutil.copy(built, path)
    rpmsign(files["good"], base / "good", good_fpr)
    rpmsign(files["corrupt"], base / "good", good_fpr)
    rpmsign(files["other"], base / "other", other_fpr)
    data = bytearray(files["corrupt"].read_bytes())
    data[-20] ^= 0xFF  # inside the compressed payload
    files["corrupt"].write_bytes(bytes(data))
    keys = base / "keys"
    keys.mkdir()
    shutil.copy(good_key, keys / "RPM-GPG-KEY-assist")
    yield {**files, "key": good_key, "other_key": other_key, "keys": keys}
    for home in ("good", "other"):
        subprocess.run(
            ["gpgconf", "--homedir", str(base / home), "--kill", "gpg-agent"], check=False
        )


def test_rpm_signed_by_the_pinned_key_passes(rpms: dict[str, Path]) -> None:
    verify_rpm_signature(rpms["good"], rpms["key"])
    verify_native(rpms["good"], "rpm", rpms["keys"])


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("other", "NOKEY"),
        ("unsigned", "not signed"),
        ("corrupt", "BAD"),
    ],
)
def test_rpm_without_a_good_pinned_signature_fails(
    rpms: dict[str, Path], name: str, reason: str
) -> None:
    with pytest.raises(VerificationError) as info:
        verify_rpm_signature(rpms[name], rpms["key"])
    assert reason in str(info.value) and info.value.hint
    with pytest.raises(VerificationError):
        verify_native(rpms[name], "rpm", rpms["keys"])


def test_rpm_signed_by_another_key_fails_even_if_that_key_is_given(rpms: dict[str, Path]) -> None:
    verify_rpm_signature(rpms["other"], rpms["other_key"])  # sanity: it is properly signed
    with pytest.raises(VerificationError):
        verify_rpm_signature(rpms["good"], rpms["other_key"])


def test_rpm_check_with_a_damaged_key_file_fails(rpms: dict[str, Path], tmp_path: Path) -> None:
    bad_key = tmp_path / "key.asc"
    bad_key.write_text("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nnot a key\n")
    with pytest.raises(VerificationError):
        verify_rpm_signature(rpms["good"], bad_key)
    with pytest.raises(VerificationError):
        verify_rpm_signature(tmp_path / "missing.rpm", rpms["key"])


def test_rpm_signature_output_parsing() -> None:
    signed = (
        "x.rpm:\n    Header V4 RSA/SHA512 Signature, key ID c20fc7f9: OK\n"
        "    Header SHA256 digest: OK\n    Payload SHA256 digest: OK\n    MD5 digest: OK\n"
    )
    assert rpm_signature_problem(0, signed, {"c20fc7f9"}) is None
    assert "not the pinned key" in (rpm_signature_problem(0, signed, {"deadbeef"}) or "")
    unsigned = "x.rpm:\n    Header SHA256 digest: OK\n    Payload SHA256 digest: OK\n"
    assert rpm_signature_problem(0, unsigned, {"c20fc7f9"}) == "the package is not signed"
    nokey = signed.replace(": OK\n", ": NOKEY\n", 1)
    assert "NOKEY" in (rpm_signature_problem(1, nokey, {"c20fc7f9"}) or "")


def test_missing_tool_is_a_tool_error(
    rpms: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty PATH: the tools are really absent
    with pytest.raises(ToolError):
        verify_rpm_signature(rpms["good"], rpms["key"])
    with pytest.raises(ToolError):
        verify_authenticode(rpms["good"], rpms["key"])


def make_cert(
    name: str, issuer: tuple[x509.Certificate, rsa.RSAPrivateKey] | None = None, ca: bool = False
) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """A code-signing certificate: self-signed, or issued by `issuer`."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, signing_key = (issuer[0].subject, issuer[1]) if issuer else (subject, key)
    now = datetime.datetime.now(datetime.timezone.utc)
    valid = (now - datetime.timedelta(days=1), now + datetime.timedelta(days=30))
    builder = new_certificate(subject, issuer_name, key.public_key(), valid)
    cert = code_signing(builder, ca).sign(signing_key, hashes.SHA256())
    return cert, key


def write_cert(base: Path, name: str, cert: x509.Certificate, key: rsa.RSAPrivateKey) -> None:
    """name.crt (PEM) and name.key (PKCS#8 PEM) under base."""
    (base / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (base / f"{name}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def sign_exe(base: Path, source: Path, cert: str, out: str) -> Path:
    """osslsigncode sign `source` with base/cert.{crt,key} into base/out."""
    run(
        [
            "osslsigncode", "sign", "-certs", str(base / f"{cert}.crt"),
            "-key", str(base / f"{cert}.key"), "-n", "tiny", "-in", str(source),
            "-out", str(base / out),
        ]
    )  # fmt: skip
    return base / out


@pytest.fixture(scope="module")
def exes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """good/other/unsigned/flipped/leaf-of-pinned installers and the pinned certificates."""
    base = tmp_path_factory.mktemp("exe")
    (base / "tiny.nsi").write_text(NSI)
    run(["makensis", "-V1", "tiny.nsi"], cwd=base)
    unsigned = base / "tiny.exe"
    pinned = make_cert("Assist Test Publisher")
    write_cert(base, "pinned", *pinned)
    write_cert(base, "other", *make_cert("Someone Else"))
    authority = make_cert("Assist Test CA", ca=True)
    write_cert(base, "ca", *authority)
    write_cert(base, "leaf", *make_cert("Issued By The Pinned CA", issuer=authority))
    good = sign_exe(base, unsigned, "pinned", "good.exe")
    flipped = base / "flipped.exe"
    data = bytearray(good.read_bytes())
    data[4096] ^= 0x01  # inside the signed image
    flipped.write_bytes(bytes(data))
    keys = base / "keys"
    keys.mkdir()
    shutil.copy(base / "pinned.crt", keys / "authenticode.crt")
    return {
        "good": good,
        "other": sign_exe(base, unsigned, "other", "other.exe"),
        "leaf": sign_exe(base, unsigned, "leaf", "leaf.exe"),
        "unsigned": unsigned,
        "flipped": flipped,
        "cert": base / "pinned.crt",
        "other_cert": base / "other.crt",
        "ca_cert": base / "ca.crt",
        "keys": keys,
    }


def test_exe_signed_by_the_pinned_certificate_passes(exes: dict[str, Path]) -> None:
    verify_authenticode(exes["good"], exes["cert"])
    verify_native(exes["good"], "exe", exes["keys"])


@pytest.mark.parametrize("name", ["other", "unsigned", "flipped"])
def test_exe_without_the_pinned_signature_fails(exes: dict[str, Path], name: str) -> None:
    with pytest.raises(VerificationError) as info:
        verify_authenticode(exes[name], exes["cert"])
    assert info.value.hint
    with pytest.raises(VerificationError):
        verify_native(exes[name], "exe", exes["keys"])


def test_exe_signed_by_a_certificate_the_pin_issued_still_fails(exes: dict[str, Path]) -> None:
    """osslsigncode accepts the chain to the CA file; the signer pin must still refuse it."""
    done = subprocess.run(
        ["osslsigncode", "verify", "-in", str(exes["leaf"]), "-CAfile", str(exes["ca_cert"])],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr  # the chain itself verifies
    with pytest.raises(VerificationError, match="Leaf hash match: failed|pinned"):
        verify_authenticode(exes["leaf"], exes["ca_cert"])


def test_damaged_pinned_certificate_fails(exes: dict[str, Path], tmp_path: Path) -> None:
    broken = tmp_path / "broken.crt"
    broken.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(VerificationError):
        verify_authenticode(exes["good"], broken)


def test_signer_serials_are_read_from_the_signer_section() -> None:
    output = (
        "Signer's certificate:\n\t------------------\n\tSigner #0:\n\t\tSubject: /CN=a\n"
        "\t\tSerial : 0A1B\n\nAuthenticated attributes:\n\t\tSerial : FFFF\n"
    )
    assert signer_serials(output) == {0x0A1B}


def test_formats_without_native_signatures_rely_on_tuf(tmp_path: Path) -> None:
    artifact = tmp_path / "x.deb"
    artifact.write_bytes(b"anything")
    verify_native(artifact, "deb", tmp_path)
    verify_native(artifact, "tar.gz", tmp_path)
    with pytest.raises(VerificationError):
        verify_native(artifact, "zip", tmp_path)
    assert os.listdir(tmp_path) == ["x.deb"]
