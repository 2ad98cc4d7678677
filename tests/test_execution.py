"""A job does exactly what its plan said: the lock is the migrating session, the revision is
re-checked under it, failures are reported exactly, and a killed runner says so."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from dashboard.audit.models import AuditEvent
from dashboard.extensions import db
from dashboard.jobs import service as jobs
from dashboard.jobs.models import Job, JobLogLine
from dashboard.target.locks import lock_is_free
from tests.helpers import (
    REPO,
    Auth,
    DatabaseFactory,
    app_for_tree,
    queue_job,
    run_job_to_the_end,
    signed_in_client,
    table_names,
    upgrade_in_child,
    versions,
)

FAST = {"JOB_HEARTBEAT_SECONDS": 0.3, "JOB_STALE_SECONDS": 2, "JOB_LOCK_WAIT_SECONDS": 2}
PG_LOCK_HOLDER = (
    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND database = "
    "(SELECT oid FROM pg_database WHERE datname = current_database())"
)
MYSQL_LOCK_NAME = "CONCAT('mdash:', LEFT(SHA1(CONCAT(DATABASE(), '.alembic_version')), 40))"


def readme_lock_lines() -> str:
    """The env.py lines the README tells a team to add, byte for byte."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("### Taking the same lock from a terminal", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def add_lock_lines(env_py: Path) -> None:
    """Paste the README's lines right after `with connectable.connect() as connection:`."""
    source = env_py.read_text()
    anchor = "    with connectable.connect() as connection:\n"
    assert anchor in source
    env_py.write_text(source.replace(anchor, anchor + readme_lock_lines(), 1))


def without_logging(env_py: Path) -> None:
    """Make env.py configure no logging at all, as some real ones do."""
    source = env_py.read_text()
    assert "fileConfig(config.config_file_name)" in source
    env_py.write_text(source.replace("fileConfig(config.config_file_name)", "pass"))


def job_log(app, job_id: int) -> str:
    """The log lines a job printed (not its statements), as its page shows them."""
    with app.app_context():
        lines = db.session.scalars(
            sa.select(JobLogLine.text)
            .where(JobLogLine.job_id == job_id, JobLogLine.kind == "log")
            .order_by(JobLogLine.number)
        )
        return "\n".join(lines)


# --- the lock is the migrating session ------------------------------------------------------


EVIDENCE = {
    "postgresql": (
        "CREATE TABLE evidence AS SELECT pg_backend_pid() AS migrating, "
        f"({PG_LOCK_HOLDER} LIMIT 1) AS holder"
    ),
    "mariadb": (
        "CREATE TABLE evidence AS SELECT CONNECTION_ID() AS migrating, "
        f"IS_USED_LOCK({MYSQL_LOCK_NAME}) AS holder"
    ),
}


def assert_migrated_on_the_lock_holder(url) -> None:
    """The evidence table says the migrating session held the lock, which is free again."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.connect() as connection:
        migrating, holder = connection.execute(
            sa.text("SELECT migrating, holder FROM evidence")
        ).one()
    engine.dispose()
    assert holder is not None and migrating == holder
    assert lock_is_free(url=url, version_table="alembic_version", schema=None)


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
def test_a_job_completes_with_the_readme_lock_lines_and_migrates_on_the_lock_holder(
    backend, tmp_path, script_tree
):
    databases = DatabaseFactory(backend, tmp_path)
    try:
        url = databases.create()
        add_lock_lines(script_tree.path / "env.py")
        script_tree.add_table("r00", None, "t0")
        script_tree.add("r01", "r00", upgrade=f"op.execute({EVIDENCE[backend]!r})")
        app = app_for_tree(tmp_path / "site", script_tree, {"dev": url}, **FAST)

        started = time.monotonic()
        job = run_job_to_the_end(app)

        assert job.state == "succeeded", job.error
        assert time.monotonic() - started < 20  # not a lock wait that timed out
        assert versions(url) == ["r01"]
        assert_migrated_on_the_lock_holder(url)
    finally:
        databases.drop_all()


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
def test_a_plain_alembic_env_py_with_the_lock_lines_runs_under_the_dashboard(
    backend, tmp_path, plain_script_tree
):
    databases = DatabaseFactory(backend, tmp_path)
    try:
        url = databases.create()
        add_lock_lines(plain_script_tree.path / "env.py")
        assert "engine_from_config(" in (plain_script_tree.path / "env.py").read_text()
        plain_script_tree.add_table("r00", None, "t0")
        plain_script_tree.add("r01", "r00", upgrade=f"op.execute({EVIDENCE[backend]!r})")
        app = app_for_tree(tmp_path / "site", plain_script_tree, {"dev": url}, **FAST)

        started = time.monotonic()
        job = run_job_to_the_end(app)

        assert job.state == "succeeded", job.error
        assert time.monotonic() - started < 20  # not a lock wait that timed out
        assert versions(url) == ["r01"]
        # env.py built its own engine, yet it migrated on the session that holds the lock.
        assert_migrated_on_the_lock_holder(url)
        assert "releasing the migration lock" not in job_log(app, job.id)  # released, not lost
    finally:
        databases.drop_all()


TERMINAL_APP = """
from flask import Flask
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy

