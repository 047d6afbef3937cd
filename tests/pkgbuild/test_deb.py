"""The .deb: control fields, contents, and real installs with `dpkg --root` (chrootless scripts)."""

from __future__ import annotations

import os
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

PREFIX = "usr/local/share/aliyun-assist"
Builder = Callable[..., dict[str, Path]]


def dpkg_root(tmp_path: Path) -> Path:
    """An empty dpkg database under tmp_path/root."""
    root = tmp_path / "root"
    for sub in ("info", "updates"):
        (root / "var/lib/dpkg" / sub).mkdir(parents=True)
    for name in ("status", "available"):
        (root / "var/lib/dpkg" / name).touch()
    return root


def dpkg(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["dpkg", "--root", str(root), "--force-script-chrootless", "--force-not-root", *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def current_of(root: Path) -> str:
    return os.readlink(root / PREFIX / "current")


def test_control_fields_and_contents(built_artifacts: dict[str, Path]) -> None:
    deb = built_artifacts["deb"]
    assert deb.name == "aliyun-assist_1.0.0_amd64.deb"
    fields = {
        name: subprocess.run(
            ["dpkg-deb", "--field", str(deb), name], capture_output=True, text=True, check=True
        ).stdout.strip()
        for name in ("Package", "Version", "Architecture", "Maintainer", "Description")
    }
    assert fields["Package"] == "aliyun-assist"
    assert fields["Version"] == "1.0.0"
    assert fields["Architecture"] == "amd64"
    assert "release@assist.invalid" in fields["Maintainer"]
    assert fields["Description"].startswith("Aliyun Assist agent")
    listing = subprocess.run(
        ["dpkg-deb", "--contents", str(deb)], capture_output=True, text=True, check=True
    ).stdout
    base = f"./{PREFIX}/versions/1.0.0"
    for path in ("bin/assist-agent", "lib/common/__init__.py", "lib/agent/cli.py",
                 "share/root.json", "share/keys/RPM-GPG-KEY-assist", "VERSION"):  # fmt: skip
        assert f"{base}/{path}" in listing, path
    assert "root/root" in listing and "__pycache__" not in listing and "/tests/" not in listing
    info = subprocess.run(["dpkg-deb", "--info", str(deb)], capture_output=True, text=True).stdout
    for script in ("postinst", "prerm", "postrm"):
        assert script in info


def test_install_sets_current_and_runs_clean(
    built_artifacts: dict[str, Path], tmp_path: Path
) -> None:
    root = dpkg_root(tmp_path)
    dpkg(root, "-i", str(built_artifacts["deb"]))
    prefix = root / PREFIX
    assert current_of(root) == "versions/1.0.0"
    assert (prefix / "current/VERSION").read_text().strip() == "1.0.0"
    assert os.access(prefix / "current/bin/assist-agent", os.X_OK)
    for sub in ("state", "config", "log"):
        assert (prefix / sub).is_dir()
    assert os.stat(prefix / "state").st_mode & 0o777 == 0o700  # task output: private
    assert not (prefix / "previous").exists()
    status = subprocess.run(
        ["dpkg-query", "--admindir", str(root / "var/lib/dpkg"), "-W", "-f=${Status} ${Version}",
         "aliyun-assist"], capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert status == "install ok installed 1.0.0"
    # removal hands nothing back (no previous) and drops the link, keeping state/config/log
    dpkg(root, "--remove", "aliyun-assist")
    assert not (prefix / "current").is_symlink()
    assert not (prefix / "versions/1.0.0").exists()
    assert (prefix / "state").is_dir()


def test_upgrade_moves_current_forward(artifact_builder: Builder, tmp_path: Path) -> None:
    old = artifact_builder("1.0.0", formats=("deb",))["deb"]
    new = artifact_builder("2.0.0", formats=("deb",))["deb"]
    root = dpkg_root(tmp_path)
    dpkg(root, "-i", str(old))
    dpkg(root, "-i", str(new))
    assert current_of(root) == "versions/2.0.0"
    # dpkg removed 1.0.0's files on upgrade, so there is no usable previous to point at
    assert not (root / PREFIX / "versions/1.0.0").exists()
    assert not (root / PREFIX / "previous").is_symlink()


def unpack_as_current(root: Path, tarball: Path, version: str) -> Path:
    """What the self-updater leaves: `tarball` unpacked into root/PREFIX, current -> it."""
    prefix = root / PREFIX
    prefix.mkdir(parents=True)
    with tarfile.open(tarball) as tar:
        tar.extractall(prefix, filter="tar")
    os.symlink(f"versions/{version}", prefix / "current")
    return prefix


def test_older_package_after_self_update_keeps_newer_current(
    artifact_builder: Builder, tmp_path: Path
) -> None:
    """The updater unpacked 2.0.0 itself; installing the 1.0.0 package must not downgrade."""
    old = artifact_builder("1.0.0", formats=("deb",))["deb"]
    newer_tar = artifact_builder("2.0.0", formats=("tar.gz",))["tar.gz"]
    root = dpkg_root(tmp_path)
    prefix = unpack_as_current(root, newer_tar, "2.0.0")
    dpkg(root, "-i", str(old))
    assert current_of(root) == "versions/2.0.0"
    assert (prefix / "versions/1.0.0/VERSION").read_text().strip() == "1.0.0"
    assert not (prefix / "previous").is_symlink()
    # removing the older package leaves the newer current alone
    dpkg(root, "--remove", "aliyun-assist")
    assert current_of(root) == "versions/2.0.0"


def test_downgrade_by_package_manager_leaves_a_runnable_current(
    artifact_builder: Builder, tmp_path: Path
) -> None:
    old = artifact_builder("1.0.0", formats=("deb",))["deb"]
    new = artifact_builder("2.0.0", formats=("deb",))["deb"]
    root = dpkg_root(tmp_path)
    dpkg(root, "-i", str(new))
    dpkg(root, "-i", str(old))  # dpkg replaces 2.0.0's files: current must not dangle
    assert current_of(root) == "versions/1.0.0"
    assert (root / PREFIX / "current/VERSION").read_text().strip() == "1.0.0"


def test_removing_current_hands_back_to_previous(artifact_builder: Builder, tmp_path: Path) -> None:
    new = artifact_builder("2.0.0", formats=("deb",))["deb"]
    old_tar = artifact_builder("1.0.0", formats=("tar.gz",))["tar.gz"]
    root = dpkg_root(tmp_path)
    prefix = unpack_as_current(root, old_tar, "1.0.0")
    dpkg(root, "-i", str(new))
    assert current_of(root) == "versions/2.0.0"
    assert os.readlink(prefix / "previous") == "versions/1.0.0"
    dpkg(root, "--purge", "aliyun-assist")
    assert current_of(root) == "versions/1.0.0"
    assert not (prefix / "previous").is_symlink()


@pytest.mark.parametrize("arch", ["aarch64"])
def test_cross_arch_deb(artifact_builder: Builder, arch: str) -> None:
    deb = artifact_builder("1.0.0", formats=("deb",), arch=arch)["deb"]
    assert deb.name == "aliyun-assist_1.0.0_arm64.deb"
    field = subprocess.run(
        ["dpkg-deb", "--field", str(deb), "Architecture"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert field.stdout.strip() == "arm64"
