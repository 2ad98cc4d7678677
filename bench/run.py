"""Side-by-side benchmark: the dashboard's commands against the plain Flask-Migrate CLI.

Run from the repository root:

    .venv/bin/python bench/run.py [--quick] [--backends sqlite,postgresql,mariadb]
                                  [--revisions N] [--repeat R] [--json FILE]

Everything happens in a temporary folder (a generated script directory, a tiny Flask app, the
dashboard's store) and in throwaway databases, one per measurement; all are removed at the end,
also on failure or Ctrl-C. See bench/README.md for how to read the ratios.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

REPO = Path(__file__).resolve().parent.parent
# The venv's flask, beside the interpreter running this script.
FLASK = str(Path(sys.executable).with_name("flask"))
COMMAND_TIMEOUT = 900.0
ENVIRONMENT_NAME = "bench"
URL_VARIABLE = "BENCH_DATABASE_URL"

SERVERS = {
    "postgresql": os.environ.get(
        "BENCH_POSTGRESQL_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    ),
    "mariadb": os.environ.get("BENCH_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test"),
}
BACKENDS = ("sqlite", "postgresql", "mariadb")


# --- what is compared -----------------------------------------------------------------------


@dataclass(frozen=True)
class Operation:
    """One row of the table: a plain Flask-Migrate command and its dashboard counterpart."""

    name: str
    baseline: tuple[str, ...]
    dashboard: tuple[str, ...]
    # Whether the database must be at head before the timed command (else it is empty).
    at_head: bool
    note: str


OPERATIONS = (
    Operation(
        "upgrade",
        ("db", "upgrade"),
        ("dashboard", "upgrade", ENVIRONMENT_NAME),
        at_head=False,
        note="base to head; the dashboard also records a job, audit events and every statement, "
        "and runs the migration in a child process that holds a lock in the database",
    ),
    Operation(
        "current",
        ("db", "current"),
        ("dashboard", "status", "--json"),
        at_head=True,
        note="read the revision of a database at head; the dashboard also loads the revision "
        "graph and classifies the status",
    ),
    Operation(
        "sql",
        ("db", "upgrade", "--sql", "base:head"),
        ("dashboard", "diff", ENVIRONMENT_NAME),
        at_head=False,
        note="offline SQL base to head; the dashboard does more: it reads the database, renders "
        "the plan (SQL per step, warnings, fingerprint) and builds the schema at both ends in "
        "two scratch databases to diff them",
    ),
)


# --- the generated workload -----------------------------------------------------------------

REVISION_TEMPLATE = '''"""create {table}

Revision ID: {revision}
Revises: {down}
Create Date: 2026-01-01 00:00:00.000000

"""
from alembic import op
import sqlalchemy as sa


revision = {revision!r}
down_revision = {down_revision!r}
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        {table!r},
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(80), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=True),
    )


def downgrade():
    op.drop_table({table!r})
'''

# The managed application that the plain CLI runs against (`flask --app benchapp db …`).
APP_MODULE = f'''"""A minimal Flask-SQLAlchemy + Flask-Migrate application for the benchmark."""

import os
from pathlib import Path

from flask import Flask
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy

db = SQLAlchemy()
migrate = Migrate()

app = Flask(__name__)
app.config["SQLALCHEMY_DATABASE_URI"] = os.environ["{URL_VARIABLE}"]
db.init_app(app)
migrate.init_app(app, db, directory=str(Path(__file__).resolve().parent / "migrations"))
'''

ENVIRONMENTS_YAML = f"""project: bench
migrations: migrations
environments:
  - name: {ENVIRONMENT_NAME}
    url: ${{{URL_VARIABLE}}}
