"""Jobs on real databases: runs, locks, failures, crashes, recovery, streaming and rules."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import sqlalchemy as sa

from dashboard.audit.models import AuditEvent
from dashboard.errors import JobAlreadyRunning, JobRefused
from dashboard.extensions import db
from dashboard.jobs import service as jobs
from dashboard.jobs.models import Job, JobLogLine
from dashboard.target.locks import TargetLock, lock_is_free
from dashboard.users.models import User
from tests.helpers import (
    REPO,
    TARGETS_AND_STORES,
    Auth,
    DatabaseFactory,
    add_user,
    app_for_tree,
    fingerprint_of,
    queue_job,
    run_job_to_the_end,
    table_names,
    versions,
)

# Sleeps when it really runs, not while the plan renders it offline.
SLOW = "import time\nif not op.get_context().as_sql:\n    time.sleep({seconds})"
FAST = {"JOB_LOCK_WAIT_SECONDS": 1.0, "JOB_HEARTBEAT_SECONDS": 0.3, "JOB_STALE_SECONDS": 1.5}


def run(app, environment="dev", operation="upgrade", target="head", actor=None):
    """Request and run a job in this process, as the CLI does; return the finished job."""
    return run_job_to_the_end(app, environment, operation, target, actor=actor)


def operator_client(app):
    """A client signed in as a new operator, and its Auth helper."""
    add_user(app, "olga", "operator")
    client = app.test_client()
    auth = Auth(client)
    auth.login("olga")
    return client, auth


def shown_fingerprint(client, environment: str = "dev") -> str:
    """The plan fingerprint the Run form carries, as the page shows it."""
    page = client.get(f"/environments/{environment}/plan").get_data(as_text=True)
    return page.split('name="fingerprint" value="')[1].split('"')[0]


def wait_until_idle(app, environment: str = "dev", seconds: float = 20) -> None:
    """Wait until the environment has no queued or running job."""
    with app.app_context():
        deadline = time.monotonic() + seconds
        while jobs.active_job(environment=environment) and time.monotonic() < deadline:
            db.session.rollback()  # never sit on the SQLite store's write lock while waiting
            time.sleep(0.1)


@pytest.mark.backends
def test_upgrade_named_revision_downgrade_and_base(tmp_path, script_tree, database_url):
    script_tree.linear(4)
    app = app_for_tree(tmp_path / "site", script_tree, {"dev": database_url}, **FAST)

    assert run(app, target="r01").state == "succeeded"
    assert versions(database_url) == ["r01"]
    job = run(app, target="head")
    assert (job.state, job.from_revisions, job.to_revisions) == ("succeeded", ["r01"], ["r03"])
    assert {"t0", "t1", "t2", "t3"} <= table_names(database_url)

    assert run(app, operation="downgrade", target="-1").to_revisions == ["r02"]
    assert "t3" not in table_names(database_url)
    assert run(app, operation="downgrade", target="base").to_revisions == []
    assert versions(database_url) == []
    assert not {"t0", "t1", "t2", "t3"} & table_names(database_url)


@pytest.mark.backends
def test_every_statement_run_on_the_target_is_recorded(tmp_path, script_tree, database_url):
    script_tree.linear(2)
    app = app_for_tree(tmp_path / "site", script_tree, {"dev": database_url}, **FAST)

    job = run(app)

    with app.app_context():
        statements = [line.text for line in jobs.log_lines(job_id=job.id) if line.kind == "sql"]
        events = db.session.scalars(
            sa.select(AuditEvent.action).where(AuditEvent.environment == "dev")
        ).all()
    assert any(s.upper().startswith("CREATE TABLE T0") for s in statements), statements
    assert any(s.upper().startswith("CREATE TABLE T1") for s in statements)
    assert any("alembic_version" in s for s in statements)
    assert events == ["job.requested", "job.started", "job.succeeded"]


@pytest.mark.backends
def test_two_jobs_at_once_run_exactly_one(tmp_path, script_tree, database_url):
    script_tree.linear(1)
    script_tree.add("r01", "r00", "slow", upgrade=SLOW.format(seconds=2))
    app = app_for_tree(tmp_path / "site", script_tree, {"dev": database_url}, **FAST)
    outcomes: list[str] = []
    barrier = threading.Barrier(2)

    def request() -> None:
        with app.app_context():
            barrier.wait()
            try:
                jobs.request_job(
                    environment_name="dev",
                    operation="upgrade",
                    target="head",
                    actor=None,
                    actor_name="cli:test",
                    expected_fingerprint=fingerprint_of("dev", "upgrade", "head"),
                    submit=False,
                )
                outcomes.append("queued")
            except JobAlreadyRunning as error:
                outcomes.append(str(error))

    threads = [threading.Thread(target=request) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(outcomes)[-1] == "queued"
    refusal = sorted(outcomes)[0]
    assert refusal.startswith(
        "dev already has job #1 (upgrade to head, queued), started by cli:test"
    )


@pytest.mark.backends
def test_a_second_process_holding_the_database_lock_blocks_the_job(
    tmp_path, script_tree, database_url
):
    script_tree.linear(2)
    app = app_for_tree(tmp_path / "site", script_tree, {"dev": database_url}, **FAST)

    with TargetLock(url=database_url) as held:
        assert held.try_acquire()
        job = run(app)

    assert job.state == "failed"
    assert "another process holds the migration lock" in job.error
    assert versions(database_url) == []
    assert run(app).state == "succeeded"  # the lock is free again


@pytest.mark.backends
@pytest.mark.parametrize(("backend", "store_backend"), TARGETS_AND_STORES, indirect=True)
def test_a_revision_that_raises_fails_the_job_and_releases_the_lock(
    tmp_path, script_tree, database_url, backend, store_database
):
    script_tree.linear(1)
    script_tree.add(
        "r01",
        "r00",
        "half way",
        upgrade="""
        op.create_table('half', sa.Column('id', sa.Integer, primary_key=True))
        raise RuntimeError('boom halfway through')
        """,
    )
    app = app_for_tree(
        tmp_path / "site", script_tree, {"dev": database_url}, store=store_database, **FAST
    )
    assert run(app, target="r00").state == "succeeded"

    job = run(app)

    assert job.state == "failed"
    assert "boom halfway through" in job.error
    with app.app_context():
        log = "\n".join(line.text for line in jobs.log_lines(job_id=job.id))
        assert jobs.active_job(environment="dev") is None
    assert "Traceback (most recent call last)" in log
    assert "RuntimeError: boom halfway through" in log
    assert lock_is_free(url=database_url, version_table="alembic_version", schema=None)
    assert job.to_revisions == ["r00"]
    if backend == "postgresql":  # transactional DDL: nothing of r01 stayed
        assert versions(database_url) == ["r00"]
        assert "half" not in table_names(database_url)


def test_half_applied_run_on_mariadb_is_reported_and_stamp_recovers(tmp_path, script_tree):
    databases = DatabaseFactory("mariadb", tmp_path)
    try:
        url = databases.create()
        script_tree.linear(1)
        script_tree.add(
            "r01",
            "r00",
            "half applied",
            upgrade="""
            op.create_table('first_half', sa.Column('id', sa.Integer, primary_key=True))
            op.execute('SELECT * FROM table_that_is_missing')
            """,
        )
        script_tree.add_table("r02", "r01", "after_fix")
        app = app_for_tree(tmp_path / "site", script_tree, {"dev": url}, **FAST)
        run(app, target="r00")

        failed = run(app, target="r01")

        assert failed.state == "failed" and failed.half_applied
        assert "may be half-applied" in failed.error
        assert "first_half" in table_names(url)  # MariaDB committed the DDL
        assert versions(url) == ["r00"]

        stamped = run(app, operation="stamp", target="r01")
        assert stamped.state == "succeeded" and versions(url) == ["r01"]
        assert run(app).to_revisions == ["r02"]
    finally:
        databases.drop_all()


SUPERVISOR = """
import sys, time
from tests.helpers import make_app
from tests.helpers import fingerprint_of, queue_job, run_job_to_the_end
from pathlib import Path
from dashboard.jobs import service as jobs
app = make_app(Path(sys.argv[1]), JOB_HEARTBEAT_SECONDS=0.3, JOB_STALE_SECONDS=1.5)
with app.app_context():
    job = jobs.request_job(environment_name="dev", operation="upgrade", target="head",
                           actor=None, actor_name="cli:supervisor", submit=False,
                           expected_fingerprint=fingerprint_of("dev"))
    jobs.run_job(job_id=job.id)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.backends
