"""The .deb: dpkg-deb over the staged payload, with postinst/prerm/postrm maintaining `current`."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from common.platform import DEB_ARCH
from pkgbuild.formats import Stage, run_tool
from pkgbuild.payload import render_template

MAINTAINER = "Aliyun Assist Release <release@assist.invalid>"


def render_control(stage: Stage, installed_kib: int) -> str:
    """The DEBIAN/control file."""
    if stage.is_agent:
        summary = "Aliyun Assist agent (Cloud Assistant)"
        body = " Runs commands sent by the Cloud Assistant control plane and keeps itself\n" \
               " up to date from a signed release repository. Carries its own Python."  # fmt: skip
    else:
        summary = f"{stage.package} (published through the Aliyun Assist repository)"
        body = f" Files installed under {stage.prefix}."
    fields = [
        f"Package: {stage.package}",
        f"Version: {stage.version}",
        f"Architecture: {DEB_ARCH.get(stage.arch, stage.arch)}",
        f"Maintainer: {MAINTAINER}",
        f"Installed-Size: {installed_kib}",
        "Section: admin",
        "Priority: optional",
    ]
    fields.append(f"Description: {summary}\n{body}")
    return "\n".join(fields) + "\n"


def render_scripts(stage: Stage) -> dict[str, str]:
    """postinst, prerm and postrm of the agent package (a plain package has none)."""
    if not stage.is_agent:
        return {}
    values = {"PACKAGE": stage.package, "VERSION": stage.version, "PREFIX": stage.prefix}
    snippets = {
        "SELECT_CURRENT": render_template("select-current.sh"),
        "RELEASE_CURRENT": render_template("release-current.sh"),
        "REPAIR_CURRENT": render_template("repair-current.sh"),
    }
    return {
        "postinst": render_template("deb-postinst.tmpl", **values, **snippets),
        "prerm": render_template("deb-prerm.tmpl", **values, **snippets),
        "postrm": render_template("deb-postrm.tmpl", **values, **snippets),
    }


def _tree_size_kib(root: Path) -> int:
    """Disk use of the payload in KiB, for Installed-Size."""
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            total += os.lstat(os.path.join(dirpath, name)).st_size
    return max(1, (total + 1023) // 1024)


def build_deb(stage: Stage, dest: Path) -> Path:
    """Write the .deb for `stage` to `dest`."""
    root = stage.workdir / "deb-root"
    shutil.copytree(stage.root, root, copy_function=os.link)
    debian = root / "DEBIAN"
    debian.mkdir(mode=0o755)
    (debian / "control").write_text(
        render_control(stage, _tree_size_kib(stage.root)), encoding="utf-8"
    )
    for name, text in render_scripts(stage).items():
        script = debian / name
        script.write_text(text, encoding="utf-8")
        script.chmod(0o755)
    run_tool(["dpkg-deb", "--root-owner-group", "-Zgzip", "-z6", "--build", str(root), str(dest)])
    return dest
