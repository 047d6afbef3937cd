"""The runtime recipe, its cache and how a build is trimmed into a payload (no compiler run).

The real build (tens of minutes) is not a test: tests/pkgbuild/test_runtime_built.py uses the
cached one. Here a stand-in build tree in a temporary cache checks the cache and copy logic.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from pkgbuild import runtime
from pkgbuild.payload import PayloadSpec, build_payload, project_root
from pkgbuild.wheels import default_cache, scan_cache


def recipe(**changes: object) -> runtime.Recipe:
    base = runtime.Recipe(
        arch="x86_64", sources=dict(runtime.SOURCES), script_sha256="0" * 64, zig_version="0.17.1"
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_recipe_hash_is_stable_and_changes_with_every_input() -> None:
    assert recipe().digest() == recipe().digest()
    changed = [
        recipe(arch="aarch64"),
        recipe(sources={**runtime.SOURCES, "openssl": "3.0.21-1~deb12u1"}),
        recipe(script_sha256="1" * 64),
        recipe(zig_version="0.18.0"),
    ]
    digests = {r.digest() for r in changed}
    assert recipe().digest() not in digests and len(digests) == len(changed)


def test_recipe_targets_the_glibc_floor() -> None:
    assert recipe().zig_target == "x86_64-linux-gnu.2.17"
    assert recipe(arch="aarch64").zig_target == "aarch64-linux-gnu.2.17"


def test_unknown_arch_is_a_usage_error() -> None:
    with pytest.raises(runtime.UsageError, match="no runtime for arch"):
        runtime.make_recipe("riscv64", "0.17.1")


def test_cache_root_env_override_then_machine_wide(tmp_path: Path) -> None:
    assert runtime.cache_root({"ASSIST_RUNTIME_CACHE": str(tmp_path)}) == tmp_path
    # root on this machine: the machine-wide directory, shared by every clone (CI included)
    assert runtime.cache_root({}) == Path("/var/cache/aliyun-assist-build")


@pytest.mark.parametrize(
    ("path", "kept"),
    [
        ("bin/python3", True),
        ("bin/python3.11", True),
        ("bin/idle3", False),
        ("bin/pydoc3.11", False),
        ("lib/python3.11/os.py", True),
        ("lib/python3.11/lib-dynload/_ssl.cpython-311-x86_64-linux-gnu.so", True),
        ("lib/python3.11/lib-dynload/_testcapi.cpython-311-x86_64-linux-gnu.so", False),
        ("lib/python3.11/test/test_os.py", False),
        ("lib/python3.11/idlelib/idle.py", False),
        ("lib/python3.11/tkinter/__init__.py", False),
        ("lib/python3.11/ensurepip/__init__.py", False),
        ("lib/python3.11/unittest/__init__.py", True),
        ("lib/python3.11/config-3.11-x86_64-linux-gnu/libpython3.11.a", False),
        ("include/python3.11/Python.h", False),
        ("lib/python3.11/__pycache__/os.cpython-311.pyc", False),
    ],
)
def test_what_the_payload_keeps_of_a_build(path: str, kept: bool) -> None:
    assert runtime.keep_in_runtime(Path(path)) is kept


def stand_in_build(cache: Path) -> Path:
    """A cached 'build' of this checkout's recipe whose python3 is the test's interpreter."""
    zig = runtime.zig_command()
    build = runtime.cached_build(runtime.make_recipe("x86_64", runtime.zig_version(zig)), cache)
    (build / "bin").mkdir(parents=True)
    (build / "bin" / "python3").symlink_to(sys.executable)
    stdlib = build / "lib" / "python3.11"
    for rel in ("os.py", "test/test_os.py", "idlelib/idle.py", "lib-dynload/_ssl.so"):
        (stdlib / rel).parent.mkdir(parents=True, exist_ok=True)
        (stdlib / rel).write_text("# stand-in\n")
    (build / "include").mkdir()
    (build / "BUILD-INFO.json").write_text(json.dumps({"recipe": "stand-in"}))
    return build


def test_cached_build_is_reused_without_building(tmp_path: Path) -> None:
    build = stand_in_build(tmp_path)
    assert runtime.ensure_runtime("x86_64", tmp_path) == build
    assert sorted(p.name for p in tmp_path.iterdir()) == [build.name]  # no sources, no work dir


def test_half_written_build_is_not_taken_for_a_finished_one(tmp_path: Path) -> None:
    build = stand_in_build(tmp_path)
    (build / "BUILD-INFO.json").unlink()  # the marker is written last
    assert not runtime.is_complete(build)
    with pytest.raises(runtime.LocalStateError, match="not a finished runtime"):
        runtime.copy_runtime(build, tmp_path / "out")


def test_copy_leaves_out_tests_idle_and_headers(tmp_path: Path) -> None:
    build = stand_in_build(tmp_path / "cache")
    runtime.copy_runtime(build, tmp_path / "rt")
    files = sorted(str(p.relative_to(tmp_path / "rt")) for p in (tmp_path / "rt").rglob("*"))
    assert files == [
        "BUILD-INFO.json", "bin", "bin/python3", "lib", "lib/python3.11",
        "lib/python3.11/lib-dynload", "lib/python3.11/lib-dynload/_ssl.so", "lib/python3.11/os.py",
    ]  # fmt: skip
    assert (tmp_path / "rt" / "bin" / "python3").is_symlink()


@pytest.mark.skipif(
    not (default_cache().is_dir() and scan_cache(default_cache())),
    reason=f"wheel cache {default_cache()} is empty: run `make wheels`",
)
def test_payload_with_runtime_has_cp311_wheels_in_its_site_packages(
    keydir: Path, tmp_path: Path
) -> None:
    build = stand_in_build(tmp_path / "cache")
    spec = PayloadSpec(
        package="aliyun-assist", version="1.2.3", target="linux-x86_64", keys=keydir,
        source=project_root(), vendor=True, runtime=build,
    )  # fmt: skip
    root = build_payload(spec, tmp_path / "out")
    site = runtime.site_packages(root / "runtime")
    for module in ("requests", "cryptography", "tuf", "croniter", "cffi"):
        assert (site / module).is_dir(), module
    backends = sorted(p.name for p in site.glob("_cffi_backend.*.so"))
    assert backends == ["_cffi_backend.cpython-311-x86_64-linux-gnu.so"]
    # bytecode ships precompiled (hash-based: packaging mtimes cannot make it stale)
    pyc = root / "runtime/lib/python3.11/__pycache__/os.cpython-311.pyc"
    assert int.from_bytes(pyc.read_bytes()[4:8], "little") == 0b01  # flags: hash, unchecked
    assert (root / "lib/agent/__pycache__").is_dir()
    # lib/ holds only our code: the wheels live in the runtime
    assert sorted(p.name for p in (root / "lib").iterdir()) == [
        "agent", "common", "installer", "updater"
    ]  # fmt: skip


def test_launcher_runs_the_payload_runtime_isolated_without_any_python_on_path(
    keydir: Path, tmp_path: Path
) -> None:
    """bin/assist-agent execs runtime/bin/python3 -I even with no python3 on PATH at all."""
    import subprocess

    build = stand_in_build(tmp_path / "cache")
    (build / "bin" / "python3").unlink()
    record = tmp_path / "argv.txt"
    # a recording stand-in for the built interpreter (the real one: test_runtime_built.py)
    (build / "bin" / "python3").write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$@" > {record}\nexec {sys.executable} "$@"\n'
    )
    (build / "bin" / "python3").chmod(0o755)
    spec = PayloadSpec(
        package="aliyun-assist", version="1.2.3", target="linux-x86_64", keys=keydir,
        source=project_root(), vendor=False, runtime=build,
    )  # fmt: skip
    root = build_payload(spec, tmp_path / "out")
    tools = tmp_path / "tools"  # a PATH with dirname and nothing else: no python anywhere
    tools.mkdir()
    (tools / "dirname").symlink_to("/usr/bin/dirname")
    env = {"PATH": str(tools), "PYTHONPATH": "/nonexistent-should-be-ignored"}
    proc = subprocess.run(
        [str(root / "bin" / "assist-agent"), "--help"], env=env, capture_output=True, text=True,
        timeout=60, cwd=project_root(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout
    argv = record.read_text().splitlines()
    assert argv[:4] == ["-I", "-W", "ignore:Unable to find acceptable character detection", "-c"]
    assert argv[5:7] == [str(root / "lib"), "agent.cli"]


def test_missing_runtime_is_an_error_naming_make_runtime_not_a_silent_build(
    tmp_path: Path,
) -> None:
    with pytest.raises(runtime.LocalStateError) as info:
        runtime.find_runtime("x86_64", tmp_path)
    assert "make runtime" in (info.value.hint or "") and "--no-runtime" in (info.value.hint or "")
    assert list(tmp_path.iterdir()) == []  # nothing fetched, nothing built


def test_a_second_builder_waits_for_the_first_and_takes_its_result(tmp_path: Path) -> None:
    """Two builds in one work directory corrupt each other: the second waits on the lock."""
    import fcntl
    import threading

    recipe = runtime.make_recipe("x86_64", runtime.zig_version(runtime.zig_command()))
    results: list[Path] = []
    lock = tmp_path / f".lock-x86_64-{recipe.digest()}"
    with lock.open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # "the first builder"
        waiter = threading.Thread(target=lambda: results.append(runtime.ensure_runtime(
            "x86_64", tmp_path)))  # fmt: skip
        waiter.start()
        waiter.join(timeout=2)
        assert waiter.is_alive(), "the second builder must wait for the lock"
        build = stand_in_build(tmp_path)  # the first builder finishes
        fcntl.flock(held, fcntl.LOCK_UN)
    waiter.join(timeout=60)
    assert results == [build]
    assert not (tmp_path / "src").exists()  # it fetched nothing and built nothing itself


def test_a_build_without_its_extension_modules_is_refused(tmp_path: Path) -> None:
    """Seen for real: a CPython whose lib-dynload came out empty must not enter the cache."""
    (tmp_path / "bin").mkdir()
    python = tmp_path / "bin" / "python3"
    python.write_text(
        "#!/bin/sh\necho \"ModuleNotFoundError: No module named '_ssl'\" >&2\nexit 1\n"
    )
    python.chmod(0o755)
    with pytest.raises(runtime.ToolError, match="No module named '_ssl'"):
        runtime.smoke_test(tmp_path, os.uname().machine)
    runtime.smoke_test(tmp_path, "riscv64")  # a cross build is checked under qemu instead
