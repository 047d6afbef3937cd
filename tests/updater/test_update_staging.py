"""Staging: payload extraction with path-traversal, symlink and device checks (real archives)."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.errors import NoSpaceError, VerificationError
from devkit.fakepayload import make_tarball, write_tree
from updater.staging import StreamStager, classify_member, ensure_free_space, stage_artifact


def test_tarball_is_staged_into_versions_dir(tmp_path: Path) -> None:
    art = make_tarball(tmp_path / "a.tar.gz", "1.1.0")
    versions = tmp_path / "prefix" / "versions"
    final = stage_artifact(art, "tar.gz", "1.1.0", versions)
    assert final == versions / "1.1.0"
    assert (final / "VERSION").read_text() == "1.1.0\n"
    assert (final / "bin" / "assist-agent").stat().st_mode & 0o111
    assert sorted(p.name for p in versions.iterdir()) == ["1.1.0"]  # no staging leftovers


ATTACKS = {
    "dotdot": ("versions/1.1.0/../../evil", tarfile.REGTYPE, ""),
    "absolute": ("/tmp/evil-absolute", tarfile.REGTYPE, ""),
    "outside_tree": ("versions/9.9.9/bin/x", tarfile.REGTYPE, ""),
    "symlink_absolute": ("versions/1.1.0/lib/abs", tarfile.SYMTYPE, "/etc"),
    "symlink_up": ("versions/1.1.0/lib/up", tarfile.SYMTYPE, "../../../outside"),
    "hardlink_out": ("versions/1.1.0/lib/hl", tarfile.LNKTYPE, "/etc/passwd"),
    "device": ("versions/1.1.0/lib/dev", tarfile.CHRTYPE, ""),
    "fifo": ("versions/1.1.0/lib/fifo", tarfile.FIFOTYPE, ""),
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_malicious_tarball_is_refused_and_leaves_nothing(tmp_path: Path, attack: str) -> None:
    art = make_tarball(tmp_path / "a.tar.gz", "1.1.0", extra=[ATTACKS[attack]])
    versions = tmp_path / "prefix" / "versions"
    versions.mkdir(parents=True)
    with pytest.raises(VerificationError):
        stage_artifact(art, "tar.gz", "1.1.0", versions)
    assert list(versions.iterdir()) == []
    assert not (tmp_path / "evil").exists() and not Path("/tmp/evil-absolute").exists()


def test_symlink_chain_escape_is_refused(tmp_path: Path) -> None:
    """`t -> .` then `s -> t/..` is lexically inside but really points out of the tree."""
    extra = [
        ("versions/1.1.0/t", tarfile.SYMTYPE, "."),
        ("versions/1.1.0/s", tarfile.SYMTYPE, "t/.."),
    ]
    art = make_tarball(tmp_path / "a.tar.gz", "1.1.0", extra=extra)
    versions = tmp_path / "v"
    with pytest.raises(VerificationError, match="outside"):
        stage_artifact(art, "tar.gz", "1.1.0", versions)
    assert list(versions.iterdir()) == []


def test_write_through_symlink_is_refused(tmp_path: Path) -> None:
    """A symlink to a directory followed by a file member written through it."""
    outside = tmp_path / "outside"
    outside.mkdir()
    extra = [
        ("versions/1.1.0/lib/link", tarfile.SYMTYPE, "."),
        ("versions/1.1.0/lib/link", tarfile.REGTYPE, ""),  # duplicate replacing the link
    ]
    art = make_tarball(tmp_path / "a.tar.gz", "1.1.0", extra=extra)
    with pytest.raises(VerificationError):
        stage_artifact(art, "tar.gz", "1.1.0", tmp_path / "v")


def test_inner_relative_symlink_is_allowed(tmp_path: Path) -> None:
    extra = [("versions/1.1.0/bin/agent-alias", tarfile.SYMTYPE, "assist-agent")]
    art = make_tarball(tmp_path / "a.tar.gz", "1.1.0", extra=extra)
    final = stage_artifact(art, "tar.gz", "1.1.0", tmp_path / "v")
    assert (final / "bin" / "agent-alias").resolve() == (final / "bin" / "assist-agent").resolve()


def test_version_mismatch_between_payload_and_metadata_is_refused(tmp_path: Path) -> None:
    art = make_tarball(tmp_path / "a.tar.gz", "1.1.0")
    # the archive carries versions/1.1.0 but metadata says 1.2.0: nothing is under versions/1.2.0
    with pytest.raises(VerificationError):
        stage_artifact(art, "tar.gz", "1.2.0", tmp_path / "v")


def test_garbage_artifact_is_refused(tmp_path: Path) -> None:
    art = tmp_path / "a.tar.gz"
    art.write_bytes(b"\x1f\x8b garbage" * 100)
    with pytest.raises(VerificationError):
        stage_artifact(art, "tar.gz", "1.1.0", tmp_path / "v")


@pytest.mark.parametrize(
    ("name", "rel"),
    [
        ("./usr/local/share/aliyun-assist/versions/1.0/bin/x", "bin/x"),
        ("./usr/", None),
        ("./", None),
    ],
)
def test_classify_native_members(name: str, rel: str | None) -> None:
    assert classify_member(name, "usr/local/share/aliyun-assist/versions/1.0/") == rel


def _build_deb(tmp_path: Path, version: str) -> Path:
    root = tmp_path / "debroot"
    write_tree(root / f"usr/local/share/aliyun-assist/versions/{version}", version)
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: aliyun-assist\nVersion: {version}\nArchitecture: amd64\n"
        "Maintainer: test <t@assist.invalid>\nDescription: test\n"
    )
    out = tmp_path / f"aliyun-assist_{version}_amd64.deb"
    subprocess.run(
        ["dpkg-deb", "-Zxz", "--root-owner-group", "--build", str(root), str(out)],
        check=True,
        capture_output=True,
    )
    return out


def test_deb_payload_is_staged_with_real_dpkg_deb_archive(tmp_path: Path) -> None:
    deb = _build_deb(tmp_path, "1.1.0")
    final = stage_artifact(deb, "deb", "1.1.0", tmp_path / "prefix" / "versions")
    assert (final / "VERSION").read_text().strip() == "1.1.0"
    assert (final / "bin" / "assist-agent").is_file()


@pytest.mark.skipif(not shutil.which("rpmbuild") or not shutil.which("bsdtar"), reason="rpmbuild")
def test_rpm_payload_is_staged_with_real_rpmbuild_package(tmp_path: Path) -> None:
    buildroot = tmp_path / "payload"
    write_tree(buildroot / "usr/local/share/aliyun-assist/versions/1.1.0", "1.1.0")
    spec = tmp_path / "t.spec"
    spec.write_text(
        "Name: aliyun-assist\nVersion: 1.1.0\nRelease: 1\nSummary: t\nLicense: Apache-2.0\n"
        "BuildArch: noarch\n%description\nt\n%install\n"
        f"cp -a {buildroot}/. %{{buildroot}}/\n"
        "%files\n/usr/local/share/aliyun-assist/versions/1.1.0\n"
    )
    top = tmp_path / "rpmbuild"
    subprocess.run(
        [
            "rpmbuild",
            "-bb",
            "--define",
            f"_topdir {top}",
            "--define",
            "__os_install_post %{nil}",
            str(spec),
        ],
        check=True,
        capture_output=True,
    )
    rpm = next(top.glob("RPMS/*/*.rpm"))
    final = stage_artifact(rpm, "rpm", "1.1.0", tmp_path / "prefix" / "versions")
    assert (final / "VERSION").read_text().strip() == "1.1.0"
    assert (final / "bin" / "assist-agent").stat().st_mode & 0o111


def test_free_space_check_refuses(tmp_path: Path) -> None:
    with pytest.raises(NoSpaceError, match="free"):
        ensure_free_space(tmp_path, 1 << 62)
    ensure_free_space(tmp_path, 1)


def test_exe_is_run_silently_into_scratch_and_only_versions_v_is_kept(tmp_path: Path) -> None:
    """Mocked: the NSIS installer runs only on Windows; the runner stands in for it and lays
    out what it would (versions/V plus its own current.txt, which must not leak)."""
    calls: list[list[str]] = []

    def fake_installer(argv: list[str]) -> None:
        calls.append(list(argv))
        scratch = Path(argv[-1].removeprefix("/D="))
        write_tree(scratch / "versions" / "1.1.0", "1.1.0")
        (scratch / "current.txt").write_text("1.1.0\n")

    exe = tmp_path / "aliyun-assist-1.1.0-setup.exe"
    exe.write_bytes(b"MZ")
    versions = tmp_path / "prefix" / "versions"
    final = stage_artifact(exe, "exe", "1.1.0", versions, exe_runner=fake_installer)
    assert calls[0][:2] == [str(exe), "/S"] and calls[0][2].startswith("/D=")
    assert (final / "VERSION").read_text().strip() == "1.1.0"
    assert sorted(p.name for p in versions.iterdir()) == ["1.1.0"]
    assert not (tmp_path / "prefix" / "current.txt").exists()


def test_exe_that_produces_nothing_is_refused(tmp_path: Path) -> None:
    exe = tmp_path / "x.exe"
    exe.write_bytes(b"MZ")
    versions = tmp_path / "v"
    with pytest.raises(VerificationError, match="did not produce"):
        stage_artifact(exe, "exe", "1.1.0", versions, exe_runner=lambda argv: None)
    assert list(versions.iterdir()) == []


def test_exe_cannot_run_off_windows(tmp_path: Path) -> None:
    from common.errors import ToolError

    exe = tmp_path / "x.exe"
    exe.write_bytes(b"MZ")
    with pytest.raises(ToolError, match="Windows"):
        stage_artifact(exe, "exe", "1.1.0", tmp_path / "v")


def test_stream_stager_refuses_a_stream_that_is_not_a_tarball(tmp_path: Path) -> None:
    versions = tmp_path / "versions"
    stager = StreamStager("1.1.0", versions, 10)
    stager.feed(b"0123456789")
    with pytest.raises(VerificationError, match="not a readable archive"):
        stager.finish(tmp_path / "a.tar.gz")
    assert list(versions.iterdir()) == []


def test_stream_stager_reports_a_full_disk_as_such(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC while unpacking is a local problem (exit 4, NoSpaceError), not a bad archive.
    (The full disk is simulated: the member extraction raises ENOSPC.)"""
    import errno

    import updater.staging

    def disk_full(*_: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(updater.staging, "extract_checked", disk_full)
    art = make_tarball(tmp_path / "a.tar.gz", "1.1.0")
    data = art.read_bytes()
    versions = tmp_path / "versions"
    stager = StreamStager("1.1.0", versions, len(data))
    with pytest.raises(NoSpaceError):
        stager.feed(data)
        stager.finish(art)
    stager.abort()
    assert list(versions.iterdir()) == []


# -- links that chain out of the tree, then a member written through one (issue 10.1) ------------


def snapshot_outside(base: Path, versions: Path) -> dict[str, tuple[int, int, int, bytes | str]]:
    """(mode, mtime, link count, content or link text) of every entry under `base` outside
    `versions` (a hard link to a victim changes only its link count); of `versions` itself only
    the mode counts (staging creates and removes an entry in it)."""
    seen: dict[str, tuple[int, int, int, bytes | str]] = {}
    for dirpath, dirnames, filenames in os.walk(base):
        if Path(dirpath) == versions:
            dirnames[:] = []
            seen[str(versions)] = (os.lstat(versions).st_mode, 0, 0, "")
            continue
        for name in [".", *dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                content: bytes | str = os.readlink(path)
            elif stat.S_ISREG(info.st_mode):
                content = Path(path).read_bytes()
            else:
                content = ""
            seen[os.path.normpath(path)] = (info.st_mode, info.st_mtime_ns, info.st_nlink, content)
    return seen


def chain_tarball(out: Path, version: str, chain: list[tarfile.TarInfo]) -> Path:
    """A good fake payload followed by the given members (under versions/V/)."""
    make_tarball(out, version)
    raw = out.read_bytes()
    with (
        tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as src,
        tarfile.open(out, "w:gz") as tar,
    ):
        for member in src.getmembers():
            tar.addfile(member, src.extractfile(member) if member.isreg() else None)
        for member in chain:
            member.name = f"versions/{version}/{member.name}"
            tar.addfile(member, io.BytesIO(b"owned\n") if member.isreg() else None)
    return out


def link(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
    return info


def entry(name: str, kind: bytes, mode: int = 0o700) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode = kind, mode
    info.size = len(b"owned\n") if kind == tarfile.REGTYPE else 0
    return info


def deep_versions(base: Path) -> Path:
    """base/outer/prefix/versions, every directory 0755 with a file in it (the potential victims)."""
    versions = base / "outer" / "prefix" / "versions"
    versions.mkdir(parents=True)
    for level in (base, base / "outer", base / "outer" / "prefix"):
        level.chmod(0o755)
        (level / "victim").write_text("untouched\n")
    return versions


def test_directory_member_over_a_link_chain_leaves_the_tree_untouched(tmp_path: Path) -> None:
    """The attack of issue 10.1: `l -> .`, `a -> l/..`, `b -> a/..`, `c -> b/..` (all lexically
    inside), then a directory `c` (mode 0700): the old staging chmodded the directory three
    levels above the staging directory 755 -> 700 and only then refused the update."""
    versions = deep_versions(tmp_path)
    chain = [link("l", "."), link("a", "l/.."), link("b", "a/.."), link("c", "b/..")]
    chain.append(entry("c", tarfile.DIRTYPE))
    art = chain_tarball(tmp_path / "a.tar.gz", "1.1.0", chain)
    before = snapshot_outside(tmp_path, versions)
    with pytest.raises(VerificationError):
        stage_artifact(art, "tar.gz", "1.1.0", versions)
    assert snapshot_outside(tmp_path, versions) == before
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o755
    assert list(versions.iterdir()) == []


_NAMES = ["l", "a", "b", "c"]
_TARGETS = st.sampled_from([".", "..", "l", "l/..", "a/..", "b/..", "c/..", "a/../..", "x/.."])


@st.composite
def chained_members(draw: st.DrawFn) -> list[tarfile.TarInfo]:
    """Symlinks chaining through each other, and dirs/files written under or over their names,
    in any order."""
    members: list[tarfile.TarInfo] = []
    if draw(st.booleans()):  # often start from a chain that really climbs out, l -> . first
        climb = [("l", "."), ("a", "l/.."), ("b", "a/.."), ("c", "b/..")]
        members += [link(name, target) for name, target in climb[: draw(st.integers(2, 4))]]
    for _ in range(draw(st.integers(1, 7))):
        name = draw(st.sampled_from([*_NAMES, "x"]))
        kind = draw(
            st.sampled_from(["link", "dir", "file", "file-under", "dir-under", "hard", "nested"])
        )
        if kind == "link":
            members.append(link(name, draw(_TARGETS)))
        elif kind == "nested":  # a link one level down, climbing through the top-level ones
            members.append(link(f"{name}/n", draw(st.sampled_from(["..", "../l/..", "../c/.."]))))
        elif kind == "hard":  # a hard link to a file reached through a link, or a real one
            hard = entry(name, tarfile.LNKTYPE)
            hard.linkname = draw(st.sampled_from(["b/victim", "l/victim", "x", "a/n/victim"]))
            hard.linkname = f"versions/1.1.0/{hard.linkname}"
            members.append(hard)
        elif kind == "dir":
            members.append(entry(name, tarfile.DIRTYPE, draw(st.sampled_from([0o700, 0o555]))))
        elif kind == "file":
            members.append(entry(name, tarfile.REGTYPE, 0o644))
        elif kind == "file-under":
            members.append(entry(f"{name}/victim", tarfile.REGTYPE, 0o644))
        else:
            members.append(entry(f"{name}/sub", tarfile.DIRTYPE))
    return members


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chained_members())
def test_any_link_chain_in_any_order_changes_nothing_outside_staging(
    members: list[tarfile.TarInfo],
) -> None:
    """Property: whatever links, chains and members an archive holds, staging either refuses it
    or produces a tree whose links all stay inside, and nothing outside versions/ changes."""
    base = Path(tempfile.mkdtemp(prefix="chain-"))
    try:
        versions = deep_versions(base)
        art = chain_tarball(base / "a.tar.gz", "1.1.0", members)
        before = snapshot_outside(base, versions)
        try:
            final = stage_artifact(art, "tar.gz", "1.1.0", versions, require_agent=False)
        except VerificationError:
            assert list(versions.iterdir()) == []
        else:
            assert sorted(p.name for p in versions.iterdir()) == ["1.1.0"]
            root = os.path.realpath(final)
            for path in final.rglob("*"):
                if path.is_symlink():
                    assert os.path.realpath(path).startswith(root)
                elif path.is_file() and not path.is_symlink():
                    assert os.stat(path).st_nlink == 1 or path.read_bytes() == b"owned\n"
        assert snapshot_outside(base, versions) == before
    finally:
        for dirpath, dirnames, _ in os.walk(base):  # a refused chmod 0555 must not stop cleanup
            for name in dirnames:
                path = os.path.join(dirpath, name)
                if not os.path.islink(path):
                    os.chmod(path, 0o755)
        shutil.rmtree(base)


def test_a_link_chain_in_a_directory_deeper_than_path_max_is_refused_and_removed(
    tmp_path: Path,
) -> None:
    """Links that climb out of the tree from a directory too deep for a path walk: the link
    check used to skip that directory and stage a link resolving to the host's /etc/hostname."""
    versions = deep_versions(tmp_path)
    deep = "/".join(["d" * 200] * 25)  # longer than PATH_MAX
    chain = [link(f"{deep}/l", ".")]
    for step in range(40):
        chain.append(link(f"{deep}/u{step}", f"{'l' if step == 0 else f'u{step - 1}'}/.."))
    chain.append(link(f"{deep}/escape", "u39/etc/hostname"))
    art = chain_tarball(tmp_path / "a.tar.gz", "1.1.0", chain)
    before = snapshot_outside(tmp_path, versions)
    with pytest.raises(VerificationError, match="too deep"):
        stage_artifact(art, "tar.gz", "1.1.0", versions)
    assert list(versions.iterdir()) == []
    assert snapshot_outside(tmp_path, versions) == before
