"""Throwaway empty databases of an environment's dialect, always removed afterwards.

- SQLite: a file in a new temporary folder (the folder also holds the runner's lock file).
- PostgreSQL, MySQL/MariaDB: a uniquely named database created on the environment's
  `shadow_url` server when it has one, else on the environment's own server when its
  credentials may CREATE DATABASE. Otherwise ScratchUnavailable says why.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

from dashboard.environments.loader import Environment
from dashboard.errors import EnvironmentNotConfigured, ScratchUnavailable
from dashboard.redact import redact
from dashboard.target.adapter import describe_database_error
from dashboard.target.engines import target_engine

SCRATCH_PREFIX = "dashboard_scratch_"
CONNECT_TIMEOUT = 5.0
SERVER_BACKENDS = ("postgresql", "mysql", "mariadb")

logger = logging.getLogger(__name__)


@contextmanager
def scratch_database(*, environment: Environment) -> Iterator[URL]:
    """Yield the URL of a new, empty database of `environment`'s dialect; drop it afterwards."""
    if environment.url is None:
        raise EnvironmentNotConfigured(
            f"{environment.name} is not configured: {environment.not_configured_reason}"
        )
    backend = environment.url.get_backend_name()
    if backend == "sqlite":
        with _scratch_sqlite() as url:
            yield url
    elif backend in SERVER_BACKENDS:
        with _scratch_on_server(environment) as url:
            yield url
    else:
        raise ScratchUnavailable(f"no scratch database can be made for {backend} databases")


@contextmanager
def _scratch_sqlite() -> Iterator[URL]:
    folder = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX))
    try:
        path = folder / "scratch.db"
        path.touch()  # an empty file is an empty SQLite database
        yield make_url(f"sqlite:///{path}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _server_url(environment: Environment) -> tuple[URL, str]:
    """Return the URL to issue CREATE DATABASE on, and where it came from (for messages)."""
    assert environment.url is not None
    if environment.shadow_url is not None:
        server = environment.shadow_url
        if server.get_backend_name() != environment.url.get_backend_name():
            raise ScratchUnavailable(
                f"the shadow_url of {environment.name} is a {server.get_backend_name()} server, "
                f"but {environment.name} is a {environment.url.get_backend_name()} database"
            )
        if not server.database and server.get_backend_name() == "postgresql":
            server = server.set(database="postgres")
        return server, f"the shadow_url server of {environment.name}"
    return environment.url, f"the server of {environment.name} (it has no shadow_url)"


def _admin_engine(url: URL) -> sa.Engine:
    return target_engine(url, timeout=CONNECT_TIMEOUT, autocommit=True)


@contextmanager
def _scratch_on_server(environment: Environment) -> Iterator[URL]:
    server, where = _server_url(environment)
    name = f"{SCRATCH_PREFIX}{uuid.uuid4().hex[:12]}"
    engine = _admin_engine(server)
    quoted = engine.dialect.identifier_preparer.quote(name)
    try:
        with engine.connect() as connection:
            connection.execute(sa.text(f"CREATE DATABASE {quoted}"))
    except sa.exc.SQLAlchemyError as error:
        engine.dispose()
        reason = describe_database_error(error, server)
        raise ScratchUnavailable(
            f"cannot create a scratch database on {where}: {reason}. Give the environment a "
            "shadow_url whose credentials may create databases, or grant CREATE DATABASE"
        ) from error
    try:
        yield server.set(database=name)
    except BaseException:
        _drop(engine, name, quoted, server, raise_errors=False)  # keep the original error
        raise
    _drop(engine, name, quoted, server, raise_errors=True)


def _drop(engine: sa.Engine, name: str, quoted: str, server: URL, *, raise_errors: bool) -> None:
    """Drop the scratch database; a failure is logged (and raised when asked)."""
    force = " WITH (FORCE)" if server.get_backend_name() == "postgresql" else ""
    try:
        with engine.connect() as connection:
            connection.execute(sa.text(f"DROP DATABASE IF EXISTS {quoted}{force}"))
    except sa.exc.SQLAlchemyError as error:
        reason = describe_database_error(error, server)
        message = redact(
            f"could not drop the scratch database {name} on "
            f"{server.render_as_string(hide_password=True)}: {reason}",
            [server],
        )
        logger.warning(message)
        if raise_errors:
            raise ScratchUnavailable(message) from error
    finally:
        engine.dispose()
