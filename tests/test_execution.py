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
from dashboard.jobs.models import Job
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
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        with engine.connect() as connection:
            migrating, holder = connection.execute(
                sa.text("SELECT migrating, holder FROM evidence")
            ).one()
        engine.dispose()
        assert holder is not None and migrating == holder
        assert lock_is_free(url=url, version_table="alembic_version", schema=None)
    finally:
        databases.drop_all()


def test_a_plain_alembic_env_py_with_the_lock_lines_runs_under_the_dashboard(
    tmp_path, plain_script_tree
):
    databases = DatabaseFactory("postgresql", tmp_path)
    try:
        url = databases.create()
        add_lock_lines(plain_script_tree.path / "env.py")
        plain_script_tree.linear(2)
        app = app_for_tree(tmp_path / "site", plain_script_tree, {"dev": url}, **FAST)

        job = run_job_to_the_end(app)

        assert job.state == "succeeded", job.error
        assert versions(url) == ["r01"]
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


def test_a_terminal_flask_db_upgrade_with_the_lines_waits_while_a_job_runs(tmp_path, script_tree):
    databases = DatabaseFactory("postgresql", tmp_path)
    try:
        url = databases.create()
        add_lock_lines(script_tree.path / "env.py")
        script_tree.add_table("r00", None, "t0")
        script_tree.add("r01", "r00", upgrade="op.execute('SELECT pg_sleep(4)')")
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


def test_a_runner_killed_mid_step_names_the_signal_and_frees_the_lock_only_with_its_session(
    tmp_path, script_tree
):
    databases = DatabaseFactory("postgresql", tmp_path)
    try:
        url = databases.create()
        script_tree.add_table("r00", None, "t0")
        script_tree.add("r01", "r00", "sleep", upgrade="op.execute('SELECT pg_sleep(30)')")
        app = app_for_tree(tmp_path / "site", script_tree, {"dev": url}, **FAST)
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
        sleeping = sa.text(
            "SELECT pid FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(30)%' "
            "AND datname = current_database()"
        )
        with watcher.connect() as connection:
            deadline = time.monotonic() + 30
            while (migrating := connection.scalar(sleeping)) is None:
                assert time.monotonic() < deadline, "the migration never reached its sleep"
                time.sleep(0.1)
                connection.rollback()
            with app.app_context():
                runner_pid = db.session.get(Job, job_id).runner_pid
            os.kill(runner_pid, signal.SIGKILL)
            # From the kill on, the lock is never free while the migrating session lives.
            seen = []
            probe = sa.text(
                "SELECT (SELECT count(*) FROM pg_stat_activity WHERE pid = :pid), "
                f"(SELECT count(*) FROM ({PG_LOCK_HOLDER}) AS holders)"
            )
            while supervisor.is_alive():
                seen.append(
                    (*connection.execute(probe, {"pid": migrating}).one(), time.monotonic())
                )
                connection.rollback()
                time.sleep(0.02)
            supervisor.join(timeout=30)
            alive, held = connection.execute(probe, {"pid": migrating}).one()
        watcher.dispose()

        job = outcome["job"]
        assert job.state == "interrupted"
        assert "killed by SIGKILL during step 2 of 2 (revision r01)" in job.error
        assert f"session {migrating} terminated" in job.error
        assert (alive, held) == (0, 0)
        # The lock goes with the session: once free it is never held again, and the session is
        # then only finishing its own exit (gone within moments, never migrating unlocked).
        freed = next((index for index, (_, held, _) in enumerate(seen) if not held), len(seen))
        assert all(not held for _, held, _ in seen[freed:]), seen
        exiting = [at for alive, held, at in seen[freed:] if alive]
        assert not exiting or exiting[-1] - exiting[0] < 2.0, seen
        assert lock_is_free(url=url, version_table="alembic_version", schema=None)
        # PostgreSQL ran both steps in one transaction: the kill rolled r00 back too.
        assert versions(url) == [] and "t0" not in table_names(url)
        assert "The database is at base" in job.error
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
