"""pkgbuild package."""
