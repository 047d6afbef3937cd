"""A VM with no Python: the release .deb in a Debian 11 minbase root runs the README's echo 123.

The root is `debootstrap --variant=minbase bullseye` (cached by `make runtime`; it has no python3),
copied per test. The agent runs inside it with chroot and /proc mounted (unmounted afterwards),
on the host's loopback network: it registers with an `assist-server` on 127.0.0.1, and the
official SDK sends CreateCommand (echo 123) and InvokeCommand; the result must be MTIzCg==.
Needs root (chroot, mount) and the cached runtime; skips otherwise.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from runtimekit import build_release, require_bullseye_root, require_runtime

from devkit.fixtures import server_fixture
from devkit.httpserver import StaticServer
from devkit.server import ServerHandle

PREFIX = "/usr/local/share/aliyun-assist"
README_OUTPUT = "MTIzCg=="  # base64("123\n")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="chroot and mount need root"),
]


@pytest.fixture(scope="module")
def keydir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Release keys (keygen once for this module)."""
    from pkgbuild.keys import generate_keys, stop_gpg_agent

    path = tmp_path_factory.mktemp("keys") / "keys"
    generate_keys(path)
    yield path
    stop_gpg_agent(path)


@pytest.fixture
def vm(tmp_path: Path) -> Iterator[Path]:
    """A fresh copy of the cached python-less Debian 11 root with /proc mounted."""
    require_runtime("x86_64")
    cached = require_bullseye_root()
    root = tmp_path / "vm"
    subprocess.run(["cp", "-a", str(cached), str(root)], check=True)
    subprocess.run(["mount", "-t", "proc", "proc", str(root / "proc")], check=True)
    try:
        yield root
    finally:
        subprocess.run(["umount", "-l", str(root / "proc")], check=False)


server = server_fixture("server", scope="function")


def in_vm(root: Path, *argv: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a command inside the root with a VM-like environment."""
    return subprocess.run(
        ["chroot", str(root), *argv], env=vm_env(), capture_output=True, text=True, timeout=300,
        **kwargs,  # type: ignore[arg-type]
    )  # fmt: skip


def vm_env() -> dict[str, str]:
    """PATH of a Debian root; the suite's black-hole proxy for anything not on loopback."""
    keep = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "no_proxy", "NO_PROXY")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    return {**env, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C", "HOME": "/root"}


def write_agent_config(root: Path, server_url: str) -> None:
    """Region and metadata defaults point at loopback (nothing here may leave the machine)."""
    config = root / PREFIX.lstrip("/") / "config" / "assist.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(
        "[mirror]\n"
        'region = "cn-test"\n'
        'intranet_template = "http://127.0.0.1:9/"\n'
        'internet_origin = "http://127.0.0.1:9/"\n'
        'metadata_url = "http://127.0.0.1:9/latest/meta-data/region-id"\n'
        "[update]\n"
        'schedule = ""\n'
        "[agent]\n"
        f'server = "{server_url}"\n'
    )


def sdk_echo_123(server: ServerHandle, instance_id: str) -> dict[str, object]:
    """The README's flow through the official SDK; returns the finished result item."""
    from aliyunsdkcore.client import AcsClient
    from aliyunsdkecs.request.v20140526 import (
        CreateCommandRequest,
        DescribeInvocationResultsRequest,
        InvokeCommandRequest,
    )

    key_id, secret = server.create_access_key("ops")  # the account that owns the activation
    client = AcsClient(key_id, secret, "cn-hangzhou", timeout=30)

    def send(request: object) -> dict[str, object]:
        request.set_endpoint(server.url.split("://", 1)[1])  # type: ignore[attr-defined]
        request.set_protocol_type("http")  # type: ignore[attr-defined]
        return dict(json.loads(client.do_action_with_exception(request)))

    create = CreateCommandRequest.CreateCommandRequest()
    create.set_CommandContent("ZWNobyAxMjM=")
    create.set_Type("RunShellScript")
    create.set_Name("test")
    command_id = send(create)["CommandId"]
    invoke = InvokeCommandRequest.InvokeCommandRequest()
    invoke.set_CommandId(command_id)
    invoke.set_InstanceIds([instance_id])
    invoke_id = send(invoke)["InvokeId"]
    deadline = time.monotonic() + 120
    while True:
        describe = DescribeInvocationResultsRequest.DescribeInvocationResultsRequest()
        describe.set_InstanceId(instance_id)
        describe.set_InvokeId(invoke_id)
        body = send(describe)
        items = body["Invocation"]["ResultLists"]["ResultItem"]  # type: ignore[index]
        if items and items[0]["InvokeRecordStatus"] == "Finished":
            return dict(items[0])
        assert time.monotonic() < deadline, f"no result within 120 s: {body}\n{server.log()}"
        time.sleep(0.5)


