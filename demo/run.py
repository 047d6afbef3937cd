"""`make demo`: the main job end to end, loopback only, printing a short report of each step.

Everything happens under one temporary directory with real processes: the control plane
(`assist-server`, SQLite), an "internet origin" release repository and a regional mirror (both
`assist-mirror serve`), and one agent installed into a temp prefix. Every process is stopped
and the directory removed at the end, also on Ctrl-C (use --keep to look around afterwards).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.cli import interrupts_as_exceptions
from common.service import ProcessManager
from devkit.agent import write_loopback_config
from devkit.release import mirror_sync_args
from devkit.server import free_port, stop_group, wait_http

REPO_ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
WHEEL_CACHE = REPO_ROOT / ".cache" / "wheels"
README_OUTPUT = "MTIzCg=="  # base64 of "123\n"


class DemoError(Exception):
    """A demo step did not show what it should."""


class Demo:
    """State shared by the steps: the work dir, ports, processes to stop."""

    def __init__(self, work: Path, stack: contextlib.ExitStack) -> None:
        self.work = work
        self.stack = stack
        self.env = dict(os.environ)
        self.env["XDG_CONFIG_HOME"] = str(work / "xdg")
        self.env["PYTHONPATH"] = str(REPO_ROOT)
        self.env.pop("ALIYUN_ASSIST_SERVER_HOST", None)
        self.keys = work / "keys"
        self.dist = work / "dist"
        self.origin = work / "origin"
        self.mirror = work / "mirror"
        self.prefix = work / "agent"
        self.origin_port = free_port()
        self.mirror_port = free_port()
        self.origin_url = f"http://127.0.0.1:{self.origin_port}/"
        self.mirror_url = f"http://127.0.0.1:{self.mirror_port}/"
        self.origin_proc: subprocess.Popen[bytes] | None = None
        self.server: Any = None
        self.key_id = ""
        self.secret = ""
        self.instance_id = ""

    # ---- process helpers -------------------------------------------------------------------

    def run(
        self, *argv: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """Run one of our console scripts; on failure show its stderr."""
        cmd = [str(BIN / argv[0]), *argv[1:]]
        proc = subprocess.run(
            cmd, env=self.env, capture_output=True, text=True, timeout=timeout, cwd=self.work
        )
        if check and proc.returncode != 0:
            raise DemoError(
                f"{' '.join(argv[:2])} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}"
            )
        return proc

    def run_json(self, *argv: str) -> Any:
        return json.loads(self.run(*argv).stdout)

    def spawn(self, name: str, *argv: str) -> subprocess.Popen[bytes]:
        """Start a long-running console script, stopped when the demo ends."""
        log = (self.work / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            [str(BIN / argv[0]), *argv[1:]],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.work,
            start_new_session=True,
        )
        log.close()
        self.stack.callback(stop_group, proc)
        return proc

    def serve(self, name: str, root: Path, port: int) -> subprocess.Popen[bytes]:
        proc = self.spawn(
            name, "assist-mirror", "serve", "--root", str(root), "--listen", f"127.0.0.1:{port}"
        )
        wait_http(f"http://127.0.0.1:{port}/metadata/timestamp.json", proc, 20, DemoError)
        return proc

    # ---- API helpers -----------------------------------------------------------------------

    def sdk(self, request: Any) -> dict[str, Any]:
        """Send an official aliyunsdkecs request to our server."""
        from aliyunsdkcore.client import AcsClient

        client = AcsClient(self.key_id, self.secret, "cn-hangzhou", timeout=30)
        request.set_endpoint(self.server.url.split("://", 1)[1])
        request.set_protocol_type("http")
        return dict(json.loads(client.do_action_with_exception(request)))

    def results(self, invoke_id: str, history: bool = False) -> list[dict[str, Any]]:
        from aliyunsdkecs.request.v20140526.DescribeInvocationResultsRequest import (
            DescribeInvocationResultsRequest,
        )

        request = DescribeInvocationResultsRequest()
        request.set_InvokeId(invoke_id)
        request.set_InstanceId(self.instance_id)
        if history:
            request.set_IncludeHistory(True)
            request.set_PageSize(50)
        body = self.sdk(request)
        return list(body["Invocation"]["InvocationResults"]["InvocationResult"])


# ---- the steps ------------------------------------------------------------------------------


def step_server(demo: Demo) -> str:
    from devkit.server import launch_server

    demo.server = launch_server(demo.work / "server")
    demo.stack.callback(demo.server.stop)
    created = demo.run_json(
        "assist-server", "accesskey", "create", "--db", demo.server.db_url, "--json"
    )
    demo.key_id, demo.secret = created["AccessKeyId"], created["AccessKeySecret"]
    return f"assist-server on {demo.server.url} (SQLite), AccessKey {demo.key_id}"


def build_args(version: str) -> list[str]:
    vendor = (
        ["--wheel-cache", str(WHEEL_CACHE), "--no-runtime"]  # the demo runs agents on this python
        if any(WHEEL_CACHE.glob("*.whl"))
        else ["--no-vendor"]
    )
    return ["--version", version, *vendor]


def step_releases(demo: Demo) -> str:
    demo.run("assist-pkgbuild", "keygen", "--out", str(demo.keys))
    made = []
    # An agent .exe carries the official embeddable CPython, which an operator downloads once
    # (docs/runtime.md): with ASSIST_WINDOWS_RUNTIME naming that zip the demo builds it too.
    windows = os.environ.get("ASSIST_WINDOWS_RUNTIME", "")
    formats = "deb,rpm,exe,tar.gz" if windows else "deb,rpm,tar.gz"
    exe_args = ["--windows-runtime", windows] if windows else []
    for version in ("1.0.0", "1.1.0"):
        built = demo.run_json(
            "assist-pkgbuild", "build", *build_args(version), *exe_args,
            "--keys", str(demo.keys), "--formats", formats, "--out", str(demo.dist), "--json",
        )  # fmt: skip
        made += [Path(item["path"]) for item in built]
    demo.run("assist-pkgbuild", "init", "--repo", str(demo.origin), "--keys", str(demo.keys))
    demo.run(
        "assist-pkgbuild",
        "publish",
        "--repo",
        str(demo.origin),
        "--keys",
        str(demo.keys),
        *map(str, made),
    )
    demo.origin_proc = demo.serve("origin", demo.origin, demo.origin_port)
    names = ", ".join(sorted(p.name for p in made))
    skipped = "" if windows else " (no .exe: set ASSIST_WINDOWS_RUNTIME to an embeddable zip)"
    return f"signed {names}; published to the origin at {demo.origin_url}{skipped}"


def sync_mirror(demo: Demo) -> Any:
    """`assist-mirror sync --region cn-hangzhou` from the origin; its JSON report."""
    return demo.run_json(
        "assist-mirror", *mirror_sync_args(demo.origin_url, demo.mirror, demo.keys),
        "--public-url", demo.mirror_url, "--json",
    )  # fmt: skip


def step_mirror(demo: Demo) -> str:
    report = sync_mirror(demo)
    demo.serve("mirror", demo.mirror, demo.mirror_port)
    stop_group(demo.origin_proc)
    return f"cn-hangzhou mirror synced ({summarise(report)}) and served at {demo.mirror_url}; origin stopped"


def write_agent_config(demo: Demo) -> None:
    """Region rules point at loopback: the intranet mirror is ours, the origin is down."""
    write_loopback_config(demo.prefix, demo.mirror_url, demo.origin_url, demo.server.url)


def step_install(demo: Demo) -> str:
    from aliyunsdkecs.request.v20140526.CreateActivationRequest import CreateActivationRequest

    write_agent_config(demo)
    request = CreateActivationRequest()
    request.set_InstanceCount(5)
    activation = demo.sdk(request)
    registered = demo.run_json(
        "assist-agent",
        "register",
        "--server",
        demo.server.url,
        "--prefix",
        str(demo.prefix),
        "--activation-id",
        activation["ActivationId"],
        "--activation-code",
        activation["ActivationCode"],
        "--instance-name",
        "demo-vm",
        "--json",
    )
    demo.instance_id = registered["instance_id"]
    demo.stack.callback(stop_agent, demo)  # before the install starts it: Ctrl-C stops it too
    installed = demo.run_json(
        "assist-install",
        "agent",
        "--prefix",
        str(demo.prefix),
        "--version",
        "1.0.0",
        "--trust-root",
        str(demo.keys / "root.json"),
        "--service",
        "process",
        "--json",
    )
    mirror = installed.get("mirror", "?")
    if not str(mirror).startswith(demo.mirror_url.rstrip("/")):
        raise DemoError(
            f"installer picked {mirror}, expected the regional mirror {demo.mirror_url}"
        )
    return (
        f"agent 1.0.0 installed into {demo.prefix} from {mirror}; registered as {demo.instance_id}"
    )


def step_readme_sdk(demo: Demo) -> str:
    from aliyunsdkecs.request.v20140526.CreateCommandRequest import CreateCommandRequest
    from aliyunsdkecs.request.v20140526.InvokeCommandRequest import InvokeCommandRequest

    create = CreateCommandRequest()
    create.set_CommandContent("ZWNobyAxMjM=")
    create.set_Type("RunShellScript")
    create.set_Name("test")
    command_id = demo.sdk(create)["CommandId"]
    invoke = InvokeCommandRequest()
    invoke.set_CommandId(command_id)
    invoke.set_InstanceIds([demo.instance_id])
    invoke_id = demo.sdk(invoke)["InvokeId"]
    started = time.monotonic()
    result = wait_for(lambda: finished(demo.results(invoke_id)), 30, "the echo 123 result")
    elapsed = time.monotonic() - started
    if result["Output"] != README_OUTPUT or result["InvocationStatus"] != "Success":
        raise DemoError(f"unexpected result {result}")
    return f"SDK: CreateCommand {command_id} → InvokeCommand {invoke_id} → Output {result['Output']} (Success, exit {result['ExitCode']}, {elapsed:.2f}s)"


def step_readme_cli(demo: Demo) -> str:
    demo.run(
        "assist",
        "configure",
        f"--access-key-id={demo.key_id}",
        f"--access-key-secret={demo.secret}",  # "=": a secret may start with "-"
        "--region",
        "cn-hangzhou",
        "--endpoint",
        demo.server.url,
    )
    created = demo.run_json(
        "assist",
        "ecs",
        "CreateCommand",
        "--CommandContent",
        "ZWNobyAxMjM=",
        "--Type",
        "RunShellScript",
        "--Name",
        "test",
    )
    invoked = demo.run_json(
        "assist",
        "ecs",
        "InvokeCommand",
        "--InstanceIds",
        demo.instance_id,
        "--CommandId",
        created["CommandId"],
        "--Timed",
        "false",
    )

    def poll() -> dict[str, Any] | None:
        body = demo.run_json(
            "assist",
            "ecs",
            "DescribeInvocationResults",
            "--InstanceId",
            demo.instance_id,
            "--InvokeId",
            invoked["InvokeId"],
        )
        items = body["Invocation"]["ResultLists"]["ResultItem"]
        return items[0] if items and items[0]["Output"] == README_OUTPUT else None

    item = wait_for(poll, 30, "assist ecs DescribeInvocationResults")
    return f"assist ecs: {created['CommandId']} → {invoked['InvokeId']} → ResultLists.ResultItem Output {item['Output']}"


def step_timed(demo: Demo) -> str:
    from aliyunsdkecs.request.v20140526.InvokeCommandRequest import InvokeCommandRequest
    from aliyunsdkecs.request.v20140526.StopInvocationRequest import StopInvocationRequest

    command_id = create_command(demo, "date +%s", "tick")
    invoke = InvokeCommandRequest()
    invoke.set_CommandId(command_id)
    invoke.set_InstanceIds([demo.instance_id])
    invoke.set_Timed(True)
    invoke.set_Frequency("*/2 * * * * *")
    invoke.set_RepeatMode("Period")
    invoke_id = demo.sdk(invoke)["InvokeId"]
    started = time.monotonic()
    runs = wait_for(
        lambda: enough_runs(demo.results(invoke_id, history=True), 3), 20, "3 timed runs"
    )
    stop = StopInvocationRequest()
    stop.set_InvokeId(invoke_id)
    stop.set_InstanceIds([demo.instance_id])
    demo.sdk(stop)
    elapsed = time.monotonic() - started
    repeats = max(len(runs), max(int(r.get("Repeats", 0)) for r in runs))
    stamps = sorted({int(base64.b64decode(r["Output"]).decode().strip() or 0) for r in runs})
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    return f"timed invocation */2 * * * * *: {repeats} runs within {elapsed:.1f}s (history gaps {gaps or 'n/a'} s), then stopped"


def step_update(demo: Demo) -> str:
    started = time.monotonic()
    demo.run(
        "assist-update",
        "apply",
        "--prefix",
        str(demo.prefix),
        "--trust-root",
        str(demo.keys / "root.json"),
    )
    status = demo.run_json("assist-update", "status", "--prefix", str(demo.prefix), "--json")
    if status.get("current") != "1.1.0":
        raise DemoError(f"expected current 1.1.0 after the update, status says {status}")
    health = json.loads((demo.prefix / "state" / "health.json").read_text())
    return f"assist-update apply: 1.0.0 → 1.1.0 in {time.monotonic() - started:.1f}s, healthy (pid {health.get('pid')}, version {health.get('version')})"


def make_broken_source(demo: Demo) -> Path:
    """A copy of this project whose agent exits at start (a bad release)."""
    source = demo.work / "broken-src"
    shutil.copytree(
        REPO_ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".venv", ".cache", ".git", "tests", "bench", "__pycache__", "dist", "build"
        ),
    )
    cli = source / "agent" / "cli.py"
    text = cli.read_text()
    marker = "from __future__ import annotations\n"
    broken = 'raise SystemExit("broken release: this agent exits at start")\n'
    cli.write_text(text.replace(marker, marker + broken, 1))
    return source


def step_broken(demo: Demo) -> str:
    source = make_broken_source(demo)
    built = demo.run_json(
        "assist-pkgbuild",
        "build",
        *build_args("1.2.0"),
        "--keys",
        str(demo.keys),
        "--source",
        str(source),
        "--formats",
        "tar.gz",
        "--out",
        str(demo.dist),
        "--json",
    )
    demo.run(
        "assist-pkgbuild",
        "publish",
        "--repo",
        str(demo.origin),
        "--keys",
        str(demo.keys),
        *[i["path"] for i in built],
    )
    demo.origin_proc = demo.serve("origin", demo.origin, demo.origin_port)
    sync_mirror(demo)
    stop_group(demo.origin_proc)
    for attempt in (1, 2):  # max_failures = 2: the second failure blocklists 1.2.0
        proc = demo.run(
            "assist-update", "apply", "--prefix", str(demo.prefix),
            "--trust-root", str(demo.keys / "root.json"), "--health-timeout", "8", "--settle", "2",
            check=False,
        )  # fmt: skip
        if proc.returncode != 3:
            raise DemoError(
                f"expected exit 3 (rolled back) for the broken 1.2.0 (attempt {attempt}), "
                f"got {proc.returncode}: {proc.stderr}"
            )
    status = demo.run_json("assist-update", "status", "--prefix", str(demo.prefix), "--json")
    if status.get("current") != "1.1.0" or "1.2.0" not in json.dumps(status.get("blocklist")):
        raise DemoError(f"expected current 1.1.0 and 1.2.0 blocklisted, status says {status}")
    command_id = create_command(demo, "echo 123", "after-rollback")
    from aliyunsdkecs.request.v20140526.InvokeCommandRequest import InvokeCommandRequest

    invoke = InvokeCommandRequest()
    invoke.set_CommandId(command_id)
    invoke.set_InstanceIds([demo.instance_id])
    invoke_id = demo.sdk(invoke)["InvokeId"]
    result = wait_for(lambda: finished(demo.results(invoke_id)), 30, "a result after the rollback")
    return (
        f"broken 1.2.0: apply exit 3, rolled back to {status['current']}, blocklist {status.get('blocklist')}; "
        f"agent still answers (Output {result['Output']})"
    )


STEPS: list[tuple[str, Callable[[Demo], str]]] = [
    ("control plane", step_server),
    ("releases 1.0.0 and 1.1.0", step_releases),
    ("regional mirror", step_mirror),
    ("agent install + register", step_install),
    ("README flow (official SDK)", step_readme_sdk),
    ("README flow (assist ecs)", step_readme_cli),
    ("timed invocation", step_timed),
    ("self-update", step_update),
    ("bad release rolled back", step_broken),
]


# ---- small helpers --------------------------------------------------------------------------


def wait_for(probe: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.2)
    raise DemoError(f"timed out after {timeout:.0f}s waiting for {what}")


def finished(results: list[dict[str, Any]]) -> dict[str, Any] | None:
    done = {"Success", "Failed", "Timeout", "Error", "Invalid", "Stopped", "Terminated", "Aborted"}
    return next((r for r in results if r.get("InvocationStatus") in done), None)


def enough_runs(results: list[dict[str, Any]], count: int) -> list[dict[str, Any]] | None:
    """`count` successful runs: history items, or the Repeats counter of the latest one."""
    done = [r for r in results if r.get("ExitCode") == 0 and r.get("Output")]
    if len(done) >= count or (done and int(done[0].get("Repeats", 0)) >= count):
        return done
    return None


def create_command(demo: Demo, script: str, name: str) -> str:
    from aliyunsdkecs.request.v20140526.CreateCommandRequest import CreateCommandRequest

    request = CreateCommandRequest()
    request.set_CommandContent(base64.b64encode(script.encode()).decode())
    request.set_Type("RunShellScript")
    request.set_Name(name)
    return str(demo.sdk(request)["CommandId"])


def summarise(report: Any) -> str:
    if isinstance(report, dict):
        keys = [k for k in ("targets", "downloaded", "bytes", "versions") if k in report]
        return (
            ", ".join(
                f"{k} {report[k] if not isinstance(report[k], list) else len(report[k])}"
                for k in keys
            )
            or "ok"
        )
    return "ok"


def stop_agent(demo: Demo) -> None:
    """Stop the installed agent through its pidfile (the `process` service manager)."""
    ProcessManager(demo.prefix, stop_timeout=5).stop()


def main(argv: list[str] | None = None) -> int:
    """Run the demo steps and print a short report of each."""
    parser = argparse.ArgumentParser(
        prog="make demo", description=__doc__.splitlines()[0] if __doc__ else ""
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory and print its path"
    )
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="assist-demo-"))
    began = time.monotonic()
    print(f"Aliyun Assist demo in {work} (loopback only)")
    try:
        with interrupts_as_exceptions(), contextlib.ExitStack() as stack:
            demo = Demo(work, stack)
            for number, (title, step) in enumerate(STEPS, 1):
                started = time.monotonic()
                print(f"[{number}/{len(STEPS)}] {title} …", flush=True)
                detail = step(demo)
                print(f"      ok ({time.monotonic() - started:.1f}s): {detail}", flush=True)
    except DemoError as exc:
        print(f"demo: FAILED: {exc} (logs in {work})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("demo: interrupted; everything stopped", file=sys.stderr)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        return 130
    finally:
        pass
    print(
        f"demo: all {len(STEPS)} steps passed in {time.monotonic() - began:.0f}s; every process stopped"
    )
    if args.keep:
        print(f"demo: work directory kept at {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0
