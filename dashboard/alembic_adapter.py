"""The one module that imports alembic: revision graphs, current revisions, running commands.

Everything Alembic raises is turned into our own errors here, with passwords removed.
"""

from __future__ import annotations

import os
import re
import sqlite3
import sys
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError, to_tuple
from sqlalchemy.engine import URL, Engine
from sqlalchemy.pool import NullPool

from dashboard.errors import EnvironmentUnreachable, MigrationFailed, ScriptDirectoryError
from dashboard.redact import redact

_CREATE_DATE = re.compile(r"^Create Date:\s*(.+?)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Revision:
    """One migration script as the script directory describes it."""

    id: str
    message: str
    down_revisions: tuple[str, ...]
    next_revisions: tuple[str, ...]
    branch_labels: tuple[str, ...]
    path: Path
    created: str | None
    is_head: bool
    is_base: bool
    is_branch_point: bool
    is_merge_point: bool


class RevisionGraph:
    """The parsed revision tree of one script directory."""

    def __init__(self, script_location: Path, revisions: list[Revision], heads: list[str]) -> None:
        self.script_location = script_location
        self.revisions = tuple(revisions)  # newest first: every child before its parents
        self.heads = tuple(heads)
        self._by_id = {revision.id: revision for revision in revisions}
        self._position = {revision.id: index for index, revision in enumerate(revisions)}

    def __contains__(self, revision_id: object) -> bool:
        return revision_id in self._by_id

    def __len__(self) -> int:
        return len(self.revisions)

    def get(self, revision_id: str) -> Revision | None:
        """Return the revision with this full id, or None."""
        return self._by_id.get(revision_id)

    def ancestors(self, revision_ids: Iterable[str]) -> set[str]:
        """Return the given revisions and everything below them."""
        seen: set[str] = set()
        stack = [rid for rid in revision_ids if rid in self._by_id]
        while stack:
            rid = stack.pop()
            if rid in seen:
                continue
            seen.add(rid)
            stack.extend(self._by_id[rid].down_revisions)
        return seen

    def pending(self, current: Iterable[str], targets: Iterable[str] | None = None) -> list[str]:
        """Return the revisions an upgrade from `current` to `targets` (default: heads) runs."""
        wanted = self.ancestors(self.heads if targets is None else targets)
        applied = self.ancestors(current)
        missing = wanted - applied
        return sorted(missing, key=lambda rid: self._position[rid], reverse=True)


@dataclass
class _CachedGraph:
    signature: tuple[Any, ...]
    graph: RevisionGraph


_graph_cache: dict[tuple[Path, tuple[Path, ...]], _CachedGraph] = {}
_graph_lock = threading.Lock()


def _signature(script_location: Path) -> tuple[Any, ...]:
    """Describe every file that shapes the graph, cheaply, so a change is noticed."""
    entries: list[tuple[str, int, int]] = []
    for folder in (script_location, script_location / "versions"):
        try:
            with os.scandir(folder) as scan:
                for entry in scan:
                    if entry.is_file() and entry.name.endswith(".py"):
                        stat = entry.stat()
                        entries.append((entry.path, stat.st_mtime_ns, stat.st_size))
        except FileNotFoundError:
            continue
    return tuple(sorted(entries))


@contextmanager
def _on_sys_path(folders: Iterable[Path]) -> Iterator[None]:
    added = [str(folder) for folder in folders if str(folder) not in sys.path]
    sys.path[:0] = added
    try:
        yield
    finally:
        for folder in added:
            if folder in sys.path:
                sys.path.remove(folder)


def load_graph(script_location: Path, python_path: Iterable[Path] = ()) -> RevisionGraph:
    """Return the revision graph, re-reading the scripts only when a file changed."""
    script_location = Path(script_location)
    key = (script_location, tuple(python_path))
    with _graph_lock:
        signature = _signature(script_location)
        cached = _graph_cache.get(key)
        if cached is not None and cached.signature == signature:
            return cached.graph
        graph = _read_graph(script_location, key[1])
        _graph_cache[key] = _CachedGraph(signature, graph)
        return graph


def _read_graph(script_location: Path, python_path: tuple[Path, ...]) -> RevisionGraph:
    config = Config()
    config.set_main_option("script_location", str(script_location).replace("%", "%%"))
    try:
        with _on_sys_path(python_path):
            script = ScriptDirectory.from_config(config)
            scripts = list(script.walk_revisions())
            heads = list(script.get_heads())
    except CommandError as error:
        raise ScriptDirectoryError(f"cannot read the migration scripts: {error}") from error
    # A revision file is Python that runs on load: any error in it is the script's fault.
    except Exception as error:
        raise ScriptDirectoryError(
            f"cannot read the migration scripts in {script_location}: "
            f"{type(error).__name__}: {error}"
        ) from error
    revisions = []
    for item in scripts:
        docstring = getattr(item.module, "__doc__", None) or ""
        created = _CREATE_DATE.search(docstring)
        revisions.append(
            Revision(
                id=item.revision,
                message=(item.doc or "").strip(),
                down_revisions=tuple(to_tuple(item.down_revision, default=())),
                next_revisions=tuple(sorted(item.nextrev)),
                branch_labels=tuple(sorted(item.branch_labels)),
                path=Path(item.path),
                created=created.group(1) if created else None,
                is_head=item.is_head,
                is_base=item.is_base,
                is_branch_point=item.is_branch_point,
                is_merge_point=item.is_merge_point,
            )
        )
    return RevisionGraph(script_location, revisions, heads)


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


def _status_engine(url: URL, timeout: float) -> Engine:
    """An engine that opens one short-lived connection and never creates a SQLite file."""
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
    return sa.create_engine(url, poolclass=NullPool, connect_args=connect_args(url, timeout))


def describe_database_error(error: BaseException, url: URL | None) -> str:
    """Turn a driver error into one readable line without the password or SQLAlchemy links."""
    original = getattr(error, "orig", None) or error
    text = str(original).strip() or type(original).__name__
    text = " ".join(line.strip() for line in text.splitlines() if line.strip())
    return redact(text, [url])


def read_current_revisions(
    *,
    url: URL,
    version_table: str = "alembic_version",
    version_table_schema: str | None = None,
    timeout: float = 3.0,
) -> tuple[str, ...]:
    """Return the revisions recorded in a database; () when it has no version table."""
    try:
        engine = _status_engine(url, timeout)
        try:
            with engine.connect() as connection:
                context = MigrationContext.configure(
                    connection,
                    opts={
                        "version_table": version_table,
                        "version_table_schema": version_table_schema,
                    },
                )
                return tuple(context.get_current_heads())
        finally:
            engine.dispose()
    except EnvironmentUnreachable:
        raise
    except (sa.exc.SQLAlchemyError, sqlite3.Error, OSError, CommandError) as error:
        raise EnvironmentUnreachable(describe_database_error(error, url)) from error


def _alembic_config(script_location: Path, url: URL, *, stdout: IO[str] | None = None) -> Config:
    """Build a Config that both a Flask-Migrate env.py and a plain Alembic env.py accept."""
    ini = next(
        (
            candidate
            for candidate in (
                script_location / "alembic.ini",
                script_location.parent / "alembic.ini",
            )
            if candidate.is_file()
        ),
        None,
    )
    config = Config(str(ini) if ini else None, stdout=stdout or sys.stdout)
    # ConfigParser interpolates '%': escape it, or a password holding '%' breaks (and is echoed).
    config.set_main_option("script_location", str(script_location).replace("%", "%%"))
    config.set_main_option(
        "sqlalchemy.url", url.render_as_string(hide_password=False).replace("%", "%%")
    )
    return config


def _flask_migrate_app(
    script_location: Path,
    url: URL,
    version_table: str,
    version_table_schema: str | None,
) -> Any:
    """A minimal Flask app whose migrate extension carries this environment's engine.

    A stock Flask-Migrate env.py reads its engine and configure arguments from
    `current_app.extensions['migrate']` and ignores `sqlalchemy.url`.
    """
    from flask import Flask
    from flask_migrate import Migrate
    from flask_sqlalchemy import SQLAlchemy

    app = Flask("dashboard_runner")
    app.config["SQLALCHEMY_DATABASE_URI"] = url.render_as_string(hide_password=False)
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {"poolclass": NullPool}
    db = SQLAlchemy()
    db.init_app(app)
    configure_args: dict[str, Any] = {"version_table": version_table}
    if version_table_schema:
        configure_args["version_table_schema"] = version_table_schema
    Migrate(app, db, directory=str(script_location), **configure_args)
    return app


def run_command(
    *,
    script_location: Path,
    url: URL,
    operation: str,
    target: str,
    version_table: str = "alembic_version",
    version_table_schema: str | None = None,
    python_path: Iterable[Path] = (),
    stdout: IO[str] | None = None,
) -> None:
    """Run upgrade, downgrade or stamp in this process (the runner child calls this)."""
    if operation not in ("upgrade", "downgrade", "stamp"):
        raise ValueError(f"unknown operation {operation!r}")
    config = _alembic_config(script_location, url, stdout=stdout)
    app = _flask_migrate_app(script_location, url, version_table, version_table_schema)
    with _on_sys_path(python_path), app.app_context():
        try:
            getattr(command, operation)(config, target)
        except CommandError as error:
            raise MigrationFailed(redact(str(error), [url])) from error
        except sa.exc.SQLAlchemyError as error:
            raise MigrationFailed(describe_database_error(error, url)) from error
