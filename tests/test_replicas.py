"""The deployment of docs/deploy.md on this machine (issue 16): two gunicorn servers (2 workers
each) on one PostgreSQL store and one Redis, two RQ workers — the commands the compose file runs.

40 concurrent upgrade and downgrade requests over 3 environments, at both servers: per
environment at most one job runs at a time, every request gets a job or a clear refusal, every
job runs once and ends, and `flask dashboard audit verify` passes. Then one worker is killed
mid-job: the job ends `interrupted` and the next job runs. Sign-in, CSRF and throttling hold when
consecutive requests hit different servers.
"""

from __future__ import annotations

import secrets
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa

from dashboard.audit.models import AuditEvent
from dashboard.extensions import db
from dashboard.jobs.models import Job
from tests.helpers import TEST_PASSWORD, ScriptTree, drop_redis_keys, make_app, require_redis
from tests.servers import REPO, VENV_BIN, HttpSession, Reply, Server, server_environ, stop_group
from tests.test_rq_executor import (
    SLOW,
    WorkerProcess,
    horse_of,
    launch_worker,
    parent_of,
    wait_until_dead,
)

pytestmark = pytest.mark.slow

ENVIRONMENTS = ("alpha", "beta", "gamma")
REQUESTS = 40
STAGGER_SECONDS = 0.3
FINAL = {"succeeded", "failed", "stale", "interrupted", "cancelled"}


