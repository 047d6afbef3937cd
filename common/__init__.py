"""Shared pieces: config, errors, atomic files, platform, HTTP fetcher, trust."""

__version__ = "0.1.0"
