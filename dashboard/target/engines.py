"""The one way to open an engine on a target database: bounded connect, no idle pool.

A target is reached briefly (a status read, a lock check, a reflection, a scratch build), from
many processes, and may be slow or gone: every engine bounds its connect by a timeout and keeps
no connection between uses (NullPool), so a dead server or a killed session is never reused.
The runner's one long session is configured in `adapter.migration_app` from `connect_args`.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine
from sqlalchemy.pool import NullPool

from dashboard.errors import EnvironmentUnreachable


def connect_args(url: URL, timeout: float) -> dict[str, Any]:
    """Driver arguments that bound connecting (and a status query) by `timeout` seconds."""
    backend, driver = url.get_backend_name(), url.get_driver_name()
    if backend == "postgresql":
        # libpq and psycopg take whole seconds, and treat values below 2 as 2.
        return {"connect_timeout": max(1, round(timeout))}
    if backend in ("mysql", "mariadb") and driver in ("pymysql", "mysqldb"):
        seconds = max(1, round(timeout)) if driver == "mysqldb" else timeout
        return {"connect_timeout": seconds, "read_timeout": seconds, "write_timeout": seconds}
    if backend == "sqlite":
        return {"timeout": timeout}
    return {}


def target_engine(url: URL, *, timeout: float = 5.0, autocommit: bool = False) -> Engine:
    """An engine on a target database (or its server, for scratch databases)."""
    options: dict[str, Any] = {"poolclass": NullPool, "connect_args": connect_args(url, timeout)}
    if autocommit:
        options["isolation_level"] = "AUTOCOMMIT"
    return sa.create_engine(url, **options)


def read_only_engine(url: URL, *, timeout: float) -> Engine:
    """An engine for reading only: on SQLite it never creates a missing file."""
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        path = Path(url.database)
        if not path.exists():
            raise EnvironmentUnreachable(f"the SQLite database file {path} does not exist")
        uri = f"file:{quote(str(path))}?mode=ro"
        return sa.create_engine(
            "sqlite://",
            creator=lambda: sqlite3.connect(uri, uri=True, timeout=timeout),
            poolclass=NullPool,
        )
    return target_engine(url, timeout=timeout)
