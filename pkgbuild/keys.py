"""Release keys: TUF role keys, the OpenPGP signing key and the Authenticode certificate.

`generate_keys` writes a KEYDIR (see the key directory contract):

    keys.json                       roles, thresholds, fingerprints
    tuf/<role>-<n>.pem              Ed25519 private keys (PKCS#8 PEM, 0600)
    tuf/<role>-<n>.pub.json         public keys in securesystemslib dict form plus "keyid"
    root.json                       version-1 TUF root signed by the root keys
    gpg/                            GNUPGHOME with one RSA 3072 signing key, no passphrase
    public/archive-keyring.gpg      binary public key export (apt signed-by=)
    public/RPM-GPG-KEY-assist       armored public key export (rpm/dnf)
    public/authenticode.crt         self-signed code-signing certificate (PEM)
    authenticode/key.pem            its private key (PKCS#8 PEM, 0600)

Everything else in pkgbuild reads keys through the loaders here.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from securesystemslib.signer import CryptoSigner, Key, Signer, SSlibKey
from tuf.api.metadata import Metadata, Root
from tuf.api.serialization.json import JSONSerializer

from common.atomic import atomic_write_bytes, atomic_write_json, fsync_dir, read_json
from common.errors import ConfigError, LocalStateError, ToolError, UsageError

log = logging.getLogger(__name__)

ROLES = ("root", "targets", "snapshot", "timestamp")
GPG_UID = "Aliyun Assist Release <release@assist.invalid>"
AUTHENTICODE_CN = "Aliyun Assist Release"
GPG_BATCH = ("--batch", "--pinentry-mode", "loopback", "--passphrase", "")
DEFAULT_ROOT_EXPIRY = datetime.timedelta(days=365)
CERT_LIFETIME = datetime.timedelta(days=5 * 365)
_PRIVATE = 0o600


# --- generation -------------------------------------------------------------------------------


def generate_keys(out: Path, thresholds: dict[str, int] | None = None) -> dict[str, Any]:
    """Create a fresh KEYDIR at `out` and return its keys.json content.

    Keys are made in a temporary sibling directory that is renamed into place at the end, so a
    failure never leaves a half-made KEYDIR behind.
    """
    out = Path(out)
    counts = _resolve_thresholds(thresholds)
    _refuse_existing(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.keygen-", dir=out.parent))
    try:
        content = _generate_into(work, counts)
        stop_gpg_agent(work)  # its sockets live in the temporary GNUPGHOME
        if out.exists():
            out.rmdir()  # empty (checked above); a non-empty one makes this fail loudly
        work.chmod(0o755)
        os.rename(work, out)
    except BaseException:
        stop_gpg_agent(work)
        shutil.rmtree(work, ignore_errors=True)
        raise
    fsync_dir(out.parent)
    log.info("generated release keys in %s (gpg %s)", out, content["gpg_fingerprint"])
    return content


def _generate_into(out: Path, counts: dict[str, int]) -> dict[str, Any]:
    """Write every key, keys.json and root.json into the (empty) directory `out`."""
    for sub in ("tuf", "public", "authenticode"):
        (out / sub).mkdir(exist_ok=True)
    (out / "authenticode").chmod(0o700)
    (out / "tuf").chmod(0o700)

    roles: dict[str, Any] = {}
    keyids: dict[str, str] = {}
    for role in ROLES:
        names = []
        for n in range(1, counts[role] + 1):
            name = f"{role}-{n}"
            keyids[name] = _write_tuf_key(out / "tuf", name)
            names.append(name)
        roles[role] = {"threshold": counts[role], "keys": names}

    fingerprint = _generate_gpg_key(out)
    cert_sha256 = _generate_authenticode(out)
    content: dict[str, Any] = {
        "roles": roles,
        "gpg_fingerprint": fingerprint,
        "authenticode_sha256": cert_sha256,
        "tuf_keyids": keyids,
    }
    atomic_write_json(out / "keys.json", content)
    write_root(out, DEFAULT_ROOT_EXPIRY)
    return content


def _resolve_thresholds(thresholds: dict[str, int] | None) -> dict[str, int]:
    """Fill in the default threshold of 1 for every role and validate the given ones."""
    counts = dict.fromkeys(ROLES, 1)
    for role, value in (thresholds or {}).items():
        if role not in ROLES:
            raise UsageError(f"unknown TUF role {role!r}", hint=f"roles are {', '.join(ROLES)}")
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 16:
            raise UsageError(f"threshold for {role} must be 1..16, got {value!r}")
        counts[role] = value
    return counts


def _refuse_existing(out: Path) -> None:
    """Never overwrite keys: losing a root key is not recoverable."""
    if not out.exists():
        return
    if not out.is_dir():
        raise UsageError(f"{out} exists and is not a directory", hint="choose another --out")
    markers = ["keys.json", "tuf", "gpg", "authenticode", "root.json"]
    if any((out / m).exists() for m in markers):
        raise LocalStateError(
            f"{out} already holds release keys; refusing to overwrite them",
            hint="choose a new --out directory, or move the old keys away first",
        )


def _write_tuf_key(directory: Path, name: str) -> str:
    """Generate one Ed25519 key pair as <name>.pem and <name>.pub.json; return its keyid."""
    private = ed25519.Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = SSlibKey.from_crypto(private.public_key())
    atomic_write_bytes(directory / f"{name}.pem", pem, mode=_PRIVATE)
    atomic_write_json(directory / f"{name}.pub.json", {**public.to_dict(), "keyid": public.keyid})
    return public.keyid


def _run_gpg(keydir: Path, args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
    """Run gpg in batch mode against KEYDIR/gpg; a failure becomes a ToolError."""
    env = gpg_env(keydir)
    cmd = ["gpg", "--homedir", env["GNUPGHOME"], *GPG_BATCH, *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, env=env, check=False, **kwargs)
    except FileNotFoundError as exc:
        raise ToolError("gpg is not installed", hint="install gnupg (make install)") from exc
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise ToolError(
            f"gpg {' '.join(args[:1])} failed: {err[-1] if err else proc.returncode}",
            hint="check the gpg/ directory of the key directory",
        )
    return proc


def _generate_gpg_key(keydir: Path) -> str:
    """Create the OpenPGP signing key and export its public half; return the fingerprint."""
    home = keydir / "gpg"
    home.mkdir(mode=0o700, exist_ok=True)
    home.chmod(0o700)
    _run_gpg(keydir, ["--quick-gen-key", GPG_UID, "rsa3072", "sign", "never"])
    fingerprint = _list_gpg_fingerprint(keydir)
    binary = _run_gpg(keydir, ["--export", fingerprint]).stdout
    armored = _run_gpg(keydir, ["--armor", "--export", fingerprint]).stdout
    atomic_write_bytes(keydir / "public" / "archive-keyring.gpg", binary)
    atomic_write_bytes(keydir / "public" / "RPM-GPG-KEY-assist", armored)
    return fingerprint


def _list_gpg_fingerprint(keydir: Path) -> str:
    """The fingerprint of the one secret key in KEYDIR/gpg."""
    out = _run_gpg(keydir, ["--with-colons", "--list-secret-keys"]).stdout.decode()
    lines = out.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("sec:"):
            for follow in lines[i + 1 :]:
                if follow.startswith("fpr:"):
                    return follow.split(":")[9]
    raise ToolError("no OpenPGP secret key found", hint="run keygen again into a new directory")


def new_certificate(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: Any,
    valid: tuple[datetime.datetime, datetime.datetime],
) -> x509.CertificateBuilder:
    """A certificate builder with subject, issuer, public key, a random serial and the validity
    window (not before, not after); extensions and the signature are the caller's."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
    )


