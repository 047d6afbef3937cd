"""common.trust.TrustedRepository against a real signed TUF repository served on loopback.

Attacks are named like python-tuf's tests; each checks the error type AND that the client's
trusted metadata directory is byte-for-byte what it was before the failed refresh.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import TargetFile
from tufrepo import TufRepo

from common.errors import (
    AssistError,
    ConfigError,
    DownloadError,
    ExpiredMetadataError,
    NotFoundError,
    VerificationError,
)
from common.fetch import Fetcher
from common.trust import TargetInfo, TrustedRepository
from devkit.httpserver import StaticServer, endless_body
from mirror.plan import Filters, select_targets, target_entry

PKG = "aliyun-assist"
E = TypeVar("E", bound=AssistError)


@pytest.fixture
def repo(tmp_path: Path) -> TufRepo:
    """A repository with a few versions, formats and channels, published once."""
    repository = TufRepo(tmp_path / "www")
    fill(repository)
    repository.publish()
    return repository


def fill(repository: TufRepo) -> None:
    """Artifacts: 2.9.0 and 2.10.0 (deb + rpm) stable, 2.11.0 beta, another package."""
    repository.add_target(PKG, "2.9.0", b"deb 2.9.0" * 100)
    repository.add_target(PKG, "2.10.0", b"deb 2.10.0" * 100)
    repository.add_target(PKG, "2.10.0", b"rpm 2.10.0" * 100, fmt="rpm")
    repository.add_target(PKG, "2.11.0", b"deb 2.11.0" * 100, channels=("beta",))
    repository.add_target("other-tool", "1.0", b"other")


@pytest.fixture
def server(repo: TufRepo) -> Iterator[StaticServer]:
    with StaticServer(repo.base) as running:
        yield running


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """The client's state directory; trusted metadata goes to state/tuf."""
    path = tmp_path / "state"
    path.mkdir()
    return path


def client(repo: TufRepo, state: Path, *urls: str) -> TrustedRepository:
    """A TrustedRepository over the given mirrors, anchored on the repository's root v1."""
    fetcher = Fetcher(list(urls), read_timeout=2.0, retries=0, backoff=0.01, progress=False)
    return TrustedRepository(fetcher, state / "tuf", trust_root=repo.root_file)


def tree(path: Path) -> dict[str, Any]:
    """Every file's bytes and every symlink's target under `path`."""
    content: dict[str, Any] = {}
    for item in sorted(path.rglob("*")):
        key = str(item.relative_to(path))
        if item.is_symlink():
            content[key] = ("symlink", os.readlink(item))
        elif item.is_file():
            content[key] = item.read_bytes()
    return content


@pytest.fixture
def trusted(repo: TufRepo, server: StaticServer, state: Path) -> dict[str, Any]:
    """A client that refreshed once; returns the trusted tree as it stood after that."""
    client(repo, state, server.url).refresh()
    before = tree(state / "tuf")
    assert {"root.json", "timestamp.json", "snapshot.json", "targets.json"} <= set(before)
    return before


def assert_refresh_fails(
    repo: TufRepo, state: Path, server: StaticServer, before: dict[str, Any], error: type[E]
) -> E:
    """Refresh fails with `error` and the trusted metadata (and state dir) are unchanged."""
    with pytest.raises(error) as info:
        client(repo, state, server.url).refresh()
    assert tree(state / "tuf") == before
    assert sorted(p.name for p in state.iterdir()) == ["tuf"]  # no staging copy left behind
    assert info.value.hint
    return info.value