def flask(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    """Run one `flask …` command as the compose file's `migrate` service would; return stdout."""
    result = subprocess.run(
        [str(VENV_BIN / "flask"), *args],
        cwd=REPO,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_two_servers_and_two_workers_run_each_environment_one_job_at_a_time(
    tmp_path: Path, script_tree: ScriptTree, pg_databases, gunicorn
):
    redis_url = require_redis()
    prefix = f"test-replicas-{secrets.token_hex(6)}"
    store = pg_databases.create()
    targets = {name: pg_databases.create() for name in ENVIRONMENTS}
    script_tree.linear(2)
    script_tree.add("r02", "r01", "a moment", upgrade=SLOW.format(seconds=0.5))
    folder = tmp_path / "site"
    folder.mkdir()
    lines = [f"migrations: {script_tree.path}", "environments:"]
    for name, url in targets.items():
        lines += [f"  - name: {name}", f"    url: {url.render_as_string(hide_password=False)}"]
    (folder / "environments.yaml").write_text("\n".join(lines) + "\n")
    env = server_environ(
        tmp_path,
        store=store.render_as_string(hide_password=False),
        environments=folder / "environments.yaml",
        secret_key=secrets.token_hex(32),
        JOB_EXECUTOR="rq",
        REDIS_URL=redis_url,
        DASHBOARD_RQ_QUEUE_PREFIX=prefix,
        DASHBOARD_RATELIMIT_KEY_PREFIX=prefix,
        DASHBOARD_JOB_HEARTBEAT="0.3",
        DASHBOARD_JOB_STALE="2",
        DASHBOARD_JOB_LOCK_WAIT="1",
        DASHBOARD_REFRESH_SECONDS="1",
        DASHBOARD_STATUS_LEASE_SECONDS="3",
        FLASK_APP="dashboard",
    )
    # The `migrate` service, then the first admin as docs/deploy.md creates it.
    flask(env, "db", "upgrade")
    flask(env, "dashboard", "create-user", "olga", "--role", "operator", "--password-stdin",
          stdin=TEST_PASSWORD + "\n")  # fmt: skip
    workers: list[WorkerProcess] = []
    try:
        for number in (1, 2):
            name = f"{prefix}-worker{number}"
            workers.append(launch_worker(env, tmp_path / f"{name}.log", name))
        servers = [gunicorn(env, workers=2, threads=4) for _ in range(2)]
        checks_across_servers(servers)

        replies = concurrent_requests(servers)
        store_app = make_app(folder, SQLALCHEMY_DATABASE_URI=store.render_as_string(False))
        finished = wait_until_all_end(store_app)
        check_one_job_at_a_time(store_app, replies, finished)
        flask(env, "dashboard", "audit", "verify")

        kill_a_worker_mid_job(store_app, servers, workers, script_tree)
        flask(env, "dashboard", "audit", "verify")
    finally:
        for worker in workers:
            stop_group(worker.process)
        drop_redis_keys(redis_url, prefix)


def checks_across_servers(servers: list[Server]) -> None:
    """Sign-in, CSRF and the sign-in throttle work when each request hits the other server."""
    person = HttpSession()
    token = person.get(servers[0].url("/login")).hidden_input("csrf_token")
    signed_in = person.post(
        servers[1].url("/login"),
        {"username": "olga", "password": TEST_PASSWORD, "csrf_token": token},
    )
    assert signed_in.status == 302, signed_in.text[:500]
    assert person.get(servers[0].url("/")).status == 200
    forged = person.post(servers[0].url("/environments/alpha/jobs"), {"operation": "upgrade"})
    assert forged.status == 400  # no CSRF token: refused on either server

    stranger = HttpSession()
    statuses = []
    for attempt in range(7):
        server = servers[attempt % 2]
        token = stranger.get(server.url("/login")).hidden_input("csrf_token")
        form = {"username": "mallory", "password": "wrong", "csrf_token": token}
        statuses.append(stranger.post(servers[(attempt + 1) % 2].url("/login"), form).status)
    assert statuses[:5] == [401] * 5 and statuses[5:] == [429, 429], statuses


def concurrent_requests(servers: list[Server]) -> list[tuple[str, Reply]]:
    """40 requests over 12 s: each reads a plan on one server and runs it on the other."""
    sessions = [HttpSession() for _ in range(4)]
    for number, session in enumerate(sessions):
        session.login(servers[number % 2], "olga", TEST_PASSWORD)

    def one(number: int) -> tuple[str, Reply]:
        time.sleep(STAGGER_SECONDS * number)  # arriving while earlier jobs queue and run
        environment = ENVIRONMENTS[number % 3]
        session = sessions[number % 4]
        reader, runner = servers[number % 2], servers[(number + 1) % 2]
        operation, target = ("upgrade", "head") if number % 2 == 0 else ("downgrade", "base")
        page = session.get(
            reader.url(f"/environments/{environment}/plan?operation={operation}&target={target}")
        )
        form = {"operation": operation, "target": target}
        if 'name="fingerprint"' in page.text:
            form["fingerprint"] = page.hidden_input("fingerprint")
        form["csrf_token"] = page.hidden_input("csrf_token")
        return environment, session.post(runner.url(f"/environments/{environment}/jobs"), form)

    with ThreadPoolExecutor(max_workers=REQUESTS) as pool:
        return list(pool.map(one, range(REQUESTS)))


def wait_until_all_end(app, seconds: float = 180) -> list[Job]:
    deadline = time.monotonic() + seconds
    with app.app_context():
        while True:
            listed = list(db.session.scalars(sa.select(Job).order_by(Job.id)))
            for job in listed:
                db.session.expunge(job)
            db.session.rollback()
            if all(job.state in FINAL for job in listed):
                return listed
            assert time.monotonic() < deadline, [(job.id, job.state) for job in listed]
            time.sleep(0.3)


def check_one_job_at_a_time(app, replies: list[tuple[str, Reply]], jobs: list[Job]) -> None:
    accepted = [reply for _, reply in replies if reply.status == 303]
    refused = [reply for _, reply in replies if reply.status in (400, 409)]
    assert len(accepted) + len(refused) == REQUESTS, [r.status for _, r in replies]
    for reply in refused:
        assert reply.refusal(), reply.text[:500]  # a clear refusal, in words
    # Every accepted request is one job, and every job came from one accepted request.
    assert sorted(int(reply.location.rsplit("/", 1)[1]) for reply in accepted) == [
        job.id for job in jobs
    ]
    assert accepted, "no request got a job"
    for environment in ENVIRONMENTS:
        ran = sorted(
            (job.started_at, job.finished_at)
            for job in jobs
            if job.environment == environment and job.started_at is not None
        )
        for (_, finished), (started, _) in zip(ran, ran[1:], strict=False):
            assert finished <= started, f"two jobs overlapped on {environment}"
    assert {job.state for job in jobs} <= {"succeeded", "stale"}, [
        (job.id, job.state, job.error) for job in jobs
    ]
    with app.app_context():
        events = list(db.session.scalars(sa.select(AuditEvent)))
    for job in jobs:
        started = [e for e in events if e.action == "job.started" and e.details["job"] == job.id]
        assert len(started) == (1 if job.started_at else 0), job.id  # never run twice


def kill_a_worker_mid_job(app, servers, workers: list[WorkerProcess], tree: ScriptTree) -> None:
    """Kill the worker running a slow job: the job ends interrupted, the next job runs."""
    tree.add("r03", "r02", "very slow", upgrade=SLOW.format(seconds=120))
    person = HttpSession()
    person.login(servers[0], "olga", TEST_PASSWORD)

    def run_upgrade() -> int:
        page = person.get(servers[0].url("/environments/alpha/plan"))
        reply = person.post(
            servers[1].url("/environments/alpha/jobs"),
            {
                "operation": "upgrade",
                "target": "head",
                "fingerprint": page.hidden_input("fingerprint"),
                "csrf_token": page.hidden_input("csrf_token"),
            },
        )
        assert reply.status == 303, reply.refusal() or reply.text[:500]
        return int(reply.location.rsplit("/", 1)[1])

    job_id = run_upgrade()
    deadline = time.monotonic() + 60
    with app.app_context():
        while not (job := db.session.get(Job, job_id)).runner_pid:
            db.session.rollback()
            assert time.monotonic() < deadline and job.state in ("queued", "running")
            time.sleep(0.1)
        runner_pid = job.runner_pid
        db.session.rollback()
    victim = next(w for w in workers if _descends(runner_pid, w.process.pid))
    horse = horse_of(runner_pid, victim)

    victim.process.send_signal(signal.SIGKILL)
    wait_until_dead(horse)
    wait_until_dead(runner_pid)

    # The other worker's refresher (taking the lease over if the victim held it) reaps the job.
    deadline = time.monotonic() + 60
    with app.app_context():
        while (job := db.session.get(Job, job_id)).state == "running":
            db.session.rollback()
            assert time.monotonic() < deadline, "the job was never marked interrupted"
            time.sleep(0.2)
        assert job.state == "interrupted", job.error
        db.session.rollback()

    tree.add("r03", "r02", "fixed", upgrade="pass")
    next_id = run_upgrade()
    (finished,) = [job for job in wait_until_all_end(app) if job.id == next_id]
    assert finished.state == "succeeded", finished.error


def _descends(pid: int, ancestor: int) -> bool:
    while pid > 1:
        pid = parent_of(pid)
        if pid == ancestor:
            return True
    return False
