"""The .exe: an NSIS installer of the Windows payload, Authenticode-signed with osslsigncode.

Running it needs Windows; here it is built and its signature verified (osslsigncode verify).
"""

from __future__ import annotations

from pathlib import Path

from pkgbuild.formats import Stage, run_tool
from pkgbuild.payload import WINDOWS_PREFIX, render_template

PUBLISHER = "Aliyun Assist"
COMPRESSOR = "zlib"  # lzma is ~2x smaller but several times slower to build


def render_script(stage: Stage, payload: Path, outfile: Path) -> str:
    """The NSIS script for `stage`."""
    if stage.is_agent:
        install_dir, subdir = WINDOWS_PREFIX, f"\\versions\\{stage.version}"
        agent = render_template("installer-agent.nsi", VERSION=stage.version)
        display = "Aliyun Assist"
    else:
        install_dir, subdir, agent = f"$PROGRAMFILES64\\{stage.package}", "", ""
        display = stage.package
    return render_template(
        "installer.nsi",
        PACKAGE=stage.package,
        VERSION=stage.version,
        DISPLAY_NAME=display,
        COMPRESSOR=COMPRESSOR,
        OUTFILE=str(outfile),
        INSTALL_DIR=install_dir,
        SUBDIR=subdir,
        PAYLOAD=str(payload),
        AGENT_SECTION=agent,
    )


def build_exe(stage: Stage, dest: Path) -> Path:
    """Write the signed installer for `stage` to `dest`."""
    payload = stage.prefix_dir / "versions" / stage.version if stage.is_agent else stage.prefix_dir
    unsigned = dest.with_name(dest.name + ".unsigned")
    script = stage.workdir / "installer.nsi"
    script.write_text(render_script(stage, payload, unsigned), encoding="utf-8")
    run_tool(["makensis", "-V2", "-NOCD", str(script)])
    sign_exe(unsigned, dest, stage.keys)
    unsigned.unlink()
    return dest


def sign_exe(unsigned: Path, dest: Path, keys: Path) -> None:
    """Authenticode-sign with KEYDIR's code-signing certificate (no timestamp: no network)."""
    run_tool(
        [
            "osslsigncode", "sign",
            "-certs", str(Path(keys) / "public" / "authenticode.crt"),
            "-key", str(Path(keys) / "authenticode" / "key.pem"),
            "-h", "sha256",
            "-n", PUBLISHER,
            "-in", str(unsigned),
            "-out", str(dest),
        ]
    )  # fmt: skip
