"""Rollout pages on the demo: request, vote, execute — and forged or replayed forms refused."""

from __future__ import annotations

import re

import pytest
import sqlalchemy as sa

from dashboard.extensions import db
from dashboard.rollouts.models import Rollout, RolloutVote
from dashboard.users import service as users
from tests.helpers import TEST_PASSWORD, Auth, upgrade_with_a_job

HEAD = "8d3907739fa1"



def rollout_row(app, rollout_id: int) -> tuple[str, int]:
    with app.app_context():
        rollout = db.session.get(Rollout, rollout_id)
        votes = db.session.scalar(
            sa.select(sa.func.count())
            .select_from(RolloutVote)
            .where(RolloutVote.rollout_id == rollout_id)
        )
        return rollout.state, votes


@pytest.fixture
def people(demo_app, clients):
    """The demo's clients per role plus a second approver, `approver2`."""
    with demo_app.app_context():
        users.create_user(username="approver2", password=TEST_PASSWORD, role="approver", actor=None)
    second = demo_app.test_client()
    Auth(second).login("approver2")
    return {**clients, "approver2": second}


def request_production(client) -> int:
    response = Auth(client).post(
        "/environments/production/rollouts",
        {"target": "head", "reason": "ship the status column", "ticket_url": "https://t/1"},
    )
    assert response.status_code == 303, response.get_data(as_text=True)
    return int(re.search(r"/rollouts/(\d+)$", response.headers["Location"]).group(1))


def test_the_request_form_shows_the_plan_and_the_promotion_gate(people):
    html = people["operator"].get("/environments/production/rollouts/new").get_data(as_text=True)
    assert "drops column customer.legacy_username" in html
    # staging is 2 behind head: production may not go to head before it.
    assert 'id="gate"' in html and "apply it on staging first" in html


def test_a_request_refused_by_the_gate_says_why_and_creates_nothing(demo_app, people):
    response = Auth(people["operator"]).post(
        "/environments/production/rollouts", {"target": "head", "reason": "too early"}
    )
    assert response.status_code == 409
    assert "staging" in response.get_data(as_text=True)
    with demo_app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Rollout)) == 0


def test_operator_requests_two_approvers_approve_operator_executes(demo_app, people):
    upgrade_with_a_job(demo_app, "staging")
    rollout_id = request_production(people["operator"])
    page = people["operator"].get(f"/rollouts/{rollout_id}").get_data(as_text=True)
    assert 'data-state="pending"' in page and "0 of 2 approvals" in page
    assert "You requested this rollout" in page and ">Approve</button>" not in page
    overview = people["viewer"].get("/").get_data(as_text=True)
    assert "1 rollout awaiting approval" in overview
    production = people["viewer"].get("/environments/production").get_data(as_text=True)
    assert f'href="/rollouts/{rollout_id}"' in production and 'data-state="pending"' in production

    for name in ("approver", "approver2"):
        assert ">Approve</button>" in people[name].get(f"/rollouts/{rollout_id}").get_data(
            as_text=True
        )
        response = Auth(people[name]).post(
            f"/rollouts/{rollout_id}/approve", {"comment": f"{name} checked the diff"}
        )
        assert response.status_code == 303
    assert rollout_row(demo_app, rollout_id) == ("approved", 2)
    page = people["operator"].get(f"/rollouts/{rollout_id}").get_data(as_text=True)
    assert ">Execute</button>" in page and "approver checked the diff" in page

    response = Auth(people["operator"]).post(f"/rollouts/{rollout_id}/execute")
    assert response.status_code == 303
    job_id = int(re.search(r"/jobs/(\d+)$", response.headers["Location"]).group(1))
    _wait_for(demo_app, rollout_id, "executed")
    assert f"/jobs/{job_id}" in people["viewer"].get(f"/rollouts/{rollout_id}").get_data(
        as_text=True
    )
    page = people["viewer"].get(f"/rollouts/{rollout_id}").get_data(as_text=True)
    timeline = re.findall(r'data-action="([\w.]+)"', page)
    for action in ("rollout.requested", "rollout.approved", "rollout.executed", "job.succeeded"):
        assert action in timeline