"""


def _package_folder(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations)))


def revision_id(index: int) -> str:
    return f"{index:012x}"


def write_workload(folder: Path, revisions: int) -> str:
    """Write the script directory, the app module and environments.yaml; return the head id."""
    scripts = folder / "migrations"
    (scripts / "versions").mkdir(parents=True)
    # The stock Flask-Migrate templates, as `flask db init` would copy them.
    templates = _package_folder("flask_migrate") / "templates" / "flask"
    shutil.copy(templates / "env.py", scripts / "env.py")
    shutil.copy(templates / "script.py.mako", scripts / "script.py.mako")
    ini = (templates / "alembic.ini.mako").read_text().replace("${script_location}", str(scripts))
    (scripts / "alembic.ini").write_text(ini)
    for index in range(revisions):
        down = revision_id(index - 1) if index else None
        text = REVISION_TEMPLATE.format(
            table=f"t{index:04d}",
            revision=revision_id(index),
            down=down or "",
            down_revision=down,
        )
        (scripts / "versions" / f"{revision_id(index)}_create_t{index:04d}.py").write_text(text)
    (folder / "benchapp.py").write_text(APP_MODULE)
    (folder / "environments.yaml").write_text(ENVIRONMENTS_YAML)
    return revision_id(revisions - 1)


# --- throwaway databases --------------------------------------------------------------------


class Databases:
    """Creates throwaway databases on one backend and drops every one it made."""

    def __init__(self, backend: str, folder: Path) -> None:
        self.backend = backend
        self.folder = folder
        self.created: list[URL] = []
        self._admin: sa.Engine | None = None
        if backend != "sqlite":
            self._admin = sa.create_engine(
                make_url(SERVERS[backend]),
                isolation_level="AUTOCOMMIT",
                poolclass=sa.pool.NullPool,
                connect_args={"connect_timeout": 3},
            )

    def check(self) -> str | None:
        """Return why the server cannot be used, or None when it answers."""
        if self._admin is None:
            return None
        try:
            with self._admin.connect():
                return None
        except sa.exc.DBAPIError as error:
            where = self._admin.url.render_as_string(hide_password=True)
            reason = type(error.orig).__name__
            return f"{self.backend} server at {where} is not available ({reason})"

    def create(self) -> URL:
        name = f"bench_{uuid.uuid4().hex[:12]}"
        if self._admin is None:
            path = self.folder / f"{name}.db"
            path.touch()  # an empty file is an empty SQLite database (the dashboard wants one)
            url = make_url(f"sqlite:///{path}")
        else:
            with self._admin.connect() as connection:
                connection.execute(sa.text(f"CREATE DATABASE {name}"))
            url = self._admin.url.set(database=name)
        self.created.append(url)
        return url

    def drop(self, url: URL) -> None:
        if self._admin is None:
            # The file, and the lock file the dashboard's runner puts beside it.
            for path in Path(url.database or "").parent.glob(f"{Path(url.database).name}*"):
                path.unlink(missing_ok=True)
        else:
            force = " WITH (FORCE)" if self.backend == "postgresql" else ""
            with self._admin.connect() as connection:
                connection.execute(sa.text(f"DROP DATABASE IF EXISTS {url.database}{force}"))
        self.created.remove(url)

    @contextmanager
    def throwaway(self) -> Iterator[URL]:
        url = self.create()
        try:
            yield url
        finally:
            self.drop(url)

    def close(self) -> None:
        """Drop whatever is left (after a failure) and close the admin connection pool."""
        for url in list(self.created):
            try:
                self.drop(url)
            except sa.exc.DBAPIError as error:
                print(f"warning: could not drop {url.database}: {type(error.orig).__name__}")
        if self._admin is not None:
            self._admin.dispose()


# --- running one command --------------------------------------------------------------------


@dataclass
class Sample:
    seconds: float
    peak_mib: float
    stdout: str


class CommandFailed(RuntimeError):
    pass


def redact(text: str, url: URL) -> str:
    """Hide the database password should a custom server URL carry one."""
    return text.replace(url.password, "***") if url.password else text


def child_environment(folder: Path, url: URL, dashboard: bool) -> dict[str, str]:
    """The child's environment; the database URL goes here, never on a command line."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("FLASK_", "DASHBOARD_", "SQLALCHEMY_"))
    }
    # The repository's .flaskenv (FLASK_APP=dashboard) must not leak into the baseline.
    env["FLASK_SKIP_DOTENV"] = "1"
    # Both sides read compiled bytecode, as an installed package and a warm checkout do: with
    # PYTHONDONTWRITEBYTECODE set (containers, CI images) nothing the warm-up imports is cached,
    # and every timed command would compile the revision scripts and the dashboard's modules.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env[URL_VARIABLE] = url.render_as_string(hide_password=False)
    if dashboard:
        env["FLASK_APP"] = "dashboard:create_app"
        env["DASHBOARD_DATABASE_URL"] = f"sqlite:///{folder / 'store.db'}"
        env["ENVIRONMENTS_FILE"] = str(folder / "environments.yaml")
        env["DASHBOARD_AUDIT_ANCHOR_FILE"] = str(folder / "audit-anchors.log")
    return env


