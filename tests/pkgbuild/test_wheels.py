"""Wheel selection for vendoring: one consistent set per target that serves CPython 3.9–3.13."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from common.errors import LocalStateError
from pkgbuild.wheels import scan_cache, select_wheels, target_requirements, vendor_wheels

LINUX = "manylinux2014_x86_64.manylinux_2_17_x86_64"


def make_wheel(
    cache: Path, name: str, requires_python: str = "", files: dict[str, str] | None = None
) -> None:
    """A minimal real wheel file (zip with METADATA) named `name`."""
    project, version = name.split("-")[:2]
    meta = f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n"
    if requires_python:
        meta += f"Requires-Python: {requires_python}\n"
    with zipfile.ZipFile(cache / name, "w") as archive:
        archive.writestr(f"{project}-{version}.dist-info/METADATA", meta + "\n")
        for path, text in (files or {project + "/__init__.py": ""}).items():
            archive.writestr(path, text)


def names(cache: Path, target: str) -> list[str]:
    return sorted(w.path.name for w in select_wheels(scan_cache(cache), target))


def test_pure_wheel_newest_that_supports_all_pythons(tmp_path: Path) -> None:
    make_wheel(tmp_path, "tuf-6.0.0-py3-none-any.whl", ">=3.8")
    make_wheel(tmp_path, "tuf-7.0.1-py3-none-any.whl", ">=3.10")  # would break python 3.9
    assert names(tmp_path, "linux-x86_64") == ["tuf-6.0.0-py3-none-any.whl"]


def test_abi3_lowest_floor_once_per_platform(tmp_path: Path) -> None:
    for floor in ("cp39", "cp311"):
        make_wheel(tmp_path, f"cryptography-50.0.2-{floor}-abi3-{LINUX}.whl")
        make_wheel(tmp_path, f"cryptography-50.0.2-{floor}-abi3-manylinux2014_aarch64.whl")
        make_wheel(tmp_path, f"cryptography-50.0.2-{floor}-abi3-win_amd64.whl")
    assert names(tmp_path, "linux-x86_64") == [f"cryptography-50.0.2-cp39-abi3-{LINUX}.whl"]
    assert names(tmp_path, "linux-aarch64") == [
        "cryptography-50.0.2-cp39-abi3-manylinux2014_aarch64.whl"
    ]
    assert names(tmp_path, "windows-x86_64") == ["cryptography-50.0.2-cp39-abi3-win_amd64.whl"]


def test_version_specific_binaries_need_every_python(tmp_path: Path) -> None:
    for py in ("39", "310", "311", "312", "313"):
        make_wheel(tmp_path, f"cffi-2.0.0-cp{py}-cp{py}-{LINUX}.whl")
    for py in ("310", "311", "312", "313"):  # newer, but no cp39 build: not usable
        make_wheel(tmp_path, f"cffi-2.1.1-cp{py}-cp{py}-{LINUX}.whl")
    chosen = names(tmp_path, "linux-x86_64")
    assert len(chosen) == 5 and all(n.startswith("cffi-2.0.0-") for n in chosen)


def test_no_usable_version_is_an_error(tmp_path: Path) -> None:
    make_wheel(tmp_path, f"cffi-2.1.1-cp313-cp313-{LINUX}.whl")
    with pytest.raises(LocalStateError, match="cffi"):
        select_wheels(scan_cache(tmp_path), "linux-x86_64")


def test_missing_project_names_make_wheels(tmp_path: Path) -> None:
    make_wheel(tmp_path, "requests-2.32.5-py3-none-any.whl")
    with pytest.raises(LocalStateError, match="packaging") as info:
        vendor_wheels(tmp_path / "lib", "linux-x86_64", tmp_path, ["requests>=2", "packaging"])
    assert "make wheels" in (info.value.hint or "")
    assert not (tmp_path / "lib").exists()


def test_unsafe_wheel_entry_is_refused(tmp_path: Path) -> None:
    make_wheel(tmp_path, "evil-1.0-py3-none-any.whl", files={"../../escape.py": "x"})
    with pytest.raises(LocalStateError, match="unsafe entry"):
        vendor_wheels(tmp_path / "out" / "lib", "linux-x86_64", tmp_path, ["evil"])
    assert not (tmp_path / "escape.py").exists()


def test_target_markers() -> None:
    reqs = [
        "requests>=2.31",
        "tomli>=2.0; python_version < '3.11'",
        "pywin32; sys_platform == 'win32'",
    ]
    assert target_requirements(reqs, "linux-x86_64", "3.9") == ["requests>=2.31", "tomli>=2.0"]
    assert target_requirements(reqs, "linux-x86_64", "3.12") == ["requests>=2.31"]
    win = target_requirements(reqs, "windows-x86_64", "3.12")
    assert win == ["requests>=2.31", "pywin32", "colorama"]


def test_wheel_data_purelib_is_installed_and_scripts_skipped(tmp_path: Path) -> None:
    make_wheel(
        tmp_path,
        "odd-1.0-py3-none-any.whl",
        files={
            "odd/__init__.py": "A = 1\n",
            "odd-1.0.data/purelib/odd_extra.py": "B = 2\n",
            "odd-1.0.data/scripts/odd-tool": "#!python\n",
        },
    )
    lib = tmp_path / "lib"
    assert vendor_wheels(lib, "linux-x86_64", tmp_path, ["odd"]) == ["odd-1.0-py3-none-any.whl"]
    assert (lib / "odd/__init__.py").read_text() == "A = 1\n"
    assert (lib / "odd_extra.py").read_text() == "B = 2\n"
    assert not list(lib.rglob("odd-tool")) and not (lib / "odd-1.0.data").exists()
