"""updater package."""
