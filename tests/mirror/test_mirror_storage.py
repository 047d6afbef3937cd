"""FileStorage.publish: durable without an fsync per file, in an order a power cut cannot break.

A recording FileOps (the real calls, logged) shows the order: one syncfs of the staged bytes
before any rename; each group of renames has its directories fsynced before the next group
that refers to it becomes visible; timestamp.json alone and last.
"""

from __future__ import annotations

from pathlib import Path

from mirror.storage import FileOps, FileStorage, Publication


class RecordingOps(FileOps):
    """The real filesystem calls, recorded in order."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.calls: list[tuple[str, str]] = []

    def _rel(self, path: Path) -> str:
        return Path(path).relative_to(self.root).as_posix()

    def sync_filesystem(self, path: Path) -> None:
        self.calls.append(("syncfs", self._rel(path)))
        super().sync_filesystem(path)

    def replace(self, src: Path, dest: Path) -> None:
        self.calls.append(("rename", self._rel(dest)))
        super().replace(src, dest)

    def fsync_dir(self, path: Path) -> None:
        self.calls.append(("fsync-dir", self._rel(path)))
        super().fsync_dir(path)

    def symlink(self, target: str, link: Path) -> None:
        self.calls.append(("symlink", self._rel(link)))
        super().symlink(target, link)


def stage(staging: Path, rels: list[str]) -> None:
    for rel in rels:
        path = staging / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rel.encode())


def test_publish_syncs_once_then_renames_in_durable_groups(tmp_path: Path) -> None:
    root = tmp_path / "mirror"
    staging = root / ".mirror" / "staging"
    content = [f"targets/demo/1.0/{i:02d}.demo.deb" for i in range(5)] + ["apt/pool/d/demo.deb"]
    metadata = ["keys/archive-keyring.gpg", "metadata/2.snapshot.json", "metadata/timestamp.json"]
    stage(staging, [*content, *metadata, "apt/dists/stable/InRelease"])
    ops = RecordingOps(tmp_path)
    publication = Publication(content=content, trees=["apt/dists"], metadata=metadata)
    FileStorage(root, ops=ops).publish(publication, staging)
    calls = ops.calls

    assert calls[0] == ("syncfs", "mirror/.mirror/staging")  # before any rename
    assert [c for c in calls if c[0] == "syncfs"] == [calls[0]]  # once, not per file
    index = {call: i for i, call in enumerate(calls)}
    tree = next(i for i, c in enumerate(calls) if c[1].startswith("mirror/apt/.dists-"))
    for rel in content:
        parent = "mirror/" + rel.rsplit("/", 1)[0]
        assert index[("rename", f"mirror/{rel}")] < index[("fsync-dir", parent)] < tree
    # one fsync per directory entered, not one per file
    assert [c for c in calls if c == ("fsync-dir", "mirror/targets/demo/1.0")] == [
        ("fsync-dir", "mirror/targets/demo/1.0")
    ]
    assert (
        index[("symlink", "mirror/apt/dists")]
        < index[("rename", "mirror/keys/archive-keyring.gpg")]
    )
    timestamp = index[("rename", "mirror/metadata/timestamp.json")]
    assert index[("fsync-dir", "mirror/keys")] < timestamp
    assert index[("rename", "mirror/metadata/2.snapshot.json")] < timestamp
    assert calls.index(("fsync-dir", "mirror/metadata")) < timestamp  # snapshot durable first
    assert calls[-1] == ("fsync-dir", "mirror/metadata")  # and the timestamp itself
    # the state left: everything in place, nothing staged
    for rel in [*content, *metadata, "apt/dists/stable/InRelease"]:
        assert (root / rel).read_bytes() == rel.encode()
    assert not [p for p in staging.rglob("*") if p.is_file()]