def test_killing_the_supervisor_stops_the_runner_and_the_job_becomes_interrupted(
    tmp_path, script_tree, database_url
):
    script_tree.linear(1)
    script_tree.add("r01", "r00", "very slow", upgrade=SLOW.format(seconds=120))
    folder = tmp_path / "site"
    app = app_for_tree(folder, script_tree, {"dev": database_url}, **FAST)
    supervisor = subprocess.Popen(
        [sys.executable, "-c", SUPERVISOR, str(folder)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        runner_pid = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and runner_pid is None:
            time.sleep(0.2)
            with app.app_context():
                job = db.session.scalar(sa.select(Job))
                if job is not None and job.state == "running" and job.runner_pid:
                    runner_pid = job.runner_pid
                db.session.rollback()
        assert runner_pid and _alive(runner_pid)

        # Another worker starting (or looking) never marks a live job: its heartbeat is fresh.
        time.sleep(2)
        with app.app_context():
            assert jobs.reap_stale_jobs(environment="dev") == []
            assert db.session.get(Job, 1).state == "running"

        supervisor.send_signal(signal.SIGKILL)
        supervisor.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _alive(runner_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(runner_pid), "the runner outlived its supervisor"

        with app.app_context():
            # Once its heartbeat has gone stale, a look marks it interrupted.
            deadline = time.monotonic() + 30
            while not (reaped := jobs.reap_stale_jobs(environment="dev")):
                assert time.monotonic() < deadline, "the job was never marked interrupted"
                time.sleep(0.1)
            assert [job.id for job in reaped] == [1]
            assert db.session.get(Job, 1).state == "interrupted"
            assert (
                db.session.scalar(sa.select(AuditEvent.action).order_by(AuditEvent.seq.desc()))
                == "job.interrupted"
            )
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()
    script_tree.add("r01", "r00", "fixed", upgrade="pass")
    assert run(app).state == "succeeded"


@pytest.mark.stores
def test_rules_protected_downgrade_and_role(tmp_path, script_tree, store_database):
    script_tree.linear(2)
    app = app_for_tree(
        tmp_path / "site",
        script_tree,
        {"dev": "sqlite:///dev.db", "prod": "sqlite:///prod.db"},
        ENV_EXTRA={"prod": {"protected": True, "approvals": 1}, "dev": {"allow_downgrade": False}},
        store=store_database,
        **FAST,
    )
    add_user(app, "vera", "viewer")
    with app.app_context():
        with pytest.raises(JobRefused, match="prod is protected"):
            jobs.request_job(
                environment_name="prod",
                operation="upgrade",
                target="head",
                actor=None,
                submit=False,
            )
        with pytest.raises(JobRefused, match="does not allow downgrades"):
            jobs.request_job(
                environment_name="dev",
                operation="downgrade",
                target="base",
                actor=None,
                submit=False,
            )
        viewer = db.session.scalar(sa.select(User).where(User.username == "vera"))
        with pytest.raises(JobRefused, match="operator role"):
            jobs.request_job(
                environment_name="dev",
                operation="upgrade",
                target="head",
                actor=viewer,
                submit=False,
            )
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Job)) == 0


@pytest.mark.stores
def test_log_streams_while_running_then_answers_286(tmp_path, script_tree, store_database):
    script_tree.linear(1)
    script_tree.add(
        "r01",
        "r00",
        "slow",
        upgrade="print('halfway there', flush=True)\n" + SLOW.format(seconds=3),
    )
    app = app_for_tree(
        tmp_path / "site", script_tree, {"dev": "sqlite:///dev.db"}, store=store_database, **FAST
    )
    client, auth = operator_client(app)

    fingerprint = shown_fingerprint(client)
    started = auth.post(
        "/environments/dev/jobs",
        data={"operation": "upgrade", "target": "head", "fingerprint": fingerprint},
    )
    assert started.status_code == 303
    job_url = started.headers["Location"]

    partial = None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        response = client.get(job_url + "/live", headers={"HX-Request": "true"})
        html = response.get_data(as_text=True)
        if response.status_code == 200 and "halfway there" in html:
            partial = html
            break
        time.sleep(0.1)
    assert partial is not None and 'hx-trigger="every 1s"' in partial

    while time.monotonic() < deadline:
        response = client.get(job_url + "/live", headers={"HX-Request": "true"})
        if response.status_code == 286:
            break
        time.sleep(0.2)
    final = response.get_data(as_text=True)
    assert response.status_code == 286
    assert 'data-state="succeeded"' in final and "hx-trigger" not in final
    assert "Running upgrade r00 -&gt; r01" in final


def test_a_replayed_or_stale_run_form_is_refused(tmp_path, script_tree):
    script_tree.linear(2)
    app = app_for_tree(tmp_path / "site", script_tree, {"dev": "sqlite:///dev.db"}, **FAST)
    client, auth = operator_client(app)
    fingerprint = shown_fingerprint(client)
    form = {"operation": "upgrade", "target": "head", "fingerprint": fingerprint}

    assert auth.post("/environments/dev/jobs", data=form).status_code == 303
    wait_until_idle(app)
    replayed = auth.post("/environments/dev/jobs", data=form)

    assert replayed.status_code == 409
    assert "The plan changed since it was shown" in replayed.get_data(as_text=True)
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Job)) == 1


