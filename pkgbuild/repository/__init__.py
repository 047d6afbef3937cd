"""The release repository: TUF metadata plus real apt and yum trees (see the repository contract).

init_repository(repo, keys, expires)          create an empty, signed repository
publish_artifacts(repo, keys, artifacts, ch)  add artifacts to a channel; idempotent
yank_version(repo, keys, package, version, ch)
rotate_key(repo, keys, role)                  new keys for a role, rotation published
"""

from __future__ import annotations

from pkgbuild.repository.publish import init_repository, publish_artifacts, yank_version
from pkgbuild.repository.rotate import rotate_key

__all__ = ["init_repository", "publish_artifacts", "rotate_key", "yank_version"]
