"""Run one Alembic command in a child process and stream its output to the parent.

Alembic keeps `context`/`op` in module globals and a stock env.py resets logging, so every
migration gets a fresh interpreter. The database URL travels in the child's environment,
never on its command line, where `ps` would show the password.

The child takes the migration lock on the very database session env.py migrates on (a stock
Flask-Migrate env.py gets its engine from the app the child builds; an engine a plain Alembic
env.py builds for the same database gets that session's connection), re-reads the revision on
that session, and runs nothing unless it is the plan's. Besides plain log lines it prints
markers the parent parses: every statement (SQL), each database session it opened (SESSION),
a plan that no longer holds (STALE) and an exact failure report (FAILURE).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import URL, make_url

from dashboard.errors import EnvironmentUnreachable, MigrationFailed, PlanChanged, PlanError
from dashboard.processes import die_with_parent
from dashboard.redact import redact
from dashboard.target import adapter as alembic_adapter
from dashboard.target import launcher
from dashboard.target.locks import LockBusy, TargetLock, lock_table_name
from dashboard.target.spec import TargetDatabase

URL_VARIABLE = "DASHBOARD_RUNNER_URL"
# Set for a plain Alembic env.py (which builds its own engine): the README's lock lines see that
# this run is the dashboard's, whose runner holds the lock already, and skip taking it.
LOCK_VARIABLE = "MIGRATION_DASHBOARD_LOCK"

SQL_MARKER = "\x1fSQL\x1f"
SESSION_MARKER = "\x1fSESSION\x1f"
STALE_MARKER = "\x1fSTALE\x1f"
FAILURE_MARKER = "\x1fFAILURE\x1f"
STEP_MARKER = "\x1fSTEP\x1f"
_PRIVATE_MARKERS = (SESSION_MARKER, STALE_MARKER, FAILURE_MARKER, STEP_MARKER)
LOCK_BUSY_EXIT = 75
STALE_EXIT = 76
_DDL = re.compile(r"^\s*(CREATE|ALTER|DROP|RENAME|TRUNCATE)\b", re.IGNORECASE)


def is_ddl(statement: str) -> bool:
    """Whether a statement changes the schema (what MySQL/MariaDB commit on their own)."""
    return bool(_DDL.match(statement))


@dataclass(frozen=True)
class Failure:
    """Which step failed and what it had done, as the runner saw it."""

    error: str
    revision: str | None  # None: the run failed before its first step started
    step: int  # 1-based position of the failing step in the run
    steps: int
    completed: tuple[str, ...]
    ddl_ran: tuple[str, ...]  # schema changes the failing step itself made before failing


@dataclass(frozen=True)
class RunResult:
    """How a child run ended, with every line it printed (passwords masked)."""

    returncode: int
    lines: list[str]
    sessions: tuple[int, ...] = ()
    failure: Failure | None = None
    stale: str | None = None  # why the plan no longer held, when nothing ran for that reason
    last_step: tuple[int, str] | None = None  # (1-based position, revision) of the last step begun

    @property
    def succeeded(self) -> bool:
        return self.returncode == 0

    @property
    def signal_name(self) -> str | None:
        """The signal that killed the runner, e.g. SIGKILL; None when it exited."""
        if self.returncode >= 0:
            return None
        try:
            return signal.Signals(-self.returncode).name
        except ValueError:
            return f"signal {-self.returncode}"

    @property
    def failure_reason(self) -> str:
        """Say why a failed run failed, in one line."""
        if self.stale:
            return self.stale
        if self.failure is not None:
            return self.failure.error
        if self.signal_name:
            return f"the runner was killed by {self.signal_name}"
        errors = [line for line in self.lines if line.startswith("ERROR:")]
        if errors:
            return errors[-1].removeprefix("ERROR:").strip()
        tail = [line.strip() for line in self.lines if line.strip()]
        tail = [line for line in tail if not line.startswith(SQL_MARKER)][-3:]
        return " ".join(tail) or f"the runner exited with code {self.returncode}"


def run_in_child(
    database: TargetDatabase,
    *,
    operation: str,
    target: str,
    on_line: Callable[[str], None] | None = None,
    lock_wait: float = 10.0,
    on_start: Callable[[int], None] | None = None,
    expected_from: tuple[str, ...] | None = None,
    planned: tuple[str, ...] | None = None,
) -> RunResult:
    """Run `operation` to `target` on `database` in a child process; return its output.

    With `expected_from` (and `planned`), the child runs nothing unless the database is still
    at those revisions and Alembic would run exactly those steps, checked under the lock.
    """
    spec = {
        "database": database.to_spec(),
        "operation": operation,
        "target": target,
        "lock_wait": lock_wait,
        "expected_from": None if expected_from is None else list(expected_from),
        "planned": None if planned is None else list(planned),
    }
    child_env = dict(os.environ)
    child_env.pop(LOCK_VARIABLE, None)
    child_env[URL_VARIABLE] = database.url.render_as_string(hide_password=False)
    lines: list[str] = []
    private: dict[str, list[str]] = {marker: [] for marker in _PRIVATE_MARKERS}
    with launcher.start_child("runner", json.dumps(spec), env=child_env) as process:
        if on_start is not None:
            on_start(process.pid)
        for raw in process.stdout:
            line = redact(raw.rstrip("\n"), [database.url])
            marker = next((m for m in _PRIVATE_MARKERS if line.startswith(m)), None)
            if marker is not None:
                private[marker].append(line[len(marker) :])
                continue
            lines.append(line)
            if on_line is not None:
                on_line(line)
        returncode = process.wait()
    failures = [json.loads(text) for text in private[FAILURE_MARKER]]
    stale = [json.loads(text) for text in private[STALE_MARKER]]
    steps = [json.loads(text) for text in private[STEP_MARKER]]
    return RunResult(
        returncode=returncode,
        lines=lines,
        sessions=tuple(json.loads(text) for text in private[SESSION_MARKER]),
        failure=Failure(**failures[-1]) if failures else None,
        stale=stale[-1] if stale else None,
        last_step=tuple(steps[-1]) if steps else None,
    )


def upgrade_in_child(
    database: TargetDatabase,
    *,
    target: str,
    what: str,
    on_line: Callable[[str], None] | None = None,
) -> RunResult:
    """Upgrade `database` to `target` in a child (building the demo, a scratch database);
    raise MigrationFailed saying `what` failed, where, and why, when it does not succeed."""
    result = run_in_child(database, operation="upgrade", target=target, on_line=on_line)
    if not result.succeeded:
        failing = result.failure.revision if result.failure is not None else None
        where = f" at revision {failing}" if failing else ""
        raise MigrationFailed(f"{what} failed{where}: {result.failure_reason}")
    return result


# At most this many revisions per upgrade command of a scratch build: a stock Flask-Migrate
# env.py runs a whole upgrade in one transaction on PostgreSQL, and each CREATE TABLE holds
# several locks until commit (the server's lock table holds about 6,400 by default).
CHUNK_STEPS = 200
# What the child prints as each step begins (_StepObserver._begin_step).
_STEP_LINE = re.compile(r"^step (\d+) of (\d+): ")


def upgrade_in_chunks(
    database: TargetDatabase,
    *,
    targets: tuple[str, ...],
    what: str,
    chunk_steps: int = CHUNK_STEPS,
    progress: Callable[[int, int, str], None] | None = None,
    steps_done: int = 0,
    steps_total: int | None = None,
) -> int:
    """Upgrade `database` to every revision of `targets`, one child per `chunk_steps` steps.

    Whatever env.py does with transactions, no transaction spans more than `chunk_steps`
    revisions. `progress(done, total, text)` hears of each step as it begins; `steps_done` and
    `steps_total` place this upgrade within a larger build (e.g. one database built to the two
    ends of a diff). Return how many steps ran; raise MigrationFailed saying where it failed.
    """
    try:
        graph = alembic_adapter.load_graph(
            database.script_location, database.python_path, database.alembic_ini
        )
        wanted = alembic_adapter.revision_ids(database, targets)
        current = alembic_adapter.read_current_revisions(database)
        chunks = alembic_adapter.upgrade_chunks(
            graph, current=current, targets=wanted, size=chunk_steps
        )
    except (PlanError, EnvironmentUnreachable) as error:
        raise MigrationFailed(f"{what} failed: {error}") from error
    total = steps_done + sum(chunk.steps for chunk in chunks)
    total = max(total, steps_total or 0)
    done = steps_done
    for chunk in chunks:
        on_line = None if progress is None else _step_reporter(progress, what, done, total)
        upgrade_in_child(database, target=chunk.target, what=what, on_line=on_line)
        done += chunk.steps
    if progress is not None and done == total and total:
        progress(done, total, f"{what}: {total:,} steps done")
    return done - steps_done


def _step_reporter(
    progress: Callable[[int, int, str], None], what: str, done: int, total: int
) -> Callable[[str], None]:
    """An on_line callback that reports each step of one chunk as it begins."""

    def on_line(line: str) -> None:
        match = _STEP_LINE.match(line)
        if match is not None:
            step = done + int(match.group(1))
            progress(step - 1, total, f"{what}: step {step:,} of {total:,}")

    return on_line


# --- the child ------------------------------------------------------------------------------


def _emit(marker: str, value: Any) -> None:
    print(marker + json.dumps(value), flush=True)


class _StepObserver:
    """Follow the run step by step: which steps finished, what the current one has done."""

    def __init__(self) -> None:
        self.steps: tuple[str, ...] = ()
        self.started = False
        self.completed: list[str] = []
        self.step_statements: list[str] = []

    def steps_known(self, ids: tuple[str, ...]) -> None:
        # Statements before this (version-table creation, Alembic's reads) belong to no step.
        self.steps, self.started = ids, True
        self.step_statements = []
        self._begin_step()

    def step_applied(self, step: alembic_adapter.AppliedStep) -> None:
        self.completed.append(step.revision_id)
        self.step_statements = []
        self._begin_step()

    def _begin_step(self) -> None:
        index = len(self.completed)
        if index < len(self.steps):
            _emit(STEP_MARKER, [index + 1, self.steps[index]])
            print(f"step {index + 1} of {len(self.steps)}: {self.steps[index]}", flush=True)

    def statement_ran(self, text: str) -> None:
        self.step_statements.append(text)

    def failure(self, error: str) -> dict[str, Any]:
        index = len(self.completed)
        failing = self.steps[index] if self.started and index < len(self.steps) else None
        return {
            "error": error,
            "revision": failing,
            "step": index + 1,
            "steps": len(self.steps),
            "completed": list(self.completed),
            "ddl_ran": [text for text in self.step_statements if is_ddl(text)] if failing else [],
        }


# A placeholder of each DBAPI paramstyle. Quoted text is matched first and left alone, except
# with the percent styles, whose drivers read `%%` and placeholders inside quotes too.
_PLACEHOLDERS = {
    "pyformat": re.compile(r"%%|%\((?P<name>\w+)\)s|%s"),
    "format": re.compile(r"%%|%s"),
    "qmark": re.compile(r"'(?:[^']|'')*'|\?"),
    "named": re.compile(r"'(?:[^']|'')*'|(?<!:):(?P<name>[A-Za-z_]\w*)"),
    "numeric": re.compile(r"'(?:[^']|'')*'|(?<!:):(?P<number>[0-9]+)"),
}


def _sql_literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return f"X'{bytes(value).hex()}'"
    text = value.isoformat(sep=" ") if hasattr(value, "isoformat") else str(value)
    return "'" + text.replace("'", "''") + "'"


def describe_statement(statement: str, parameters: Any, paramstyle: str) -> str:
    """The statement as a person reads it in a job's log: its parameters filled in as SQL
    literals, or (for executemany, or placeholders that do not match) listed after it."""
    text = statement.strip()
    if not parameters:
        return text
    pattern = _PLACEHOLDERS.get(paramstyle)
    if pattern is not None and isinstance(parameters, Mapping | tuple | list):
        positional = iter(parameters) if not isinstance(parameters, Mapping) else None

        def fill(found: re.Match[str]) -> str:
            placeholder = found.group(0)
            if placeholder.startswith("'"):
                return placeholder
            if placeholder == "%%":
                return "%"
            named = found.groupdict()
            if named.get("name") is not None:
                return _sql_literal(parameters[named["name"]])
            if named.get("number") is not None:
                return _sql_literal(parameters[int(named["number"]) - 1])
            return _sql_literal(next(positional))

        try:
            filled = pattern.sub(fill, text)
            if positional is None or next(positional, fill) is fill:  # every value used
                return filled
        except (KeyError, IndexError, TypeError, StopIteration):
            pass
    return f"{text} -- parameters: {parameters!r}"


def _watch_the_database(database: TargetDatabase, observer: _StepObserver) -> None:
    """Print every statement run on the target and each session opened; bound waits."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine
    from sqlalchemy.pool import Pool

    def describe(connection: Any, statement: str, parameters: Any, executemany: bool) -> str:
        paramstyle = "" if executemany else connection.dialect.paramstyle
        return describe_statement(statement, parameters, paramstyle)

    @event.listens_for(Engine, "before_cursor_execute")
    def record(connection, cursor, statement, parameters, context, executemany):  # noqa: ARG001
        text = describe(connection, statement, parameters, executemany)
        print(SQL_MARKER + json.dumps(text), flush=True)

    @event.listens_for(Engine, "after_cursor_execute")
    def ran(connection, cursor, statement, parameters, context, executemany):  # noqa: ARG001
        observer.statement_ran(describe(connection, statement, parameters, executemany))

    lock_timeout = database.lock_timeout
    statement_timeout = database.statement_timeout
    sessions: set[int] = set()

    def opened(session_id: int) -> None:
        if session_id not in sessions:  # the locked session is lent to env.py's engine too
            sessions.add(session_id)
            _emit(SESSION_MARKER, session_id)

    @event.listens_for(Pool, "connect")
    def on_connect(dbapi_connection, record):  # noqa: ARG001
        module = type(dbapi_connection).__module__
        cursor = dbapi_connection.cursor()
        try:
            if module.startswith("psycopg"):
                cursor.execute("SELECT pg_backend_pid()")
                opened(cursor.fetchone()[0])
                if lock_timeout:
                    cursor.execute(f"SET lock_timeout = {int(lock_timeout * 1000)}")
                if statement_timeout:
                    cursor.execute(f"SET statement_timeout = {int(statement_timeout * 1000)}")
                dbapi_connection.commit()
            elif module.startswith(("pymysql", "MySQLdb")):
                cursor.execute("SELECT CONNECTION_ID()")
                opened(cursor.fetchone()[0])
                if lock_timeout:
                    cursor.execute(f"SET SESSION lock_wait_timeout = {max(1, int(lock_timeout))}")
                    cursor.execute(
                        f"SET SESSION innodb_lock_wait_timeout = {max(1, int(lock_timeout))}"
                    )
                if statement_timeout:
                    cursor.execute(f"SET SESSION max_statement_time = {float(statement_timeout)}")
        finally:
            cursor.close()


