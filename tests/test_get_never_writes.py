"""GET never writes: every GET route, as every role, leaves the dashboard's store untouched.

What a page only shows (a rollout past its lifetime, a running job whose supervisor died) is
persisted, audited once, by the background pass (`dashboard.housekeeping`) or by the POST that
acts on it.
"""

from __future__ import annotations

import itertools
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
import sqlalchemy as sa

from dashboard import housekeeping
from dashboard.audit import service as audit
from dashboard.audit.models import AuditEvent
from dashboard.clock import utcnow
from dashboard.drift import service as drift
from dashboard.extensions import db
from dashboard.jobs.models import ActiveJob, Job
from dashboard.rollouts import service as rollouts
from dashboard.rollouts.models import Rollout
from dashboard.tasks.models import Task
from dashboard.users import service as users
from tests.helpers import TEST_PASSWORD, Auth, app_for_tree, make_app, upgrade_with_a_job

ROLES = ["anonymous", "viewer", "operator", "approver", "admin"]
HEAD = "8d3907739fa1"
# A statement that changes the store, or locks rows to change them.
WRITE = re.compile(
    r"^\s*(INSERT|UPDATE|DELETE|REPLACE|MERGE|CREATE|DROP|ALTER|TRUNCATE)\b|\bFOR\s+UPDATE\b",
    re.IGNORECASE,
)
# Query strings worth a visit besides the bare URL (filters, refreshes, the other forms).
QUERIES = {
    "environments.environment": [{"refresh": "1"}],
    "rollouts.index": [{"state": "expired"}, {"state": "pending"}, {"environment": "production"}],
    "jobs.index": [{"environment": "dev"}],
    "jobs.plan": [{"operation": "downgrade"}],
    "diffs.diff": [{"from": "base", "to": "head"}],
    "audit.events": [{"action": "rollout.requested"}],
}
# Routes that build scratch databases (seconds each): visited as the least role that may
# (operator), a viewer (refused) and anonymous, as the htmx requests the pages make; every
# other route checks the roles' paths.
SCRATCH_BUILDERS = {"rollouts.schema"}  # the diff page's schema diff and rehearsal are POSTs


class StoreWriteRefused(Exception):
    """A statement that would have written to the store during a GET."""


@contextmanager
def store_writes(app) -> Iterator[list[str]]:
    """Collect, and refuse, every statement that would write to the app's store in the block.

    Refused, so that one GET that writes leaves the store as it was for the next one to show.
    """
    with app.app_context():
        engine = db.engine
    seen: list[str] = []

    def record(connection, cursor, statement, parameters, context, executemany) -> None:
        if WRITE.search(statement):
            seen.append(" ".join(statement.split())[:120])
            raise StoreWriteRefused(statement)

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


def stale_running_job(environment: str = "dev") -> Job:
    """A running job whose heartbeat stopped an hour ago: its supervisor died, its lock is free."""
    an_hour_ago = utcnow() - timedelta(hours=1)
    job = Job(
        environment=environment,
        operation="upgrade",
        requested_target="head",
        alembic_target=HEAD,
        requested_by="operator",
        state="running",
        started_at=an_hour_ago,
        heartbeat_at=an_hour_ago,
    )
    db.session.add(job)
    db.session.flush()
    db.session.add(ActiveJob(environment=environment, job_id=job.id))
    db.session.commit()
    return job


def stored_tasks() -> list[Task]:
    """A finished schema diff, a finished drift check, and a rehearsal whose process died an
    hour ago (a task page shows it interrupted; only a later POST stores that)."""
    an_hour_ago = utcnow() - timedelta(hours=1)
    common = {"environment": "dev", "requested_by": "operator", "created_at": an_hour_ago}
    tasks = [
        Task(
            kind="schema_diff",
            key="a" * 64,
            params={"args": {"operation": "upgrade", "target": "head"}},
            state="succeeded",
            result={"is_empty": True, "changes": []},
            finished_at=utcnow(),
            **common,
        ),
        Task(
            kind="drift_check",
            key="dev",
            params={"environments": ["dev"]},
            state="succeeded",
            result={"reports": [{"environment": "dev", "status": "none"}]},
            finished_at=utcnow(),
            **common,
        ),
        Task(
            kind="rehearsal",
            key="b" * 64,
            params={"args": {"operation": "upgrade", "target": "head"}},
            state="running",
            active_key="c" * 64,
            started_at=an_hour_ago,
            heartbeat_at=an_hour_ago,
            **common,
        ),
    ]
    db.session.add_all(tasks)
    db.session.commit()
    return tasks


