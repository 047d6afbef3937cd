"""sync --dest s3://…: the same tree published to S3-compatible storage in the same safe order.

The S3 side here is moto's standalone server (moto.server.ThreadedMotoServer) on 127.0.0.1 —
an EMULATOR of the S3 API, not real OSS/MinIO/AWS; boto3 talks real HTTP to it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from common.errors import DownloadError
from devkit.server import free_port
from mirror.options import SyncOptions
from mirror.source import HttpSource
from mirror.state import load_state
from mirror.storage import S3Storage, make_s3_client
from mirror.sync import sync


@pytest.fixture
def s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def client(endpoint: str):
    return make_s3_client(endpoint, "testing", "testing")


def record_puts(s3) -> list[str]:
    """Keys of PutObject calls, in order (boto3's own event hooks; nothing is replaced)."""
    keys: list[str] = []
    s3.meta.events.register(
        "provide-client-params.s3.PutObject", lambda params, **_: keys.append(params["Key"])
    )
    return keys


def test_sync_publishes_the_tree_to_s3_in_safe_order(
    upstream, tmp_path: Path, s3_endpoint: str
) -> None:
    origin, server = upstream
    s3 = client(s3_endpoint)
    s3.create_bucket(Bucket="assist")
    puts = record_puts(s3)
    root = tmp_path / "mirror"

    def run() -> None:
        sync(
            SyncOptions(
                root=root,
                source=HttpSource(server.url, progress=False),
                trust_root=origin.trust_root,
                keyring=origin.keyring,
                dests=[S3Storage("s3://assist/cn-hangzhou", client=s3)],
            )
        )

    run()
    objects = {o["Key"]: o["Size"] for o in s3.list_objects_v2(Bucket="assist")["Contents"]}
    published = load_state(root).files
    assert {f"cn-hangzhou/{rel}" for rel in published} <= set(objects)
    for rel, record in published.items():
        assert objects[f"cn-hangzhou/{rel}"] == record[1]
    body = s3.get_object(Bucket="assist", Key="cn-hangzhou/metadata/timestamp.json")["Body"].read()
    assert body == (root / "metadata/timestamp.json").read_bytes()
    # order: artifacts, then indexes with their signed entry points last, then metadata, timestamp last
    assert puts[-1] == "cn-hangzhou/metadata/timestamp.json"
    first_index = min(i for i, k in enumerate(puts) if "/dists/" in k or "/repodata/" in k)
    assert all(
        k.startswith(
            ("cn-hangzhou/targets/", "cn-hangzhou/apt/pool/", "cn-hangzhou/yum/stable/Packages/")
        )
        for k in puts[:first_index]
    )
    assert puts.index("cn-hangzhou/apt/dists/stable/InRelease") > puts.index(
        "cn-hangzhou/apt/dists/stable/main/binary-amd64/Packages"
    )
    assert puts.index("cn-hangzhou/yum/stable/repodata/repomd.xml") > max(
        i for i, k in enumerate(puts) if "primary.xml" in k
    )
    ctype = s3.head_object(Bucket="assist", Key="cn-hangzhou/metadata/timestamp.json")[
        "ContentType"
    ]
    assert ctype == "application/json"
    # nothing new: one request upstream, nothing written to S3
    puts.clear()
    server.requests.clear()
    run()
    assert puts == [] and server.requests == ["/metadata/timestamp.json"]


def test_failed_s3_publish_is_retried_by_the_next_sync(
    upstream, tmp_path: Path, s3_endpoint: str
) -> None:
    origin, server = upstream
    s3 = client(s3_endpoint)
    root = tmp_path / "mirror"
    options = SyncOptions(
        root=root,
        source=HttpSource(server.url, progress=False),
        trust_root=origin.trust_root,
        keyring=origin.keyring,
        dests=[S3Storage("s3://missing-bucket/x", client=s3)],
    )
    with pytest.raises(DownloadError, match="S3 request"):
        sync(options)
    assert (root / "metadata/timestamp.json").exists()  # the local mirror itself is complete
    s3.create_bucket(Bucket="missing-bucket")
    report = sync(options)
    assert report.changed
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="missing-bucket")["Contents"]]
    assert "x/metadata/timestamp.json" in keys


def test_cli_dest_takes_endpoint_and_credentials_from_env(
    upstream, tmp_path: Path, s3_endpoint: str
) -> None:
    import os

    from mirror_testlib import mirror_cli, sync_args

    origin, server = upstream
    client(s3_endpoint).create_bucket(Bucket="oss")
    env = dict(
        os.environ,
        AWS_ENDPOINT_URL=s3_endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_EC2_METADATA_DISABLED="true",
    )
    root = tmp_path / "mirror"
    mirror_cli(
        *sync_args(origin, server.url, root),
        "--dest",
        "s3://oss/assist",
        env=env,
    )
    body = (
        client(s3_endpoint)
        .get_object(Bucket="oss", Key="assist/metadata/timestamp.json")["Body"]
        .read()
    )
    assert body == (root / "metadata/timestamp.json").read_bytes()


def _env_without_aws_credentials(tmp_path: Path) -> dict[str, str]:
    """The caller's environment minus every AWS_* setting and with an empty HOME (no ~/.aws)."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["HOME"] = str(tmp_path / "home")
    return env


@pytest.mark.parametrize(
    ("dest", "message"),
    [
        ("ftp://x/y", "assist-mirror: error: not an S3 URL: 'ftp://x/y'"),
        (
            "s3://b/p",
            "assist-mirror: error: no S3 credentials: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
            "or --s3-access-key",
        ),
    ],
)
def test_bad_dest_fails_with_one_line_and_never_asks_instance_metadata(
    tmp_path: Path, dest: str, message: str
) -> None:
    """Before the fix boto3 built its client first and, with no credentials, asked the EC2
    metadata service (169.254.169.254): the network guard fails this test on that attempt."""
    from mirror_testlib import mirror_cli

    root = tmp_path / "mirror"
    proc = mirror_cli(
        "sync",
        "--region",
        "cn-hangzhou",
        "--upstream",
        "http://127.0.0.1:9/",
        "--root",
        str(root),
        "--dest",
        dest,
        check=False,
        env=_env_without_aws_credentials(tmp_path),
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), proc.stderr
    assert "169.254" not in proc.stderr
    assert not root.exists()  # nothing was started


def test_s3_client_needs_credentials_unless_instance_metadata_is_asked_for(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import os

    from common.errors import ConfigError

    for name in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(name)
    with pytest.raises(ConfigError, match="no S3 credentials"):
        S3Storage("s3://bucket/prefix")
    with pytest.raises(ConfigError, match="not an S3 URL"):
        S3Storage("https://bucket/prefix", client=object())
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "id-from-env")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-from-env")
    s3 = make_s3_client("http://127.0.0.1:9")
    credentials = s3._request_signer._credentials  # botocore keeps what it will sign with
    assert (credentials.access_key, credentials.secret_key) == ("id-from-env", "secret-from-env")
    assert "AWS_EC2_METADATA_DISABLED" not in os.environ  # only set while the client is built
