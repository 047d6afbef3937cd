"""Key rotation: new keys for one role, a new root version, and the affected metadata re-signed.

A new root N+1 lists the new keys and is signed by the old root keys (so clients holding root N
accept it) and, when root itself rotates, also by the new root keys (so N+1 is self-consistent).
The tuf client walks N.root.json upwards and follows the rotation.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from securesystemslib.signer import CryptoSigner, Signer, SSlibKey
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, Root

from common.atomic import atomic_write_bytes, atomic_write_json
from common.errors import ConfigError, UsageError
from pkgbuild.keys import load_keys_json, load_tuf_signers
from pkgbuild.repository.layout import ROLES, load_state, repo_lock
from pkgbuild.repository.metadata import (
    commit_chain,
    load_metadata,
    require_repository_keys,
    to_bytes,
    utcnow,
    write_root,
)
from pkgbuild.repository.public import key_targets

log = logging.getLogger(__name__)

_PRIVATE = 0o600


def rotate_key(repo: Path, keys: Path, role: str) -> None:
    """Replace every key of `role` in KEYDIR and publish the rotation (old keys kept as *.old)."""
    repo, keys = Path(repo), Path(keys)
    if role not in ROLES:
        raise UsageError(f"unknown TUF role {role!r}", hint=f"roles are {', '.join(ROLES)}")
    with repo_lock(repo):
        state = load_state(repo)
        current = load_metadata(repo)
        require_repository_keys(current.root.signed, keys)
        names = list(load_keys_json(keys)["roles"][role]["keys"])
        new_keys = {name: ed25519.Ed25519PrivateKey.generate() for name in names}
        stage_new_keys(keys, new_keys)
        new_signers: list[Signer] = [
            CryptoSigner(k, SSlibKey.from_crypto(k.public_key())) for k in new_keys.values()
        ]
        root = next_root(current.root, role, new_signers)
        root.signed.expires = utcnow() + state.expires["root"]
        sign_root(current.root, root, role, new_signers, load_tuf_signers(keys, "root"))
        write_root(repo, root)
        commit_new_keys(keys, names)
        if role != "root":
            targets = {**current.targets.signed.targets, **key_targets(repo, keys)}
            commit_chain(repo, keys, state, root, targets, current)
    log.info("rotated the %s keys; root is now version %d", role, root.signed.version)


def next_root(old: Metadata[Root], role: str, new_signers: Sequence[Signer]) -> Metadata[Root]:
    """A copy of root with the version bumped and `role`'s keys replaced by the new ones."""
    root: Metadata[Root] = Metadata.from_bytes(to_bytes(old))
    root.signed.version += 1
    for keyid in list(root.signed.roles[role].keyids):
        root.signed.revoke_key(keyid, role)
    for signer in new_signers:
        root.signed.add_key(signer.public_key, role)
    return root


def sign_root(
    old: Metadata[Root],
    new: Metadata[Root],
    role: str,
    new_signers: Sequence[Signer],
    old_root_signers: Sequence[Signer],
) -> None:
    """Sign the new root with the old root keys (and the new ones for a root rotation)."""
    new.signatures.clear()
    signers = list(old_root_signers) + (list(new_signers) if role == "root" else [])
    for signer in signers:
        new.sign(signer, append=True)
    try:
        old.verify_delegate("root", new)  # clients holding the old root accept it
        new.verify_delegate("root", new)  # and it vouches for itself
    except UnsignedMetadataError as exc:
        raise ConfigError(f"the new root does not meet its thresholds: {exc}") from exc


def _pem(private: ed25519.Ed25519PrivateKey) -> bytes:
    return private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def stage_new_keys(keys: Path, new_keys: dict[str, ed25519.Ed25519PrivateKey]) -> None:
    """Write the new key pairs as tuf/<name>.pem.new and .pub.json.new before anything uses them."""
    folder = keys / "tuf"
    for name, private in new_keys.items():
        public = SSlibKey.from_crypto(private.public_key())
        atomic_write_bytes(folder / f"{name}.pem.new", _pem(private), mode=_PRIVATE)
        atomic_write_json(
            folder / f"{name}.pub.json.new", {**public.to_dict(), "keyid": public.keyid}
        )


def commit_new_keys(keys: Path, names: list[str]) -> None:
    """Keep old keys as tuf/<name>.<keyid>.pem.old, move the new ones in, update keys.json."""
    folder = keys / "tuf"
    content = load_keys_json(keys)
    keyids = dict(content.get("tuf_keyids", {}))
    for name in names:
        old_pub = folder / f"{name}.pub.json"
        old_id = str(load_json_keyid(old_pub))[:16]
        os.replace(folder / f"{name}.pem", folder / f"{name}.{old_id}.pem.old")
        os.replace(old_pub, folder / f"{name}.{old_id}.pub.json.old")
        os.replace(folder / f"{name}.pem.new", folder / f"{name}.pem")
        os.replace(folder / f"{name}.pub.json.new", old_pub)
        keyids[name] = load_json_keyid(old_pub)
    content["tuf_keyids"] = keyids
    atomic_write_json(keys / "keys.json", content)


def load_json_keyid(path: Path) -> str:
    """The keyid stored in a tuf/<name>.pub.json file."""

    return str(json.loads(path.read_text(encoding="utf-8"))["keyid"])
