"""keygen: the key directory contract, and that every key really signs and verifies."""

from __future__ import annotations

import datetime
import json
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from securesystemslib.exceptions import UnverifiedSignatureError
from securesystemslib.signer import Signature
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, Root

from common.errors import LocalStateError, ToolError, UsageError
from pkgbuild.keys import (
    generate_keys,
    gpg_env,
    gpg_fingerprint,
    load_tuf_public_keys,
    load_tuf_signers,
    role_thresholds,
    write_root,
)


def test_keydir_layout_and_private_modes(keydir: Path) -> None:
    data = json.loads((keydir / "keys.json").read_text())
    assert set(data["roles"]) == {"root", "targets", "snapshot", "timestamp"}
    for role, info in data["roles"].items():
        assert info == {"threshold": 1, "keys": [f"{role}-1"]}
        pem = keydir / "tuf" / f"{role}-1.pem"
        assert stat.S_IMODE(pem.stat().st_mode) == 0o600
        pub = json.loads((keydir / "tuf" / f"{role}-1.pub.json").read_text())
        assert pub["keytype"] == "ed25519" and len(pub["keyid"]) == 64
    assert stat.S_IMODE((keydir / "authenticode" / "key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((keydir / "gpg").stat().st_mode) == 0o700
    assert len(data["gpg_fingerprint"]) == 40
    for name in ("archive-keyring.gpg", "RPM-GPG-KEY-assist", "authenticode.crt"):
        assert (keydir / "public" / name).stat().st_size > 0
    assert (
        (keydir / "public" / "RPM-GPG-KEY-assist")
        .read_text()
        .startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")
    )


def test_tuf_signers_sign_and_public_keys_verify(keydir: Path) -> None:
    for role in ("root", "targets", "snapshot", "timestamp"):
        (signer,) = load_tuf_signers(keydir, role)
        (key,) = load_tuf_public_keys(keydir, role)
        sig = signer.sign(b"payload")
        key.verify_signature(sig, b"payload")
        with pytest.raises(UnverifiedSignatureError):
            key.verify_signature(Signature(sig.keyid, sig.signature), b"tampered")
    assert role_thresholds(keydir) == dict.fromkeys(("root", "targets", "snapshot", "timestamp"), 1)


def test_root_json_verifies_with_tuf(keydir: Path) -> None:
    root_md = Metadata[Root].from_file(str(keydir / "root.json"))
    assert root_md.signed.version == 1
    assert root_md.signed.consistent_snapshot is True
    root_md.signed.verify_delegate(
        Root.type, root_md.signed_bytes, root_md.signatures
    )  # raises on a bad signature
    remaining = root_md.signed.expires - datetime.datetime.now(datetime.timezone.utc)
    assert datetime.timedelta(days=364) < remaining <= datetime.timedelta(days=365)
    (targets_key,) = load_tuf_public_keys(keydir, "targets")
    assert root_md.signed.roles["targets"].keyids == [targets_key.keyid]


def test_root_json_tampered_fails_verification(keydir: Path, tmp_path: Path) -> None:
    data = json.loads((keydir / "root.json").read_text())
    data["signed"]["roles"]["targets"]["threshold"] = 2
    tampered = Metadata[Root].from_bytes(json.dumps(data).encode())
    with pytest.raises(UnsignedMetadataError):
        tampered.signed.verify_delegate(Root.type, tampered.signed_bytes, tampered.signatures)


def test_thresholds_make_that_many_keys_and_root_needs_them(
    keydir_factory: Callable[..., Path],
) -> None:
    keydir = keydir_factory({"root": 2, "timestamp": 3})
    assert role_thresholds(keydir)["root"] == 2
    assert len(load_tuf_signers(keydir, "timestamp")) == 3
    root_md = Metadata[Root].from_file(str(keydir / "root.json"))
    assert len(root_md.signatures) == 2
    root_md.signed.verify_delegate(Root.type, root_md.signed_bytes, root_md.signatures)
    # one signature short of the threshold must fail
    root_md.signatures.popitem()
    with pytest.raises(UnsignedMetadataError, match="signed by 1/2"):
        root_md.signed.verify_delegate(Root.type, root_md.signed_bytes, root_md.signatures)
    # write_root with another expiry re-signs a valid root
    write_root(keydir, datetime.timedelta(days=10))
    again = Metadata[Root].from_file(str(keydir / "root.json"))
    again.signed.verify_delegate(Root.type, again.signed_bytes, again.signatures)
    left = again.signed.expires - datetime.datetime.now(datetime.timezone.utc)
    assert left <= datetime.timedelta(days=10)


def test_gpg_key_signs_and_exported_keyring_verifies(keydir: Path, tmp_path: Path) -> None:
    doc = tmp_path / "Release"
    doc.write_text("Origin: test\n")
    subprocess.run(
        ["gpg", "--batch", "--pinentry-mode", "loopback", "--passphrase", "",
         "--local-user", gpg_fingerprint(keydir), "--detach-sign", "-o", str(doc) + ".gpg", str(doc)],
        env=gpg_env(keydir), check=True, capture_output=True,
    )  # fmt: skip
    ok = subprocess.run(
        ["gpgv", "--keyring", str(keydir / "public/archive-keyring.gpg"), str(doc) + ".gpg", str(doc)],
        capture_output=True,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    doc.write_text("Origin: evil\n")
    bad = subprocess.run(
        ["gpgv", "--keyring", str(keydir / "public/archive-keyring.gpg"), str(doc) + ".gpg", str(doc)],
        capture_output=True,
    )  # fmt: skip
    assert bad.returncode != 0


def test_gpg_key_is_rsa3072_with_the_release_uid(keydir: Path) -> None:
    out = subprocess.run(
        ["gpg", "--with-colons", "--list-secret-keys"], env=gpg_env(keydir),
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    sec = next(line.split(":") for line in out.splitlines() if line.startswith("sec:"))
    assert sec[2] == "3072" and sec[3] == "1"  # RSA
    assert "Aliyun Assist Release <release@assist.invalid>" in out
    assert gpg_fingerprint(keydir) in out


def test_authenticode_cert_is_code_signing_and_matches_key(keydir: Path) -> None:
    cert = x509.load_pem_x509_certificate((keydir / "public/authenticode.crt").read_bytes())
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CODE_SIGNING in eku
    assert "CN=Aliyun Assist Release" in cert.subject.rfc4514_string()
    key = serialization.load_pem_private_key(
        (keydir / "authenticode/key.pem").read_bytes(), password=None
    )
    assert key.key_size == 3072  # type: ignore[union-attr]
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()  # type: ignore[union-attr]
    import hashlib

    der = cert.public_bytes(serialization.Encoding.DER)
    data = json.loads((keydir / "keys.json").read_text())
    assert data["authenticode_sha256"] == hashlib.sha256(der).hexdigest()


def test_keygen_refuses_to_overwrite_existing_keys(keydir: Path) -> None:
    before = (keydir / "keys.json").read_bytes()
    with pytest.raises(LocalStateError, match="refusing to overwrite"):
        generate_keys(keydir)
    assert (keydir / "keys.json").read_bytes() == before


def test_unknown_role_and_bad_threshold_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unknown TUF role"):
        generate_keys(tmp_path / "keys", {"admin": 1})
    with pytest.raises(UsageError, match="threshold"):
        generate_keys(tmp_path / "keys", {"root": 0})
    assert not (tmp_path / "keys").exists()


def test_failed_keygen_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # no gpg to be found
    with pytest.raises(ToolError, match="gpg is not installed"):
        generate_keys(tmp_path / "keys")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_keys_deep_in_the_filesystem_still_sign(tmp_path: Path) -> None:
    """gpg-agent's socket under a deep KEYDIR would overflow sun_path ("No agent running");
    gpg works through a short private alias instead, and nothing is left running."""
    from pkgbuild.keys import gnupg_home, stop_gpg_agent
    from pkgbuild.repository.tools import gpg_sign

    keys = tmp_path / ("deep-" * 12) / "keys"
    assert len(str(keys / "gpg/S.gpg-agent.browser")) > 108
    generate_keys(keys)
    try:
        signed = gpg_sign(keys, b"Origin: test\n", "clearsign")
        assert b"BEGIN PGP SIGNED MESSAGE" in signed
        alias = Path(gnupg_home(keys))
        assert alias.is_symlink() and alias.resolve() == (keys / "gpg").resolve()
        assert stat.S_IMODE(alias.parent.stat().st_mode) == 0o700
    finally:
        stop_gpg_agent(keys)
    deadline = time.monotonic() + 5  # gpgconf --kill returns as the agent shuts down
    while (
        str(alias)
        in subprocess.run(["pgrep", "-af", "gpg-agent"], capture_output=True, text=True).stdout
    ):
        assert time.monotonic() < deadline, "the gpg-agent was left running"
        time.sleep(0.1)
