"""A release repository shaped like a real release history, for bench/bench_mirror.py.

VERSIONS releases of one package, each as deb (amd64, arm64), rpm (x86_64, aarch64, rpmsign-ed),
tar.gz (x86_64, aarch64) and a signed exe (makensis + osslsigncode), with random (incompressible)
payloads of ARTIFACT_MB, published by the real `assist-pkgbuild publish` a few releases at a time
(so the TUF, apt and yum trees carry a history of versions). Payloads are stored, not compressed,
so the artifacts are made at disk speed. The origin is cached under .cache/bench-mirror/ keyed by
its recipe: a second run reuses it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE = REPO_ROOT / ".cache" / "bench-mirror"
PACKAGE = "aliyun-assist"
RECIPE_REVISION = 1  # bump when the generator below changes what it makes

SPEC = """Name: {name}
Version: {version}
Release: 1
Summary: {name} benchmark package
License: MIT
AutoReqProv: no
%description
{name} benchmark package
%install
mkdir -p %{{buildroot}}/opt/{name}
cp {payload} %{{buildroot}}/opt/{name}/payload
%files
/opt/{name}/payload
"""

NSIS = """Unicode true
SetCompress off
Name "{name} {version}"
OutFile "{outfile}"
InstallDir "$PROGRAMFILES64\\{name}"
SilentInstall silent
Section
  SetOutPath "$INSTDIR"
  File "/oname=payload.bin" "{payload}"
SectionEnd
"""


@dataclass(frozen=True)
class Recipe:
    """What the origin holds; its hash names the cache entry."""

    versions: int = 40
    artifact_mb: float = 3.0  # random payload per artifact
    batch: int = 4  # releases per `assist-pkgbuild publish`
    revision: int = RECIPE_REVISION

    def key(self) -> str:
        """A short stable name for this recipe."""
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def recipe_from_env() -> Recipe:
    """The recipe, with BENCH_HISTORY_VERSIONS / _MB / _BATCH overrides."""
    return Recipe(
        versions=int(os.environ.get("BENCH_HISTORY_VERSIONS", "40")),
        artifact_mb=float(os.environ.get("BENCH_HISTORY_MB", "3")),
        batch=int(os.environ.get("BENCH_HISTORY_BATCH", "4")),
    )


def run(cmd: list[str], **kwargs: object) -> None:
    """Run a tool; exit with its output if it fails."""
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:4]} failed: {proc.stdout}\n{proc.stderr}")


def write_payload(path: Path, size: int) -> Path:
    """`size` random bytes at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        remaining = size
        while remaining > 0:
            block = os.urandom(min(1 << 20, remaining))
            handle.write(block)
            remaining -= len(block)
    return path


def make_deb(out: Path, version: str, debarch: str, size: int) -> Path:
    """NAME_V_DEBARCH.deb with an uncompressed data member."""
    work = out / f"deb-{version}-{debarch}"
    (work / "DEBIAN").mkdir(parents=True)
    write_payload(work / "opt" / PACKAGE / "payload", size)
    (work / "DEBIAN" / "control").write_text(
        f"Package: {PACKAGE}\nVersion: {version}\nArchitecture: {debarch}\n"
        "Maintainer: Bench <bench@assist.invalid>\nDescription: benchmark package\n"
    )
    deb = out / f"{PACKAGE}_{version}_{debarch}.deb"
    run(["dpkg-deb", "-Znone", "--root-owner-group", "--build", str(work), str(deb)])
    shutil.rmtree(work)
    return deb


def make_rpm(out: Path, version: str, arch: str, size: int) -> Path:
    """NAME-V-1.ARCH.rpm with an uncompressed payload (signed later, all at once)."""
    top = out / f"rpm-{version}-{arch}"
    payload = write_payload(top / "payload", size)
    spec = top / "bench.spec"
    spec.write_text(SPEC.format(name=PACKAGE, version=version, payload=payload))
    run(
        [
            "rpmbuild", "-bb", "--quiet", "--target", f"{arch}-linux",
            "--define", f"_topdir {top}",
            "--define", f"_tmppath {top}",
            "--define", "_build_id_links none",
            "--define", "_binary_payload w0.ufdio",
            "--buildroot", str(top / "BUILDROOT"),
            str(spec),
        ]
    )  # fmt: skip
    rpm = out / f"{PACKAGE}-{version}-1.{arch}.rpm"
    shutil.move(top / "RPMS" / arch / rpm.name, rpm)
    shutil.rmtree(top)
    return rpm