def overdue(rollout: Rollout) -> Rollout:
    """Move a rollout's expiry into the past, as time would."""
    rollout.expires_at = utcnow() - timedelta(minutes=1)
    db.session.commit()
    return rollout


@pytest.fixture
def lived_in(demo_app, clients) -> dict[str, list[str]]:
    """The demo with one of everything a GET route can show, and the values to fill its URLs.

    Among them the two things GETs used to write: an open rollout past its lifetime, and a
    running job whose heartbeat is stale while its lock is free.
    """
    upgrade_with_a_job(demo_app, "staging")  # a finished job; production may now go to head
    with demo_app.app_context():
        operator = users.get_user(username="operator")
        admin = users.get_user(username="admin")
        pending = rollouts.request_rollout(
            environment_name="production", target="head", reason="ship it", actor=operator
        )
        due = overdue(
            rollouts.request_rollout(
                environment_name="production", target="head", reason="forgotten", actor=operator
            )
        )
        stale = stale_running_job()
        finished = db.session.scalar(sa.select(Job).where(Job.state == "succeeded"))
        drift.check_drift(environment_name="dev", checked_by="admin")
        tasks = stored_tasks()
        values = {
            "job_id": [str(stale.id), str(finished.id)],
            "rollout_id": [str(due.id), str(pending.id)],
            "name": ["dev", "production"],
            "revision_id": [HEAD],
            "user_id": [str(admin.id)],
            "filename": ["dashboard.css"],
            "task_id": [str(task.id) for task in tasks],
        }
    # Keep the background pass out of the crawl: it may write, the pages may not.
    board = demo_app.extensions["dashboard.status_board"]
    board.refresh()
    board.start = lambda: None
    return values


def get_urls(app, values: dict[str, list[str]]) -> list[tuple[str, str]]:
    """Every GET route's (endpoint, URL), its parameters filled from real objects."""
    adapter = app.url_map.bind("localhost")
    urls = []
    for rule in sorted(app.url_map.iter_rules(), key=lambda rule: rule.rule):
        if "GET" not in rule.methods:
            continue
        missing = rule.arguments - set(values)
        assert not missing, f"{rule.rule}: give the crawl a value for {sorted(missing)}"
        names = sorted(rule.arguments)
        for combination in itertools.product(*(values[name] for name in names)):
            filled = dict(zip(names, combination, strict=True))
            for query in [{}, *QUERIES.get(rule.endpoint, [])]:
                urls.append((rule.endpoint, adapter.build(rule.endpoint, {**filled, **query})))
    return urls


def test_no_get_route_writes_to_the_store_whatever_the_role(demo_app, clients, lived_in):
    offences: dict[str, dict[str, set[str]]] = {}
    errors = []
    for role, (endpoint, url), htmx in itertools.product(
        ROLES, get_urls(demo_app, lived_in), (False, True)
    ):
        scratch_roles = ("anonymous", "viewer", "operator")
        if endpoint in SCRATCH_BUILDERS and (role not in scratch_roles or not htmx):
            continue
        with store_writes(demo_app) as writes:
            try:
                response = clients[role].get(url, headers={"HX-Request": "true"} if htmx else {})
            except StoreWriteRefused:
                response = None
            else:
                response.close()
        if writes:
            found = offences.setdefault(endpoint, {"roles": set(), "urls": set(), "writes": set()})
            found["roles"].add(role)
            found["urls"].add(url)
            found["writes"].add(writes[0])
        elif response.status_code >= 500:
            errors.append(f"{role} GET {url}: {response.status_code}")
    report = [
        f"{endpoint} as {', '.join(sorted(found['roles']))}: {', '.join(sorted(found['urls']))}"
        f" -> {'; '.join(sorted(found['writes']))}"
        for endpoint, found in sorted(offences.items())
    ]
    assert report == [], "GET requests wrote to the store:\n" + "\n".join(report)
    assert errors == []


def test_the_store_hook_sees_writes_from_any_session(demo_app):
    with store_writes(demo_app) as writes, demo_app.app_context():
        with pytest.raises(StoreWriteRefused):
            users.create_user(
                username="newcomer", password="a long password", role="viewer", actor=None
            )
        db.session.rollback()
        with pytest.raises(StoreWriteRefused):
            audit.record_alone(action="access.denied", actor_name="someone")
    assert [write.split()[:3] for write in writes] == [
        ["INSERT", "INTO", "user"],
        ["INSERT", "INTO", "audit_checkpoint"],
    ]