def main() -> int:
    """`python -m dashboard.target.runner` (DASHBOARD_CHILD_START=spawn): spec on stdin."""
    return child_main(launcher.read_payload())


def child_main(payload: str) -> int:
    """Child entry point: run the command described by the JSON spec on $DASHBOARD_RUNNER_URL."""
    die_with_parent()  # the supervisor (or the zygote) going takes this runner along
    spec = json.loads(payload)
    database = TargetDatabase.from_spec(spec["database"], make_url(os.environ.pop(URL_VARIABLE)))
    database.apply_child_environment()  # `env:` from environments.yaml, before env.py runs
    version_table, schema = database.version_table, database.version_table_schema
    expected_from = spec.get("expected_from")
    observer = _StepObserver()
    _watch_the_database(database, observer)
    app = alembic_adapter.migration_app(database)
    lock = TargetLock(url=database.url, version_table=version_table, schema=schema)
    with app.app_context():
        engine = alembic_adapter.app_engine(app)
        try:
            with engine.connect() as connection:
                try:
                    lock.acquire(wait=float(spec.get("lock_wait", 10)), on=connection)
                except LockBusy as error:
                    print(f"ERROR: {error}", flush=True)
                    return LOCK_BUSY_EXIT
                print(
                    f"runner {os.getpid()}: holding the migration lock of this database "
                    "on the session that migrates",
                    flush=True,
                )
                found = alembic_adapter.current_heads(
                    connection, version_table=version_table, version_table_schema=schema
                )
                connection.rollback()
                locked_session = connection.connection.dbapi_connection
            if expected_from is not None and found != tuple(sorted(expected_from)):
                stale = PlanChanged(expected=tuple(sorted(expected_from)), found=found)
                _emit(STALE_MARKER, str(stale))
                print(f"ERROR: {stale}", flush=True)
                return STALE_EXIT
            if database.url.get_backend_name() != "sqlite":  # SQLite's lock is a file's
                _lend_the_locked_session(database.url, engine.dialect, locked_session)
            return _run(spec, app, database, observer)
        finally:
            _release(engine, lock)


