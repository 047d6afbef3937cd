"""The payload tree: layout, stamping, version checks, plain packages, and a vendored payload
that really runs on an OS python3 without our dependencies installed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from common.errors import ConfigError, LocalStateError, UsageError
from pkgbuild.payload import PayloadSpec, build_payload, project_root, validate_version
from pkgbuild.wheels import default_cache, scan_cache

SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin")


def spec(keydir: Path, **kwargs: object) -> PayloadSpec:
    values: dict[str, object] = {
        "package": "aliyun-assist", "version": "1.2.3", "target": "linux-x86_64",
        "keys": keydir, "source": project_root(), "vendor": False,
    }  # fmt: skip
    values.update(kwargs)
    return PayloadSpec(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize("version", ["1.0.0", "2.2.5", "1.0.0rc1", "10.0.1.post2", "2.0"])
def test_valid_versions(version: str) -> None:
    assert validate_version(version) == version


@pytest.mark.parametrize(
    "version",
    ["1.0-1", "../x", "1.0/2", "v1.0", "", "1.0 ", "1..0", "latest", "-1", "1.0_1", "1.0~rc1"],
)
def test_invalid_versions_are_refused(version: str) -> None:
    with pytest.raises(UsageError, match="invalid version"):
        validate_version(version)


def test_agent_payload_layout(keydir: Path, tmp_path: Path) -> None:
    root = build_payload(spec(keydir), tmp_path)
    assert root == tmp_path / "versions" / "1.2.3"
    assert (root / "VERSION").read_text() == "1.2.3\n"
    for command in ("assist-agent", "assist-update", "assist-install"):
        launcher = root / "bin" / command
        assert os.access(launcher, os.X_OK)
        assert launcher.read_text().startswith("#!/bin/sh")
        assert not (root / "bin" / f"{command}.cmd").exists()
    for package in ("common", "agent", "updater", "installer"):
        assert (root / "lib" / package / "__init__.py").is_file()
    assert not (root / "lib" / "pkgbuild").exists() and not (root / "lib" / "server").exists()
    assert not list(root.rglob("__pycache__")) and not list(root.rglob("*.pyc"))
    assert (root / "share/root.json").read_bytes() == (keydir / "root.json").read_bytes()
    for name in ("RPM-GPG-KEY-assist", "authenticode.crt"):
        assert (root / "share/keys" / name).read_bytes() == (keydir / "public" / name).read_bytes()
    unit = (root / "share/aliyun-assist.service").read_text()
    assert "Restart=on-failure" in unit
    prefix = "/usr/local/share/aliyun-assist"
    assert f"ExecStart={prefix}/current/bin/assist-agent run --prefix {prefix}" in unit
    assert os.access(root / "share/aliyun-assist.init", os.X_OK)
    check = subprocess.run(
        ["sh", "-n", str(root / "share/aliyun-assist.init")], capture_output=True
    )
    assert check.returncode == 0


def test_payload_reports_its_stamped_version(keydir: Path, tmp_path: Path) -> None:
    """common.version.agent_version() inside the payload reads versions/V/VERSION."""
    root = build_payload(spec(keydir, version="7.8.9"), tmp_path)
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(root / "lib")}
    # -S: no site-packages, so the editable install of this checkout cannot shadow lib/
    out = subprocess.run(
        [sys.executable, "-S", "-c", "from common.version import agent_version; print(agent_version())"],
        env=env, capture_output=True, text=True, check=True, cwd=root,
    ).stdout  # fmt: skip
    assert out.strip() == "7.8.9"


def test_windows_payload_has_cmd_launchers(keydir: Path, tmp_path: Path) -> None:
    root = build_payload(spec(keydir, target="windows-x86_64"), tmp_path)
    cmd = (root / "bin" / "assist-agent.cmd").read_bytes()
    assert b"-m agent.cli" in cmd and b"\r\n" in cmd


def test_source_that_is_not_ours_is_refused(keydir: Path, tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    with pytest.raises(UsageError, match="not an Aliyun Assist source tree"):
        build_payload(spec(keydir, source=tmp_path / "src"), tmp_path / "out")
    with pytest.raises(UsageError, match="does not exist"):
        build_payload(spec(keydir, source=tmp_path / "missing"), tmp_path / "out")


def test_keydir_without_root_is_refused(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    with pytest.raises(ConfigError, match="root.json"):
        build_payload(spec(tmp_path / "keys"), tmp_path / "out")


def test_plain_package_is_the_source_as_is(keydir: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "tool").write_text("#!/bin/sh\necho hi\n")
    (src / "bin" / "tool").chmod(0o755)
    (src / "__pycache__").mkdir()
    (src / "__pycache__" / "x.pyc").write_bytes(b"x")
    out = tmp_path / "out"
    root = build_payload(spec(keydir, package="hello-tool", source=src), out)
    assert root == out
    assert (out / "bin" / "tool").read_text() == "#!/bin/sh\necho hi\n"
    assert not (out / "VERSION").exists() and not (out / "__pycache__").exists()


def test_missing_wheel_cache_names_the_fix(keydir: Path, tmp_path: Path) -> None:
    with pytest.raises(LocalStateError, match="wheel cache") as info:
        build_payload(spec(keydir, vendor=True, wheel_cache=tmp_path / "nowheels"), tmp_path / "o")
    assert "make wheels" in (info.value.hint or "") and "--no-vendor" in (info.value.hint or "")


needs_wheels = pytest.mark.skipif(
    not scan_cache(default_cache()) if default_cache().is_dir() else True,
    reason=f"wheel cache {default_cache()} is empty: run `make wheels` to test vendoring",
)


@needs_wheels
@pytest.mark.skipif(SYSTEM_PYTHON is None, reason="no system python3 in /usr/bin")
def test_vendored_payload_runs_without_site_packages(keydir: Path, tmp_path: Path) -> None:
    """bin/assist-agent --help on the OS python3 with no site-packages (-S): lib/ is enough."""
    root = build_payload(spec(keydir, vendor=True), tmp_path)
    lib = root / "lib"
    for module in ("requests", "cryptography", "tuf", "securesystemslib", "croniter", "tqdm",
                   "packaging", "cffi", "tomli"):  # fmt: skip
        assert (lib / module).is_dir(), module
    assert not (lib / "charset_normalizer").exists()  # wheels.NOT_VENDORED
    wrapper = tmp_path / "isolated-python3"
    wrapper.write_text(f'#!/bin/sh\nexec {SYSTEM_PYTHON} -S "$@"\n')
    wrapper.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "ASSIST_PYTHON": str(wrapper), "HOME": str(tmp_path)}
    probe = subprocess.run(
        [str(wrapper), "-c", "import requests"], env=env, capture_output=True, text=True
    )
    assert probe.returncode != 0, "the isolated python must not see any requests install"
    imports = (
        "import requests, cryptography.hazmat.primitives.asymmetric.ed25519 as e, tuf.ngclient, "
        "croniter, tqdm, securesystemslib.signer, json; e.Ed25519PrivateKey.generate(); "
        "r = requests.models.Response(); r._content = 'é'.encode(); "  # no charset named
        "assert r.apparent_encoding == 'utf-8' and r.text == 'é'; "
        "print(json.dumps([requests.__file__, tuf.ngclient.__file__]))"
    )
    out = subprocess.run(
        [str(wrapper), "-c", imports], env={**env, "PYTHONPATH": str(lib)},
        capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert all(path.startswith(str(lib)) for path in json.loads(out.stdout))
    # run from this checkout: its own common/ and agent/ must not shadow the payload's
    agent = subprocess.run(
        [str(root / "bin/assist-agent"), "--help"], env=env, capture_output=True, text=True,
        timeout=60, cwd=project_root(),
    )  # fmt: skip
    assert agent.returncode == 0, agent.stderr
    assert "usage:" in agent.stdout
    assert agent.stderr == ""  # no warning from requests about the charset detector left out


@needs_wheels
def test_aarch64_payload_vendors_aarch64_binaries(keydir: Path, tmp_path: Path) -> None:
    root = build_payload(spec(keydir, vendor=True, target="linux-aarch64"), tmp_path)
    sos = list((root / "lib").rglob("*.so"))
    assert sos
    for so in sos:
        header = so.read_bytes()[:20]
        assert header[:4] == b"\x7fELF"
        assert int.from_bytes(header[18:20], "little") == 183, so  # EM_AARCH64
    # one cffi backend per supported CPython
    backends = sorted(p.name for p in (root / "lib").glob("_cffi_backend.*.so"))
    assert [b.split(".")[1] for b in backends] == [
        "cpython-310-aarch64-linux-gnu", "cpython-311-aarch64-linux-gnu",
        "cpython-312-aarch64-linux-gnu", "cpython-313-aarch64-linux-gnu",
        "cpython-39-aarch64-linux-gnu",
    ]  # fmt: skip
