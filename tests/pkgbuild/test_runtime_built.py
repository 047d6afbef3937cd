"""The release artifacts with the real built runtime: glibc floor, imports, size, isolation.

Needs the runtime that `make runtime` builds into the machine-wide cache (skips otherwise).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from runtimekit import (
    build_release,
    cached_runtime,
    glibc_versions,
    is_elf,
    missing,
    require_runtime,
    unpack_artifact,
)

from pkgbuild.runtime import GLIBC_FLOOR

FLOOR = tuple(int(p) for p in GLIBC_FLOOR.split("."))
PAYLOAD_LIMIT = 40 * 1000 * 1000  # bytes: "compressed agent payload <= 40 MB"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def release(keydir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """aliyun-assist 1.0.0 for x86_64 as deb, rpm and tar.gz, built with the runtime."""
    require_runtime("x86_64")
    return build_release(keydir, tmp_path_factory.mktemp("release"), "deb,rpm,tar.gz")


def test_every_shipped_elf_file_needs_at_most_glibc_2_17(
    release: dict[str, Path], keydir: Path, tmp_path: Path
) -> None:
    highest: tuple[int, ...] = (0,)
    worst = ""
    checked = 0
    artifacts = dict(release)
    if cached_runtime("aarch64") is not None:
        arm = build_release(keydir, tmp_path / "arm", "tar.gz", "aarch64")
        artifacts.update({f"aarch64 {fmt}": path for fmt, path in arm.items()})
    for fmt, artifact in sorted(artifacts.items()):
        tree = unpack_artifact(artifact, tmp_path / fmt.replace(" ", "-").replace(".", "_"))
        for path in tree.rglob("*"):
            if not is_elf(path):
                continue
            checked += 1
            for version in glibc_versions(path):
                if version > highest:
                    highest, worst = version, f"{fmt}: {path.relative_to(tree)}"
    shown = ".".join(map(str, highest))
    print(f"\nhighest GLIBC symbol version over {checked} ELF files: GLIBC_{shown} ({worst})")
    assert checked > 20, "the artifacts must carry the runtime's ELF files"
    assert highest <= FLOOR, f"GLIBC_{shown} needed by {worst}: above the {GLIBC_FLOOR} floor"


def test_deb_has_no_python_dependency_and_carries_the_runtime(
    release: dict[str, Path], tmp_path: Path
) -> None:
    control = subprocess.run(
        ["dpkg-deb", "-f", str(release["deb"])], capture_output=True, text=True, check=True
    ).stdout
    assert "python" not in control.split("Description:")[0].lower()
    rpm_requires = subprocess.run(
        ["rpm", "-qpR", str(release["rpm"])], capture_output=True, text=True, check=True
    ).stdout
    assert "python" not in rpm_requires
    tree = unpack_artifact(release["deb"], tmp_path / "deb")
    python = tree / "usr/local/share/aliyun-assist/versions/1.0.0/runtime/bin/python3"
    assert python.exists()


def test_compressed_payload_within_40_mb(release: dict[str, Path]) -> None:
    sizes = {fmt: path.stat().st_size for fmt, path in release.items()}
    print(f"\ncompressed artifact sizes (bytes): {sizes}")
    assert all(size <= PAYLOAD_LIMIT for size in sizes.values()), sizes


def test_shipped_runtime_imports_everything_the_agent_needs_isolated(
    release: dict[str, Path], tmp_path: Path
) -> None:
    """Run the unpacked runtime from an unusual path with an empty environment: relocatable."""
    tree = unpack_artifact(release["tar.gz"], tmp_path / "some where" / "else")
    python = tree / "versions/1.0.0/runtime/bin/python3"
    code = (
        "import ssl, sqlite3, ctypes, lzma, bz2, zlib, hashlib, json, sys, cryptography, tuf, "
        "requests, croniter, securesystemslib; "
        "from cryptography.hazmat.primitives.asymmetric import ed25519; "
        "ed25519.Ed25519PrivateKey.generate(); "
        "hashlib.new('sha256', b'x', usedforsecurity=False); "
        "print(sys.prefix, ssl.OPENSSL_VERSION, sqlite3.sqlite_version, "
        "' '.join(m for m in ('_ssl', '_hashlib') if m in sys.builtin_module_names), sep='|')"
    )
    proc = subprocess.run(
        [str(python), "-I", "-c", code], env={}, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    prefix, openssl, _sqlite, builtin = proc.stdout.strip().split("|")
    assert prefix == str(python.parent.parent)
    assert openssl.startswith("OpenSSL 3.")
    # one libcrypto in memory: both OpenSSL modules are part of the interpreter, not lib-dynload
    assert builtin == "_ssl _hashlib"
    assert not list((python.parent.parent / "lib").glob("python3.*/lib-dynload/_ssl.*"))


def test_aarch64_runtime_imports_ssl_cryptography_tuf_under_qemu(
    keydir: Path, tmp_path: Path
) -> None:
    """The aarch64 release tar.gz, unpacked, runs its own python3 under qemu-user."""
    if shutil.which("qemu-aarch64-static") is None:
        missing("no qemu-aarch64-static: `make runtime-aarch64` installs qemu-user-static")
    require_runtime("aarch64")
    tarball = build_release(keydir, tmp_path / "dist", "tar.gz", "aarch64")["tar.gz"]
    tree = unpack_artifact(tarball, tmp_path / "arm")
    python = tree / "versions/1.0.0/runtime/bin/python3"
    assert python.resolve().read_bytes()[18:20] == (183).to_bytes(2, "little")  # EM_AARCH64
    proc = subprocess.run(
        ["qemu-aarch64-static", "-L", "/usr/aarch64-linux-gnu", str(python), "-I", "-c",
         "import ssl, cryptography, tuf, platform; "
         "from cryptography.hazmat.primitives.asymmetric import ed25519; "
         "ed25519.Ed25519PrivateKey.generate(); "
         "print(platform.machine(), ssl.OPENSSL_VERSION, cryptography.__version__)"],
        env={}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    print(f"\naarch64 under qemu: {proc.stdout.strip()}")
    assert proc.stdout.startswith("aarch64 OpenSSL 3.")
