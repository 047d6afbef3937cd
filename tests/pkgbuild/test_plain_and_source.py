"""--package NAME builds other software as-is under /opt/NAME; --source builds a given agent tree."""

from __future__ import annotations

import shutil
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from pkgbuild.payload import project_root

Builder = Callable[..., dict[str, Path]]


@pytest.fixture(scope="module")
def plain(artifact_builder: Builder, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    src = tmp_path_factory.mktemp("hello-src")
    (src / "bin").mkdir()
    (src / "bin" / "hello").write_text("#!/bin/sh\necho hello\n")
    (src / "bin" / "hello").chmod(0o755)
    (src / "README").write_text("hello tool\n")
    return artifact_builder(
        "0.4.1", formats=("deb", "rpm", "exe"), package="hello-tool", source=src
    )


def test_plain_deb_installs_under_opt_without_scripts(
    plain: dict[str, Path], tmp_path: Path
) -> None:
    deb = plain["deb"]
    assert deb.name == "hello-tool_0.4.1_amd64.deb"
    info = subprocess.run(["dpkg-deb", "--info", str(deb)], capture_output=True, text=True).stdout
    assert "Package: hello-tool" in info and "postinst" not in info
    root = tmp_path / "root"
    for sub in ("info", "updates"):
        (root / "var/lib/dpkg" / sub).mkdir(parents=True)
    for name in ("status", "available"):
        (root / "var/lib/dpkg" / name).touch()
    proc = subprocess.run(
        ["dpkg", "--root", str(root), "--force-script-chrootless", "-i", str(deb)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = subprocess.run([str(root / "opt/hello-tool/bin/hello")], capture_output=True, text=True)
    assert out.stdout == "hello\n"
    assert (root / "opt/hello-tool/README").read_text() == "hello tool\n"
    assert not (root / "usr/local/share/aliyun-assist").exists()


def test_plain_rpm_is_relocatable_and_signed(
    plain: dict[str, Path], keydir: Path, tmp_path: Path
) -> None:
    rpm = plain["rpm"]
    files = subprocess.run(["rpm", "-qpl", str(rpm)], capture_output=True, text=True).stdout.split()
    assert files == ["/opt/hello-tool", "/opt/hello-tool/README", "/opt/hello-tool/bin",
                     "/opt/hello-tool/bin/hello"]  # fmt: skip
    scripts = subprocess.run(["rpm", "-qp", "--scripts", str(rpm)], capture_output=True, text=True)
    assert scripts.stdout.strip() == ""
    db = tmp_path / "db"
    db.mkdir()
    subprocess.run(
        ["rpmkeys", "--dbpath", str(db), "--import", str(keydir / "public/RPM-GPG-KEY-assist")],
        check=True,
    )
    check = subprocess.run(
        ["rpmkeys", "--dbpath", str(db), "--checksig", str(rpm)], capture_output=True
    )
    assert check.returncode == 0


def test_plain_exe_is_signed(plain: dict[str, Path], keydir: Path) -> None:
    assert plain["exe"].name == "hello-tool-0.4.1-setup.exe"
    verify = subprocess.run(
        ["osslsigncode", "verify", "-in", str(plain["exe"]), "-CAfile",
         str(keydir / "public/authenticode.crt")], capture_output=True,
    )  # fmt: skip
    assert verify.returncode == 0


def test_source_option_builds_that_agent(artifact_builder: Builder, tmp_path: Path) -> None:
    """A test can ship a deliberately broken agent: the payload carries exactly its code."""
    src = tmp_path / "src"
    for package in ("common", "agent"):
        shutil.copytree(project_root() / package, src / package,
                        ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    broken = (
        "def main(argv=None):\n    raise SystemExit(70)\n\nif __name__ == '__main__':\n    main()\n"
    )
    (src / "agent" / "cli.py").write_text(broken)
    tarball = artifact_builder("9.9.9", formats=("tar.gz",), source=src)["tar.gz"]
    with tarfile.open(tarball) as tar:
        names = tar.getnames()
        member = tar.extractfile("versions/9.9.9/lib/agent/cli.py")
        assert member is not None and member.read().decode() == broken
    assert not any(n.startswith("versions/9.9.9/lib/updater") for n in names)  # not in that source
    extracted = tmp_path / "prefix"
    with tarfile.open(tarball) as tar:
        tar.extractall(extracted, filter="tar")
    run = subprocess.run(
        [str(extracted / "versions/9.9.9/bin/assist-agent"), "run"], capture_output=True
    )
    assert run.returncode == 70
