"""JOB_EXECUTOR=rq: the web process enqueues on Redis, `flask dashboard worker` processes run each
job or task in an RQ work horse — with the same states, log lines, statements and audit events as
the thread executor; a killed horse or worker leaves the job `interrupted` and the lock free; the
worker runs the deployment's one refresher (issue 16).

Every test runs real worker processes against the real Redis, with queues of its own (a random
prefix), and drops its keys afterwards.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from rq.job import Job as RQJob

from dashboard.audit.models import AuditEvent
from dashboard.clock import as_aware, utcnow
from dashboard.environments import environment_named, get_project
from dashboard.environments import service as statuses_service
from dashboard.extensions import db
from dashboard.jobs import service as jobs
from dashboard.jobs.executor import QueueUnavailable, get_executor
from dashboard.jobs.models import ActiveJob, Job, JobLogLine
from dashboard.logs import bind_request_id
from dashboard.scheduler.models import Lease
from dashboard.target.locks import lock_is_free
from dashboard.tasks import flows as task_flows
from dashboard.tasks.models import Task
from tests.helpers import (
    STORE_TEMPLATES,
    ScriptTree,
    app_for_tree,
    drop_redis_keys,
    fingerprint_of,
    make_app,
    require_redis,
    run_job_to_the_end,
    versions,
)
from tests.servers import REPO, VENV_BIN, clean_environ, stop_group

SLOW = "import time\nif not op.get_context().as_sql:\n    time.sleep({seconds})"
# Fast beats so that a dead horse is noticed in seconds; the refresher looks every second.
TIMINGS = {
    "JOB_LOCK_WAIT_SECONDS": 1.0,
    "JOB_HEARTBEAT_SECONDS": 0.3,
    "JOB_STALE_SECONDS": 2.0,
    "STATUS_REFRESH_SECONDS": 1.0,
    "STATUS_LEASE_SECONDS": 3.0,
}
TIMING_VARIABLES = {
    "JOB_LOCK_WAIT_SECONDS": "DASHBOARD_JOB_LOCK_WAIT",
    "JOB_HEARTBEAT_SECONDS": "DASHBOARD_JOB_HEARTBEAT",
    "JOB_STALE_SECONDS": "DASHBOARD_JOB_STALE",
    "STATUS_REFRESH_SECONDS": "DASHBOARD_REFRESH_SECONDS",
    "STATUS_LEASE_SECONDS": "DASHBOARD_STATUS_LEASE_SECONDS",
}


@dataclass
class WorkerProcess:
    process: subprocess.Popen[bytes]
    name: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Site:
    """A dashboard on a script tree with environments `a` and `b` (SQLite), in RQ mode."""

    folder: Path
    tree: ScriptTree
    app: object
    redis_url: str
    prefix: str
    start_worker: Callable[..., WorkerProcess]


@pytest.fixture
def site(tmp_path: Path, script_tree: ScriptTree, pg_databases) -> Iterator[Site]:
    """On a PostgreSQL store, as a deployment with workers has (on SQLite every transaction
    takes the store's one write lock, which a test polling the store would keep busy)."""
    redis_url = require_redis()
    prefix = f"test-rq-{secrets.token_hex(6)}"
    script_tree.linear(2)
    folder = tmp_path / "site"
    app = app_for_tree(
        folder,
        script_tree,
        {"a": "sqlite:///a.db", "b": "sqlite:///b.db"},
        store=pg_databases.create(template=STORE_TEMPLATES.store("postgresql")),
        JOB_EXECUTOR="rq",
        REDIS_URL=redis_url,
        RQ_QUEUE_PREFIX=prefix,
        **TIMINGS,
    )
    started: list[WorkerProcess] = []

    def start_worker(*options: str) -> WorkerProcess:
        name = f"{prefix}-w{len(started) + 1}"
        env = clean_environ(
            HOME=str(tmp_path),
            FLASK_APP="dashboard",
            DASHBOARD_CONFIG="testing",
            DASHBOARD_DATABASE_URL=app.config["SQLALCHEMY_DATABASE_URI"],
            ENVIRONMENTS_FILE=str(folder / "environments.yaml"),
            JOB_EXECUTOR="rq",
            REDIS_URL=redis_url,
            DASHBOARD_RQ_QUEUE_PREFIX=prefix,
            **{TIMING_VARIABLES[key]: str(value) for key, value in TIMINGS.items()},
        )
        worker = launch_worker(env, tmp_path / f"{name}.log", name, *options)
        started.append(worker)
        return worker

    try:
        yield Site(folder, script_tree, app, redis_url, prefix, start_worker)
    finally:
        for worker in started:
            stop_group(worker.process)
        drop_redis_keys(redis_url, prefix)


def launch_worker(env: dict[str, str], log: Path, name: str, *options: str) -> WorkerProcess:
    """Start `flask dashboard worker` in a session of its own; return once RQ listens (or, with
    --burst, once it has exited)."""
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [str(VENV_BIN / "flask"), "dashboard", "worker", "--name", name, *options],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    worker = WorkerProcess(process, name, log)
    deadline = time.monotonic() + 30
    try:
        while "Listening on" not in worker.output():
            if process.poll() is not None:
                assert "--burst" in options, f"the worker exited:\n{worker.output()}"
                break
            assert time.monotonic() < deadline, f"the worker never listened:\n{worker.output()}"
            time.sleep(0.1)
    except AssertionError:
        stop_group(process)
        raise
    return worker


def request(site: Site, environment: str, target: str = "head") -> int:
    """Request an upgrade through the service, as the Run button does; return the job's id."""
    with site.app.app_context():
        job = jobs.request_job(
            environment_name=environment,
            operation="upgrade",
            target=target,
            actor=None,
            actor_name="cli:test",
            expected_fingerprint=fingerprint_of(environment, "upgrade", target),
        )
        return job.id


def wait_for(site: Site, job_id: int, states: set[str], seconds: float = 60) -> Job:
    """Wait until the job is in one of `states`; return it detached."""
    deadline = time.monotonic() + seconds
    with site.app.app_context():
        while True:
            job = db.session.get(Job, job_id)
            if job is not None and job.state in states:
                db.session.expunge(job)
                db.session.rollback()
                return job
            db.session.rollback()
            assert time.monotonic() < deadline, f"job {job_id} is {job and job.state}"
            time.sleep(0.1)


def log_of(app, job_id: int) -> list[tuple[str, str]]:
    with app.app_context():
        return [(line.kind, line.text) for line in jobs.log_lines(job_id=job_id)]


def actions_of(app, job_id: int) -> list[str]:
    with app.app_context():
        events = db.session.scalars(sa.select(AuditEvent).order_by(AuditEvent.seq))
        return [event.action for event in events if (event.details or {}).get("job") == job_id]


def same_words(lines: list[tuple[str, str]], environment: str) -> list[tuple[str, str]]:
    """A log without what differs between two runs: the environment's name, pids, times."""
    cleaned = []
    for kind, text in lines:
        text = re.sub(r"\b[ab]\.db\b", "X.db", text).replace(f"“{environment}”", "“X”")
        text = re.sub(r"^runner \d+:", "runner PID:", text)
        cleaned.append((kind, re.sub(r"\d+\.\d+ ?m?s\b", "T", text)))
    return cleaned


def test_a_job_in_a_worker_ends_as_with_threads_same_log_statements_and_events(site: Site):
    site.start_worker()

    job_id = request(site, "a")
    in_worker = wait_for(site, job_id, {"succeeded", "failed", "interrupted", "stale"})
    # The same plan on `b`, run by the thread executor's function in this process.
    thread_app = make_app(
        site.folder,
        JOB_EXECUTOR="thread",
        SQLALCHEMY_DATABASE_URI=site.app.config["SQLALCHEMY_DATABASE_URI"],
        **TIMINGS,
    )
    in_thread = run_job_to_the_end(thread_app, "b")

    assert in_worker.state == in_thread.state == "succeeded", in_worker.error
    assert in_worker.to_revisions == in_thread.to_revisions == ["r01"]
    assert versions(f"sqlite:///{site.folder / 'a.db'}") == ["r01"]
    worker_log, thread_log = log_of(site.app, job_id), log_of(site.app, in_thread.id)
    assert [text for kind, text in worker_log if kind == "sql"], "no statement was recorded"
    assert same_words(worker_log, "a") == same_words(thread_log, "b")
    assert actions_of(site.app, job_id) == ["job.requested", "job.started", "job.succeeded"]
    assert actions_of(site.app, in_thread.id) == actions_of(site.app, job_id)
    with site.app.app_context():
        assert db.session.get(ActiveJob, "a") is None
    verified = site.app.test_cli_runner().invoke(
        args=["dashboard", "audit", "verify", "--no-anchors"]
    )
    assert verified.exit_code == 0, verified.output


def test_a_background_task_runs_in_a_worker(site: Site):
    site.start_worker("--queue", "tasks")

    with site.app.app_context():
        task = task_flows.start_drift_check(environment=environment_named("a"), actor="olga")
        task_id = task.id
    deadline = time.monotonic() + 60
    with site.app.app_context():
        while (state := db.session.get(Task, task_id).state) in ("queued", "running"):
            db.session.rollback()
            assert time.monotonic() < deadline, "the drift check never finished"
            time.sleep(0.2)
        assert state == "succeeded", db.session.get(Task, task_id).error


@pytest.mark.slow  # kills processes mid-job and waits for the heartbeat to go stale
def test_a_killed_work_horse_leaves_the_job_interrupted_the_lock_free_and_the_next_job_runs(
    site: Site,
):
    site.tree.add("r02", "r01", "very slow", upgrade=SLOW.format(seconds=120))
    worker = site.start_worker()
    job_id = request(site, "a")
    runner_pid = wait_for_runner(site, job_id)
    horse_pid = horse_of(runner_pid, worker)

    os.kill(horse_pid, signal.SIGKILL)

    wait_until_dead(runner_pid)
    # The worker's refresher (it holds the lease; this process never takes it) reaps it.
    interrupted = wait_for(site, job_id, {"interrupted", "succeeded", "failed"}, seconds=60)
    assert interrupted.state == "interrupted", interrupted.error
    assert "heartbeat went stale" in interrupted.error
    assert actions_of(site.app, job_id)[-1] == "job.interrupted"
    with site.app.app_context():
        assert db.session.get(ActiveJob, "a") is None
        # The lease is renewed every few seconds; on a busy machine a renewal may come late.
        deadline = time.monotonic() + 30
        while not worker_holds_the_lease(worker):
            assert time.monotonic() < deadline, "the worker's refresher lost the lease"
            time.sleep(0.2)
        target = environment_named("a")
        assert lock_is_free(url=target.url, version_table="alembic_version", schema=None)
    assert worker.process.poll() is None, "the worker died with its horse"

    site.tree.add("r02", "r01", "fixed", upgrade="pass")
    next_job = wait_for(site, request(site, "a"), {"succeeded", "failed", "interrupted"})
    assert next_job.state == "succeeded", next_job.error


@pytest.mark.slow  # kills processes mid-job and waits for the heartbeat to go stale
def test_a_killed_worker_takes_its_horse_and_runner_and_the_job_ends_interrupted(site: Site):
    site.tree.add("r02", "r01", "very slow", upgrade=SLOW.format(seconds=120))
    worker = site.start_worker("--no-refresher")
    job_id = request(site, "a")
    runner_pid = wait_for_runner(site, job_id)
    horse_pid = horse_of(runner_pid, worker)

    os.kill(worker.process.pid, signal.SIGKILL)  # the worker alone, not its group

    wait_until_dead(horse_pid)
    wait_until_dead(runner_pid)
    with site.app.app_context():
        deadline = time.monotonic() + 30
        while not (reaped := jobs.reap_stale_jobs(environment="a")):
            assert time.monotonic() < deadline, "the job was never marked interrupted"
            time.sleep(0.2)
        assert [job.id for job in reaped] == [job_id]
    assert actions_of(site.app, job_id)[-1] == "job.interrupted"

    site.tree.add("r02", "r01", "fixed", upgrade="pass")
    site.start_worker("--no-refresher")
    next_job = wait_for(site, request(site, "a"), {"succeeded", "failed", "interrupted"})
    assert next_job.state == "succeeded", next_job.error


def test_with_rq_the_web_process_only_reads_and_a_worker_runs_the_refresher(site: Site):
    board = site.app.extensions["dashboard.status_board"]
    for _ in range(2):
        board.step()  # what the web process's board thread does each second
    with site.app.app_context():
        assert db.session.get(Lease, "status-refresher") is None  # never taken here
        assert all(s.status == "reading" for s in stored(site))

    worker = site.start_worker("--queue", "tasks")

    deadline = time.monotonic() + 90  # a worker's start on a busy machine takes a while
    with site.app.app_context():
        while not worker_holds_the_lease(worker) or any(
            s.status == "reading" for s in stored(site)
        ):
            assert time.monotonic() < deadline, "the worker never read the statuses"
            time.sleep(0.2)
        assert {s.name: s.status for s in stored(site)} == {"a": "behind", "b": "behind"}
    board.step()
    assert not board._holding


def stored(site: Site):
    return statuses_service.stored_statuses(project=get_project(), reading_since=None)


def test_cancelling_a_queued_job_takes_it_off_the_queue(site: Site):
    bind_request_id("req-from-the-page")
    try:
        job_id = request(site, "a")  # no worker yet: it waits in Redis
    finally:
        bind_request_id(None)
    with site.app.app_context():
        rq_job_id = get_executor().rq_job_id("job", job_id)
        rq_job = RQJob.fetch(rq_job_id, connection=get_executor().redis)
        assert rq_job.meta["request_id"] == "req-from-the-page"  # the worker logs with it
        jobs.cancel_job(job_id=job_id, actor=None, actor_name="cli:test")
        assert db.session.get(ActiveJob, "a") is None
        assert rq_job.get_status(refresh=True) == "canceled"

    burst = site.start_worker("--burst")
    assert burst.process.wait(timeout=60) == 0, burst.output()

    assert wait_for(site, job_id, {"cancelled", "running", "succeeded"}).state == "cancelled"
    assert versions(f"sqlite:///{site.folder / 'a.db'}") == []  # nothing ran
    assert actions_of(site.app, job_id) == ["job.requested", "job.cancelled"]


@pytest.mark.slow  # kills processes mid-job and waits for the heartbeat to go stale
def test_stopping_a_started_job_stops_its_horse_and_runner_and_frees_the_lock(site: Site):
    site.tree.add("r02", "r01", "very slow", upgrade=SLOW.format(seconds=120))
    worker = site.start_worker()
    job_id = request(site, "a")
    runner_pid = wait_for_runner(site, job_id)
    horse_pid = horse_of(runner_pid, worker)

    with site.app.app_context():
        get_executor().cancel(job_id)  # RQ's stop command: the job has started

    wait_until_dead(horse_pid)
    wait_until_dead(runner_pid)
    with site.app.app_context():
        target = environment_named("a")
        assert lock_is_free(url=target.url, version_table="alembic_version", schema=None)
    stopped = wait_for(site, job_id, {"interrupted", "succeeded", "failed"}, seconds=60)
    assert stopped.state == "interrupted", stopped.error
    assert versions(f"sqlite:///{site.folder / 'a.db'}") == ["r01"]  # the slow step never ran
    assert worker.process.poll() is None


def test_a_job_redis_refuses_is_a_503_naming_the_queue(
    tmp_path: Path, script_tree: ScriptTree, closed_port: int
):
    script_tree.linear(1)
    app = app_for_tree(
        tmp_path / "site",
        script_tree,
        {"a": "sqlite:///a.db"},
        JOB_EXECUTOR="rq",
        REDIS_URL=f"redis://127.0.0.1:{closed_port}/0",
    )
    with app.app_context(), pytest.raises(QueueUnavailable) as refused:
        jobs.request_job(
            environment_name="a",
            operation="upgrade",
            target="head",
            actor=None,
            actor_name="cli:test",
            expected_fingerprint=fingerprint_of("a"),
        )
    assert refused.value.status == 503
    assert "The job queue (Redis) did not take job #1" in str(refused.value)
    assert str(closed_port) in str(refused.value)


def test_the_worker_command_needs_the_rq_executor(tmp_path: Path, script_tree: ScriptTree):
    script_tree.linear(1)
    app = app_for_tree(tmp_path / "site", script_tree, {"a": "sqlite:///a.db"})

    result = app.test_cli_runner().invoke(args=["dashboard", "worker", "--burst"])

    assert result.exit_code != 0
    assert "needs JOB_EXECUTOR=rq and REDIS_URL" in result.output


# --- helpers ----------------------------------------------------------------------------------


def wait_for_runner(site: Site, job_id: int) -> int:
    """Wait until the job runs and its runner is alive; return the runner's pid."""
    deadline = time.monotonic() + 60
    with site.app.app_context():
        while True:
            job = db.session.get(Job, job_id)
            count = sa.select(sa.func.count()).select_from(JobLogLine)
            lines = db.session.scalar(count.where(JobLogLine.job_id == job_id))
            db.session.rollback()
            if job.state == "running" and job.runner_pid and lines:
                return job.runner_pid
            assert job.state in ("queued", "running"), (job.state, job.error)
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.1)


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rpartition(")")[2].split()[1])


def horse_of(runner_pid: int, worker: WorkerProcess) -> int:
    """The work horse supervising a runner: its ancestor whose parent is the worker."""
    pid = runner_pid
    while (parent := parent_of(pid)) != worker.process.pid:
        assert parent > 1, f"runner {runner_pid} does not descend from the worker"
        pid = parent
    assert pid != runner_pid
    return pid


def is_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def wait_until_dead(pid: int, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while is_alive(pid):
        assert time.monotonic() < deadline, f"process {pid} outlived its parent"
        time.sleep(0.1)


def worker_holds_the_lease(worker: WorkerProcess) -> bool:
    """Whether the worker's refresher process (a child of it) holds the refresher's lease."""
    lease = db.session.get(Lease, "status-refresher")
    db.session.rollback()
    if lease is None or as_aware(lease.expires_at) < utcnow():
        return False
    holder_pid = int(lease.holder.split(":")[-2])
    return is_alive(holder_pid) and parent_of(holder_pid) == worker.process.pid