def code_signing(builder: x509.CertificateBuilder, ca: bool) -> x509.CertificateBuilder:
    """The extensions of a code-signing certificate (Authenticode): basic constraints, key usage
    digital signature (and certificate signing for a CA), extended key usage code signing."""
    unused = "content_commitment key_encipherment data_encipherment key_agreement crl_sign"
    unused += " encipher_only decipher_only"
    usage = x509.KeyUsage(
        digital_signature=True, key_cert_sign=ca, **dict.fromkeys(unused.split(), False)
    )
    return (
        builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
    )


def _generate_authenticode(keydir: Path) -> str:
    """Create the self-signed code-signing certificate and key; return the cert's DER sha256."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, AUTHENTICODE_CN),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Aliyun Assist"),
        ]
    )
    now = datetime.datetime.now(datetime.timezone.utc)
    valid = (now - datetime.timedelta(minutes=5), now + CERT_LIFETIME)
    cert = (
        code_signing(new_certificate(name, name, key.public_key(), valid), ca=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    pem_key = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    atomic_write_bytes(keydir / "authenticode" / "key.pem", pem_key, mode=_PRIVATE)
    atomic_write_bytes(
        keydir / "public" / "authenticode.crt", cert.public_bytes(serialization.Encoding.PEM)
    )
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


# --- loading ----------------------------------------------------------------------------------


def load_keys_json(keydir: Path) -> dict[str, Any]:
    """Read KEYDIR/keys.json, with a clear error when KEYDIR is not a key directory."""
    path = Path(keydir) / "keys.json"
    missing = ConfigError(
        f"{keydir} is not a key directory (no keys.json)",
        hint="create one with `assist-pkgbuild keygen --out KEYDIR`",
    )
    data = read_json(path, missing=missing, unreadable_hint="regenerate the keys")
    if not isinstance(data, dict) or not isinstance(data.get("roles"), dict):
        raise ConfigError(f"{path} has no roles", hint="regenerate the keys")
    return data


def _role_key_names(keydir: Path, role: str) -> list[str]:
    """The key names (e.g. root-1) listed for `role` in keys.json."""
    roles = load_keys_json(keydir)["roles"]
    if role not in roles:
        raise UsageError(f"unknown TUF role {role!r}", hint=f"roles are {', '.join(ROLES)}")
    return list(roles[role]["keys"])


def _load_public_key(keydir: Path, name: str) -> SSlibKey:
    """Load tuf/<name>.pub.json."""
    path = Path(keydir) / "tuf" / f"{name}.pub.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read public key {path}: {exc}") from exc
    keyid = data.pop("keyid")
    return SSlibKey.from_dict(keyid, data)


def load_tuf_public_keys(keydir: Path, role: str) -> list[Key]:
    """The public keys of `role`, in keys.json order."""
    return [_load_public_key(keydir, name) for name in _role_key_names(keydir, role)]


def load_tuf_signers(keydir: Path, role: str) -> list[Signer]:
    """Signers for every private key of `role`."""
    signers: list[Signer] = []
    for name in _role_key_names(keydir, role):
        path = Path(keydir) / "tuf" / f"{name}.pem"
        try:
            private = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load private key {path}: {exc}") from exc
        signers.append(CryptoSigner(private, _load_public_key(keydir, name)))
    return signers


def role_thresholds(keydir: Path) -> dict[str, int]:
    """The signature threshold of every role."""
    roles = load_keys_json(keydir)["roles"]
    return {role: int(roles[role]["threshold"]) for role in ROLES if role in roles}


# sun_path holds 108 bytes; gpg-agent's longest socket name is S.gpg-agent.browser
_SOCKET_PATH_MAX = 104


def gnupg_home(keydir: Path) -> str:
    """The GNUPGHOME to hand gpg for KEYDIR/gpg.

    gpg-agent keeps its sockets in GNUPGHOME (unless /run/user/UID exists); under a deep KEYDIR
    a socket path overflows sun_path and every signing fails with "No agent running". gpg then
    gets a short alias instead: TMPDIR/assist-gnupg-UID/<hash> -> KEYDIR/gpg, in a directory only
    this user can write to.
    """
    home = Path(keydir).resolve() / "gpg"
    if len(os.fsencode(home / "S.gpg-agent.browser")) <= _SOCKET_PATH_MAX:
        return str(home)
    aliases = Path(tempfile.gettempdir()) / f"assist-gnupg-{os.getuid()}"
    aliases.mkdir(mode=0o700, exist_ok=True)
    info = aliases.lstat()
    if (
        not aliases.is_dir()
        or aliases.is_symlink()
        or info.st_uid != os.getuid()
        or info.st_mode & 0o077
    ):
        raise LocalStateError(
            f"{aliases} is not a private directory of this user",
            hint="remove it, or set TMPDIR to a directory of your own",
        )
    alias = aliases / hashlib.sha256(os.fsencode(home)).hexdigest()[:16]
    if not (alias.is_symlink() and os.readlink(alias) == str(home)):
        for stale in aliases.iterdir():  # links whose key directory is gone
            if stale.is_symlink() and not stale.exists():
                stale.unlink(missing_ok=True)
        tmp = aliases / f".{alias.name}.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(home)
        os.replace(tmp, alias)
    return str(alias)


def gpg_env(keydir: Path) -> dict[str, str]:
    """os.environ with GNUPGHOME pointing at KEYDIR/gpg (see gnupg_home)."""
    env = dict(os.environ)
    env["GNUPGHOME"] = gnupg_home(keydir)
    return env


def gpg_fingerprint(keydir: Path) -> str:
    """The 40-hex fingerprint of the OpenPGP signing key."""
    fingerprint = load_keys_json(keydir).get("gpg_fingerprint")
    if not fingerprint:
        raise ConfigError(f"{keydir}/keys.json has no gpg_fingerprint", hint="regenerate the keys")
    return str(fingerprint)


def stop_gpg_agent(keydir: Path) -> None:
    """Stop the gpg-agent started for KEYDIR/gpg (it restarts on the next gpg call)."""
    if not (Path(keydir) / "gpg").is_dir():
        return
    try:
        subprocess.run(
            ["gpgconf", "--homedir", gnupg_home(keydir), "--kill", "gpg-agent"],
            capture_output=True,
            check=False,
        )
    except OSError:
        log.debug("gpgconf unavailable; gpg-agent for %s not stopped", keydir)


# --- the trust anchor -------------------------------------------------------------------------


def build_root(keydir: Path, expires: datetime.timedelta) -> Metadata[Root]:
    """Version-1 root metadata listing every role's public keys and threshold, signed by root."""
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    root = Root(version=1, expires=now + expires, consistent_snapshot=True)
    thresholds = role_thresholds(keydir)
    for role in ROLES:
        for key in load_tuf_public_keys(keydir, role):
            root.add_key(key, role)
        root.roles[role].threshold = thresholds[role]
    metadata = Metadata(root)
    for signer in load_tuf_signers(keydir, "root"):
        metadata.sign(signer, append=True)
    return metadata


def write_root(keydir: Path, expires: datetime.timedelta) -> Path:
    """Write KEYDIR/root.json: the trust anchor every payload embeds."""
    if expires <= datetime.timedelta(0):
        raise UsageError(f"root expiry must be positive, got {expires}")
    metadata = build_root(keydir, expires)
    path = Path(keydir) / "root.json"
    atomic_write_bytes(path, metadata.to_bytes(JSONSerializer(compact=False)))
    return path
