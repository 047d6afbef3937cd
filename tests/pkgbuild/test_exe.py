"""The .exe: NSIS installer, Authenticode-signed, verified pinned to our certificate.

Running the installer needs Windows, which this machine is not: the tests check the signature
with osslsigncode (what the installer and updater do off Windows) and the installer script's
logic by reading the NSIS script we generate, not by executing it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from pkgbuild.formats.exe import sign_exe


def verify(exe: Path, keydir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["osslsigncode", "verify", "-in", str(exe), "-CAfile",
         str(keydir / "public/authenticode.crt")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def unsigned_copy(exe: Path, tmp_path: Path) -> Path:
    """tmp_path/unsigned.exe: `exe` with its Authenticode signature removed."""
    unsigned = tmp_path / "unsigned.exe"
    subprocess.run(
        ["osslsigncode", "remove-signature", "-in", str(exe), "-out", str(unsigned)],
        check=True, capture_output=True,
    )  # fmt: skip
    return unsigned


def test_signed_installer_verifies_against_our_certificate(
    built_artifacts: dict[str, Path], keydir: Path
) -> None:
    exe = built_artifacts["exe"]
    assert exe.name == "aliyun-assist-1.0.0-setup.exe"
    assert exe.read_bytes()[:2] == b"MZ"
    result = verify(exe, keydir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Signature verification: ok" in result.stdout
    assert "Aliyun Assist Release" in result.stdout


def test_flipped_byte_fails(built_artifacts: dict[str, Path], keydir: Path, tmp_path: Path) -> None:
    data = bytearray(built_artifacts["exe"].read_bytes())
    data[len(data) // 3] ^= 0x01  # inside the compressed payload, covered by the hash
    tampered = tmp_path / "tampered.exe"
    tampered.write_bytes(bytes(data))
    assert verify(tampered, keydir).returncode != 0


def test_unsigned_installer_fails(
    built_artifacts: dict[str, Path], keydir: Path, tmp_path: Path
) -> None:
    unsigned = unsigned_copy(built_artifacts["exe"], tmp_path)
    assert verify(unsigned, keydir).returncode != 0


def test_signed_by_another_certificate_fails(
    built_artifacts: dict[str, Path], keydir: Path, other_keydir: Path, tmp_path: Path
) -> None:
    unsigned = unsigned_copy(built_artifacts["exe"], tmp_path)
    forged = tmp_path / "forged.exe"
    sign_exe(unsigned, forged, other_keydir)
    assert verify(forged, other_keydir).returncode == 0  # a valid signature…
    assert verify(forged, keydir).returncode != 0  # …by the wrong publisher


def test_installer_script_guards_current(keydir: Path, tmp_path: Path) -> None:
    """The generated NSIS script installs into versions\\V and only moves current.txt forward."""
    from pkgbuild.formats import Stage
    from pkgbuild.formats.exe import render_script

    stage = Stage(
        package="aliyun-assist", version="1.2.3", arch="x86_64", root=tmp_path, prefix="/p",
        is_agent=True, workdir=tmp_path, keys=keydir,
    )  # fmt: skip
    script = render_script(stage, tmp_path / "payload", tmp_path / "out.exe")
    assert 'InstallDir "C:\\ProgramData\\aliyun\\assist"' in script
    assert 'SetOutPath "$INSTDIR\\versions\\1.2.3"' in script
    assert '${VersionCompare} "1.2.3" "$0" $2' in script
    assert 'StrCpy $R1 "$INSTDIR\\current.txt"' in script
    assert "MoveFileExW" in script  # current.txt replaced atomically
