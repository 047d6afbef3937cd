"""tuf loads without the cloud SDKs securesystemslib would import, which stay importable."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHECK = """
import sys
import common.trust  # tuf, securesystemslib's signer registry
loaded = sorted(m for m in ("boto3", "botocore") if sys.modules.get(m) is not None)
assert not loaded, loaded
import boto3  # assist-mirror --dest s3:// needs it afterwards
assert sys.modules["boto3"] is boto3
print("ok")
"""


def test_tuf_loads_without_boto3_which_stays_importable() -> None:
    pytest.importorskip("boto3")  # the [mirror] extra; without it there is nothing to hide
    proc = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
