"""assist-mirror's other commands as an operator runs them: status, verify, prune, export/import."""

from __future__ import annotations

import json
import re
import tarfile
from pathlib import Path

from mirror_testlib import mirror_cli, sync_args, tree_hash

from devkit.release import Release, make_deb, pkgbuild


def test_sync_status_and_noop_from_the_command_line(upstream, tmp_path: Path) -> None:
    origin, server = upstream
    root = tmp_path / "mirror"
    first = mirror_cli(*sync_args(origin, server.url, root))
    assert first.stdout.startswith("synced timestamp v")
    again = mirror_cli(*sync_args(origin, server.url, root))
    assert again.stdout.startswith("up to date")
    status = json.loads(mirror_cli("status", "--root", str(root), "--json").stdout)
    assert status["packages"] == {"demo": ["1.0", "2.0"], "tool": ["0.1"]}
    assert status["region"] == "cn-hangzhou"
    assert status["public_url"] == "http://axt.cn-hangzhou.alibaba-inc.com:8080/assist/"
    assert status["bytes"] > 0 and status["last_sync"]
    assert 6.9 < status["expiry"]["timestamp"]["days_left"] <= 7
    assert status["warnings"] == []
    text = mirror_cli("status", "--root", str(root)).stdout
    assert "package    demo: 1.0, 2.0" in text


def test_noop_sync_reaches_its_one_request_without_requests_or_tuf(
    upstream, tmp_path: Path
) -> None:
    origin, server = upstream
    root = tmp_path / "mirror"
    mirror_cli(*sync_args(origin, server.url, root))
    server.requests.clear()
    again = mirror_cli("-X", "importtime", *sync_args(origin, server.url, root), python_args=True)
    assert again.stdout.startswith("up to date")
    assert server.requests == ["/metadata/timestamp.json"]
    imported = {line.rsplit("|", 1)[-1].strip() for line in again.stderr.splitlines()}
    heavy = {"requests", "urllib3", "tuf", "securesystemslib", "cryptography", "boto3"}
    assert "mirror.sync" in imported and not heavy & imported, sorted(heavy & imported)


def test_sync_writes_the_regions_bootstrap_scripts(upstream, tmp_path: Path) -> None:
    origin, server = upstream
    root = tmp_path / "mirror"
    mirror_cli(
        *sync_args(origin, server.url, root), "--public-url", "http://127.0.0.1:8081/assist/"
    )
    fingerprint = json.loads((origin.keys / "keys.json").read_text())["gpg_fingerprint"]
    for name in ("bootstrap.sh", "bootstrap.ps1"):
        text = (root / "bootstrap" / name).read_text()
        assert "http://127.0.0.1:8081/assist/" in text and "@MIRROR_URL@" not in text
        assert "@CHANNEL@" not in text and "@GPG_FINGERPRINT@" not in text
    assert (
        f'"${{ASSIST_GPG_FINGERPRINT:-{fingerprint}}}"'
        in (root / "bootstrap/bootstrap.sh").read_text()
    )
    assert mirror_cli("verify", "--root", str(root)).returncode == 0


def test_status_warns_when_metadata_expires_within_two_days(
    release_keys: Path, tmp_path: Path
) -> None:
    from devkit.httpserver import StaticServer

    repo = tmp_path / "repo"
    pkgbuild("init", "--repo", str(repo), "--keys", str(release_keys), "--expires", "timestamp=1d")
    origin = Release(repo, release_keys, tmp_path)
    origin.publish(make_deb(tmp_path, "demo", "1.0"))
    root = tmp_path / "mirror"
    with StaticServer(repo) as server:
        mirror_cli(*sync_args(origin, server.url, root))
    proc = mirror_cli("status", "--root", str(root), "--json")
    status = json.loads(proc.stdout)
    assert any(w.startswith("timestamp metadata expires in 1.0 days") for w in status["warnings"])
    assert "WARNING" in proc.stderr and "assist-mirror sync" in proc.stderr


