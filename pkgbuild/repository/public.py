"""keys/ and bootstrap/: public keys for people and native tools, and the bootstrap scripts.

The keys are also TUF targets (keys/archive-keyring.gpg, keys/RPM-GPG-KEY-assist,
keys/authenticode.crt, without package custom fields), so the one pinned root.json
authenticates them for mirrors and installers (mirror/README.md, "Safety").
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from tuf.api.metadata import TargetFile

from common.atomic import atomic_write_bytes
from pkgbuild.keys import gpg_fingerprint, load_keys_json
from pkgbuild.repository.metadata import stored_target_path

log = logging.getLogger(__name__)

PUBLIC_KEY_FILES = ("archive-keyring.gpg", "RPM-GPG-KEY-assist", "authenticode.crt")
BOOTSTRAP_TEMPLATES = ("bootstrap.sh", "bootstrap.ps1")
TEMPLATE_DIR = Path(__file__).resolve().parents[2] / "installer"


def key_targets(repo: Path, keys: Path) -> dict[str, TargetFile]:
    """KEYDIR/public/* as signed targets keys/<name>, stored under their consistent names."""
    found = {}
    for name in PUBLIC_KEY_FILES:
        data = (Path(keys) / "public" / name).read_bytes()
        target = TargetFile.from_data(f"keys/{name}", data, ["sha256"])
        dest = stored_target_path(Path(repo), target)
        if not dest.is_file() or dest.read_bytes() != data:
            atomic_write_bytes(dest, data, mode=0o644)
        found[target.path] = target
    return found


def write_public_keys(repo: Path, keys: Path) -> None:
    """Copy KEYDIR/public/* into REPO/keys (only files that changed are rewritten)."""
    for name in PUBLIC_KEY_FILES:
        data = (Path(keys) / "public" / name).read_bytes()
        dest = Path(repo) / "keys" / name
        if not dest.is_file() or dest.read_bytes() != data:
            atomic_write_bytes(dest, data)


def bootstrap_values(repo: Path, keys: Path) -> dict[str, str]:
    """Placeholder values baked into the bootstrap scripts at publish time."""
    info = load_keys_json(keys)
    root = Path(repo) / "metadata" / "1.root.json"
    return {
        "@KEY_FINGERPRINT@": gpg_fingerprint(keys),
        "@GPG_FINGERPRINT@": gpg_fingerprint(keys),
        "@AUTHENTICODE_SHA256@": str(info.get("authenticode_sha256", "")),
        "@ROOT_SHA256@": hashlib.sha256(root.read_bytes()).hexdigest() if root.is_file() else "",
    }


def write_bootstrap(repo: Path, keys: Path, templates: Path = TEMPLATE_DIR) -> list[Path]:
    """Fill the installer's bootstrap templates that exist; @MIRROR_URL@ is left to the mirror."""
    written = []
    values = bootstrap_values(repo, keys)
    for name in BOOTSTRAP_TEMPLATES:
        template = templates / name
        if not template.is_file():
            log.info("no %s template yet; skipping bootstrap/%s", template, name)
            continue
        text = template.read_text(encoding="utf-8")
        for placeholder, value in values.items():
            text = text.replace(placeholder, value)
        dest = Path(repo) / "bootstrap" / name
        atomic_write_bytes(
            dest, text.encode("utf-8"), mode=0o755 if name.endswith(".sh") else 0o644
        )
        written.append(dest)
    return written
