"""Artifact names round-trip through parse_artifact_filename."""

from __future__ import annotations

import pytest

from common.errors import UsageError
from pkgbuild.naming import ArtifactInfo, parse_artifact_filename


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "aliyun-assist_2.2.5_amd64.deb",
            ArtifactInfo("aliyun-assist", "2.2.5", "linux", "x86_64", "deb"),
        ),
        (
            "aliyun-assist-2.2.5-1.aarch64.rpm",
            ArtifactInfo("aliyun-assist", "2.2.5", "linux", "aarch64", "rpm"),
        ),
        (
            "aliyun-assist-2.2.5-setup.exe",
            ArtifactInfo("aliyun-assist", "2.2.5", "windows", "x86_64", "exe"),
        ),
        (
            "hello-tool-1.0.0-linux-x86_64.tar.gz",
            ArtifactInfo("hello-tool", "1.0.0", "linux", "x86_64", "tar.gz"),
        ),
    ],
)
def test_parse_and_format_round_trip(name: str, expected: ArtifactInfo) -> None:
    info = parse_artifact_filename(name)
    assert info == expected
    assert info.filename == name
    assert info.target_path == f"{info.package}/{info.version}/{name}"


@pytest.mark.parametrize("name", ["evil/../x.deb", "readme.txt", "a_b.deb", "x-1.0-setup.msi"])
def test_rejects_non_artifacts(name: str) -> None:
    with pytest.raises(UsageError):
        parse_artifact_filename(name)
