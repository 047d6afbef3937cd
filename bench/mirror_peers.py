"""The real mirror tools, set up to do their part of assist-mirror's verified job.

- apt tree: `aptly mirror create` + `aptly mirror update` (gpgv of InRelease against the release
  keyring, every index and package by its checksum), and `debmirror --checksums` (gpgv of
  Release.gpg against the same keyring, checksums of what it fetches);
- yum tree: `dnf reposync --gpgcheck` with `repo_gpgcheck=1` (repomd.xml.asc) and `gpgcheck=1`
  (every rpm's header signature against the release key, imported into a throw-away rpmdb).

Each job is a list of commands run in sequence and timed together; setup (config files, an empty
rpmdb with the key) is done before and not timed. All are Debian packages: `ensure_tools` installs
the missing ones with apt-get.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

PEER_PACKAGES = {"aptly": "aptly", "debmirror": "debmirror", "dnf": "dnf"}


@dataclass
class PeerJob:
    """One peer tool's run: commands timed together, and what it stands for."""

    name: str  # figure suffix
    baseline_cmd: str  # what the row names
    commands: list[list[str]]
    tree: str  # apt | yum
    work: Path  # where it writes


def ensure_tools() -> None:
    """apt-get install the peers that are missing (dnf reposync comes with dnf-plugins-core)."""
    wanted = [pkg for tool, pkg in PEER_PACKAGES.items() if shutil.which(tool) is None]
    probe = subprocess.run(["dnf", "reposync", "--help"], capture_output=True, check=False)
    if shutil.which("dnf") is None or probe.returncode != 0:
        wanted.append("dnf-plugins-core")
    if wanted:
        subprocess.run(
            ["apt-get", "install", "-y", "--no-install-recommends", *wanted],
            check=True,
            env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        )


def aptly_job(url: str, keys: Path, work: Path) -> PeerJob:
    """aptly mirror create + update of the apt tree, gpg verification on."""
    work.mkdir(parents=True)
    config = work / "aptly.conf"
    config.write_text(json.dumps({"rootDir": str(work / "root"), "downloadConcurrency": 4}))
    keyring = f"-keyring={keys / 'public' / 'archive-keyring.gpg'}"
    base = ["aptly", f"-config={config}", "mirror"]
    return PeerJob(
        "aptly",
        "aptly mirror create + aptly mirror update (gpg verification on)",
        [
            [*base, "create", keyring, "-architectures=amd64,arm64", "assist", f"{url}apt/"]
            + ["stable", "main"],
            [*base, "update", keyring, "assist"],
        ],
        "apt",
        work,
    )


def debmirror_job(url: str, keys: Path, work: Path) -> PeerJob:
    """debmirror of the apt tree, Release.gpg checked, checksums verified."""
    host = url.split("//", 1)[1].rstrip("/")
    work.mkdir(parents=True)
    return PeerJob(
        "debmirror",
        "debmirror --checksums (Release.gpg verified)",
        [
            [
                "debmirror", f"--host={host}", "--root=apt", "--method=http",
                "--dist=stable", "--section=main", "--arch=amd64,arm64", "--nosource",
                f"--keyring={keys / 'public' / 'archive-keyring.gpg'}",
                "--rsync-extra=none", "--diff=none", "--checksums",
                str(work / "mirror"),
            ]
        ],
        "apt",
        work,
    )  # fmt: skip


def reposync_job(url: str, keys: Path, work: Path) -> PeerJob:
    """dnf reposync of the yum tree with gpgcheck and repo_gpgcheck on."""
    repos, root = work / "repos", work / "root"
    repos.mkdir(parents=True)
    root.mkdir()
    key = keys / "public" / "RPM-GPG-KEY-assist"
    (repos / "assist.repo").write_text(
        f"[assist]\nname=assist\nbaseurl={url}yum/stable/\ngpgcheck=1\nrepo_gpgcheck=1\n"
        f"gpgkey=file://{key}\n"
    )
    subprocess.run(["rpmkeys", "--root", str(root), "--import", str(key)], check=True)
    return PeerJob(
        "dnf_reposync",
        "dnf reposync --gpgcheck (gpgcheck=1, repo_gpgcheck=1)",
        [
            [
                "dnf", "reposync", "-y", "-q", "--releasever=1", f"--installroot={root}",
                f"--setopt=reposdir={repos}", f"--setopt=cachedir={work / 'cache'}",
                "--disablerepo=*", "--enablerepo=assist", "--gpgcheck",
                "-p", str(work / "mirror"), "--norepopath",
            ]
        ],
        "yum",
        work,
    )  # fmt: skip


def peer_jobs(url: str, keys: Path, work: Path) -> list[PeerJob]:
    """Fresh jobs for every peer, each in its own directory under `work`."""
    return [
        aptly_job(url, keys, work / "aptly"),
        debmirror_job(url, keys, work / "debmirror"),
        reposync_job(url, keys, work / "reposync"),
    ]


def mirrored_files(work: Path) -> int:
    """How many package files a peer left (a sanity check that it mirrored something)."""
    return sum(1 for p in work.rglob("*") if p.suffix in (".deb", ".rpm") and p.is_file())
