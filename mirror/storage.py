"""Publishing backends: the local filesystem and S3-compatible object storage, same safe order.

A `Publication` lists relative paths in three groups; every backend publishes them in this order
so a client reading at any moment sees either the old or the new repository:

1. content   files named by content or never referenced before publish (targets, .debs, .rpms)
2. trees     apt `dists/` and yum `repodata/`: swapped whole (filesystem: a symlink to a fresh
             directory, replaced by rename; S3: indexes first, their signed entry points last)
3. metadata  in the given order; the caller puts timestamp.json last
Then `remove` paths are deleted (content no longer wanted).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from common.atomic import atomic_symlink, fsync_dir, sync_filesystem
from common.errors import ConfigError, DownloadError

log = logging.getLogger(__name__)

# Files that sign or enter an index tree: published after everything they point at.
_ENTRY_POINTS = ("Release.gpg", "Release", "InRelease", "repomd.xml.asc", "repomd.xml")


@dataclass
class Publication:
    """What one sync publishes, by path relative to the repository root."""

    content: list[str] = field(default_factory=list)
    trees: list[str] = field(default_factory=list)
    metadata: list[str] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)


class Storage(Protocol):
    """A place a mirrored repository is published to."""

    description: str

    def publish(self, publication: Publication, source: Path) -> None:
        """Publish the files found under `source` at the publication's paths, in safe order."""
        ...


def tree_files(directory: Path) -> list[str]:
    """Files under `directory` (following the tree's own symlink), entry points last."""
    files = [
        p.relative_to(directory).as_posix()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and not p.name.endswith(".part")
    ]

    def rank(rel: str) -> tuple[int, str]:
        name = rel.rsplit("/", 1)[-1]
        return (_ENTRY_POINTS.index(name) + 1 if name in _ENTRY_POINTS else 0, rel)

    return sorted(files, key=rank)


class FileOps:
    """The filesystem calls a publish makes, in one seam (tests record their order)."""

    def sync_filesystem(self, path: Path) -> None:
        """Make every staged byte on the filesystem of `path` durable (one syncfs)."""
        sync_filesystem(path)

    def replace(self, src: Path, dest: Path) -> None:
        os.replace(src, dest)

    def fsync_dir(self, path: Path) -> None:
        fsync_dir(path)

    def symlink(self, target: str, link: Path) -> None:
        """Point `link` at `target` atomically (its directory fsynced)."""
        atomic_symlink(target, link)


class FileStorage:
    """The mirror's own --root: moves staged files into place, swaps index trees by symlink.

    Durable without an fsync per file (mirror/README.md, "Safety"): staged files are written without
    fsync; one syncfs of the mirror's filesystem makes them durable before the first rename,
    and each group of renames (content, each index tree, metadata) has its directories fsynced
    before the next group can refer to it; timestamp.json, the last, is renamed alone."""

    def __init__(self, root: Path, ops: FileOps | None = None) -> None:
        self.root = root
        self.description = str(root)
        self.ops = ops or FileOps()

    def publish(self, publication: Publication, source: Path) -> None:
        self.ops.sync_filesystem(source)  # staged bytes reach the disk before any rename
        self._move_group(publication.content, source)
        for rel in publication.trees:
            self.swap_tree(source / rel, self.root / rel)
        *metadata, last = publication.metadata or [""]
        self._move_group(metadata, source)
        if last:
            self._move_group([last], source)
        for rel in publication.remove:
            with contextlib.suppress(FileNotFoundError):
                (self.root / rel).unlink()
                log.info("removed %s", rel)

    def _move_group(self, rels: list[str], source: Path) -> None:
        """Rename staged files into the tree, then fsync each directory they entered once."""
        touched: dict[Path, None] = {}
        for rel in rels:
            dest = self.root / rel
            if self._move_in(source / rel, dest):
                touched[dest.parent] = None
        for directory in touched:
            self.ops.fsync_dir(directory)

    def _move_in(self, src: Path, dest: Path) -> bool:
        """Rename a staged (verified) file into the tree; nothing staged means already there."""
        if not src.exists():
            if dest.exists():
                return False
            raise FileNotFoundError(f"staged file missing: {src}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        self.ops.replace(src, dest)
        return True

    def swap_tree(self, src: Path, dest: Path) -> None:
        """Make `dest` a symlink to a fresh copy of `src`, replacing the old tree atomically."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        version = f".{dest.name}-{time.time_ns()}"
        self.ops.replace(src, dest.parent / version)
        self.ops.fsync_dir(dest.parent)
        if dest.exists() and not dest.is_symlink():  # a plain directory, e.g. from an import
            self.ops.replace(dest, dest.parent / f".{dest.name}-old-{time.time_ns()}")
        self.ops.symlink(version, dest)
        self._drop_old_trees(dest, keep={version})

    def _drop_old_trees(self, dest: Path, keep: set[str]) -> None:
        """Delete earlier versions of a swapped tree but the newest previous one."""
        versions = sorted(
            (p for p in dest.parent.glob(f".{dest.name}-*") if p.name not in keep),
            key=lambda p: p.name,
        )
        for old in versions[:-1]:
            shutil.rmtree(old, ignore_errors=True)


class S3Storage:
    """An S3-compatible bucket (OSS, MinIO, AWS) under a key prefix, published with boto3."""

    def __init__(self, url: str, client: Any | None = None, **client_options: Any) -> None:
        self.bucket, self.prefix = parse_s3_url(url)
        self.description = url
        self.client = client or make_s3_client(**client_options)

    def key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def existing(self) -> dict[str, int]:
        """Keys under the prefix with their sizes."""
        found: dict[str, int] = {}
        paginator = self.client.get_paginator("list_objects_v2")
        prefix = f"{self.prefix}/" if self.prefix else ""
        with _s3_errors(self.description):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    found[item["Key"]] = int(item["Size"])
        return found

    def publish(self, publication: Publication, source: Path) -> None:
        existing = self.existing()
        for rel in publication.content:
            path = source / rel
            if existing.get(self.key(rel)) != path.stat().st_size:
                self._upload(path, rel)
        for rel in publication.trees:
            for sub in tree_files(source / rel):
                self._upload(source / rel / sub, f"{rel}/{sub}")
        for rel in publication.metadata:
            self._upload(source / rel, rel)
        for rel in publication.remove:
            with _s3_errors(self.description):
                self.client.delete_object(Bucket=self.bucket, Key=self.key(rel))

    def _upload(self, path: Path, rel: str) -> None:
        with _s3_errors(self.description):
            self.client.upload_file(
                str(path), self.bucket, self.key(rel), ExtraArgs={"ContentType": content_type(rel)}
            )
        log.debug("uploaded %s", rel)


def parse_s3_url(url: str) -> tuple[str, str]:
    """(bucket, key prefix) of an s3://BUCKET/PREFIX URL; anything else is a ConfigError."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ConfigError(
            f"not an S3 URL: {url!r}",
            hint="--dest takes s3://BUCKET/PREFIX (S3-compatible storage: OSS, MinIO, AWS)",
        )
    return parsed.netloc, parsed.path.strip("/")