def test_refresh_lists_finds_and_downloads(
    repo: TufRepo, server: StaticServer, state: Path, tmp_path: Path
) -> None:
    trusted_repo = client(repo, state, server.url)
    trusted_repo.refresh()
    paths = [t.path for t in trusted_repo.targets()]
    assert paths == sorted(repo.md["targets"].signed.targets)
    newest = trusted_repo.find(PKG, os="linux", arch="x86_64", format="deb")
    assert (newest.version, newest.format, newest.channels) == ("2.10.0", "deb", ("stable",))
    assert trusted_repo.find(PKG, format="deb", channel="beta").version == "2.11.0"
    assert trusted_repo.find(PKG, version="2.9.0").path == f"{PKG}/2.9.0/{PKG}_2.9.0_x86_64.deb"
    assert trusted_repo.versions(PKG) == ["2.9.0", "2.10.0"]
    assert trusted_repo.versions(PKG, format="rpm") == ["2.10.0"]
    assert trusted_repo.versions(PKG, channel="beta") == ["2.11.0"]

    artifact = trusted_repo.download(newest, tmp_path / "cache")
    assert artifact == tmp_path / "cache" / newest.filename
    assert artifact.read_bytes() == b"deb 2.10.0" * 100
    sha = newest.sha256
    assert server.requests[-1] == f"/targets/{PKG}/2.10.0/{sha}.{newest.filename}"
    count = len(server.requests)
    assert trusted_repo.download(newest, tmp_path / "cache") == artifact
    assert len(server.requests) == count  # verified cached copy reused


def add_plain_target(repository: TufRepo, path: str, data: bytes, custom: Any = None) -> None:
    """Store and sign a target without (or with only some of) the package custom fields."""
    digest = hashlib.sha256(data).hexdigest()
    directory, _, name = path.rpartition("/")
    stored = repository.targets_dir / directory / f"{digest}.{name}"
    stored.parent.mkdir(parents=True, exist_ok=True)
    stored.write_bytes(data)
    unrecognized = {"custom": custom} if custom is not None else {}
    target = TargetFile(len(data), {"sha256": digest}, path, unrecognized)
    repository.md["targets"].signed.targets[path] = target


def test_a_target_without_package_fields_is_signed_content_for_every_client(
    repo: TufRepo, server: StaticServer, state: Path, tmp_path: Path
) -> None:
    """The installer's and the mirror's view of one signed targets role agree: a target
    without the package custom fields (the release keys) is never listed as a package, and
    is still downloadable (installer) and always mirrored, whatever the filters (mirror)."""
    add_plain_target(repo, "keys/archive-keyring.gpg", b"keyring bytes")
    add_plain_target(repo, "keys/half.txt", b"half", custom={"package": "keys"})
    repo.publish()
    trusted_repo = client(repo, state, server.url)
    trusted_repo.refresh()

    assert "keys/archive-keyring.gpg" not in [t.path for t in trusted_repo.targets()]
    assert trusted_repo.versions("keys") == []
    plain = {t.path: t for t in trusted_repo.all_targets() if not t.is_package}
    assert sorted(plain) == ["keys/archive-keyring.gpg", "keys/half.txt"]
    assert (plain["keys/half.txt"].package, plain["keys/half.txt"].channels) == ("", ())
    key = trusted_repo.download(plain["keys/archive-keyring.gpg"], tmp_path / "keys")
    assert key.read_bytes() == b"keyring bytes"

    # the mirror plans from the same parse: keys always, packages filtered
    chosen = select_targets(trusted_repo.all_targets(), Filters(oses=("windows",), keep=1))
    assert [t.path for t in chosen] == ["keys/archive-keyring.gpg", "keys/half.txt"]
    assert [e.relpath for e in (target_entry(t) for t in chosen)] == [t.relpath for t in chosen]
    assert state.joinpath("tuf", "targets.json").is_file()


def test_release_keys_are_fetched_through_tuf(
    repo: TufRepo, server: StaticServer, state: Path, tmp_path: Path
) -> None:
    """An installer with only root.json gets the native-signature keys verified by TUF; a
    swapped key file on the mirror is refused and nothing is left in the keys directory."""
    with pytest.raises(NotFoundError, match="no release keys"):
        client(repo, state, server.url).fetch_release_keys(tmp_path / "none")
    for name in ("archive-keyring.gpg", "RPM-GPG-KEY-assist", "authenticode.crt"):
        add_plain_target(repo, f"keys/{name}", f"{name} bytes".encode())
    repo.publish()
    keys = client(repo, state, server.url).fetch_release_keys(tmp_path / "keys")
    assert sorted(p.name for p in keys.iterdir()) == [
        "RPM-GPG-KEY-assist",
        "archive-keyring.gpg",
        "authenticode.crt",
    ]
    assert (keys / "authenticode.crt").read_bytes() == b"authenticode.crt bytes"
    repo.stored_target("keys/RPM-GPG-KEY-assist").write_bytes(b"RPM-GPG-KEY-assist bytez")
    with pytest.raises(VerificationError):
        client(repo, state, server.url).fetch_release_keys(tmp_path / "swapped")
    assert not (tmp_path / "swapped" / "RPM-GPG-KEY-assist").exists()


