"""The .rpm: rpmbuild packs the staged payload (nothing compiled), rpmsign signs it.

The package is relocatable (`Prefix:`), so `rpm -i --prefix DIR --dbpath DB` installs it anywhere
without a chroot; the scriptlets find the prefix in $RPM_INSTALL_PREFIX.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from common.errors import ToolError
from pkgbuild.formats import Stage, run_tool
from pkgbuild.keys import gpg_env, gpg_fingerprint
from pkgbuild.payload import render_template

SIGN_ARGS = "--pinentry-mode loopback --passphrase ''"


def render_spec(stage: Stage, topdir: Path) -> str:
    """The spec file that packs stage.root as it is."""
    if stage.is_agent:
        summary = "Aliyun Assist agent (Cloud Assistant)"
        description = (
            "Runs commands sent by the Cloud Assistant control plane and keeps itself up to date\n"
            "from a signed release repository. Carries its own Python."
        )
        files = f"{stage.prefix}/versions/{stage.version}"
        snippets = {
            "SELECT_CURRENT": render_template("select-current.sh"),
            "RELEASE_CURRENT": render_template("release-current.sh"),
            "REPAIR_CURRENT": render_template("repair-current.sh"),
        }
        scriptlets = render_template(
            "rpm-scriptlets.tmpl", PREFIX=stage.prefix, VERSION=stage.version, **snippets
        )
    else:
        summary = f"{stage.package} (published through the Aliyun Assist repository)"
        description = f"Files installed under {stage.prefix}."
        files = stage.prefix
        scriptlets = ""
    return render_template(
        "rpm.spec.tmpl",
        TOPDIR=str(topdir),
        PACKAGE=stage.package,
        VERSION=stage.version,
        SUMMARY=summary,
        DESCRIPTION=description,
        PREFIX=stage.prefix,
        STAGE=str(stage.root),
        FILES=files,
        SCRIPTLETS=scriptlets,
    )


def build_rpm(stage: Stage, dest: Path) -> Path:
    """Write the signed .rpm for `stage` to `dest`."""
    topdir = stage.workdir / "rpmbuild"
    for sub in ("BUILD", "RPMS", "SOURCES", "SPECS", "SRPMS", "BUILDROOT", "tmp"):
        (topdir / sub).mkdir(parents=True, exist_ok=True)
    spec = topdir / "SPECS" / f"{stage.package}.spec"
    spec.write_text(render_spec(stage, topdir), encoding="utf-8")
    # _topdir and the buildroot on the command line: rpmbuild fixes %buildroot before it reads
    # the spec, so without them every build of NAME-VERSION shares ~/rpmbuild/BUILDROOT/… and
    # two builds at once delete each other's files ("cpio: open failed")
    run_tool(
        [
            "rpmbuild", "-bb", "--quiet", "--target", f"{stage.arch}-linux",
            "--define", f"_topdir {topdir}",
            "--define", f"_tmppath {topdir / 'tmp'}",
            "--buildroot", str(topdir / "BUILDROOT" / "root"),
            str(spec),
        ]
    )  # fmt: skip
    found = sorted((topdir / "RPMS").rglob("*.rpm"))
    if [p.name for p in found] != [dest.name]:
        raise ToolError(
            f"rpmbuild wrote {[p.name for p in found]}, expected {dest.name}",
            hint="check the rpm macros of this machine (~/.rpmmacros)",
        )
    found[0].replace(dest)
    sign_rpm(dest, stage.keys)
    return dest


def sign_rpm(path: Path, keys: Path) -> None:
    """Add an OpenPGP header signature made with KEYDIR/gpg (rpmsign --addsign)."""
    env = gpg_env(keys)
    run_tool(
        [
            "rpmsign",
            "--addsign",
            "--define", f"__gpg {shutil.which('gpg') or 'gpg'}",
            "--define", f"_gpg_name {gpg_fingerprint(keys)}",
            "--define", f"_gpg_path {env['GNUPGHOME']}",
            "--define", f"_gpg_sign_cmd_extra_args {SIGN_ARGS}",
            str(path),
        ],
        env=env,
    )  # fmt: skip