# Forks and execs the command, then reports its wall time and rusage. Why a launcher: on Linux a
# child's ru_maxrss starts at the peak RSS of the process that forked it (exec keeps the old
# mm's high-water mark), so children forked by this script, which has SQLAlchemy loaded, would all
# report at least its size. This bare interpreter (-I -S: no site, ~10 MiB) is the floor instead,
# well below any `flask` command. RUSAGE_CHILDREN deltas would not work either: that is a running
# maximum over every child so far, not a sum.
LAUNCHER = """
import json, os, sys, time
result, argv = sys.argv[1], sys.argv[2:]
started = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execv(argv[0], argv)
_, status, usage = os.wait4(pid, 0)
seconds = time.perf_counter() - started
with open(result, "w") as out:
    json.dump({"exit": os.waitstatus_to_exitcode(status), "seconds": seconds,
               "maxrss_kib": usage.ru_maxrss}, out)
"""


def run(folder: Path, url: URL, args: tuple[str, ...], dashboard: bool) -> Sample:
    """Run `flask ARGS` in `folder`; return its wall time and peak RSS (itself + descendants)."""
    argv = [FLASK, *args] if dashboard else [FLASK, "--app", "benchapp", *args]
    return run_command(
        folder,
        argv,
        child_environment(folder, url, dashboard),
        label=f"flask {' '.join(args)}",
        secret_url=url,
    )


def run_command(
    folder: Path,
    argv: list[str],
    env: dict[str, str],
    *,
    label: str,
    secret_url: URL | None = None,
    timeout: float = COMMAND_TIMEOUT,
) -> Sample:
    """Run `argv` in `folder` with `env` through the launcher; return its wall time and peak RSS
    (itself + descendants). A failure raises CommandFailed with the output's tail, the password
    of `secret_url` hidden."""
    result_file = folder / f"result-{uuid.uuid4().hex[:8]}.json"
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", LAUNCHER, str(result_file), *argv],
            cwd=folder,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,  # so a timeout can kill the whole process group
        )
        try:
            process.wait(timeout=timeout)
        except BaseException as error:
            # A timeout, Ctrl-C or SIGTERM: the command runs in its own session, so it would
            # outlive us (and the database we are about to drop) unless its group is killed.
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            if isinstance(error, subprocess.TimeoutExpired):
                raise CommandFailed(f"`{label}` took over {timeout:g} s") from None
            raise
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    try:
        result = json.loads(result_file.read_text())
        result_file.unlink()
    except FileNotFoundError:
        result = {"exit": process.returncode}
    if process.returncode != 0 or result["exit"] != 0:
        tail = (stderr or stdout)[-2000:]
        if secret_url is not None:
            tail = redact(tail, secret_url)
        raise CommandFailed(f"`{label}` failed:\n{tail}")
    # ru_maxrss (KiB on Linux) from wait4 is the larger of the command's own peak and that of
    # its waited-for descendants (the dashboard's migration runner): the biggest process of the
    # tree, not a sum over processes alive at once.
    return Sample(seconds=result["seconds"], peak_mib=result["maxrss_kib"] / 1024, stdout=stdout)


