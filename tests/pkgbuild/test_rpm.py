"""The .rpm: rpmsign signature checked by rpmkeys, relocatable install with real scriptlets."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from pkgbuild.formats.rpm import sign_rpm

Builder = Callable[..., dict[str, Path]]


def rpmdb(tmp_path: Path, keydir: Path | None) -> Path:
    """An rpm database trusting only `keydir`'s OpenPGP key (or nothing)."""
    db = tmp_path / "rpmdb"
    db.mkdir(parents=True)
    if keydir is not None:
        subprocess.run(
            ["rpmkeys", "--dbpath", str(db), "--import", str(keydir / "public/RPM-GPG-KEY-assist")],
            check=True, capture_output=True,
        )  # fmt: skip
    return db


def checksig(db: Path, rpm: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["rpmkeys", "--dbpath", str(db), "--checksig", str(rpm)], capture_output=True, text=True
    )


def rpm(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["rpm", "--dbpath", str(db), *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_signature_verifies_with_our_key(
    built_artifacts: dict[str, Path], keydir: Path, tmp_path: Path
) -> None:
    package = built_artifacts["rpm"]
    assert package.name == "aliyun-assist-1.0.0-1.x86_64.rpm"
    result = checksig(rpmdb(tmp_path, keydir), package)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "signatures OK" in result.stdout or "digests signatures OK" in result.stdout


def test_unknown_key_is_not_ok(built_artifacts: dict[str, Path], tmp_path: Path) -> None:
    result = checksig(rpmdb(tmp_path, None), built_artifacts["rpm"])
    assert result.returncode != 0


def test_flipped_byte_is_not_ok(
    built_artifacts: dict[str, Path], keydir: Path, tmp_path: Path
) -> None:
    tampered = tmp_path / built_artifacts["rpm"].name
    data = bytearray(built_artifacts["rpm"].read_bytes())
    data[-100] ^= 0x01  # inside the payload
    tampered.write_bytes(bytes(data))
    result = checksig(rpmdb(tmp_path, keydir), tampered)
    assert result.returncode != 0
    assert "NOT OK" in result.stdout


def test_resigned_with_another_key_is_rejected(
    built_artifacts: dict[str, Path], keydir: Path, other_keydir: Path, tmp_path: Path
) -> None:
    forged = tmp_path / built_artifacts["rpm"].name
    shutil.copyfile(built_artifacts["rpm"], forged)
    subprocess.run(["rpmsign", "--delsign", str(forged)], check=True, capture_output=True)
    sign_rpm(forged, other_keydir)
    assert checksig(rpmdb(tmp_path / "theirs", other_keydir), forged).returncode == 0
    result = checksig(rpmdb(tmp_path, keydir), forged)
    assert result.returncode != 0


def test_relocated_install_sets_current_and_erase_cleans_up(
    built_artifacts: dict[str, Path], keydir: Path, tmp_path: Path
) -> None:
    db = rpmdb(tmp_path, keydir)
    prefix = tmp_path / "prefix"
    # --nodeps: the scratch database knows no /bin/sh; signature checking stays on
    rpm(db, "-i", "--nodeps", "--prefix", str(prefix), str(built_artifacts["rpm"]))
    assert os.readlink(prefix / "current") == "versions/1.0.0"
    assert (prefix / "current/VERSION").read_text().strip() == "1.0.0"
    assert os.access(prefix / "current/bin/assist-agent", os.X_OK)
    assert (prefix / "state").is_dir() and (prefix / "log").is_dir()
    assert os.stat(prefix / "state").st_mode & 0o777 == 0o700  # task output: private
    assert rpm(db, "-q", "aliyun-assist").stdout.strip() == "aliyun-assist-1.0.0-1.x86_64"
    rpm(db, "-e", "aliyun-assist")
    assert not (prefix / "current").is_symlink()
    assert not (prefix / "versions/1.0.0").exists()


def old_new_and_db(
    artifact_builder: Builder, keydir: Path, tmp_path: Path
) -> tuple[Path, Path, Path, Path]:
    """The 1.0.0 and 2.0.0 rpms, an rpm database trusting our key, and the install prefix."""
    old = artifact_builder("1.0.0", formats=("rpm",))["rpm"]
    new = artifact_builder("2.0.0", formats=("rpm",))["rpm"]
    return old, new, rpmdb(tmp_path, keydir), tmp_path / "prefix"


def test_older_rpm_after_newer_keeps_newer_current(
    artifact_builder: Builder, keydir: Path, tmp_path: Path
) -> None:
    old, new, db, prefix = old_new_and_db(artifact_builder, keydir, tmp_path)
    rpm(db, "-i", "--nodeps", "--prefix", str(prefix), str(new))
    # installed side by side (like kernels): the older one must not take over
    rpm(db, "-i", "--nodeps", "--oldpackage", "--prefix", str(prefix), str(old))
    assert os.readlink(prefix / "current") == "versions/2.0.0"
    assert (prefix / "versions/1.0.0/VERSION").is_file()
    # erasing the newer one hands current back to the newest version left
    rpm(db, "-e", "aliyun-assist-2.0.0")
    assert os.readlink(prefix / "current") == "versions/1.0.0"
    assert (prefix / "current/VERSION").read_text().strip() == "1.0.0"


def test_upgrade_keeps_a_runnable_current(
    artifact_builder: Builder, keydir: Path, tmp_path: Path
) -> None:
    old, new, db, prefix = old_new_and_db(artifact_builder, keydir, tmp_path)
    rpm(db, "-i", "--nodeps", "--prefix", str(prefix), str(old))
    rpm(db, "-U", "--nodeps", "--prefix", str(prefix), str(new))
    assert os.readlink(prefix / "current") == "versions/2.0.0"
    assert not (prefix / "versions/1.0.0").exists()
    assert not (prefix / "previous").is_symlink()  # 1.0.0's files went with the upgrade


def test_aarch64_rpm_is_built_and_signed(
    artifact_builder: Builder, keydir: Path, tmp_path: Path
) -> None:
    package = artifact_builder("1.0.0", formats=("rpm",), arch="aarch64")["rpm"]
    assert package.name == "aliyun-assist-1.0.0-1.aarch64.rpm"
    arch = subprocess.run(
        ["rpm", "-qp", "--qf", "%{ARCH}", str(package)], capture_output=True, text=True, check=True
    ).stdout
    assert arch == "aarch64"
    assert checksig(rpmdb(tmp_path, keydir), package).returncode == 0


def test_a_failed_build_step_names_its_cause(tmp_path: Path) -> None:
    """rpmbuild's own last line ("Bad exit status from …") says nothing; the cause comes with it."""
    from common.errors import ToolError
    from pkgbuild.formats import run_tool

    spec = tmp_path / "broken.spec"
    spec.write_text(
        "Name: broken\nVersion: 1\nRelease: 1\nSummary: s\nLicense: MIT\n"
        "%description\nd\n%install\ncp /nonexistent/file %{buildroot}/\n%files\n"
    )
    with pytest.raises(ToolError) as caught:
        run_tool(
            ["rpmbuild", "-bb", "--quiet", "--define", f"_topdir {tmp_path}/top",
             "--buildroot", str(tmp_path / "root"), str(spec)]
        )  # fmt: skip
    message = str(caught.value)
    assert "Bad exit status" in message and "/nonexistent/file" in message, message


def test_builds_of_one_version_at_once_do_not_collide(keydir: Path, tmp_path: Path) -> None:
    """Two builds of NAME-VERSION at the same time (two CI jobs, two xdist workers) each get
    their own buildroot: both packages are complete and verify."""
    from concurrent.futures import ThreadPoolExecutor

    from pkgbuild.formats import BuildRequest, build_artifacts

    def build(n: int) -> Path:
        request = BuildRequest(
            version="7.7.7", keys=keydir, arches=["x86_64"], formats=["rpm"],
            out=tmp_path / f"out-{n}", vendor=False,
        )  # fmt: skip
        (artifact,) = build_artifacts(request)
        return artifact.path

    with ThreadPoolExecutor(2) as pool:
        built = list(pool.map(build, range(2)))
    db = rpmdb(tmp_path, keydir)
    for n, package in enumerate(built):
        assert checksig(db, package).returncode == 0
        prefix = tmp_path / f"prefix-{n}"
        rpm(db, "-i", "--nodeps", "--prefix", str(prefix), str(package))
        assert (prefix / "versions/7.7.7/VERSION").read_text().strip() == "7.7.7"
        rpm(db, "-e", "aliyun-assist")