def make_tarball(out: Path, version: str, arch: str, size: int) -> Path:
    """NAME-V-linux-ARCH.tar.gz holding versions/V/payload (stored deflate: level 0)."""
    payload = write_payload(out / f"tar-{version}-{arch}", size)
    tarball = out / f"{PACKAGE}-{version}-linux-{arch}.tar.gz"
    with tarfile.open(tarball, "w:gz", compresslevel=0) as tar:
        tar.add(payload, arcname=f"versions/{version}/payload")
    payload.unlink()
    return tarball


def make_exe(out: Path, keys: Path, version: str, size: int) -> Path:
    """NAME-V-setup.exe: an NSIS installer (no compression), Authenticode-signed."""
    work = out / f"exe-{version}"
    payload = write_payload(work / "payload.bin", size)
    unsigned = work / "unsigned.exe"
    script = work / "setup.nsi"
    script.write_text(NSIS.format(name=PACKAGE, version=version, outfile=unsigned, payload=payload))
    run(["makensis", "-V1", str(script)])
    exe = out / f"{PACKAGE}-{version}-setup.exe"
    run(
        [
            "osslsigncode", "sign",
            "-certs", str(keys / "public" / "authenticode.crt"),
            "-key", str(keys / "authenticode" / "key.pem"),
            "-h", "sha256", "-n", "bench",
            "-in", str(unsigned), "-out", str(exe),
        ]
    )  # fmt: skip
    shutil.rmtree(work)
    return exe


def sign_rpms(rpms: list[Path], keys: Path) -> None:
    """rpmsign --addsign every rpm with the release OpenPGP key, in one call."""
    fingerprint = json.loads((keys / "keys.json").read_text())["gpg_fingerprint"]
    run(
        [
            "rpmsign", "--addsign",
            "--define", f"__gpg {shutil.which('gpg')}",
            "--define", f"_gpg_path {keys / 'gpg'}",
            "--define", f"_gpg_name {fingerprint}",
            *map(str, rpms),
        ]
    )  # fmt: skip


def make_release(out: Path, keys: Path, version: str, size: int) -> list[Path]:
    """The seven artifacts of one release (rpms unsigned)."""
    return [
        make_deb(out, version, "amd64", size),
        make_deb(out, version, "arm64", size),
        make_rpm(out, version, "x86_64", size),
        make_rpm(out, version, "aarch64", size),
        make_tarball(out, version, "x86_64", size),
        make_tarball(out, version, "aarch64", size),
        make_exe(out, keys, version, size),
    ]


def pkgbuild(*args: str) -> None:
    """The real `assist-pkgbuild`."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    run([sys.executable, "-m", "pkgbuild", *args], env=env)


def build_history(work: Path, recipe: Recipe) -> None:
    """keygen, init, then publish the releases `recipe.batch` at a time into work/repo."""
    keys, repo = work / "keys", work / "repo"
    pkgbuild("keygen", "--out", str(keys))
    pkgbuild("init", "--repo", str(repo), "--keys", str(keys))
    size = int(recipe.artifact_mb * (1 << 20))
    versions = [f"2.{n // 10}.{n % 10}" for n in range(recipe.versions)]
    for start in range(0, len(versions), recipe.batch):
        art = work / "art"
        art.mkdir()
        with ThreadPoolExecutor(max_workers=2) as pool:
            made = pool.map(
                functools.partial(make_release, art, keys, size=size),
                versions[start : start + recipe.batch],
            )
            artifacts = [a for release in made for a in release]
        sign_rpms([a for a in artifacts if a.suffix == ".rpm"], keys)
        pkgbuild("publish", "--repo", str(repo), "--keys", str(keys), *map(str, artifacts))
        shutil.rmtree(art)


def cached_history(recipe: Recipe | None = None) -> tuple[Path, Path]:
    """(repo, keys) of the origin for `recipe`, built once into .cache/bench-mirror/<key>/."""
    recipe = recipe or recipe_from_env()
    done = CACHE / recipe.key()
    if not (done / "recipe.json").is_file():
        work = CACHE / f"{recipe.key()}.building"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        sys.stderr.write(f"building the release-history origin {asdict(recipe)} in {work}\n")
        build_history(work, recipe)
        (work / "recipe.json").write_text(json.dumps(asdict(recipe), sort_keys=True) + "\n")
        shutil.rmtree(done, ignore_errors=True)
        work.rename(done)
    return done / "repo", done / "keys"


def tree_shape(repo: Path) -> dict[str, Any]:
    """Files and megabytes of a repository tree."""
    files = [p for p in repo.rglob("*") if p.is_file()]
    return {
        "files": len(files),
        "repository_mb": round(sum(p.stat().st_size for p in files) / (1 << 20), 1),
    }


if __name__ == "__main__":
    repo_dir, _ = cached_history()
    print(json.dumps({"repo": str(repo_dir), **tree_shape(repo_dir)}))
