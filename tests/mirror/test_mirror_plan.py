"""Pure parts of the mirror: what to mirror, the region table, bootstrap rendering, index parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.errors import ConfigError, LocalStateError, UsageError, VerificationError
from common.regions import DEFAULT_REGIONS, load_table, region_url
from common.targets import TargetInfo
from mirror import apt, yum
from mirror.bootstrap import render_bootstraps
from mirror.plan import (
    FileEntry,
    Filters,
    channels_of,
    keep_newest,
    plan_fetch,
    select_targets,
)
from mirror.storage import content_type, tree_files


def target(
    package: str,
    version: str,
    os: str = "linux",
    arch: str = "x86_64",
    fmt: str = "deb",
    channels: tuple[str, ...] = ("stable",),
) -> TargetInfo:
    return TargetInfo(
        f"{package}/{version}/{package}_{version}.{fmt}",
        10,
        "ab" * 32,
        package,
        version,
        os,
        arch,
        fmt,
        channels,
    )


TARGETS = [
    target("agent", "1.9"),
    target("agent", "1.10"),
    target("agent", "2.0", channels=("beta",)),
    target("agent", "1.10", os="windows", fmt="exe"),
    target("agent", "1.10", arch="aarch64"),
    target("tool", "0.1"),
]


def test_keep_orders_versions_numerically_not_as_text() -> None:
    kept = select_targets(TARGETS, Filters(keep=1, channels=("stable",)))
    assert {(t.package, t.version) for t in kept} == {("agent", "1.10"), ("tool", "0.1")}


def test_filters_by_os_arch_and_channel() -> None:
    chosen = select_targets(
        TARGETS, Filters(oses=("linux",), archs=("x86_64",), channels=("stable",))
    )
    assert [(t.package, t.version, t.arch, t.format) for t in chosen] == [
        ("agent", "1.10", "x86_64", "deb"),
        ("agent", "1.9", "x86_64", "deb"),
        ("tool", "0.1", "x86_64", "deb"),
    ]
    assert select_targets(TARGETS, Filters(oses=("windows",)))[0].format == "exe"
    assert channels_of(TARGETS, Filters()) == ["beta", "stable"]
    assert channels_of(TARGETS, Filters(channels=("beta",))) == ["beta"]


def test_arch_filter_accepts_debian_and_neutral_names() -> None:
    filters = Filters(archs=("x86_64",))
    assert (
        filters.wants_arch("amd64") and filters.wants_arch("all") and filters.wants_arch("noarch")
    )
    assert not filters.wants_arch("arm64") and not filters.wants_arch("aarch64")


def test_filter_fingerprint_changes_with_filters() -> None:
    assert Filters().fingerprint() == Filters().fingerprint()
    assert Filters(keep=1).fingerprint() != Filters().fingerprint()


def test_keep_newest_with_unparsable_versions() -> None:
    items = [("p", "1.0"), ("p", "weird"), ("p", "2.0")]
    assert keep_newest(items, lambda i: i[0], lambda i: i[1], 2) == [("p", "1.0"), ("p", "2.0")]


def test_plan_fetch_dedups_and_skips_what_we_have() -> None:
    a, b = FileEntry("x/a", 1, "1" * 64), FileEntry("x/b", 2, "2" * 64)
    plan = plan_fetch([b, a, a], lambda e: e.relpath == "x/a")
    assert plan.wanted == [a, b] and plan.fetch == [b] and plan.fetch_bytes == 2


def test_consistent_snapshot_name() -> None:
    assert target("agent", "1.0").relpath == f"targets/agent/1.0/{'ab' * 32}.agent_1.0.deb"


def test_region_table_defaults_and_overrides(tmp_path: Path) -> None:
    table = load_table(None)
    assert {
        "cn-hangzhou",
        "cn-shanghai",
        "cn-beijing",
        "cn-shenzhen",
        "cn-hongkong",
        "ap-southeast-1",
        "us-west-1",
        "eu-central-1",
    } <= set(DEFAULT_REGIONS)
    assert region_url("cn-hangzhou", table) == "http://axt.cn-hangzhou.alibaba-inc.com:8080/assist/"
    overrides = tmp_path / "regions.toml"
    overrides.write_text(
        '[regions]\ncn-hangzhou = "http://127.0.0.1:9000/m"\nlab-1 = "http://lab/{region}/"\n'
    )
    table = load_table(overrides)
    assert region_url("cn-hangzhou", table) == "http://127.0.0.1:9000/m/"
    assert region_url("lab-1", table) == "http://lab/lab-1/"
    with pytest.raises(UsageError, match="unknown region"):
        region_url("nowhere", table)
    assert (
        region_url("cn-beijing", load_table(None, "http://m.{region}.lab/"))
        == "http://m.cn-beijing.lab/"
    )
    overrides.write_text("[regions]\ncn-hangzhou = 3\n")
    with pytest.raises(ConfigError):
        load_table(overrides)


def test_bootstrap_placeholders_are_filled(tmp_path: Path) -> None:
    for name in ("bootstrap.sh", "bootstrap.ps1"):
        (tmp_path / name).write_text("URL=@MIRROR_URL@\nFPR=@GPG_FINGERPRINT@\nCH=@CHANNEL@\n")
    scripts = render_bootstraps("http://m/assist/", "ABCD", "stable", tmp_path)
    filled = "URL=http://m/assist/\nFPR=ABCD\nCH=stable\n"
    assert scripts == {"bootstrap.sh": filled, "bootstrap.ps1": filled}
    assert render_bootstraps("", "ABCD", "stable", tmp_path) == {}


def test_bootstraps_come_from_the_installed_installer_package() -> None:
    scripts = render_bootstraps("http://m/assist/", "ABCD", "stable")
    assert set(scripts) == {"bootstrap.sh", "bootstrap.ps1"}
    assert "http://m/assist/" in scripts["bootstrap.sh"] and "@MIRROR_URL@" not in str(scripts)


def test_a_missing_bootstrap_template_fails_loudly(tmp_path: Path) -> None:
    """It used to log at INFO and publish a mirror without bootstrap/bootstrap.ps1."""
    (tmp_path / "bootstrap.sh").write_text("URL=@MIRROR_URL@\n")
    with pytest.raises(LocalStateError, match=r"bootstrap\.ps1 is missing"):
        render_bootstraps("http://m/assist/", "ABCD", "stable", tmp_path)


RELEASE = """Origin: Test
Acquire-By-Hash: yes
Valid-Until: Sat, 01 Jan 2000 00:00:00 UTC
SHA256:
 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 0 main/binary-amd64/Packages
 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 0 main/binary-arm64/Packages
 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 0 main/i18n/Index