def test_find_names_what_exists(repo: TufRepo, server: StaticServer, state: Path) -> None:
    trusted_repo = client(repo, state, server.url)
    with pytest.raises(NotFoundError) as info:
        trusted_repo.find(PKG, version="9.9", os="linux", arch="aarch64")
    message = str(info.value)
    assert "aliyun-assist 9.9 for linux/aarch64 in channel stable" in message
    assert "2.10.0 linux/x86_64 rpm [stable]" in message
    with pytest.raises(NotFoundError):
        trusted_repo.find("no-such-package")


def test_download_refuses_a_target_not_in_signed_metadata(
    repo: TufRepo, server: StaticServer, state: Path, tmp_path: Path
) -> None:
    forged = TargetInfo(
        f"{PKG}/6.6.6/x.deb", 5, "0" * 64, PKG, "6.6.6", "linux", "x86_64", "deb", ("stable",)
    )
    with pytest.raises(NotFoundError):
        client(repo, state, server.url).download(forged, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_first_refresh_installs_the_trust_root(
    repo: TufRepo, server: StaticServer, state: Path
) -> None:
    client(repo, state, server.url).refresh()
    root = json.loads((state / "tuf" / "root.json").read_bytes())
    assert root["signed"]["version"] == 1
    assert (
        state / "tuf" / "root_history" / "1.root.json"
    ).read_bytes() == repo.root_file.read_bytes()
    again = TrustedRepository(Fetcher([server.url], progress=False), state / "tuf")
    again.refresh()  # the trusted root on disk is enough now
    assert again.find(PKG).version == "2.10.0"


def test_no_root_anywhere_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        TrustedRepository(Fetcher(["http://127.0.0.1:9/"]), tmp_path / "tuf")
    assert "root.json" in str(info.value) and info.value.hint
    with pytest.raises(ConfigError):
        TrustedRepository(
            Fetcher(["http://127.0.0.1:9/"]), tmp_path / "tuf", trust_root=tmp_path / "nope.json"
        )


def test_failed_first_refresh_leaves_no_trusted_state(repo: TufRepo, state: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}/"
    with pytest.raises(DownloadError):
        client(repo, state, dead).refresh()
    assert tree(state / "tuf") == {}
    assert sorted(p.name for p in state.iterdir()) == ["tuf"]


def test_metadata_and_targets_fail_over_to_the_next_mirror(
    repo: TufRepo, server: StaticServer, state: Path, tmp_path: Path
) -> None:
    (tmp_path / "empty").mkdir()
    with StaticServer(tmp_path / "empty") as stale:  # 404 for everything
        trusted_repo = client(repo, state, stale.url, server.url)
        artifact = trusted_repo.download(trusted_repo.find(PKG), tmp_path / "cache")
    assert artifact.read_bytes() == b"deb 2.10.0" * 100
    assert "/metadata/timestamp.json" in stale.requests


def rolled_back_timestamp(repo: TufRepo) -> None:
    repo.md["timestamp"].signed.version -= 1
    repo.write_role("timestamp")


def rolled_back_snapshot(repo: TufRepo) -> None:
    repo.md["timestamp"].signed.snapshot_meta.version -= 1  # a newer timestamp, older snapshot
    repo.md["timestamp"].signed.version += 1
    repo.write_role("timestamp")


def rolled_back_targets(repo: TufRepo) -> None:
    repo.md["snapshot"].signed.meta["targets.json"].version -= 1  # newer snapshot, older targets
    repo.md["snapshot"].signed.version += 1
    repo.write_role("snapshot")
    repo.publish(("timestamp",))


def timestamp_signed_by_wrong_key(repo: TufRepo) -> None:
    repo.md["timestamp"].signed.version += 1
    repo.write_role("timestamp", [CryptoSigner.generate_ed25519()])


@pytest.mark.parametrize(
    "spoil, named",
    [
        (rolled_back_timestamp, "BadVersionNumber"),
        (rolled_back_snapshot, "BadVersionNumber"),
        (rolled_back_targets, "BadVersionNumber"),
        (timestamp_signed_by_wrong_key, "UnsignedMetadata"),
    ],
    ids=lambda value: getattr(value, "__name__", None),
)
def test_spoiled_metadata_is_refused_and_trusted_state_kept(
    repo: TufRepo,
    server: StaticServer,
    state: Path,
    trusted: dict[str, Any],
    spoil: Callable[[TufRepo], None],
    named: str,
) -> None:
    spoil(repo)
    error = assert_refresh_fails(repo, state, server, trusted, VerificationError)
    assert named in str(error)


def test_expired_timestamp_freeze(
    repo: TufRepo, server: StaticServer, state: Path, trusted: dict[str, Any]
) -> None:
    repo.md["timestamp"].signed.expires = datetime.now(timezone.utc).replace(
        microsecond=0
    ) - timedelta(days=1)
    repo.publish(("timestamp",))  # validly signed and newer, but expired
    error = assert_refresh_fails(repo, state, server, trusted, ExpiredMetadataError)
    assert "assist-mirror sync" in (error.hint or "")


def test_mix_and_match_targets(
    repo: TufRepo, server: StaticServer, state: Path, trusted: dict[str, Any]
) -> None:
    old_targets = repo.role_file("targets").read_bytes()
    repo.add_target(PKG, "3.0.0", b"new")
    repo.publish()
    repo.role_file("targets").write_bytes(old_targets)  # snapshot names v3, the file is v2
    error = assert_refresh_fails(repo, state, server, trusted, VerificationError)
    assert "version" in str(error).lower()


@pytest.mark.parametrize("tamper", ["wrong-hash", "wrong-length"])
def test_artifact_with_wrong_content(
    repo: TufRepo,
    server: StaticServer,
    state: Path,
    tmp_path: Path,
    trusted: dict[str, Any],
    tamper: str,
) -> None:
    trusted_repo = client(repo, state, server.url)
    target = trusted_repo.find(PKG, format="deb")
    stored = repo.stored_target(target.path)
    original = stored.read_bytes()
    stored.write_bytes(original[:-1] + b"X" if tamper == "wrong-hash" else original + b"X")
    with pytest.raises(VerificationError) as info:
        trusted_repo.download(target, tmp_path / "cache")
    assert info.value.hint
    assert list((tmp_path / "cache").iterdir()) == []
    assert tree(state / "tuf") == trusted


def test_endless_data_on_timestamp(
    repo: TufRepo, server: StaticServer, state: Path, trusted: dict[str, Any]
) -> None:
    server.hook = endless_body("timestamp.json", b"{" * 65536, 1 << 14)
    error = assert_refresh_fails(repo, state, server, trusted, DownloadError)
    assert "endless data" in str(error)


def test_timestamp_below_threshold(tmp_path: Path, state: Path) -> None:
    repository = TufRepo(tmp_path / "www2", thresholds={"timestamp": 2})
    fill(repository)
    repository.publish()
    with StaticServer(repository.base) as running:
        client(repository, state, running.url).refresh()  # both keys: fine
        before = tree(state / "tuf")
        repository.md["timestamp"].signed.version += 1
        repository.write_role("timestamp", repository.signers["timestamp"][:1])
        error = assert_refresh_fails(repository, state, running, before, VerificationError)
    assert "UnsignedMetadata" in str(error)


def test_root_rotation_signed_by_old_and_new_keys_is_accepted(
    repo: TufRepo, server: StaticServer, state: Path, trusted: dict[str, Any]
) -> None:
    repo.rotate_root_keys()
    repo.publish()
    client(repo, state, server.url).refresh()
    root = json.loads((state / "tuf" / "root.json").read_bytes())
    assert root["signed"]["version"] == 2
    assert (state / "tuf" / "root_history" / "2.root.json").read_bytes() == repo.role_file(
        "root"
    ).read_bytes()


@pytest.mark.parametrize("missing", ["old", "new"])
def test_root_rotation_not_signed_by_both_keys_is_refused(
    repo: TufRepo, server: StaticServer, state: Path, trusted: dict[str, Any], missing: str
) -> None:
    repo.rotate_root_keys(sign_with_old=missing != "old", sign_with_new=missing != "new")
    repo.publish()
    error = assert_refresh_fails(repo, state, server, trusted, VerificationError)
    assert "UnsignedMetadata" in str(error)