def _lend_the_locked_session(url: URL, runner_dialect: Any, locked: Any) -> None:
    """Make every engine env.py builds for the target migrate on the locked session.

    A plain Alembic env.py builds its own engine (engine_from_config, with NullPool) and would
    migrate on a second session while the lock sat on an idle one: a killed runner's idle
    session ends at once and frees the lock while the migrating statement still runs. So, as
    the Flask app's StaticPool does for a Flask-Migrate env.py, any other engine this child
    creates for the same database through the same driver (the URL's connect arguments, as
    that engine's dialect reads them) gets the locked DBAPI connection instead of a new one,
    and never closes it: the runner releases the lock on it and closes it last.
    """
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    def same_database(dialect: Any, cargs: list[Any], cparams: dict[str, Any]) -> bool:
        if dialect is runner_dialect or dialect.loaded_dbapi is not runner_dialect.loaded_dbapi:
            return False
        wanted_args, wanted_params = dialect.create_connect_args(url)
        return list(cargs) == list(wanted_args) and all(
            key in cparams and cparams[key] == value for key, value in wanted_params.items()
        )

    @event.listens_for(Engine, "do_connect")
    def lend(dialect, record, cargs, cparams):  # noqa: ARG001
        if not same_database(dialect, cargs, cparams):
            return None
        if "do_close" not in vars(dialect):  # its pool closes what it returns: not this one
            close, terminate = dialect.do_close, dialect.do_terminate
            dialect.do_close = lambda dbapi: None if dbapi is locked else close(dbapi)
            dialect.do_terminate = lambda dbapi: None if dbapi is locked else terminate(dbapi)
        return locked


