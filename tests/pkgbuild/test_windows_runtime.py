"""The Windows agent .exe ships the CPython embeddable zip plus win_amd64 wheels.

Windows itself cannot run here: these tests use a small stand-in zip with the embeddable
distribution's file names (python.exe, python311.zip, python311._pth are placeholders, not
Windows binaries) and check the payload layout, the rewritten ._pth and the .cmd launcher; they
do not execute python.exe.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from common.errors import UsageError
from pkgbuild.formats import BuildRequest, build_artifacts
from pkgbuild.payload import PayloadSpec, build_payload, project_root
from pkgbuild.wheels import default_cache, scan_cache
from pkgbuild.windows_runtime import embeddable_python, render_pth, unpack_embeddable

needs_wheels = pytest.mark.skipif(
    not (default_cache().is_dir() and scan_cache(default_cache())),
    reason=f"wheel cache {default_cache()} is empty: run `make wheels`",
)


def stand_in_zip(path: Path, minor: int = 11, extra: dict[str, bytes] | None = None) -> Path:
    """A small zip laid out like python-3.X.Y-embed-amd64.zip (placeholder contents)."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("python.exe", b"MZ stand-in")
        zf.writestr(f"python3{minor}.dll", b"MZ stand-in")
        zf.writestr(f"python3{minor}.zip", b"PK stand-in stdlib")
        zf.writestr(f"python3{minor}._pth", f"python3{minor}.zip\r\n.\r\n")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return path


def test_embeddable_version_read_from_pth_name() -> None:
    assert embeddable_python(["python.exe", "python312.zip", "python312._pth"]) == "3.12"


@pytest.mark.parametrize(
    "names",
    [
        ["python311.zip", "python311._pth"],  # no python.exe
        ["python.exe", "python311.zip"],  # no ._pth
        ["python.exe", "python38.zip", "python38._pth"],  # too old
        ["python.exe", "python311.zip", "python311._pth", "python312._pth"],  # ambiguous
    ],
)
def test_not_an_embeddable_zip_is_refused(names: list[str]) -> None:
    with pytest.raises(UsageError) as info:
        embeddable_python(names)
    assert "embed" in (info.value.hint or "")


def test_pth_puts_site_packages_and_payload_lib_on_the_path() -> None:
    lines = render_pth("3.11").split("\r\n")
    assert lines[:5] == ["python311.zip", ".", r"Lib\site-packages", r"..\lib", "import site"]


def test_zip_with_escaping_entry_is_refused_and_nothing_unpacked(tmp_path: Path) -> None:
    archive = stand_in_zip(tmp_path / "evil.zip", extra={"../../evil.txt": b"x"})
    with pytest.raises(UsageError, match="unsafe entry"):
        unpack_embeddable(archive, tmp_path / "rt")
    assert not (tmp_path / "rt").exists()
    assert not (tmp_path / "evil.txt").exists()


def test_not_a_zip_is_a_usage_error(tmp_path: Path) -> None:
    bogus = tmp_path / "python.zip"
    bogus.write_bytes(b"not a zip")
    with pytest.raises(UsageError, match="not a zip"):
        unpack_embeddable(bogus, tmp_path / "rt")


@needs_wheels
def test_windows_payload_ships_runtime_and_win_amd64_wheels(keydir: Path, tmp_path: Path) -> None:
    spec = PayloadSpec(
        package="aliyun-assist", version="1.2.3", target="windows-x86_64", keys=keydir,
        source=project_root(), vendor=True, runtime=stand_in_zip(tmp_path / "embed.zip"),
    )  # fmt: skip
    root = build_payload(spec, tmp_path / "out")
    runtime = root / "runtime"
    assert (runtime / "python.exe").read_bytes() == b"MZ stand-in"
    assert (runtime / "python311._pth").read_text().splitlines()[3] == r"..\lib"
    site = runtime / "Lib" / "site-packages"
    for module in ("requests", "cryptography", "tuf", "cffi", "colorama"):
        assert (site / module).is_dir(), module
    # only CPython 3.11 binaries, and only Windows ones
    pyds = sorted(p.name for p in site.rglob("*.pyd"))
    assert pyds and all(".cp311-" in n or n.endswith(".pyd") and "cp3" not in n for n in pyds)
    assert not list(site.rglob("*.so"))
    assert not [p for p in (root / "lib").iterdir() if p.name not in
                ("common", "agent", "updater", "installer")]  # fmt: skip
    cmd = (root / "bin" / "assist-agent.cmd").read_text()
    assert (
        r'"%~dp0..\runtime\python.exe" -W "ignore:Unable to find acceptable character detection" -m agent.cli'
        in cmd
    )


def test_agent_exe_without_windows_runtime_is_refused(keydir: Path, tmp_path: Path) -> None:
    request = BuildRequest(version="1.0.0", keys=keydir, formats=["exe"], out=tmp_path / "dist")
    with pytest.raises(UsageError) as info:
        build_artifacts(request)
    assert "--windows-runtime" in (info.value.hint or "")
    assert not (tmp_path / "dist").exists() or not list((tmp_path / "dist").iterdir())


def test_agent_exe_with_missing_runtime_file_is_refused(keydir: Path, tmp_path: Path) -> None:
    request = BuildRequest(
        version="1.0.0", keys=keydir, formats=["exe"], out=tmp_path / "dist",
        windows_runtime=tmp_path / "absent.zip",
    )  # fmt: skip
    with pytest.raises(UsageError, match="does not exist"):
        build_artifacts(request)


@needs_wheels
def test_agent_exe_built_with_stand_in_runtime(keydir: Path, tmp_path: Path) -> None:
    request = BuildRequest(
        version="1.0.0", keys=keydir, formats=["exe"], out=tmp_path / "dist",
        windows_runtime=stand_in_zip(tmp_path / "embed.zip"),
    )  # fmt: skip
    [artifact] = build_artifacts(request)
    assert artifact.format == "exe" and artifact.path.read_bytes()[:2] == b"MZ"