"""


def test_release_parsing_expiry_and_by_hash() -> None:
    import datetime as dt

    release = apt.parse_release(RELEASE)
    entries = apt.index_entries(release, "stable", ["amd64"])
    assert [e.relpath for e in entries] == ["apt/dists/stable/main/binary-amd64/Packages"]
    assert len(apt.index_entries(release, "stable", None)) == 2
    assert apt.by_hash_paths(release, "main/binary-amd64/Packages", b"") == [
        "main/binary-amd64/by-hash/SHA256/e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    ]
    assert apt.by_hash_paths(release, "main/binary-amd64/Packages", b"x") == []
    with pytest.raises(VerificationError, match="expired"):
        apt.check_release_fresh(release, "stable", dt.datetime.now(dt.timezone.utc))


def test_packages_with_unsafe_filename_are_refused() -> None:
    pkgs = apt.parse_packages(
        "Package: x\nVersion: 1\nFilename: ../../etc/x.deb\nSize: 1\nSHA256: aa\n"
    )
    with pytest.raises(VerificationError, match="unsafe"):
        apt.pool_entry(pkgs[0])
    with pytest.raises(VerificationError):
        apt.parse_packages("Package: x\nVersion: 1\nFilename: pool/x.deb\n")


def test_repomd_with_unsafe_location_or_weak_checksum_is_refused() -> None:
    bad = (
        b'<repomd xmlns="http://linux.duke.edu/metadata/repo"><data type="primary">'
        b'<checksum type="sha256">aa</checksum><location href="../../x"/><size>1</size></data></repomd>'
    )
    with pytest.raises(VerificationError, match="unsafe"):
        yum.parse_repomd(bad, "yum/stable")
    weak = bad.replace(b"sha256", b"md5").replace(b"../../x", b"repodata/x")
    with pytest.raises(VerificationError, match="only sha256"):
        yum.parse_repomd(weak, "yum/stable")


def test_tree_files_put_signed_entry_points_last(tmp_path: Path) -> None:
    for rel in ("stable/InRelease", "stable/Release", "stable/Release.gpg", "stable/main/Packages"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    assert tree_files(tmp_path) == [
        "stable/main/Packages",
        "stable/Release.gpg",
        "stable/Release",
        "stable/InRelease",
    ]
    assert (
        content_type("x/InRelease") == "text/plain" and content_type("a.rpm") == "application/x-rpm"
    )


def test_free_space_is_checked_before_downloading(tmp_path: Path) -> None:
    from common.errors import NoSpaceError
    from mirror.fullsync import check_space

    check_space(tmp_path, [FileEntry("a", 1024, "0" * 64)], tmp_path)
    with pytest.raises(NoSpaceError, match="needs"):
        check_space(tmp_path, [FileEntry("a", 1 << 60, "0" * 64)], tmp_path)


def test_file_storage_publishes_staged_files_and_swaps_trees(tmp_path: Path) -> None:
    from mirror.storage import FileStorage, Publication

    root, staging = tmp_path / "root", tmp_path / "staging"
    (root / "apt/pool").mkdir(parents=True)
    (root / "apt/pool/a.deb").write_text("old bytes")  # upstream re-published it: replaced
    (root / "apt/pool/gone.deb").write_text("x")
    (staging / "apt/pool").mkdir(parents=True)
    (staging / "apt/pool/a.deb").write_text("new bytes")
    (staging / "apt/dists/stable").mkdir(parents=True)
    (staging / "apt/dists/stable/InRelease").write_text("v1")
    (staging / "metadata").mkdir()
    (staging / "metadata/timestamp.json").write_text("{}")
    FileStorage(root).publish(
        Publication(
            content=["apt/pool/a.deb"],
            trees=["apt/dists"],
            metadata=["metadata/timestamp.json"],
            remove=["apt/pool/gone.deb"],
        ),
        staging,
    )
    assert (root / "apt/pool/a.deb").read_text() == "new bytes"
    assert not (root / "apt/pool/gone.deb").exists()
    assert (root / "apt/dists").is_symlink() and (
        root / "apt/dists/stable/InRelease"
    ).read_text() == "v1"
    assert not any(staging.rglob("*.*"))  # everything was moved, nothing copied
    first = (root / "apt/dists").readlink()
    (staging / "apt/dists/stable").mkdir(parents=True)
    (staging / "apt/dists/stable/InRelease").write_text("v2")
    FileStorage(root).publish(Publication(trees=["apt/dists"]), staging)
    assert (root / "apt/dists/stable/InRelease").read_text() == "v2"
    assert (root / "apt/dists").readlink() != first
    assert (root / "apt" / first).is_dir()  # the previous generation stays for readers mid-way