def _run(spec: dict, app: Any, database: TargetDatabase, observer: _StepObserver) -> int:
    """Run the command on the locked session; report a failure exactly."""
    # Engines env.py builds for the target are lent the locked session (above); the README's
    # lock lines also skip on this variable, for an env.py that reaches the database otherwise.
    if alembic_adapter.env_py_builds_its_engine(database.script_location):
        os.environ[LOCK_VARIABLE] = lock_table_name(
            database.version_table, database.version_table_schema
        )
    expected_from = spec.get("expected_from")
    planned = spec.get("planned")
    try:
        alembic_adapter.run_command(
            database,
            app=app,
            operation=spec["operation"],
            target=spec["target"],
            expected_from=None if expected_from is None else tuple(expected_from),
            planned=None if planned is None else tuple(planned),
            on_steps=observer.steps_known,
            on_applied=observer.step_applied,
        )
    except PlanChanged as stale:
        _emit(STALE_MARKER, str(stale))
        print(f"ERROR: {stale}", flush=True)
        return STALE_EXIT
    # The managed app's scripts run here: whatever they raise is the step's failure.
    except Exception as error:
        traceback.print_exc()
        message = str(error).strip()
        if not isinstance(error, MigrationFailed):
            message = f"{type(error).__name__}: {message}".rstrip(": ")
        message = redact(message, [database.url])
        print(f"ERROR: {message}", flush=True)
        _emit(FAILURE_MARKER, observer.failure(message))
        return 1
    return 0


def _release(engine: Any, lock: TargetLock) -> None:
    """Let go of the lock on the migrating session, then close it (ending re-entrant holds)."""
    try:
        with engine.connect() as connection:
            lock.release(on=connection)
    except Exception as error:  # the session may be gone: closing it frees the lock anyway
        print(f"releasing the migration lock: {type(error).__name__}: {error}", flush=True)
    finally:
        engine.dispose()


if __name__ == "__main__":
    sys.exit(main())
