"""Run one Alembic command in a child process and stream its output to the parent.

Alembic keeps `context`/`op` in module globals and a stock env.py resets logging, so every
migration gets a fresh interpreter. The database URL travels in the child's environment,
never on its command line, where `ps` would show the password.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from dashboard.environments.loader import Environment
from dashboard.errors import EnvironmentNotConfigured, MigrationFailed
from dashboard.redact import redact

URL_VARIABLE = "DASHBOARD_RUNNER_URL"


@dataclass(frozen=True)
class RunResult:
    """How a child run ended, with every line it printed (passwords masked)."""

    returncode: int
    lines: list[str]

    @property
    def succeeded(self) -> bool:
        return self.returncode == 0

    @property
    def failure_reason(self) -> str:
        """Say why a failed run failed: its last ERROR line, else its last lines of output."""
        errors = [line for line in self.lines if line.startswith("ERROR:")]
        if errors:
            return errors[-1].removeprefix("ERROR:").strip()
        tail = [line.strip() for line in self.lines if line.strip()]
        tail = [line for line in tail if not line.startswith(SQL_MARKER)][-3:]
        return " ".join(tail) or f"the runner exited with code {self.returncode}"


def run_in_child(
    *,
    environment: Environment,
    script_location: Path,
    operation: str,
    target: str,
    on_line: Callable[[str], None] | None = None,
    options: dict | None = None,
    on_start: Callable[[int], None] | None = None,
) -> RunResult:
    """Run `operation` to `target` on `environment` in a child process; return its output."""
    if environment.url is None:
        raise EnvironmentNotConfigured(
            f"{environment.name} is not configured: {environment.not_configured_reason}"
        )
    spec = {
        "script_location": str(script_location),
        "operation": operation,
        "target": target,
        "version_table": environment.version_table,
        "version_table_schema": environment.version_table_schema,
        "python_path": [str(folder) for folder in environment.python_path],
        **(options or {}),
    }
    child_env = dict(os.environ)
    child_env[URL_VARIABLE] = environment.url.render_as_string(hide_password=False)
    child_env["PYTHONUNBUFFERED"] = "1"
    lines: list[str] = []
    with subprocess.Popen(
        [sys.executable, "-m", "dashboard.runner", json.dumps(spec)],
        env=child_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        bufsize=1,
    ) as process:
        assert process.stdout is not None
        if on_start is not None:
            on_start(process.pid)
        for raw in process.stdout:
            line = redact(raw.rstrip("\n"), [environment.url])
            lines.append(line)
            if on_line is not None:
                on_line(line)
        returncode = process.wait()
    return RunResult(returncode=returncode, lines=lines)


SQL_MARKER = "\x1fSQL\x1f"
LOCK_BUSY_EXIT = 75


def _die_with_parent() -> None:
    """Ask Linux to kill this process when its supervisor goes, so no orphan keeps migrating."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def _record_statements_and_bound_waits(spec: dict) -> None:
    """Print every statement run on the target; bound lock and statement waits per session."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine
    from sqlalchemy.pool import Pool

    @event.listens_for(Engine, "before_cursor_execute")
    def record(connection, cursor, statement, parameters, context, executemany):  # noqa: ARG001
        text = statement.strip()
        if parameters:
            text = f"{text} -- parameters: {parameters!r}"
        print(SQL_MARKER + json.dumps(text), flush=True)

    lock_timeout = spec.get("lock_timeout")
    statement_timeout = spec.get("statement_timeout")

    @event.listens_for(Pool, "connect")
    def bound_waits(dbapi_connection, record):  # noqa: ARG001
        module = type(dbapi_connection).__module__
        cursor = dbapi_connection.cursor()
        try:
            if module.startswith("psycopg"):
                if lock_timeout:
                    cursor.execute(f"SET lock_timeout = {int(lock_timeout * 1000)}")
                if statement_timeout:
                    cursor.execute(f"SET statement_timeout = {int(statement_timeout * 1000)}")
                dbapi_connection.commit()
            elif module.startswith(("pymysql", "MySQLdb")):
                if lock_timeout:
                    cursor.execute(f"SET SESSION lock_wait_timeout = {max(1, int(lock_timeout))}")
                    cursor.execute(
                        f"SET SESSION innodb_lock_wait_timeout = {max(1, int(lock_timeout))}"
                    )
                if statement_timeout:
                    cursor.execute(f"SET SESSION max_statement_time = {float(statement_timeout)}")
        finally:
            cursor.close()


def main(argv: list[str] | None = None) -> int:
    """Child entry point: run the command described by the JSON spec on $DASHBOARD_RUNNER_URL."""
    _die_with_parent()
    from dashboard import alembic_adapter
    from dashboard.jobs.locks import LockBusy, TargetLock

    parser = argparse.ArgumentParser(prog="python -m dashboard.runner")
    parser.add_argument("spec", help="JSON: script_location, operation, target, version_table…")
    spec = json.loads(parser.parse_args(argv).spec)
    url = make_url(os.environ.pop(URL_VARIABLE))
    version_table = spec.get("version_table") or "alembic_version"
    schema = spec.get("version_table_schema")
    lock = TargetLock(url=url, version_table=version_table, schema=schema)
    try:
        lock.acquire(wait=float(spec.get("lock_wait", 10)))
    except LockBusy as error:
        print(f"ERROR: {error}", flush=True)
        return LOCK_BUSY_EXIT
    print(f"runner {os.getpid()}: holding the migration lock of this database", flush=True)
    _record_statements_and_bound_waits(spec)
    try:
        alembic_adapter.run_command(
            script_location=Path(spec["script_location"]),
            url=url,
            operation=spec["operation"],
            target=spec["target"],
            version_table=version_table,
            version_table_schema=schema,
            python_path=[Path(folder) for folder in spec.get("python_path", [])],
        )
    except MigrationFailed as error:
        import traceback

        traceback.print_exc()
        print(f"ERROR: {error}", flush=True)
        return 1
    finally:
        lock.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