# --- measuring ------------------------------------------------------------------------------


@dataclass
class Side:
    command: str
    seconds: list[float] = field(default_factory=list)
    peak_mib: list[float] = field(default_factory=list)

    def add(self, sample: Sample) -> None:
        self.seconds.append(round(sample.seconds, 4))
        self.peak_mib.append(round(sample.peak_mib, 1))

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    @property
    def median_peak_mib(self) -> float:
        return statistics.median(self.peak_mib)


@dataclass
class Result:
    operation: str
    backend: str
    note: str
    baseline: Side
    dashboard: Side

    def as_dict(self) -> dict:
        data = asdict(self)
        for side in ("baseline", "dashboard"):
            data[side]["median_s"] = round(getattr(self, side).median_s, 4)
            data[side]["median_peak_mib"] = getattr(self, side).median_peak_mib
        data["time_ratio"] = round(self.time_ratio, 3)
        data["memory_ratio"] = round(self.memory_ratio, 3)
        return data

    @property
    def time_ratio(self) -> float:
        return self.dashboard.median_s / self.baseline.median_s

    @property
    def memory_ratio(self) -> float:
        return self.dashboard.median_peak_mib / self.baseline.median_peak_mib


def check_output(operation: Operation, sample: Sample, head: str, dashboard: bool) -> None:
    """Make sure the command did what the row claims, so a silent no-op is not measured."""
    if operation.name == "current" and head not in sample.stdout:
        raise CommandFailed(f"{operation.name}: the head {head} is not in the output")
    if operation.name == "current" and dashboard:
        (status,) = json.loads(sample.stdout)
        if status["status"] != "up_to_date":
            raise CommandFailed(f"dashboard status says {status['status']}, not up_to_date")
    if operation.name == "sql" and not dashboard and "CREATE TABLE t0000" not in sample.stdout:
        raise CommandFailed("the offline SQL does not create the first table")


def measure_once(
    operation: Operation, databases: Databases, folder: Path, head: str, dashboard: bool
) -> Sample:
    """Time one command on a fresh database (brought to head first, untimed, if needed)."""
    with databases.throwaway() as url:
        if operation.at_head:
            run(folder, url, ("db", "upgrade"), dashboard=False)
        args = operation.dashboard if dashboard else operation.baseline
        sample = run(folder, url, args, dashboard=dashboard)
        check_output(operation, sample, head, dashboard)
        return sample


def measure_backend(
    backend: str, databases: Databases, folder: Path, head: str, repeat: int
) -> list[Result]:
    results = [
        Result(
            operation.name,
            backend,
            operation.note,
            Side("flask --app benchapp " + " ".join(operation.baseline)),
            Side("flask " + " ".join(operation.dashboard)),
        )
        for operation in OPERATIONS
    ]
    for attempt in range(repeat):
        for operation, result in zip(OPERATIONS, results, strict=True):
            # Alternate which side goes first, so neither always gets the warmer caches.
            order = (False, True) if attempt % 2 == 0 else (True, False)
            for dashboard in order:
                sample = measure_once(operation, databases, folder, head, dashboard)
                (result.dashboard if dashboard else result.baseline).add(sample)
            print(
                f"  {backend:<10} {operation.name:<8} run {attempt + 1}/{repeat}: "
                f"baseline {result.baseline.seconds[-1]:.2f} s, "
                f"dashboard {result.dashboard.seconds[-1]:.2f} s",
                flush=True,
            )
    return results