def test_verify_catches_a_changed_file(upstream, tmp_path: Path) -> None:
    origin, server = upstream
    root = tmp_path / "mirror"
    mirror_cli(*sync_args(origin, server.url, root))
    assert mirror_cli("verify", "--root", str(root)).returncode == 0
    deb = root / "apt/pool/main/d/demo/demo_2.0_amd64.deb"
    raw = bytearray(deb.read_bytes())
    raw[-1] ^= 0xFF
    deb.write_bytes(bytes(raw))
    proc = mirror_cli("verify", "--root", str(root), check=False)
    assert proc.returncode == 4
    assert "apt/pool/main/d/demo/demo_2.0_amd64.deb: does not match its signed hash" in proc.stderr
    target = next((root / "targets/tool").rglob("*.deb"))
    target.unlink()
    (target.parent / ("0" * 64 + ".tool_0.1_amd64.deb")).write_bytes(b"planted")
    report = json.loads(mirror_cli("verify", "--root", str(root), "--json", check=False).stdout)
    assert not report["ok"]
    assert any("missing" in p for p in report["problems"])
    assert any("not a target of the signed metadata" in p for p in report["problems"])


def test_prune_keeps_the_newest_versions(upstream, tmp_path: Path) -> None:
    origin, server = upstream
    root = tmp_path / "mirror"
    mirror_cli(*sync_args(origin, server.url, root))
    removed = json.loads(mirror_cli("prune", "--root", str(root), "--keep", "1", "--json").stdout)[
        "removed"
    ]
    assert "apt/pool/main/d/demo/demo_1.0_amd64.deb" in removed
    assert "yum/stable/Packages/demo-1.0-1.x86_64.rpm" in removed
    assert not any("tool" in r for r in removed)
    assert not (root / "apt/pool/main/d/demo/demo_1.0_amd64.deb").exists()
    assert (root / "apt/pool/main/d/demo/demo_2.0_amd64.deb").exists()
    status = json.loads(mirror_cli("status", "--root", str(root), "--json").stdout)
    assert status["packages"] == {"demo": ["2.0"], "tool": ["0.1"]}
    assert mirror_cli("verify", "--root", str(root)).returncode == 0


def carry_over(upstream, connected: Path, bundle: Path, site: Path, *extra: str):
    """Sync `connected` from the upstream, export it whole to `bundle`, and import that into the
    disconnected `site` with the origin's trust root and keyring; the import's process."""
    origin, server = upstream
    mirror_cli(*sync_args(origin, server.url, connected))
    mirror_cli("export", "--root", str(connected), "--out", str(bundle))
    pins = ["--trust-root", str(origin.trust_root), "--keyring", str(origin.keyring)]
    return mirror_cli("import", str(bundle), "--root", str(site), *pins, *extra)


def test_export_import_full_then_incremental(upstream, tmp_path: Path) -> None:
    origin, server = upstream
    connected, site, full = tmp_path / "connected", tmp_path / "site", tmp_path / "full.tar"
    imported = carry_over(upstream, connected, full, site, "--json")
    assert json.loads(imported.stdout)["changed"]
    assert mirror_cli("verify", "--root", str(site)).returncode == 0
    assert (site / "metadata/timestamp.json").read_bytes() == (
        connected / "metadata/timestamp.json"
    ).read_bytes()
    # upstream moves on; the connected mirror follows; only the difference travels
    origin.publish(make_deb(tmp_path, "demo", "3.0", size=200_000))
    mirror_cli(*sync_args(origin, server.url, connected))
    delta = tmp_path / "delta.tar"
    mirror_cli(
        "export",
        "--root",
        str(connected),
        "--out",
        str(delta),
        "--since",
        str(site / ".mirror/state.json"),
    )
    with tarfile.open(delta) as tar:
        names = tar.getnames()
    assert not any("demo_2.0" in n or "demo-2.0" in n for n in names)
    assert sum("demo_3.0_amd64.deb" in n for n in names) == 2  # the target and the pool file
    from mirror.options import is_content

    assert sorted(re.sub(r"^[0-9a-f]{64}\.", "", Path(n).name) for n in names if is_content(n)) == [
        "demo_3.0_amd64.deb",
        "demo_3.0_amd64.deb",
    ]
    mirror_cli("import", str(delta), "--root", str(site))
    assert mirror_cli("verify", "--root", str(site)).returncode == 0
    assert (site / "apt/pool/main/d/demo/demo_3.0_amd64.deb").exists()
    status = json.loads(mirror_cli("status", "--root", str(site), "--json").stdout)
    assert status["packages"]["demo"] == ["1.0", "2.0", "3.0"]