def test_cli_upgrade_streams_and_lists_jobs(tmp_path, script_tree):
    script_tree.linear(2)
    app = app_for_tree(tmp_path / "site", script_tree, {"dev": "sqlite:///dev.db"}, **FAST)
    runner = app.test_cli_runner()

    result = runner.invoke(args=["dashboard", "upgrade", "dev", "--target", "r00"])
    assert result.exit_code == 0, result.output
    assert "Running upgrade  -> r00" in result.output and "SQL: CREATE TABLE t0" in result.output

    again = runner.invoke(args=["dashboard", "downgrade", "dev", "--target", "r01"])
    assert again.exit_code != 0

    listed = json.loads(runner.invoke(args=["dashboard", "jobs", "--json"]).output)
    assert listed[0]["state"] == "succeeded" and listed[0]["requested_by"].startswith("cli:")
    with app.app_context():
        lines = db.session.scalar(sa.select(sa.func.count()).select_from(JobLogLine))
    assert lines > 0


@pytest.mark.stores
def test_a_queued_job_can_be_cancelled_and_frees_the_environment(
    tmp_path, script_tree, store_database
):
    script_tree.linear(2)
    app = app_for_tree(
        tmp_path / "site", script_tree, {"dev": "sqlite:///dev.db"}, store=store_database, **FAST
    )
    with app.app_context():
        queued = queue_job()
        cancelled = jobs.cancel_job(job_id=queued.id, actor=None, actor_name="cli:test")
        assert cancelled.state == "cancelled"
        assert jobs.active_job(environment="dev") is None
        # A cancelled job never runs, even if a worker picks it up afterwards.
        assert jobs.run_job(job_id=queued.id).state == "cancelled"
        with pytest.raises(JobRefused, match="only a queued job can be cancelled"):
            jobs.cancel_job(job_id=queued.id, actor=None)
    assert run(app).state == "succeeded"


