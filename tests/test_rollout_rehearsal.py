"""Requesting a rollout rehearses its frozen plan on a scratch database; its page shows what each
step really ran, and says when it was not rehearsed or failed — without leaving the page."""

from __future__ import annotations

import re
import time
import uuid

import pytest
import sqlalchemy as sa

from dashboard.audit.models import AuditEvent
from dashboard.extensions import db
from dashboard.rollouts import flows
from dashboard.rollouts.models import Rollout
from dashboard.tasks import flows as task_flows
from tests.helpers import Auth, add_user, app_for_tree, execute, upgrade_with_a_job

BATCH_STEP, DATA_STEP = "7ca9ba531bc0", "8f60afaad46c"
HX = {"HX-Request": "true"}


def request(client, environment: str = "production") -> int:
    response = Auth(client).post(
        f"/environments/{environment}/rollouts", {"target": "head", "reason": "ship it"}
    )
    assert response.status_code == 303, response.get_data(as_text=True)[:2000]
    return int(re.search(r"/rollouts/(\d+)$", response.headers["Location"]).group(1))


def stored_rehearsal(app, rollout_id: int, timeout: float = 60) -> dict:
    """Wait for the background rehearsal to store its outcome with the rollout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with app.app_context():
            rollout = db.session.get(Rollout, rollout_id)
            if rollout.rehearsal and rollout.rehearsal.get("task") == rollout.rehearsal_task_id:
                return dict(rollout.rehearsal)
        time.sleep(0.2)
    raise AssertionError(f"rollout {rollout_id} stored no rehearsal in {timeout} s")


def audit_events(app, action: str) -> list[dict]:
    with app.app_context():
        return [
            dict(event.details or {})
            for event in db.session.scalars(
                sa.select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)
            )
        ]


def step_html(page: str, revision: str) -> str:
    found = re.search(rf'<li class="step" data-revision="{revision}".*?</li>', page, re.S)
    assert found, f"no step {revision} on the page"
    return found.group(0)


@pytest.fixture
def rehearsing(demo_app):
    """The demo with rollouts rehearsed on request, and staging at head (the promotion gate)."""
    demo_app.config["ROLLOUT_REHEARSALS"] = True
    upgrade_with_a_job(demo_app, "staging")
    return demo_app


@pytest.mark.stores
def test_a_requested_rollout_is_rehearsed_and_its_page_shows_what_each_step_really_ran(
    rehearsing, clients
):
    rollout_id = request(clients["operator"])
    outcome = stored_rehearsal(rehearsing, rollout_id)
    assert outcome["status"] == "succeeded" and len(outcome["steps"]) == 5

    page = clients["approver"].get(f"/rollouts/{rollout_id}").get_data(as_text=True)
    assert 'id="rehearsal" class="rehearsal-evidence" data-rehearsal="succeeded"' in page
    assert "Rehearsed: all 5 steps ran on a temporary SQLite file" in page
    assert "none of its rows: durations are those of empty tables" in page
    # The SQLite batch rebuild cannot render offline: the statements it really ran are shown,
    # open, with its duration and the warning from them.
    batch = step_html(page, BATCH_STEP)
    assert "Cannot be rendered offline" in batch and "<details open>" in batch
    assert "CREATE TABLE _alembic_tmp_customer" in batch and "DROP TABLE customer;" in batch
    ran = r"statements really ran in the rehearsal · (\d+ ms|\d+\.\d\d s) · succeeded"
    assert re.search(ran, batch)
    assert "destructive: drops column customer.legacy_username" in batch
    # The data migration ran on empty tables, and the page says so.
    data = step_html(page, DATA_STEP)
    assert "SELECT customer.id, customer.email, customer.legacy_username" in data
    assert "Data migration: it ran on the scratch database’s empty tables" in data
    assert "Data migration" not in batch
    assert 'id="rehearsal-notice" data-rehearsal="succeeded"' in page
    assert 'hx-confirm="The rehearsal of this plan failed' not in page

    (event,) = audit_events(rehearsing, "rollout.rehearsed")
    assert event["rollout"] == rollout_id and event["outcome"] == "succeeded"
    assert event["steps_run"] == 5 and event["statements"] >= 10
    assert 'data-action="rollout.rehearsed"' in page  # on the rollout's timeline


@pytest.mark.stores
def test_the_page_polls_the_progress_then_swaps_in_the_outcome_and_stops(demo_app, clients):
    upgrade_with_a_job(demo_app, "staging")
    rollout_id = request(clients["operator"])  # rehearsals on request are off in testing
    page = clients["viewer"].get(f"/rollouts/{rollout_id}").get_data(as_text=True)
    assert "Not rehearsed: rollouts are not rehearsed when requested on this dashboard" in page
    with demo_app.app_context():
        rollout = db.session.get(Rollout, rollout_id)
        task = flows.start_rehearsal(rollout=rollout, actor_name="operator", submit=False)
        task_id = task.id

    running = clients["viewer"].get(f"/rollouts/{rollout_id}").get_data(as_text=True)
    assert 'data-rehearsal="running"' in running and 'hx-trigger="every 1s"' in running
    assert '<noscript><meta http-equiv="refresh"' in running  # without JS a refresh shows it
    poll = clients["viewer"].get(f"/rollouts/{rollout_id}/rehearsal", headers=HX)
    assert poll.status_code == 200 and "waiting for a worker" in poll.get_data(as_text=True)

    with demo_app.app_context():
        task_flows.run_task(task_id=task_id)
    poll = clients["viewer"].get(f"/rollouts/{rollout_id}/rehearsal", headers=HX)
    fragment = poll.get_data(as_text=True)
    assert poll.status_code == 286  # htmx stops polling
    assert 'data-rehearsal="succeeded"' in fragment and "hx-trigger" not in fragment
    # The steps and the notice beside the vote buttons are swapped in out of band.
    assert '<ol class="steps" id="plan-steps" hx-swap-oob="true">' in fragment
    assert "DROP TABLE customer;" in fragment
    assert 'id="rehearsal-notice" data-rehearsal="succeeded" hx-swap-oob="true"' in fragment
    # Without htmx the address leads back to the page.
    assert clients["viewer"].get(f"/rollouts/{rollout_id}/rehearsal").status_code == 302


def test_rehearse_again_is_for_operators_on_open_rollouts(demo_app, clients):
    upgrade_with_a_job(demo_app, "staging")
    rollout_id = request(clients["operator"])
    viewer = Auth(clients["viewer"]).post(f"/rollouts/{rollout_id}/rehearse")
    assert viewer.status_code == 403
    with demo_app.app_context():
        assert db.session.get(Rollout, rollout_id).rehearsal_task_id is None

    response = Auth(clients["operator"]).post(f"/rollouts/{rollout_id}/rehearse", headers=HX)
    assert response.status_code == 200
    assert 'data-rehearsal="running"' in response.get_data(as_text=True)
    outcome = stored_rehearsal(demo_app, rollout_id)
    assert outcome["status"] == "succeeded"

    Auth(clients["operator"]).post(f"/rollouts/{rollout_id}/cancel")
    refused = Auth(clients["operator"]).post(f"/rollouts/{rollout_id}/rehearse")
    assert refused.status_code == 409
    assert "only a pending or approved rollout is rehearsed" in refused.get_data(as_text=True)


FAILING = "op.execute('UPDATE no_such_table SET x = 1')"


def test_a_failed_rehearsal_is_shown_beside_its_step_and_at_approve(
    script_tree, tmp_path, store_database
):
    script_tree.add_table("a1", None, "things")
    script_tree.add("b2", "a1", "touch a missing table", upgrade=FAILING)
    app, approver, rollout_id, outcome = requested_with_rehearsal(
        tmp_path, script_tree, "sqlite:///prod.db", store_database
    )
    assert outcome["status"] == "failed"

    page = approver.get(f"/rollouts/{rollout_id}").get_data(as_text=True)
    notice = re.search(r'<div id="rehearsal-notice".*?</div>', page, re.S).group(0)
    assert 'role="alert"' in notice and "The rehearsal of this plan failed at" in notice
    assert "no_such_table" in notice
    assert 'hx-confirm="The rehearsal of this plan failed.' in page
    assert 'data-rehearsal="failed"' in step_html(page, "b2")
    assert "UPDATE no_such_table SET x = 1" in step_html(page, "b2")
    # A failed step is not said to have found no rows.
    assert "Data migration" not in step_html(page, "b2")
    assert 'data-rehearsal="succeeded"' in step_html(page, "a1")

    # Approval stays possible, and its audit event records what the rehearsal said.
    assert Auth(approver).post(f"/rollouts/{rollout_id}/approve").status_code == 303
    (approved,) = audit_events(app, "rollout.approved")
    assert approved["rehearsal"] == "failed"
    (rehearsed,) = audit_events(app, "rollout.rehearsed")
    assert rehearsed["outcome"] == "failed" and "no_such_table" in rehearsed["reason"]


@pytest.fixture
def no_createdb_role(pg_databases):
    """A PostgreSQL login that may use its database but not create databases."""
    name = f"norights_{uuid.uuid4().hex[:8]}"
    database = pg_databases.create()
    admin = database.set(database="postgres")
    execute(admin, f"CREATE ROLE {name} LOGIN NOCREATEDB NOSUPERUSER")
    yield database.set(username=name, password=None)
    execute(admin, f"DROP ROLE IF EXISTS {name}")


@pytest.mark.stores
def test_without_a_shadow_url_or_create_database_the_rollout_says_not_rehearsed_and_why(
    script_tree, tmp_path, store_database, no_createdb_role
):
    script_tree.add_table("a1", None, "things")
    app, approver, rollout_id, outcome = requested_with_rehearsal(
        tmp_path, script_tree, no_createdb_role, store_database
    )
    assert outcome["status"] == "unavailable"

    page = approver.get(f"/rollouts/{rollout_id}").get_data(as_text=True)
    summary = re.search(r'<div id="rehearsal".*?</div>', page, re.S).group(0)
    assert "Not rehearsed: cannot create a scratch database on the server of prod" in summary
    assert "Give the environment a shadow_url" in summary
    assert "Approval is still possible" in summary
    assert "You may still approve" in page and ">Approve</button>" in page
    assert "CREATE TABLE things" in step_html(page, "a1")  # the SQL rendered offline

    assert Auth(approver).post(f"/rollouts/{rollout_id}/approve").status_code == 303
    with app.app_context():
        assert db.session.get(Rollout, rollout_id).state == "approved"
    (approved,) = audit_events(app, "rollout.approved")
    assert approved["rehearsal"] == "not rehearsed"
    (rehearsed,) = audit_events(app, "rollout.rehearsed")
    assert rehearsed["outcome"] == "not rehearsed" and "scratch database" in rehearsed["reason"]


def requested_with_rehearsal(tmp_path, script_tree, url, store_database):
    """A protected prod on `url` (one approval), its rollout requested by ops and rehearsed;
    (the app, boss's signed-in client, the rollout's id, the stored rehearsal)."""
    app = app_for_tree(
        tmp_path / "site",
        script_tree,
        {"prod": url},
        store=store_database,
        ENV_EXTRA={"prod": {"protected": True, "approvals": 1}},
        ROLLOUT_REHEARSALS=True,
    )
    add_user(app, "ops", "operator")
    add_user(app, "boss", "approver")
    operator, approver = app.test_client(), app.test_client()
    Auth(operator).login("ops")
    Auth(approver).login("boss")
    rollout_id = request(operator, "prod")
    return app, approver, rollout_id, stored_rehearsal(app, rollout_id)