def make_s3_client(
    endpoint_url: str | None = None,
    access_key: str | None = None,
    secret_key: str | None = None,
    region: str | None = None,
    *,
    instance_metadata: bool = False,
) -> Any:
    """A boto3 S3 client; unset options come from AWS_ENDPOINT_URL / AWS_* env vars.

    Credentials must come from the arguments or the environment: botocore's own search would
    end at the cloud instance metadata service (169.254.169.254), which it may consult only
    when `instance_metadata` says the operator asked for it."""
    token = None if access_key else os.environ.get("AWS_SESSION_TOKEN") or None
    access_key = access_key or os.environ.get("AWS_ACCESS_KEY_ID") or None
    secret_key = secret_key or os.environ.get("AWS_SECRET_ACCESS_KEY") or None
    if not instance_metadata and not (access_key and secret_key):
        raise ConfigError(
            "no S3 credentials: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or --s3-access-key "
            "(and AWS_SECRET_ACCESS_KEY)",
            hint="or pass --s3-instance-metadata to take them from the instance's role",
        )
    try:
        import boto3
    except ImportError as exc:
        raise ConfigError(
            "boto3 is not installed", hint="pip install 'aliyun-assist[mirror]'"
        ) from exc
    with _metadata_service(enabled=instance_metadata):
        return boto3.client(
            "s3",
            endpoint_url=endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            aws_session_token=token if access_key else None,
            region_name=region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        )


@contextlib.contextmanager
def _metadata_service(enabled: bool) -> Iterator[None]:
    """Set AWS_EC2_METADATA_DISABLED=true while botocore builds a client, unless `enabled`.

    botocore reads it when it creates its metadata fetchers (credentials, region defaults)."""
    name = "AWS_EC2_METADATA_DISABLED"
    before = os.environ.get(name)
    if not enabled:
        os.environ[name] = "true"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


@contextlib.contextmanager
def _s3_errors(where: str) -> Iterator[None]:
    """Turn botocore failures into DownloadError with a hint."""
    try:
        yield
    except Exception as exc:
        if type(exc).__module__.startswith(("botocore", "boto3")):
            raise DownloadError(
                f"S3 request to {where} failed: {exc}",
                hint="check AWS_ENDPOINT_URL, credentials and that the bucket exists",
            ) from exc
        raise


_TYPES = {
    ".json": "application/json",
    ".deb": "application/vnd.debian.binary-package",
    ".rpm": "application/x-rpm",
    ".gz": "application/gzip",
    ".xz": "application/x-xz",
    ".bz2": "application/x-bzip2",
    ".xml": "application/xml",
    ".asc": "application/pgp-signature",
    ".gpg": "application/pgp-keys",
    ".exe": "application/vnd.microsoft.portable-executable",
    ".sh": "text/x-shellscript",
    ".ps1": "text/plain",
    ".crt": "application/x-x509-ca-cert",
}


def content_type(rel: str) -> str:
    """The Content-Type a repository file is served with."""
    name = rel.rsplit("/", 1)[-1]
    if name in ("InRelease", "Release", "Packages") or name.startswith("RPM-GPG-KEY"):
        return "text/plain"
    if name == "Release.gpg":
        return "application/pgp-signature"
    for suffix, kind in _TYPES.items():
        if name.endswith(suffix):
            return kind
    return "application/octet-stream"
