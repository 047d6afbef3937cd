"""python-tuf without the cloud SDKs it would drag in.

securesystemslib's signer registry (imported by tuf.api.metadata) tries to import boto3, the
Azure, Google Cloud, Vault, PKCS#11 and Sigstore SDKs for signers we never use, whenever they
happen to be installed: boto3 alone costs ~0.1-0.2 s of every command's start (and on a VM it
may come from the system's site-packages, not from our payload). Hiding them while tuf loads
makes those optional imports fail fast as the ImportError securesystemslib expects; they stay
importable afterwards (assist-mirror --dest s3:// imports boto3 itself).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

OPTIONAL_SIGNER_SDKS = (
    "boto3",
    "botocore",
    "azure",
    "google.cloud",
    "hvac",
    "pkcs11",
    "sigstore",
    "keylet",
)


@contextlib.contextmanager
def optional_sdks_hidden(names: tuple[str, ...] = OPTIONAL_SIGNER_SDKS) -> Iterator[None]:
    """Make `import NAME` raise ImportError inside the block for NAMEs not yet imported."""
    hidden = [name for name in names if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


def preload_tuf() -> None:
    """Import tuf (and securesystemslib's signers) with the optional SDKs hidden."""
    with optional_sdks_hidden():
        import securesystemslib.signer  # noqa: F401
        import tuf.api.metadata  # noqa: F401
