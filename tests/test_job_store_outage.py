"""A job outlives a store outage (issue 13): the migration finishes while the PostgreSQL store
refuses every connection, and once the store is back the job's outcome, its whole log and its
audit events are stored exactly once; a vote posted during the outage is refused, not lost, and
counts once when posted again. Two gunicorn servers share the store; nothing is simulated."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask
from sqlalchemy.engine import URL

from dashboard.extensions import db
from dashboard.rollouts import service as rollouts
from dashboard.users.models import User
from tests.helpers import (
    TEST_PASSWORD,
    ScriptTree,
    add_user,
    make_app,
    upgrade_store,
    versions,
    write_environments,
)
from tests.servers import HttpSession, Server, server_environ, store_refusing

HEAD = "r02"
SLEEP_SECONDS = 3
# The runner prints around the sleep; both lines reach the job's log through the supervisor.
SLOW_REVISION = f"""
import time
print("sleeping before the last step", flush=True)
time.sleep({SLEEP_SECONDS})
print("awake again", flush=True)
"""
COUNTED = ("job", "rollout_vote", "audit_event")


@dataclass
class Site:
    servers: list[Server]
    store: URL
    store_app: Flask
    dev: Path
    rollout_id: int


@pytest.fixture
def site(tmp_path: Path, pg_store: URL, script_tree: ScriptTree, gunicorn) -> Iterator[Site]:
    script_tree.add_table("r00", None, "t0")
    script_tree.add("r01", "r00", "slow", upgrade=SLOW_REVISION)
    script_tree.add_table(HEAD, "r01", "t2")
    folder = tmp_path / "site"
    folder.mkdir()
    environments = write_environments(
        folder,
        f"""
        project: outage
        migrations: {script_tree.path}
        environments:
          - name: dev
            url: sqlite:///dev.db
          - name: production
            url: sqlite:///production.db
            protected: true
            approvals: 1
        """,
    )
    for name in ("dev.db", "production.db"):
        (folder / name).touch()
    store = pg_store.render_as_string(hide_password=False)
    secret_key = secrets.token_hex(32)
    store_app = make_app(folder, SQLALCHEMY_DATABASE_URI=store, SECRET_KEY=secret_key)
    upgrade_store(store_app)
    add_user(store_app, "olga", "operator")
    add_user(store_app, "abe", "approver")
    with store_app.app_context():
        olga = db.session.scalar(sa.select(User).filter_by(username="olga"))
        rollout = rollouts.request_rollout(
            environment_name="production", target="head", reason="release 7", actor=olga
        )
        rollout_id = rollout.id
    env = server_environ(tmp_path, store=store, environments=environments, secret_key=secret_key)
    servers = [gunicorn(env, workers=2, threads=4) for _ in range(2)]
    yield Site(servers, pg_store, store_app, folder / "dev.db", rollout_id)
    with store_app.app_context():
        db.engine.dispose()


def read_store(store: URL, query: Callable[[sa.Connection], object]) -> object:
    """Run `query` on a connection of its own (the servers' pools are theirs)."""
    engine = sa.create_engine(store, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            return query(connection)
    finally:
        engine.dispose()


def counts(store: URL) -> dict[str, int]:
    def count(connection: sa.Connection) -> dict[str, int]:
        return {
            table: connection.scalar(sa.text(f"SELECT count(*) FROM {table}")) for table in COUNTED
        }

    return read_store(store, count)


def wait_for(what: str, check: Callable[[], object], timeout: float = 60.0) -> object:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what} after {timeout:g} s")
        time.sleep(0.1)
    return found


def log_of(store: URL, job_id: int) -> list[tuple[int, str]]:
    return read_store(
        store,
        lambda connection: connection.execute(
            sa.text("SELECT number, text FROM job_log_line WHERE job_id = :id ORDER BY number"),
            {"id": job_id},
        ).all(),
    )


def job_row(store: URL, job_id: int) -> sa.Row:
    return read_store(
        store,
        lambda connection: connection.execute(
            sa.text("SELECT state, to_revisions, error, heartbeat_at FROM job WHERE id = :id"),
            {"id": job_id},
        ).one(),
    )


def audit_actions(store: URL, since: int) -> list[str]:
    return read_store(
        store,
        lambda connection: connection.scalars(
            sa.text("SELECT action FROM audit_event WHERE id > :id ORDER BY id"), {"id": since}
        ).all(),
    )


def test_a_job_that_ends_during_a_store_outage_is_stored_once_when_the_store_returns(site):
    store, (first, second) = site.store, site.servers
    before = counts(store)
    last_event = read_store(store, lambda c: c.scalar(sa.text("SELECT max(id) FROM audit_event")))
    operator, approver = HttpSession(), HttpSession()
    operator.login(first, "olga", TEST_PASSWORD)
    approver.login(second, "abe", TEST_PASSWORD)
    plan = operator.get(first.url("/environments/dev/plan?operation=upgrade&target=head"))
    rollout_page = approver.get(second.url(f"/rollouts/{site.rollout_id}"))
    vote = {"csrf_token": rollout_page.hidden_input("csrf_token"), "comment": "looks right"}

    started = operator.post(
        first.url("/environments/dev/jobs"),
        {
            "operation": "upgrade",
            "target": "head",
            "fingerprint": plan.hidden_input("fingerprint"),
            "csrf_token": plan.hidden_input("csrf_token"),
        },
    )
    assert started.status == 303, started.text[:500]
    job_id = int(re.search(r"/jobs/(\d+)$", started.location)[1])
    wait_for(
        "the job to print before its slow step",
        lambda: any("sleeping" in text for _, text in log_of(store, job_id)),
    )

    with store_refusing(store):
        refused = approver.post(second.url(f"/rollouts/{site.rollout_id}/approve"), vote)
        assert refused.status == 503 and "The store is unreachable" in refused.text
        # The runner needs no store: the migration reaches the head during the outage, and the
        # supervisor then has an outcome, log lines and audit events it cannot write yet.
        wait_for(
            "the migration to reach the head", lambda: versions(f"sqlite:///{site.dev}") == [HEAD]
        )
        time.sleep(2.0)

    job = wait_for(
        "the job's outcome once the store is back",
        lambda: (row := job_row(store, job_id)).state not in ("queued", "running") and row,
    )
    assert (job.state, job.to_revisions, job.error) == ("succeeded", [HEAD], None)
    lines = log_of(store, job_id)
    assert [number for number, _ in lines] == list(range(1, len(lines) + 1))
    texts = [text for _, text in lines]
    assert sum("sleeping before the last step" in text for text in texts) == 1
    assert sum("awake again" in text for text in texts) == 1

    approved = approver.post(second.url(f"/rollouts/{site.rollout_id}/approve"), vote)
    assert approved.status == 303, approved.text[:500]
    # Two sign-ins, the job's three events and one approval: each stored once, none lost.
    expected = ["login", "login", "job.requested", "job.started", "job.succeeded"]
    expected.append("rollout.approved")
    actions = audit_actions(store, last_event)
    assert sorted(actions) == sorted(expected), actions
    assert counts(store) == {
        "job": before["job"] + 1,
        "rollout_vote": before["rollout_vote"] + 1,
        "audit_event": before["audit_event"] + len(expected),
    }
    verified = site.store_app.test_cli_runner().invoke(args=["dashboard", "audit", "verify"])
    assert verified.exit_code == 0, verified.output
    logs = "".join(server.output() for server in site.servers)
    assert "the store refused" in logs  # the supervisor did meet the outage
    assert "Traceback" not in logs, logs[-3000:]