# --- what moved off the GETs: shown on read, stored by the background pass ------------------


def events(action: str) -> list[AuditEvent]:
    return list(db.session.scalars(sa.select(AuditEvent).where(AuditEvent.action == action)))


def approved_production_rollout(app) -> int:
    """An approved rollout of production to head (staging upgraded first, two approvers)."""
    upgrade_with_a_job(app, "staging")
    with app.app_context():
        users.create_user(username="approver2", password=TEST_PASSWORD, role="approver", actor=None)
        rollout = rollouts.request_rollout(
            environment_name="production",
            target="head",
            reason="ship it",
            actor=users.get_user(username="operator"),
        )
        for name in ("approver", "approver2"):
            rollouts.approve_rollout(rollout_id=rollout.id, actor=users.get_user(username=name))
        return rollout.id


def test_an_overdue_rollout_is_shown_expired_and_executing_it_is_refused(demo_app, clients):
    rollout_id = approved_production_rollout(demo_app)
    with demo_app.app_context():
        overdue(db.session.get(Rollout, rollout_id))

    page = clients["operator"].get(f"/rollouts/{rollout_id}").get_data(as_text=True)
    assert 'id="rollout" data-state="expired"' in page and "it expired at " in page
    assert ">Execute</button>" not in page
    expired = clients["viewer"].get("/rollouts?state=expired").get_data(as_text=True)
    approved = clients["viewer"].get("/rollouts?state=approved").get_data(as_text=True)
    assert f'data-rollout="{rollout_id}"' in expired
    assert f'data-rollout="{rollout_id}"' not in approved
    with demo_app.app_context():
        assert db.session.get(Rollout, rollout_id).state == "approved"  # shown, not stored
        assert events("rollout.expired") == []

    refused = Auth(clients["operator"]).post(f"/rollouts/{rollout_id}/execute")

    assert refused.status_code == 409
    assert "has expired" in refused.get_data(as_text=True)
    with demo_app.app_context():
        assert db.session.get(Rollout, rollout_id).state == "expired"  # the POST stored it
        assert housekeeping.persist_overdue_states().expired_rollouts == []
        assert len(events("rollout.expired")) == 1
        assert db.session.scalar(sa.select(Job).where(Job.environment == "production")) is None


def test_the_background_pass_stores_an_overdue_rollout_shown_as_expired(demo_app, clients):
    rollout_id = approved_production_rollout(demo_app)
    with demo_app.app_context():
        overdue(db.session.get(Rollout, rollout_id))
        assert "1 rollout" not in clients["viewer"].get("/").get_data(as_text=True)

        assert housekeeping.persist_overdue_states().expired_rollouts == [rollout_id]
        assert housekeeping.persist_overdue_states().expired_rollouts == []

        stored = db.session.get(Rollout, rollout_id)
        assert stored.state == "expired" and stored.state_reason.startswith("it expired at ")
        (event,) = events("rollout.expired")
        assert (event.actor_name, event.details["rollout"]) == ("system", rollout_id)
    page = clients["viewer"].get(f"/rollouts/{rollout_id}").get_data(as_text=True)
    assert 'data-state="expired"' in page


def test_a_stale_running_job_is_shown_interrupted_and_stored_by_the_background_pass(
    demo_app, clients
):
    with demo_app.app_context():
        job_id = stale_running_job("dev").id

    page = clients["viewer"].get(f"/jobs/{job_id}").get_data(as_text=True)
    live = clients["viewer"].get(f"/jobs/{job_id}/live", headers={"HX-Request": "true"})
    assert 'id="job-state" data-stored-state="running">interrupted?</span>' in page
    assert "seems to have stopped" in page
    assert live.status_code == 200  # still polling: nothing is stored yet
    with demo_app.app_context():
        assert db.session.get(Job, job_id).state == "running"
        assert events("job.interrupted") == []

        assert housekeeping.persist_overdue_states().interrupted_jobs == [job_id]
        assert housekeeping.persist_overdue_states().interrupted_jobs == []

        job = db.session.get(Job, job_id)
        assert job.state == "interrupted" and "heartbeat went stale" in job.error
        assert db.session.get(ActiveJob, "dev") is None  # dev takes jobs again
        (event,) = events("job.interrupted")
        assert (event.actor_name, event.details["job"]) == ("system", job_id)
        assert event.details["outcome"] == "interrupted"
    ended = clients["viewer"].get(f"/jobs/{job_id}/live", headers={"HX-Request": "true"})
    assert ended.status_code == 286 and 'id="job-state">interrupted</span>' in ended.text