def test_import_of_a_tampered_bundle_changes_nothing(upstream, tmp_path: Path) -> None:
    origin, server = upstream
    connected, site, bundle = tmp_path / "connected", tmp_path / "site", tmp_path / "full.tar"
    carry_over(upstream, connected, bundle, site)
    before = tree_hash(site)
    origin.publish(make_deb(tmp_path, "demo", "3.0"))
    mirror_cli(*sync_args(origin, server.url, connected))
    mirror_cli("export", "--root", str(connected), "--out", str(bundle))
    evil = tmp_path / "evil.tar"
    with tarfile.open(bundle) as src, tarfile.open(evil, "w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member)
            # the target and its pool copy are one inode: tamper the member holding the bytes
            if member.name.endswith("demo_3.0_amd64.deb") and member.isreg():
                import io

                raw = bytearray(data.read())
                raw[-1] ^= 1
                data = io.BytesIO(bytes(raw))
            dst.addfile(member, data)
    proc = mirror_cli("import", str(evil), "--root", str(site), check=False)
    assert proc.returncode == 4 and "failed verification" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert tree_hash(site) == before


def test_unknown_region_is_a_usage_error(tmp_path: Path) -> None:
    proc = mirror_cli("sync", "--region", "mars-1", "--root", str(tmp_path), check=False)
    assert proc.returncode == 2
    assert "unknown region 'mars-1'" in proc.stderr and "cn-hangzhou" in proc.stderr
    assert not (tmp_path / "metadata").exists()


def test_tampered_upstream_fails_with_one_clear_line(upstream, tmp_path: Path) -> None:
    origin, server = upstream
    root = tmp_path / "mirror"
    mirror_cli(*sync_args(origin, server.url, root))
    before = tree_hash(root)
    origin.publish(make_deb(tmp_path, "demo", "3.0"))
    target = next((origin.repo / "targets/demo/3.0").glob("*.deb"))
    target.write_bytes(target.read_bytes()[::-1])
    proc = mirror_cli(*sync_args(origin, server.url, root), check=False)
    assert proc.returncode == 4
    errors = [
        line for line in proc.stderr.splitlines() if "error:" in line
    ]  # (fetch logs warnings)
    assert len(errors) == 1 and errors[0].startswith(
        "assist-mirror: error: an upstream file failed verification"
    )
    assert "nothing was published" in errors[0] and errors[0].endswith("[verification-failed]")
    assert tree_hash(root) == before


def test_export_import_round_trip_of_a_filtered_mirror(upstream, tmp_path: Path) -> None:
    """The bundle of a `--os linux --keep 1` mirror holds only what those filters select; the
    import applies the same filters (and verifies like a sync) instead of asking for the rest."""
    origin, server = upstream
    connected, site = tmp_path / "connected", tmp_path / "site"
    mirror_cli(*sync_args(origin, server.url, connected), "--os", "linux", "--keep", "1")
    bundle = tmp_path / "filtered.tar"
    mirror_cli("export", "--root", str(connected), "--out", str(bundle))
    with tarfile.open(bundle) as tar:
        manifest = json.load(tar.extractfile("bundle.json"))  # type: ignore[arg-type]
    assert manifest["filters"] == {"channels": [], "oses": ["linux"], "archs": [], "keep": 1}
    trust = ["--trust-root", str(origin.trust_root), "--keyring", str(origin.keyring)]
    imported = mirror_cli("import", str(bundle), "--root", str(site), *trust, "--json")
    assert json.loads(imported.stdout)["changed"]
    assert mirror_cli("verify", "--root", str(site)).returncode == 0
    connected_state = json.loads((connected / ".mirror/state.json").read_text())
    site_state = json.loads((site / ".mirror/state.json").read_text())
    from mirror.options import is_content

    def content(state: dict) -> dict:
        return {rel: record for rel, record in state["files"].items() if is_content(rel)}

    assert content(site_state) == content(connected_state)
    assert site_state["filter_spec"] == manifest["filters"]
    status = json.loads(mirror_cli("status", "--root", str(site), "--json").stdout)
    assert status["packages"] == {"demo": ["2.0"], "tool": ["0.1"]}
    assert not (site / "apt/pool/main/d/demo/demo_1.0_amd64.deb").exists()
    # the same bundle again is a no-op, and a later incremental one imports too
    again = mirror_cli("import", str(bundle), "--root", str(site), "--json")
    assert not json.loads(again.stdout)["changed"]
    origin.publish(make_deb(tmp_path, "demo", "3.0"))
    mirror_cli(*sync_args(origin, server.url, connected), "--os", "linux", "--keep", "1")
    delta = tmp_path / "delta.tar"
    since = str(site / ".mirror/state.json")
    mirror_cli("export", "--root", str(connected), "--out", str(delta), "--since", since)
    mirror_cli("import", str(delta), "--root", str(site))
    assert mirror_cli("verify", "--root", str(site)).returncode == 0
    status = json.loads(mirror_cli("status", "--root", str(site), "--json").stdout)
    assert status["packages"]["demo"] == ["3.0"]
    assert (site / "apt/pool/main/d/demo/demo_3.0_amd64.deb").exists()


def test_prune_and_export_refuse_a_missing_root_without_creating_it(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-mirror"
    for args in (
        ["prune", "--root", str(missing), "--keep", "1"],
        ["export", "--root", str(missing), "--out", str(tmp_path / "b.tar")],
    ):
        proc = mirror_cli(*args, check=False)
        assert proc.returncode == 1, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "holds no mirror" in lines[0], proc.stderr
        assert not missing.exists()
    assert not (tmp_path / "b.tar").exists()


def test_sync_refuses_zero_workers(tmp_path: Path) -> None:
    root = tmp_path / "mirror"
    proc = mirror_cli(
        "sync", "--region", "cn-hangzhou", "--root", str(root), "--workers", "0", check=False
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "assist-mirror: error: --workers must be at least 1 [usage]"
    assert not root.exists()


def test_sync_on_a_terminal_shows_one_overall_progress_bar(upstream, tmp_path: Path) -> None:
    """A pty as stdout and stderr (a terminal): one `sync` bar counting files and bytes, no
    bar per downloaded file; the mirror is complete."""
    import sys

    from devkit.terminal import run_on_a_terminal

    origin, server = upstream
    root = tmp_path / "mirror"
    code, text = run_on_a_terminal(
        [sys.executable, "-m", "mirror", *sync_args(origin, server.url, root)],
        columns=120, timeout=120,
    )  # fmt: skip
    assert code == 0, text
    assert re.search(r"sync: +\d+%.*\d+/\d+ files", text), text
    final = re.findall(r"(\d+)/(\d+) files", text)[-1]
    assert final[0] == final[1] and int(final[1]) > 0
    assert "demo_2.0_amd64.deb" not in text and ".rpm:" not in text  # no per-file bars
    assert mirror_cli("verify", "--root", str(root)).returncode == 0
