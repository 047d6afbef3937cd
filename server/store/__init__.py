"""Storage: one SQLAlchemy Core schema for SQLite and PostgreSQL, migrations, and the Store."""

from server.store.db import Store, normalize_db_url

__all__ = ["Store", "normalize_db_url"]