def test_a_job_whose_heartbeat_is_fresh_is_neither_shown_nor_stored_interrupted(demo_app, clients):
    with demo_app.app_context():
        job = stale_running_job("dev")
        job.heartbeat_at = utcnow()
        db.session.commit()
        job_id = job.id

    page = clients["viewer"].get(f"/jobs/{job_id}").get_data(as_text=True)
    assert 'id="job-state">running</span>' in page and "interrupted?" not in page
    with demo_app.app_context():
        assert housekeeping.persist_overdue_states().interrupted_jobs == []


def test_a_store_error_in_the_background_pass_is_logged_and_the_rest_carries_on(
    demo_app, monkeypatch, caplog
):
    def store_gone() -> list[Rollout]:
        raise sa.exc.OperationalError("SELECT rollout.id", {}, Exception("the store went away"))

    with demo_app.app_context():
        job_id = stale_running_job("dev").id
        monkeypatch.setattr(rollouts, "expire_due_rollouts", store_gone)
        with caplog.at_level("ERROR", logger="dashboard.housekeeping"):
            done = housekeeping.persist_overdue_states()
    assert done == housekeeping.Housekeeping(interrupted_jobs=[job_id], expired_rollouts=[])
    assert "expiring rollouts failed" in caplog.text and "the store went away" in caplog.text


def test_the_refresher_runs_its_chores_after_a_refresh_and_outlives_a_failing_one(demo_app, caplog):
    board = demo_app.extensions["dashboard.status_board"]
    ran = []

    def broken() -> None:
        raise RuntimeError("a bug in a chore")

    board.add_chore(broken)
    board.add_chore(lambda: ran.append("after"))
    with caplog.at_level("ERROR", logger="dashboard.environments.status"):
        board.run_chores()
    assert ran == ["after"]
    assert "a background chore failed" in caplog.text and "a bug in a chore" in caplog.text


@pytest.mark.backends
def test_two_processes_running_the_pass_at_once_write_each_event_once(
    tmp_path, script_tree, pg_store
):
    script_tree.linear(1)
    url = pg_store.render_as_string(hide_password=False)
    folder = tmp_path / "site"
    first = app_for_tree(
        folder,
        script_tree,
        {"dev": "sqlite:///dev.db", "staging": "sqlite:///staging.db"},
        SQLALCHEMY_DATABASE_URI=url,
    )
    second = make_app(folder, SQLALCHEMY_DATABASE_URI=url)  # another process, the same store
    with first.app_context():
        job_ids = sorted(stale_running_job(name).id for name in ("dev", "staging"))
        rollout_ids = [overdue(pending_rollout()).id for _ in range(6)]

    barrier = threading.Barrier(2)
    done: list[housekeeping.Housekeeping] = []

    def run_pass(app) -> None:
        with app.app_context():
            barrier.wait(timeout=10)
            done.append(housekeeping.persist_overdue_states())

    threads = [threading.Thread(target=run_pass, args=(app,)) for app in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert len(done) == 2
    assert sorted(done[0].interrupted_jobs + done[1].interrupted_jobs) == job_ids
    assert sorted(done[0].expired_rollouts + done[1].expired_rollouts) == rollout_ids
    with first.app_context():
        assert sorted(event.details["job"] for event in events("job.interrupted")) == job_ids
        expired = sorted(event.details["rollout"] for event in events("rollout.expired"))
        assert expired == rollout_ids
        assert audit.verify().ok
    for app in (first, second):
        with app.app_context():
            db.engine.dispose()


def pending_rollout() -> Rollout:
    """A pending rollout of staging, stored as it is (its plan does not matter here)."""
    rollout = Rollout(
        environment="staging",
        direction="upgrade",
        requested_target="head",
        target_revision="r00",
        fingerprint="0" * 64,
        approvals_required=1,
        reason="forgotten",
        requested_by="olga",
    )
    db.session.add(rollout)
    db.session.commit()
    return rollout