@pytest.mark.stores
def test_an_operator_stamps_from_the_environment_page(tmp_path, script_tree, store_database):
    script_tree.linear(3)
    app = app_for_tree(
        tmp_path / "site", script_tree, {"dev": "sqlite:///dev.db"}, store=store_database, **FAST
    )
    client, auth = operator_client(app)
    assert "Recovery: stamp a revision" in client.get("/environments/dev").get_data(as_text=True)

    started = auth.post("/environments/dev/jobs", data={"operation": "stamp", "target": "r01"})

    assert started.status_code == 303
    wait_until_idle(app)
    with app.app_context():
        job = db.session.get(Job, 1)
        assert (job.operation, job.state, job.to_revisions) == ("stamp", "succeeded", ["r01"])
    assert "t0" not in table_names(sa.make_url(f"sqlite:///{tmp_path / 'site' / 'dev.db'}"))


def test_lock_timeout_bounds_a_ddl_wait_on_postgresql(tmp_path, script_tree):
    databases = DatabaseFactory("postgresql", tmp_path)
    try:
        url = databases.create()
        script_tree.linear(1)
        script_tree.add(
            "r01", "r00", "alter t0", upgrade="op.add_column('t0', sa.Column('x', sa.Integer))"
        )
        app = app_for_tree(
            tmp_path / "site",
            script_tree,
            {"dev": url},
            ENV_EXTRA={"dev": {"lock_timeout": 1}},
            **FAST,
        )
        assert run(app, target="r00").state == "succeeded"
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        with engine.connect() as blocker:
            blocker.execute(sa.text("LOCK TABLE t0 IN ACCESS EXCLUSIVE MODE"))
            started = time.monotonic()
            job = run(app)
            waited = time.monotonic() - started
            blocker.rollback()
        engine.dispose()
        assert job.state == "failed"
        assert "lock timeout" in job.error
        assert waited < 15  # bounded by lock_timeout, not by the blocker
        assert versions(url) == ["r00"]
    finally:
        databases.drop_all()
