"""The migration lock held in the target database itself, keyed on its identity and version table.

A team's own env.py can take the very same lock (README: "Taking the same lock from a terminal"):
- PostgreSQL: a session-level advisory lock on
  ('x' || substr(md5('migration-dashboard:' || TABLE), 1, 16))::bit(64)::bigint
  (advisory locks are scoped to the current database);
- MySQL/MariaDB: GET_LOCK(CONCAT('mdash:', LEFT(SHA1(CONCAT(DATABASE(), '.', TABLE)), 40)), …),
  since GET_LOCK names are server-wide;
- SQLite: an exclusive flock on the file "<database file>.<TABLE>.migration-lock".
TABLE is the version table, schema-qualified when it has a schema ("alembic_version" by default).
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from types import TracebackType

import sqlalchemy as sa
from sqlalchemy.engine import URL

from dashboard.errors import DashboardError
from dashboard.target.adapter import describe_database_error
from dashboard.target.engines import target_engine

PG_KEY_SQL = "('x' || substr(md5('migration-dashboard:' || :table), 1, 16))::bit(64)::bigint"
MYSQL_NAME_SQL = "CONCAT('mdash:', LEFT(SHA1(CONCAT(DATABASE(), '.', :table)), 40))"


class LockBusy(DashboardError):
    """Another process holds the migration lock of this database."""

    status = 409


def lock_table_name(version_table: str, version_table_schema: str | None) -> str:
    """Return the version table as the lock key names it."""
    return f"{version_table_schema}.{version_table}" if version_table_schema else version_table


class TargetLock:
    """Hold the migration lock of one target database until released (or the process dies)."""

    def __init__(
        self,
        *,
        url: URL,
        version_table: str = "alembic_version",
        schema: str | None = None,
    ) -> None:
        self.url = url
        self.table = lock_table_name(version_table, schema)
        self.backend = url.get_backend_name()
        self._engine: sa.Engine | None = None
        self._connection: sa.Connection | None = None
        self._owns_connection = True
        self._file: int | None = None

    def try_acquire(self, *, on: sa.Connection | None = None) -> bool:
        """Take the lock if it is free (on the session `on`, else our own); say if we hold it."""
        if on is not None:
            self._connection, self._owns_connection = on, False
        if self.backend == "sqlite":
            return self._try_file_lock()
        connection = self._connect()
        if self.backend == "postgresql":
            held = connection.scalar(
                sa.text(f"SELECT pg_try_advisory_lock({PG_KEY_SQL})"), {"table": self.table}
            )
        elif self.backend in ("mysql", "mariadb"):
            held = connection.scalar(
                sa.text(f"SELECT GET_LOCK({MYSQL_NAME_SQL}, 0)"), {"table": self.table}
            )
        else:
            raise DashboardError(f"no migration lock is known for {self.backend} databases")
        connection.commit()
        return bool(held)

    def acquire(self, *, wait: float, on: sa.Connection | None = None) -> None:
        """Take the lock, waiting at most `wait` seconds; raise LockBusy otherwise.

        With `on`, the lock belongs to that session: the runner passes the one it migrates on.
        """
        deadline = time.monotonic() + wait
        while not self.try_acquire(on=on):
            if time.monotonic() >= deadline:
                self.release()
                raise LockBusy(
                    f"another process holds the migration lock of this database (waited {wait:g} s)"
                )
            time.sleep(0.2)

    def release(self, *, on: sa.Connection | None = None) -> None:
        """Let go of the lock (closing the session releases it too, re-entrant holds included).

        `on` is the same database session the lock was taken on, checked out again.
        """
        if on is not None:
            self._connection, self._owns_connection = on, False
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            os.close(self._file)
            self._file = None
        if self._connection is not None and self.backend != "sqlite":
            try:
                if self.backend == "postgresql":
                    self._connection.execute(
                        sa.text(f"SELECT pg_advisory_unlock({PG_KEY_SQL})"), {"table": self.table}
                    )
                elif self.backend in ("mysql", "mariadb"):
                    self._connection.execute(
                        sa.text(f"SELECT RELEASE_LOCK({MYSQL_NAME_SQL})"), {"table": self.table}
                    )
                self._connection.commit()
            finally:
                if self._owns_connection:
                    self._connection.close()
                self._connection = None
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def __enter__(self) -> TargetLock:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    def _connect(self) -> sa.Connection:
        if self._connection is None:
            self._engine = target_engine(self.url, timeout=5.0)
            self._connection = self._engine.connect()
        return self._connection

    def _try_file_lock(self) -> bool:
        database = self.url.database or ""
        if not database or database == ":memory:":
            return True
        if self._file is None:
            path = Path(f"{database}.{self.table}.migration-lock")
            self._file = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


def lock_is_free(*, url: URL, version_table: str, schema: str | None) -> bool:
    """Return True when nobody holds the migration lock of this database right now."""
    lock = TargetLock(url=url, version_table=version_table, schema=schema)
    try:
        return lock.try_acquire()
    finally:
        lock.release()


def terminate_sessions(*, url: URL, session_ids: list[int]) -> list[str]:
    """End a dead runner's database sessions where our role may; say what happened to each.

    A runner killed mid-statement leaves its PostgreSQL backend (or MySQL thread) running the
    statement, still holding the migration lock, until the server notices. Ending it frees
    the lock only once the migrating session is really gone.
    """
    backend = url.get_backend_name()
    if backend == "sqlite" or not session_ids:
        return []
    engine = target_engine(url, timeout=5.0)
    outcomes = []
    try:
        with engine.connect() as connection:
            for session_id in session_ids:
                try:
                    if backend == "postgresql":
                        ended = connection.scalar(
                            sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": session_id}
                        )
                        # pg_terminate_backend only signals; wait until the backend is gone.
                        for _ in range(50):
                            alive = connection.scalar(
                                sa.text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"),
                                {"pid": session_id},
                            )
                            if not alive:
                                break
                            time.sleep(0.1)
                        outcomes.append(
                            f"session {session_id} terminated"
                            if ended
                            else f"session {session_id} had already ended"
                        )
                    else:
                        connection.exec_driver_sql(f"KILL {int(session_id)}")
                        outcomes.append(f"session {session_id} terminated")
                except sa.exc.DBAPIError as error:
                    message = describe_database_error(error, url)
                    if "Unknown thread id" in message:
                        outcomes.append(f"session {session_id} had already ended")
                    else:
                        outcomes.append(
                            f"session {session_id} could not be terminated ({message}): it may "
                            "still be running, and holds the lock until it ends"
                        )
                    connection.rollback()
    except sa.exc.SQLAlchemyError as error:
        reason = describe_database_error(error, url)
        outcomes.append(f"could not connect to end the runner's sessions ({reason})")
    finally:
        engine.dispose()
    return outcomes