def _wait_for(app, rollout_id: int, state: str, timeout: float = 60) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with app.app_context():
            if db.session.get(Rollout, rollout_id).state == state:
                return
        time.sleep(0.2)
    raise AssertionError(
        f"rollout {rollout_id} never became {state}: {rollout_row(app, rollout_id)}"
    )


@pytest.mark.parametrize("role", ["viewer", "operator"])
def test_a_forged_approval_is_403_and_changes_nothing(demo_app, people, role):
    upgrade_with_a_job(demo_app, "staging")
    rollout_id = request_production(people["approver2"])
    for action in ("approve", "reject"):
        response = Auth(people[role]).post(f"/rollouts/{rollout_id}/{action}")
        assert response.status_code == 403
    assert rollout_row(demo_app, rollout_id) == ("pending", 0)


def test_the_requester_cannot_approve_by_posting_even_as_admin(demo_app, people):
    upgrade_with_a_job(demo_app, "staging")
    rollout_id = request_production(people["admin"])
    response = Auth(people["admin"]).post(f"/rollouts/{rollout_id}/approve")
    assert response.status_code == 403
    assert "someone else must approve it" in response.get_data(as_text=True)
    assert rollout_row(demo_app, rollout_id) == ("pending", 0)


def test_executing_before_enough_approvals_is_refused(demo_app, people):
    upgrade_with_a_job(demo_app, "staging")
    rollout_id = request_production(people["operator"])
    Auth(people["approver"]).post(f"/rollouts/{rollout_id}/approve")
    response = Auth(people["operator"]).post(f"/rollouts/{rollout_id}/execute")
    assert response.status_code == 409
    assert "1 of 2 approvals" in response.get_data(as_text=True)
    assert rollout_row(demo_app, rollout_id) == ("pending", 1)


def test_a_replayed_approval_counts_once(demo_app, people):
    upgrade_with_a_job(demo_app, "staging")
    rollout_id = request_production(people["operator"])
    for _ in range(2):
        assert Auth(people["approver"]).post(f"/rollouts/{rollout_id}/approve").status_code == 303
    assert rollout_row(demo_app, rollout_id) == ("pending", 1)


def test_the_list_filters_by_state_and_environment(demo_app, people):
    upgrade_with_a_job(demo_app, "staging")
    first = request_production(people["operator"])
    second = request_production(people["operator"])
    Auth(people["operator"]).post(f"/rollouts/{second}/cancel")
    viewer = people["viewer"]
    pending = viewer.get("/rollouts?state=pending").get_data(as_text=True)
    assert re.findall(r'data-rollout="(\d+)"', pending) == [str(first)]
    every = viewer.get("/rollouts?environment=production").get_data(as_text=True)
    assert re.findall(r'data-rollout="(\d+)"', every) == [str(second), str(first)]
    assert viewer.get("/rollouts?state=bogus").status_code == 400


def test_the_rollout_schema_diff_lists_the_dropped_column(demo_app, people):
    upgrade_with_a_job(demo_app, "staging")
    rollout_id = request_production(people["operator"])
    html = (
        people["operator"]  # scratch databases: an operator's work (issue 13)
        .get(f"/rollouts/{rollout_id}/schema", headers={"HX-Request": "true"})
        .get_data(as_text=True)
    )
    assert 'class="change dropped" data-kind="column" data-table="customer"' in html


def test_an_admin_overrides_the_gate_in_writing_and_the_rollout_says_so(demo_app, people):
    form = people["admin"].get("/environments/production/rollouts/new").get_data(as_text=True)
    assert 'name="override_justification"' in form
    assert 'name="override_justification"' not in people["operator"].get(
        "/environments/production/rollouts/new"
    ).get_data(as_text=True)

    response = Auth(people["admin"]).post(
        "/environments/production/rollouts",
        {
            "target": "head",
            "reason": "hotfix",
            "override_justification": "staging is being rebuilt; INC-7 signed off",
        },
    )
    assert response.status_code == 303
    page = people["viewer"].get(response.headers["Location"]).get_data(as_text=True)
    assert "Promotion gate overridden by admin: staging is being rebuilt; INC-7 signed off" in page
    assert 'data-action="rollout.override"' in page