def prepare(folder: Path, revisions: int) -> str:
    """Write the workload, create the dashboard's store and compile the scripts (untimed)."""
    head = write_workload(folder, revisions)
    store = make_url(f"sqlite:///{folder / 'warmup.db'}")
    # The store's schema: `flask db upgrade` on the dashboard app itself.
    run(folder, store, ("db", "upgrade"), dashboard=True)
    # Offline SQL imports every revision script once, so neither side pays for compiling them.
    run(folder, store, ("db", "upgrade", "--sql", "base:head"), dashboard=False)
    return head


# --- output ---------------------------------------------------------------------------------


def table(results: list[Result]) -> str:
    header = (
        "operation",
        "backend",
        "baseline s",
        "dashboard s",
        "ratio",
        "baseline MiB",
        "dashboard MiB",
        "ratio",
    )
    rows = [header]
    for result in results:
        rows.append(
            (
                result.operation,
                result.backend,
                f"{result.baseline.median_s:.2f}",
                f"{result.dashboard.median_s:.2f}",
                f"{result.time_ratio:.2f}x",
                f"{result.baseline.median_peak_mib:.0f}",
                f"{result.dashboard.median_peak_mib:.0f}",
                f"{result.memory_ratio:.2f}x",
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(width) if column < 2 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def report(results: list[Result], skipped: dict[str, str], settings: dict) -> dict:
    return {
        "machine": machine(),
        "settings": settings,
        "skipped": skipped,
        "operations": {operation.name: operation.note for operation in OPERATIONS},
        "results": [result.as_dict() for result in results],
    }


# --- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 revisions, 1 repetition")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated")
    parser.add_argument("--revisions", type=int, help="revisions in the script directory")
    parser.add_argument("--repeat", type=int, help="repetitions per measurement (median)")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args(argv)
    args.revisions = args.revisions or (20 if args.quick else 100)
    args.repeat = args.repeat or (1 if args.quick else 3)
    args.backends = [name.strip() for name in args.backends.split(",") if name.strip()]
    unknown = sorted(set(args.backends) - set(BACKENDS))
    if unknown:
        parser.error(f"unknown backend(s): {', '.join(unknown)}; use {', '.join(BACKENDS)}")
    if args.revisions < 1 or args.repeat < 1:
        parser.error("--revisions and --repeat must be at least 1")
    return args


def benchmark(args: argparse.Namespace, folder: Path) -> tuple[list[Result], dict[str, str]]:
    head = prepare(folder, args.revisions)
    results: list[Result] = []
    skipped: dict[str, str] = {}
    for backend in args.backends:
        databases = Databases(backend, folder)
        try:
            reason = databases.check()
            if reason:
                print(f"skipping {backend}: {reason}", flush=True)
                skipped[backend] = reason
                continue
            results.extend(measure_backend(backend, databases, folder, head, args.repeat))
        finally:
            databases.close()
    return results, skipped


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # Turn SIGTERM into SystemExit so the finally blocks drop databases and remove the folder.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    settings = {"revisions": args.revisions, "repeat": args.repeat, "backends": args.backends}
    print(
        f"{args.revisions} revisions, {args.repeat} repetition(s), "
        f"backends: {', '.join(args.backends)}; {os.cpu_count()} CPU(s)",
        flush=True,
    )
    folder = Path(tempfile.mkdtemp(prefix="mdash-bench-"))
    try:
        results, skipped = benchmark(args, folder)
    except CommandFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print()
    print(table(results) if results else "no backend could be measured")
    print()
    print("Medians of each side; ratio = dashboard / baseline (above 1: the dashboard is slower")
    print("or bigger). The dashboard does more than the baseline in every row:")
    for operation in OPERATIONS:
        print(
            textwrap.fill(
                f"{operation.name}: {operation.note}.",
                100,
                initial_indent="  ",
                subsequent_indent="    ",
            )
        )
    if args.json:
        args.json.write_text(json.dumps(report(results, skipped, settings), indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
