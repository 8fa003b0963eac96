"""Database URLs: the two engines and how a ``DATABASE_URL`` names each.

One home for what both the settings (which validate ``DATABASE_URL`` before anything
connects) and the database layer (which opens it) need to know about a URL. It imports
no database driver, so reading the settings stays cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

Engine = Literal["sqlite", "postgresql"]

SQLITE_PREFIX = "sqlite:///"  # sqlite:///relative/path.db, sqlite:////absolute/path.db
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def engine_of(url: str) -> Engine:
    """The engine a (validated) database URL names."""
    return "sqlite" if url.startswith("sqlite:") else "postgresql"


def sqlite_path(url: str) -> Path:
    """The file of a ``sqlite:///`` URL: ``sqlite:///data/x.db`` -> ``data/x.db``,
    ``sqlite:////abs/x.db`` -> ``/abs/x.db``."""
    return Path(url[len(SQLITE_PREFIX) :])