app = Flask(__name__)
app.config["SQLALCHEMY_DATABASE_URI"] = {url!r}
db = SQLAlchemy(app)
Migrate(app, db, directory={directory!r})
"""


SLEEP_4 = {"postgresql": "SELECT pg_sleep(4)", "mariadb": "SELECT SLEEP(4)"}


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
def test_a_terminal_flask_db_upgrade_with_the_lines_waits_while_a_job_runs(
    backend, tmp_path, script_tree
):
    databases = DatabaseFactory(backend, tmp_path)
    try:
        url = databases.create()
        add_lock_lines(script_tree.path / "env.py")
        script_tree.add_table("r00", None, "t0")
        script_tree.add("r01", "r00", upgrade=f"op.execute({SLEEP_4[backend]!r})")
        app = app_for_tree(tmp_path / "site", script_tree, {"dev": url}, **FAST)
        terminal = tmp_path / "terminal"
        terminal.mkdir()
        (terminal / "shop.py").write_text(
            TERMINAL_APP.format(
                url=url.render_as_string(hide_password=False), directory=str(script_tree.path)
            )
        )

        finished: dict[str, object] = {}

        def run_job() -> None:
            finished["job"] = run_job_to_the_end(app)
            finished["at"] = time.monotonic()

        worker = threading.Thread(target=run_job)
        worker.start()
        deadline = time.monotonic() + 20
        while lock_is_free(url=url, version_table="alembic_version", schema=None):
            assert time.monotonic() < deadline, "the job never took the lock"
            time.sleep(0.1)
        person = subprocess.Popen(
            [str(Path(sys.executable).with_name("flask")), "--app", "shop", "db", "upgrade"],
            cwd=terminal,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        time.sleep(1.0)
        assert person.poll() is None, "the terminal run did not wait for the job's lock"
        worker.join(timeout=60)
        output, _ = person.communicate(timeout=60)
        ended = time.monotonic()

        assert finished["job"].state == "succeeded", finished["job"].error
        assert person.returncode == 0, output
        assert ended >= finished["at"]
        assert "Running upgrade" not in output  # the job had done it all; nothing ran twice
        assert versions(url) == ["r01"]
    finally:
        databases.drop_all()


# --- re-check under the lock ----------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_job_whose_database_moved_after_planning_ends_stale_and_runs_nothing(
    backend, tmp_path, script_tree
):
    databases = DatabaseFactory(backend, tmp_path)
    try:
        url = databases.create()
        script_tree.linear(3)
        app = app_for_tree(tmp_path / "site", script_tree, {"dev": url}, **FAST)
        with app.app_context():
            queued = queue_job()
            # Someone else moves the database between the plan and the run.
            from dashboard.environments import get_project

            project = get_project()
            upgrade_in_child(environment=project.get("dev"), project=project, target="r01")
            job = jobs.run_job(job_id=queued.id)

            assert job.state == "stale"
            assert "the plan was made at base" in job.error
            assert "the database is at r01" in job.error and "nothing ran" in job.error
            events = db.session.scalars(
                sa.select(AuditEvent.action).where(AuditEvent.environment == "dev")
            ).all()
            assert "job.stale" in events
        assert versions(url) == ["r01"]
        assert "t2" not in table_names(url)
    finally:
        databases.drop_all()


def test_a_job_whose_scripts_changed_after_planning_ends_stale_and_runs_nothing(
    tmp_path, script_tree
):
    databases = DatabaseFactory("postgresql", tmp_path)
    try:
        url = databases.create()
        script_tree.linear(3)  # r00 → r01 → r02
        app = app_for_tree(tmp_path / "site", script_tree, {"dev": url}, **FAST)
        with app.app_context():
            queued = queue_job()  # planned: r00, r01, r02, with that plan's fingerprint
            assert queued.planned_revisions == ["r00", "r01", "r02"]
            # A team reorders its history after the plan was reviewed: r02 now comes first.
            script_tree.add_table("r02", None, "t2")
            script_tree.add_table("r00", "r02", "t0")
            job = jobs.run_job(job_id=queued.id)

            assert job.state == "stale"
            # The job still goes to the plan's revision, r02, which is now the first step.
            assert job.error == (
                "The plan no longer holds: from base Alembic would now run r02, not the plan's "
                "steps (a script changed?): nothing ran."
            )
            events = db.session.scalars(
                sa.select(AuditEvent.action).where(AuditEvent.environment == "dev")
            ).all()
            assert "job.stale" in events
        assert versions(url) == []
        assert not {"t0", "t1", "t2"} & table_names(url)
    finally:
        databases.drop_all()


def test_a_post_without_a_fingerprint_starts_no_job(tmp_path, script_tree):
    script_tree.linear(2)
    app = app_for_tree(tmp_path / "site", script_tree, {"dev": "sqlite:///dev.db"}, **FAST)
    client = signed_in_client(app, "operator")

    response = Auth(client).post("/environments/dev/jobs", data={"operation": "upgrade"})

    assert response.status_code in (400, 409)
    assert "fingerprint" in response.get_data(as_text=True)
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Job)) == 0


# --- exact failure reports on MariaDB -------------------------------------------------------


def failing_downgrade_tree(tree, *, ddl_before_failure: bool) -> None:
    """r00 (t0) → r01 (t1) → r02 (t2); undoing r01 fails, after dropping t1 or before any DDL."""
    tree.add_table("r00", None, "t0")
    body = "op.execute('SELECT * FROM no_such_table')"
    if ddl_before_failure:
        body = "op.drop_table('t1')\n" + body
    tree.add(
        "r01",
        "r00",
        "create t1",
        upgrade="op.create_table('t1', sa.Column('id', sa.Integer, primary_key=True))",
        downgrade=body,
    )
    tree.add_table("r02", "r01", "t2")


def fail_a_downgrade(tmp_path, tree, url, *, ddl_before_failure: bool, logging_configured: bool):
    """Upgrade to r02, then downgrade to base through r01, whose downgrade fails; return the
    app and the failed job."""
    if not logging_configured:
        without_logging(tree.path / "env.py")
    failing_downgrade_tree(tree, ddl_before_failure=ddl_before_failure)
    app = app_for_tree(tmp_path / "site", tree, {"dev": url}, **FAST)
    assert run_job_to_the_end(app).state == "succeeded"
    return app, run_job_to_the_end(app, operation="downgrade", target="base")


LOGGING = pytest.mark.parametrize(
    "logging_configured", [True, False], ids=["logging", "no-logging"]
)


@LOGGING
def test_a_mariadb_downgrade_failing_before_any_ddl_is_reported_consistent(
    logging_configured, tmp_path, script_tree
):
    databases = DatabaseFactory("mariadb", tmp_path)
    try:
        url = databases.create()
        _, job = fail_a_downgrade(
            tmp_path,
            script_tree,
            url,
            ddl_before_failure=False,
            logging_configured=logging_configured,
        )

        assert job.state == "failed"
        assert job.failed_revision == "r01" and job.failed_step == 2
        assert job.error.startswith("Step 2 of 3 (revision r01) failed:")
        assert "no_such_table" in job.error
        assert "changed no schema: the database is consistent at r01" in job.error
        assert not job.half_applied and "half-applied" not in job.error
        assert versions(url) == ["r01"]
        assert table_names(url) >= {"t0", "t1"} and "t2" not in table_names(url)
    finally:
        databases.drop_all()


@LOGGING
def test_a_mariadb_downgrade_failing_after_ddl_lists_exactly_that_steps_ddl(
    logging_configured, tmp_path, script_tree
):
    databases = DatabaseFactory("mariadb", tmp_path)
    try:
        url = databases.create()
        app, job = fail_a_downgrade(
            tmp_path,
            script_tree,
            url,
            ddl_before_failure=True,
            logging_configured=logging_configured,
        )

        assert job.state == "failed" and job.half_applied
        assert job.failed_revision == "r01" and job.failed_step == 2
        assert "1 schema change(s): DROP TABLE t1." in job.error
        assert "DROP TABLE t2" not in job.error  # the completed step's DDL is not the failure's
        assert "its version table says r01, but its schema has those changes" in job.error
        assert versions(url) == ["r01"] and "t1" not in table_names(url)
        with app.app_context():
            details = db.session.scalars(
                sa.select(AuditEvent.details).where(AuditEvent.action == "job.failed")
            ).one()
        assert details["failed_revision"] == "r01" and details["failed_step"] == 2
        assert details["half_applied"] is True
        page = signed_in_client(app).get(f"/jobs/{job.id}").get_data(as_text=True)
        assert "step 2 of 3 (revision r01)" in page
    finally:
        databases.drop_all()


# --- a killed runner ------------------------------------------------------------------------


# What each backend shows of the migrating session and the lock, read in that order (the lock
# first): a session seen running the step's statement after the lock was seen free really ran
# unlocked, or was ending its own exit.
KILL_PROBES = {
    "postgresql": {
        "sleep": "op.execute('SELECT pg_sleep(30)')",
        "migrating": (
            "SELECT pid FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(30)%' "
            "AND datname = current_database()"
        ),
        "holder": f"{PG_LOCK_HOLDER} LIMIT 1",
        "running": (
            "SELECT count(*) FROM pg_stat_activity WHERE pid = :session AND state = 'active' "
            "AND query LIKE 'SELECT pg_sleep(30)%%'"
        ),
        "alive": "SELECT count(*) FROM pg_stat_activity WHERE pid = :session",
    },
    "mariadb": {
        "sleep": "op.execute('SELECT SLEEP(30)')",
        "migrating": (
            "SELECT ID FROM information_schema.PROCESSLIST WHERE INFO = 'SELECT SLEEP(30)' "
            "AND DB = DATABASE()"
        ),
        "holder": f"SELECT IS_USED_LOCK({MYSQL_LOCK_NAME})",
        "running": (
            "SELECT count(*) FROM information_schema.PROCESSLIST WHERE ID = :session "
            "AND INFO = 'SELECT SLEEP(30)' AND COMMAND <> 'Killed'"
        ),
        "alive": "SELECT count(*) FROM information_schema.PROCESSLIST WHERE ID = :session",
    },
}


@pytest.mark.parametrize(
    ("backend", "env_py"),
    [
        ("postgresql", "flask"),
        ("postgresql", "plain"),
        ("mariadb", "flask"),
        ("mariadb", "plain"),
    ],
)
def test_a_runner_killed_mid_step_names_the_signal_and_frees_the_lock_only_with_its_session(
    backend, env_py, tmp_path, script_tree, plain_script_tree
):
    tree = script_tree if env_py == "flask" else plain_script_tree
    probes = KILL_PROBES[backend]
    databases = DatabaseFactory(backend, tmp_path)
    try:
        url = databases.create()
        tree.add_table("r00", None, "t0")
        tree.add("r01", "r00", "sleep", upgrade=probes["sleep"])
        app = app_for_tree(tmp_path / "site", tree, {"dev": url}, **FAST)
        with app.app_context():
            queued = queue_job()
            job_id = queued.id
        outcome: dict[str, Job] = {}

        def supervise() -> None:
            with app.app_context():
                outcome["job"] = jobs.run_job(job_id=job_id)
                db.session.refresh(outcome["job"])
                db.session.expunge(outcome["job"])

        supervisor = threading.Thread(target=supervise)
        supervisor.start()
        watcher = sa.create_engine(url, poolclass=sa.pool.NullPool)
        with watcher.connect() as connection:
            deadline = time.monotonic() + 30
            while (migrating := connection.scalar(sa.text(probes["migrating"]))) is None:
                assert time.monotonic() < deadline, "the migration never reached its sleep"
                time.sleep(0.1)
                connection.rollback()
            # The session running the step is the one holding the lock (with either env.py).
            assert connection.scalar(sa.text(probes["holder"])) == migrating
            connection.rollback()
            with app.app_context():
                runner_pid = db.session.get(Job, job_id).runner_pid
            os.kill(runner_pid, signal.SIGKILL)
            # From the kill on, the lock is never free while the migrating session runs the step.
            seen = []
            while True:  # at least one sample, however fast the supervisor is
                holder = connection.scalar(sa.text(probes["holder"]))
                running = connection.scalar(sa.text(probes["running"]), {"session": migrating})
                seen.append((bool(running), holder is not None, time.monotonic()))
                connection.rollback()
                if not supervisor.is_alive():
                    break
                time.sleep(0.02)
            supervisor.join(timeout=30)
            deadline = time.monotonic() + 5  # KILL only signals a MariaDB thread to end
            while connection.scalar(sa.text(probes["alive"]), {"session": migrating}):
                assert time.monotonic() < deadline, "the migrating session outlived its job"
                time.sleep(0.05)
                connection.rollback()
            held = connection.scalar(sa.text(probes["holder"]))
        watcher.dispose()

        job = outcome["job"]
        assert job.state == "interrupted"
        assert "killed by SIGKILL during step 2 of 2 (revision r01)" in job.error
        # One session, the migrating one: the lock had no session of its own to outlive it.
        assert f"Its database sessions: session {migrating} terminated." in job.error
        assert held is None
        unlocked_while_running = [at for running, locked, at in seen if running and not locked]
        assert not unlocked_while_running, seen
        # The lock goes with the session: once free it is never held again.
        freed = next((index for index, (_, locked, _) in enumerate(seen) if not locked), len(seen))
        assert not any(locked for _, locked, _ in seen[freed:]), seen
        assert lock_is_free(url=url, version_table="alembic_version", schema=None)
        if backend == "postgresql":
            # PostgreSQL ran both steps in one transaction: the kill rolled r00 back too.
            assert versions(url) == [] and "t0" not in table_names(url)
            assert "The database is at base" in job.error
        else:
            # MariaDB committed r00 (its DDL is not transactional); r01 had changed nothing.
            assert versions(url) == ["r00"] and "t0" in table_names(url)
            assert "The database is at r00" in job.error
        with app.app_context():
            assert jobs.active_job(environment="dev") is None
    finally:
        databases.drop_all()


# --- the CLI --------------------------------------------------------------------------------


def test_a_cli_upgrade_exits_cleanly_without_thread_tracebacks(tmp_path, script_tree):
    script_tree.linear(2)
    site = tmp_path / "site"
    app_for_tree(site, script_tree, {"dev": "sqlite:///dev.db"})
    environ = {
        **os.environ,
        "FLASK_APP": "dashboard",
        "DASHBOARD_CONFIG": "testing",
        "ENVIRONMENTS_FILE": str(site / "environments.yaml"),
        "DASHBOARD_DATABASE_URL": f"sqlite:///{site / 'store.db'}",
    }
    finished = subprocess.run(
        [str(Path(sys.executable).with_name("flask")), "dashboard", "upgrade", "dev"],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )

    assert finished.returncode == 0, finished.stderr
    assert "succeeded; now at r01" in finished.stdout
    assert "Traceback" not in finished.stderr and "Exception in thread" not in finished.stderr
    assert textwrap.dedent(finished.stderr).strip() == ""


def test_a_failed_cli_job_names_the_failing_step_and_revision(tmp_path, script_tree):
    without_logging(script_tree.path / "env.py")  # the report must not rely on env.py's logging
    script_tree.add_table("r00", None, "t0")
    script_tree.add("r01", "r00", "fails", upgrade="op.execute('SELECT * FROM no_such_table')")
    script_tree.add_table("r02", "r01", "t2")
    app = app_for_tree(tmp_path / "site", script_tree, {"dev": "sqlite:///dev.db"}, **FAST)

    result = app.test_cli_runner().invoke(args=["dashboard", "upgrade", "dev"])

    assert result.exit_code == 1, result.output
    assert "failed; now at r00" in result.output
    (error,) = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert error.startswith("Error: Step 2 of 3 (revision r01) failed:")
    assert "no_such_table" in error


def test_a_sqlite_step_failing_after_ddl_is_half_applied_and_the_table_is_really_there(
    tmp_path, script_tree
):
    script_tree.add_table("r00", None, "t0")
    script_tree.add(
        "r01",
        "r00",
        "t1 then a failure",
        upgrade=(
            "op.create_table('t1', sa.Column('id', sa.Integer, primary_key=True))\n"
            "op.execute('SELECT * FROM no_such_table')"
        ),
    )
    app = app_for_tree(tmp_path / "site", script_tree, {"dev": "sqlite:///dev.db"}, **FAST)

    job = run_job_to_the_end(app)

    url = f"sqlite:///{tmp_path / 'site' / 'dev.db'}"
    assert job.state == "failed" and job.half_applied
    assert job.error.startswith("Step 2 of 2 (revision r01) failed:")
    assert "SQLite may keep the DDL of a failed step" in job.error
    assert "CREATE TABLE t1" in job.error
    assert "t1" in table_names(url)  # what the report claims is what the file holds
    assert versions(url) == ["r00"]
