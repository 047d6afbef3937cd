"""`assist-mirror import` unpacks a bundle with the one safe extractor (common/extract.py): a
crafted bundle is refused with one line and changes nothing outside the import directory."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest
from mirror_testlib import mirror_cli


def crafted_bundle(out: Path, members: list[tuple[str, bytes, str]]) -> Path:
    with tarfile.open(out, "w") as tar:
        manifest = b'{"files": []}'
        info = tarfile.TarInfo("bundle.json")
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))
        for name, kind, link in members:
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mode = kind, link, 0o700
            info.size = 1 if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(b"x") if kind == tarfile.REGTYPE else None)
    return out


def outside_state(base: Path, site: Path) -> dict[str, tuple[int, int]]:
    """Mode and mtime of everything under `base`; of the mirror's .mirror/ (where the import
    directory comes and goes) only the mode."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(base):
        if Path(dirpath) == site / ".mirror":
            dirnames[:] = []
            state[dirpath] = (os.lstat(dirpath).st_mode, 0)
            continue
        for name in [".", *dirnames, *filenames]:
            info = os.lstat(os.path.join(dirpath, name))
            state[os.path.normpath(os.path.join(dirpath, name))] = (info.st_mode, info.st_mtime_ns)
    return state


@pytest.mark.parametrize(
    "members",
    [
        # .mirror/import-X/{l -> ., a -> l/.. (.mirror), b -> a/.. (site), c -> b/.. (base)}, dir c
        [
            ("l", tarfile.SYMTYPE, "."),
            ("a", tarfile.SYMTYPE, "l/.."),
            ("b", tarfile.SYMTYPE, "a/.."),
            ("c", tarfile.SYMTYPE, "b/.."),
            ("c", tarfile.DIRTYPE, ""),
        ],
        [
            ("x", tarfile.SYMTYPE, "y/../.."),
            ("y", tarfile.SYMTYPE, "."),
            ("x/owned", tarfile.REGTYPE, ""),
        ],
        [("d", tarfile.SYMTYPE, "../../.."), ("d/owned", tarfile.REGTYPE, "")],
    ],
    ids=["dir-over-chain", "dangling-chain-then-file", "link-out-then-file"],
)
def test_crafted_bundle_is_refused_and_changes_nothing_outside(
    tmp_path: Path, members: list[tuple[str, bytes, str]]
) -> None:
    site = tmp_path / "site"
    (site / ".mirror").mkdir(parents=True)
    for level in (tmp_path, site):
        level.chmod(0o755)
        (level / "victim").write_text("untouched\n")
    bundle = crafted_bundle(tmp_path / "evil.tar", members)
    before = outside_state(tmp_path, site)
    proc = mirror_cli("import", str(bundle), "--root", str(site), check=False)
    assert proc.returncode == 4, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert outside_state(tmp_path, site) == before
    assert not (tmp_path / "owned").exists() and not (site / "owned").exists()
    assert not [p for p in (site / ".mirror").iterdir() if p.name.startswith("import-")]