def register_and_echo_123(vm: Path, server: ServerHandle, tmp_path: Path) -> None:
    """Register the installed agent, run it in the root, and get echo 123 back via the SDK."""
    assert in_vm(vm, "sh", "-c", "command -v python3").returncode != 0, "still no python3"
    write_agent_config(vm, server.url)
    agent = f"{PREFIX}/current/bin/assist-agent"
    act_id, code = server.create_activation(*server.create_access_key("ops"))
    registered = in_vm(
        vm, agent, "register", "--server", server.url, "--prefix", PREFIX,
        "--activation-id", act_id, "--activation-code", code, "--instance-name", "bullseye",
        "--json",
    )  # fmt: skip
    assert registered.returncode == 0, registered.stderr
    instance_id = json.loads(registered.stdout)["instance_id"]
    log = (tmp_path / "agent.log").open("wb")
    proc = subprocess.Popen(
        ["chroot", str(vm), agent, "run", "--prefix", PREFIX], env=vm_env(), stdout=log,
        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        result = sdk_echo_123(server, instance_id)
        assert (result["Output"], result["InvocationStatus"]) == (README_OUTPUT, "Success")
        # the process that ran it is the payload's own interpreter, inside the root
        exe = os.readlink(f"/proc/{proc.pid}/exe")
        assert exe.startswith(str(vm / PREFIX.lstrip("/") / "versions" / "1.0.0" / "runtime"))
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_deb_in_python_less_debian_11_runs_echo_123(
    vm: Path, server: ServerHandle, keydir: Path, tmp_path: Path
) -> None:
    require_runtime("x86_64")
    assert in_vm(vm, "sh", "-c", "command -v python3 || ls /usr/bin/python*").returncode != 0
    deb = build_release(keydir, tmp_path / "dist", "deb")["deb"]
    shutil.copyfile(deb, vm / "tmp" / deb.name)
    installed = in_vm(vm, "dpkg", "-i", f"/tmp/{deb.name}")
    assert installed.returncode == 0, installed.stderr + installed.stdout
    assert in_vm(vm, "dpkg-query", "-W", "aliyun-assist").stdout.split() == [
        "aliyun-assist",
        "1.0.0",
    ]
    register_and_echo_123(vm, server, tmp_path)


def test_tarball_through_bootstrap_sh_in_python_less_debian_11_runs_echo_123(
    vm: Path, server: ServerHandle, keydir: Path, tmp_path: Path
) -> None:
    """bootstrap.sh --method tarball with a pinned --version and --sha256 (no python3 to read
    the metadata), from a repository published by assist-pkgbuild on a loopback server."""
    require_runtime("x86_64")
    tarball = build_release(keydir, tmp_path / "dist", "tar.gz")["tar.gz"]
    repo = tmp_path / "repo"
    for args in (
        ["init", "--repo", str(repo), "--keys", str(keydir)],
        ["publish", "--repo", str(repo), "--keys", str(keydir), str(tarball)],
    ):
        done = subprocess.run(
            [sys.executable, "-m", "pkgbuild", *args], capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr
    pinned = hashlib.sha256(tarball.read_bytes()).hexdigest()
    shutil.copyfile(repo / "bootstrap" / "bootstrap.sh", vm / "tmp" / "bootstrap.sh")
    with StaticServer(repo) as mirror:
        installed = in_vm(
            vm, "env", "ASSIST_NO_START=1", "sh", "/tmp/bootstrap.sh", "--mirror", mirror.url,
            "--method", "tarball", "--version", "1.0.0", "--sha256", pinned,
        )  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    assert (vm / PREFIX.lstrip("/") / "current").resolve().name == "1.0.0"
    assert (vm / "etc/init.d/aliyun-assist").is_file()
    register_and_echo_123(vm, server, tmp_path)
