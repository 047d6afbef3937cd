"""A real TUF repository on disk for tests, in the spirit of python-tuf's RepositorySimulator.

    repo = TufRepo(tmp_path / "www")          # root v1 + targets/snapshot/timestamp v1, written
    repo.add_target("aliyun-assist", "2.2.5", b"...", fmt="deb")
    repo.publish()                            # targets, snapshot, timestamp: version + 1
    with StaticServer(repo.base) as server: ...

Metadata uses consistent snapshots (N.root.json, N.snapshot.json, N.targets.json, timestamp.json)
and targets live under targets/<dir>/<sha256>.<name>, as in docs/repo.md. Keys are Ed25519
(securesystemslib CryptoSigner). Tests tamper through `md`, `sign_bytes` and `write_role`.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone
from pathlib import Path

from securesystemslib.signer import CryptoSigner, Signer
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, TargetFile, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer

ROLES = ("root", "targets", "snapshot", "timestamp")
EXPIRY_DAYS = {"root": 365, "targets": 90, "snapshot": 30, "timestamp": 7}


def in_days(days: float) -> datetime:
    """A UTC expiry `days` from now, without microseconds (as TUF serialises it)."""
    return (datetime.now(timezone.utc) + timedelta(days=days)).replace(microsecond=0)


class TufRepo:
    """Signed TUF metadata and targets written under `base` (metadata/, targets/)."""

    def __init__(self, base: Path, thresholds: dict[str, int] | None = None) -> None:
        self.base = base
        self.metadata = base / "metadata"
        self.targets_dir = base / "targets"
        self.metadata.mkdir(parents=True, exist_ok=True)
        self.targets_dir.mkdir(parents=True, exist_ok=True)
        thresholds = thresholds or {}
        self.signers: dict[str, list[Signer]] = {
            role: [CryptoSigner.generate_ed25519() for _ in range(thresholds.get(role, 1))]
            for role in ROLES
        }
        root = Root(expires=in_days(EXPIRY_DAYS["root"]), consistent_snapshot=True)
        for role, signers in self.signers.items():
            for signer in signers:
                root.add_key(signer.public_key, role)
            root.roles[role].threshold = len(signers)
        self.md: dict[str, Metadata] = {
            "root": Metadata(root),
            "targets": Metadata(Targets(expires=in_days(EXPIRY_DAYS["targets"]))),
            "snapshot": Metadata(Snapshot(expires=in_days(EXPIRY_DAYS["snapshot"]))),
            "timestamp": Metadata(Timestamp(expires=in_days(EXPIRY_DAYS["timestamp"]))),
        }
        for role in ROLES:
            self.write_role(role)

    @property
    def root_file(self) -> Path:
        """Version 1 of root: the trust anchor clients start from."""
        return self.metadata / "1.root.json"

    def sign_bytes(self, role: str, signers: list[Signer] | None = None) -> bytes:
        """Role metadata signed by `signers` (default: the role's own keys)."""
        metadata = self.md[role]
        metadata.signatures.clear()
        for signer in self.signers[role] if signers is None else signers:
            metadata.sign(signer, append=True)
        return metadata.to_bytes(JSONSerializer(compact=False))

    def role_file(self, role: str, version: int | None = None) -> Path:
        """Where a role's metadata is published (consistent snapshots; timestamp unversioned)."""
        if role == "timestamp":
            return self.metadata / "timestamp.json"
        number = self.md[role].signed.version if version is None else version
        return self.metadata / f"{number}.{role}.json"

    def write_role(self, role: str, signers: list[Signer] | None = None) -> bytes:
        """Sign and publish one role as it stands; returns the bytes written."""
        data = self.sign_bytes(role, signers)
        self.role_file(role).write_bytes(data)
        if role == "root":
            (self.metadata / "root.json").write_bytes(data)
        return data

    def add_target(
        self,
        package: str,
        version: str,
        data: bytes,
        *,
        os: str = "linux",
        arch: str = "x86_64",
        fmt: str = "deb",
        channels: tuple[str, ...] = ("stable",),
        filename: str | None = None,
    ) -> str:
        """Store an artifact under its consistent-snapshot name and list it in targets."""
        name = filename or f"{package}_{version}_{arch}.{fmt}"
        path = f"{package}/{version}/{name}"
        digest = hashlib.sha256(data).hexdigest()
        stored = self.targets_dir / package / version / f"{digest}.{name}"
        stored.parent.mkdir(parents=True, exist_ok=True)
        stored.write_bytes(data)
        custom = {
            "package": package,
            "version": version,
            "os": os,
            "arch": arch,
            "format": fmt,
            "channels": sorted(channels),
        }
        target = TargetFile(len(data), {"sha256": digest}, path, {"custom": custom})
        self.md["targets"].signed.targets[path] = target
        return path

    def stored_target(self, path: str) -> Path:
        """The file a target path is served from."""
        target = self.md["targets"].signed.targets[path]
        directory, _, name = path.rpartition("/")
        return self.targets_dir / directory / f"{target.hashes['sha256']}.{name}"

    def publish(self, roles: tuple[str, ...] = ("targets", "snapshot", "timestamp")) -> None:
        """Bump, sign and publish the given roles, keeping snapshot and timestamp consistent."""
        if "targets" in roles:
            self.md["targets"].signed.version += 1
            self.write_role("targets")
        if "snapshot" in roles:
            targets_version = self.md["targets"].signed.version
            self.md["snapshot"].signed.meta["targets.json"] = MetaFile(version=targets_version)
            self.md["snapshot"].signed.version += 1
            self.write_role("snapshot")
        if "timestamp" in roles:
            snapshot_version = self.md["snapshot"].signed.version
            self.md["timestamp"].signed.snapshot_meta = MetaFile(version=snapshot_version)
            self.md["timestamp"].signed.version += 1
            self.write_role("timestamp")

    def rotate_root_keys(
        self, *, sign_with_old: bool = True, sign_with_new: bool = True
    ) -> list[Signer]:
        """Publish root N+1 with a fresh root key, signed by the old and/or the new key."""
        root: Root = self.md["root"].signed
        old = self.signers["root"]
        new: list[Signer] = [CryptoSigner.generate_ed25519()]
        for signer in old:
            root.revoke_key(signer.public_key.keyid, "root")
        for signer in new:
            root.add_key(signer.public_key, "root")
        root.version += 1
        signers = (old if sign_with_old else []) + (new if sign_with_new else [])
        self.write_role("root", signers)
        self.signers["root"] = new
        return new
