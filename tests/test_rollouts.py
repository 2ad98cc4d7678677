"""Rollouts at the service level: approval policy, expiry, promotion gate, staleness, execution."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from dashboard import housekeeping
from dashboard.audit import service as audit
from dashboard.audit.models import AuditEvent
from dashboard.errors import (
    ApprovalRequired,
    JobRefused,
    RolloutForbidden,
    RolloutRefused,
    RolloutStale,
)
from dashboard.extensions import db
from dashboard.jobs import service as jobs
from dashboard.jobs.models import Job
from dashboard.rollouts import flows
from dashboard.rollouts import service as rollouts
from dashboard.rollouts.models import Rollout, RolloutVote
from dashboard.users import service as users
from dashboard.users.models import User
from tests.helpers import app_for_tree, execute, fingerprint_of, versions

FAST = {"JOB_LOCK_WAIT_SECONDS": 1.0, "JOB_HEARTBEAT_SECONDS": 0.3, "JOB_STALE_SECONDS": 1.5}
PEOPLE = {
    "olga": "operator",
    "otto": "operator",
    "ann": "approver",
    "bob": "approver",
    "ada": "admin",
    "vic": "viewer",
}
PRODUCTION = {"protected": True, "approvals": 2}


def make_site(folder, tree, environments, extra, **config):
    """The dashboard on `tree` with the PEOPLE signed up (by name and role)."""
    app = app_for_tree(folder, tree, environments, ENV_EXTRA=extra, **FAST, **config)
    with app.app_context():
        for name, role in PEOPLE.items():
            users.create_user(
                username=name, password="correct horse battery staple", role=role, actor=None
            )
    return app


@pytest.fixture
def site(tmp_path, script_tree, store_database):
    """staging and production (protected, 2 approvals) on SQLite, r00 → r01 → r02 pending; the
    store on `store_backend`."""
    script_tree.linear(3)
    app = make_site(
        tmp_path / "site",
        script_tree,
        {"staging": "sqlite:///staging.db", "production": "sqlite:///production.db"},
        {"production": PRODUCTION},
        store=store_database,
    )
    with app.app_context():
        yield app


def user(name: str) -> User:
    return db.session.scalar(sa.select(User).where(User.username == name))


def request(actor: str = "olga", target: str = "head", **kwargs) -> Rollout:
    kwargs.setdefault("environment_name", "production")
    kwargs.setdefault("reason", "ship the new tables")
    return rollouts.request_rollout(target=target, actor=user(actor), **kwargs)


def approve(rollout: Rollout, *names: str) -> Rollout:
    for name in names:
        rollout = rollouts.approve_rollout(rollout_id=rollout.id, actor=user(name))
    return rollout


def actions() -> list[str]:
    return list(db.session.scalars(sa.select(AuditEvent.action).order_by(AuditEvent.seq)))


def events(action: str) -> list[AuditEvent]:
    return list(db.session.scalars(sa.select(AuditEvent).where(AuditEvent.action == action)))


def vote_count() -> int:
    return db.session.scalar(sa.select(sa.func.count()).select_from(RolloutVote))


def job_count() -> int:
    return db.session.scalar(sa.select(sa.func.count()).select_from(Job))


def run_rollout(rollout: Rollout, actor: str = "olga") -> Job:
    job = flows.execute_rollout(rollout_id=rollout.id, actor=user(actor), submit=False)
    return jobs.run_job(job_id=job.id)


# --- requesting -----------------------------------------------------------------------------


@pytest.mark.stores
def test_a_request_freezes_the_plan_and_resolves_head(site):
    rollout = request(ticket_url="https://tickets.example/OPS-1")

    assert rollout.state == "pending"
    assert (rollout.requested_target, rollout.target_revision) == ("head", "r02")
    assert rollout.revision_ids == ["r00", "r01", "r02"] and rollout.from_revisions == []
    assert rollout.plan["fingerprint"] == rollout.fingerprint
    assert [step["revision"] for step in rollout.plan["steps"]] == ["r00", "r01", "r02"]
    assert "CREATE TABLE t0" in rollout.plan["steps"][0]["sql"]
    assert rollout.approvals_required == 2 and rollout.ticket_url.endswith("OPS-1")
    (requested,) = events("rollout.requested")
    assert requested.details["fingerprint"] == rollout.fingerprint
    assert (requested.details["from"], requested.details["to"]) == ([], "r02")
    assert requested.environment == "production" and requested.actor_name == "olga"


def test_the_default_lifetime_is_72_hours_and_0_means_never(site):
    rollout = request()
    expires = audit.as_utc(rollout.expires_at)
    assert timedelta(hours=71.9) < expires - datetime.now(UTC) <= timedelta(hours=72)

    site.config["ROLLOUT_LIFETIME_HOURS"] = 0
    assert request().expires_at is None


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"environment_name": "staging"}, RolloutRefused, "not protected.*run it directly"),
        ({"reason": "   "}, RolloutRefused, "needs a reason"),
        ({"ticket_url": "javascript:alert(1)"}, RolloutRefused, "http:// or https://"),
        ({"ticket_url": "ftp://tickets.example/1"}, RolloutRefused, "http:// or https://"),
        ({"actor": "vic"}, RolloutForbidden, "operator role"),
        ({"actor": "ann", "direction": "sideways"}, RolloutRefused, "not a direction"),
    ],
)
def test_requests_that_break_a_rule_are_refused(site, kwargs, error, message):
    with pytest.raises(error, match=message):
        request(**kwargs)
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Rollout)) == 0


def test_a_downgrade_needs_allow_downgrade(tmp_path, script_tree):
    script_tree.linear(2)
    app = make_site(
        tmp_path / "site",
        script_tree,
        {"production": "sqlite:///production.db"},
        {"production": {**PRODUCTION, "allow_downgrade": False}},
    )
    with app.app_context():
        with pytest.raises(RolloutRefused, match="does not allow downgrades"):
            request(target="base", direction="downgrade")


# --- the approval policy --------------------------------------------------------------------


def test_the_requester_cannot_approve_their_own_rollout_even_as_admin(site):
    for requester in ("ada", "ann"):  # an admin, an approver: both may request
        rollout = request(actor=requester)
        with pytest.raises(RolloutForbidden, match="someone else must approve"):
            rollouts.approve_rollout(rollout_id=rollout.id, actor=user(requester))
        assert rollouts.get_rollout(rollout_id=rollout.id).state == "pending"
    assert vote_count() == 0
    assert "rollout.approved" not in actions()


def test_a_viewer_or_operator_cannot_approve_and_nothing_changes(site):
    rollout = request()
    before = actions()
    for name in ("vic", "otto"):
        with pytest.raises(RolloutForbidden, match="approver or an admin"):
            rollouts.approve_rollout(rollout_id=rollout.id, actor=user(name))
        with pytest.raises(RolloutForbidden, match="approver or an admin"):
            rollouts.reject_rollout(rollout_id=rollout.id, actor=user(name))
    assert vote_count() == 0
    assert rollouts.get_rollout(rollout_id=rollout.id).state == "pending"
    assert actions() == before


@pytest.mark.stores
def test_a_second_vote_by_the_same_person_is_ignored(site):
    rollout = request()
    approve(rollout, "ann")

    again = rollouts.approve_rollout(rollout_id=rollout.id, actor=user("ann"), comment="again")
    changed_mind = rollouts.reject_rollout(rollout_id=rollout.id, actor=user("ann"))

    assert again.state == changed_mind.state == "pending"
    assert vote_count() == 1
    assert [vote.username for vote in again.votes] == ["ann"]
    assert len(events("rollout.approved")) == 1 and not events("rollout.rejected")


@pytest.mark.stores
def test_two_distinct_approvals_are_needed_before_it_can_run(site):
    rollout = request()

    once = approve(rollout, "ann")
    assert once.state == "pending"
    with pytest.raises(ApprovalRequired, match="1 of 2 approvals"):
        flows.execute_rollout(rollout_id=rollout.id, actor=user("olga"), submit=False)
    assert job_count() == 0
    assert rollouts.pending_count() == 1
    assert rollouts.pending_count(environment="staging") == 0

    twice = approve(rollout, "bob")
    assert twice.state == "approved" and twice.decided_at is not None
    assert rollouts.pending_count() == 0
    (first, second) = events("rollout.approved")
    assert (first.details["approvals"], second.details["approvals"]) == (1, 2)
    assert second.details["state"] == "approved"


@pytest.mark.stores
def test_a_rejection_ends_the_rollout(site):
    rollout = request()
    approve(rollout, "ann")

    rejected = rollouts.reject_rollout(rollout_id=rollout.id, actor=user("bob"), comment="not now")

    assert rejected.state == "rejected" and "not now" in rejected.state_reason
    with pytest.raises(RolloutRefused, match="is rejected"):
        rollouts.approve_rollout(rollout_id=rollout.id, actor=user("ada"))
    with pytest.raises(RolloutRefused, match="is rejected"):
        flows.execute_rollout(rollout_id=rollout.id, actor=user("olga"), submit=False)
    (event,) = events("rollout.rejected")
    assert event.details["comment"] == "not now" and event.details["fingerprint"]
    assert vote_count() == 2 and job_count() == 0


def test_a_decision_keeps_its_comment(site):
    rollout = request()
    rollouts.approve_rollout(rollout_id=rollout.id, actor=user("ann"), comment="  looks good ")
    vote = db.session.scalar(sa.select(RolloutVote))
    assert (vote.username, vote.decision, vote.comment) == ("ann", "approve", "looks good")


@pytest.mark.stores
def test_the_requester_or_an_admin_cancels(site):
    mine = request()
    with pytest.raises(RolloutForbidden, match="requester or an admin"):
        rollouts.cancel_rollout(rollout_id=mine.id, actor=user("otto"))
    with pytest.raises(RolloutForbidden, match="requester or an admin"):
        rollouts.cancel_rollout(rollout_id=mine.id, actor=user("ann"))

    cancelled = rollouts.cancel_rollout(rollout_id=mine.id, actor=user("olga"), comment="oops")
    assert cancelled.state == "cancelled"
    with pytest.raises(RolloutRefused, match="is cancelled"):
        rollouts.approve_rollout(rollout_id=mine.id, actor=user("ann"))

    other = approve(request(), "ann", "bob")
    assert rollouts.cancel_rollout(rollout_id=other.id, actor=user("ada")).state == "cancelled"
    assert [event.actor_name for event in events("rollout.cancelled")] == ["olga", "ada"]


@pytest.mark.stores
def test_an_overdue_rollout_reads_as_expired_without_a_write_and_can_no_longer_run(site):
    pending = request()
    approved = approve(request(), "ann", "bob")
    past = datetime.now(UTC) - timedelta(minutes=1)
    db.session.execute(sa.update(Rollout).values(expires_at=past))
    db.session.commit()

    listed = rollouts.list_rollouts()
    assert [rollout.current_state for rollout in listed] == ["expired", "expired"]
    assert [rollout.state for rollout in listed] == ["approved", "pending"]  # nothing stored
    assert rollouts.list_rollouts(state="pending") == []
    assert rollouts.list_rollouts(state="approved") == []
    expired_ids = [rollout.id for rollout in rollouts.list_rollouts(state="expired")]
    assert expired_ids == [approved.id, pending.id]
    assert rollouts.pending_count() == 0
    assert events("rollout.expired") == []

    with pytest.raises(RolloutRefused, match="has expired"):
        rollouts.approve_rollout(rollout_id=pending.id, actor=user("ann"))
    with pytest.raises(RolloutRefused, match="has expired"):
        flows.execute_rollout(rollout_id=approved.id, actor=user("olga"), submit=False)
    with pytest.raises(RolloutRefused, match="is expired"):
        flows.execute_rollout(rollout_id=approved.id, actor=user("olga"), submit=False)
    expired = events("rollout.expired")
    assert sorted(event.details["rollout"] for event in expired) == [pending.id, approved.id]
    assert job_count() == 0


def test_the_background_pass_stores_overdue_rollouts_as_expired_once(site):
    overdue, later = request(), request()
    db.session.execute(
        sa.update(Rollout)
        .where(Rollout.id == overdue.id)
        .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
    )
    db.session.commit()

    assert housekeeping.persist_overdue_states().expired_rollouts == [overdue.id]
    assert housekeeping.persist_overdue_states().expired_rollouts == []

    stored = db.session.get(Rollout, overdue.id)
    assert (stored.state, stored.current_state) == ("expired", "expired")
    assert stored.state_reason.startswith("it expired at ") and stored.finished_at is not None
    assert db.session.get(Rollout, later.id).state == "pending"
    (event,) = events("rollout.expired")
    assert (event.actor_name, event.environment) == ("system", "production")
    assert event.details["rollout"] == overdue.id and event.details["expires_at"]


def test_a_rollout_expires_when_acted_on_after_its_lifetime(site):
    rollout = request()
    db.session.execute(
        sa.update(Rollout).values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
    )
    db.session.commit()

    with pytest.raises(RolloutRefused, match="has expired"):
        rollouts.approve_rollout(rollout_id=rollout.id, actor=user("ann"))

    assert db.session.get(Rollout, rollout.id).state == "expired"
    assert len(events("rollout.expired")) == 1 and vote_count() == 0


# --- the promotion gate ---------------------------------------------------------------------


@pytest.fixture
def gated(tmp_path, script_tree):
    """production comes after staging; staging is an unprotected SQLite database at base."""
    script_tree.linear(3)
    app = make_site(
        tmp_path / "site",
        script_tree,
        {"staging": "sqlite:///staging.db", "production": "sqlite:///production.db"},
        {"production": {**PRODUCTION, "after": "staging"}},
    )
    with app.app_context():
        yield app


def upgrade_staging(target: str) -> None:
    job = jobs.request_job(
        environment_name="staging",
        operation="upgrade",
        target=target,
        actor=user("olga"),
        expected_fingerprint=fingerprint_of("staging", "upgrade", target),
        submit=False,
    )
    assert jobs.run_job(job_id=job.id).state == "succeeded"


def test_the_promotion_gate_refuses_a_target_not_applied_on_the_previous_environment(gated):
    with pytest.raises(RolloutRefused, match="staging, which is at base and does not have r02"):
        request()
    upgrade_staging("r01")
    with pytest.raises(RolloutRefused, match="which is at r01 and does not have r02"):
        request()
    assert request(target="r01").target_revision == "r01"  # r01 is on staging

    upgrade_staging("head")
    rollout = request()
    assert rollout.target_revision == "r02" and rollout.override_justification is None
    assert not events("rollout.override")


def test_an_admin_overrides_the_gate_with_a_justification_and_it_is_audited(gated):
    rollout = request(actor="ada", override_justification="  hotfix: staging is down  ")

    assert rollout.override_justification == "hotfix: staging is down"
    assert rollout.override_by == "ada" and "Promotion gate" in rollout.gate_refusal
    (override,) = events("rollout.override")
    assert override.actor_name == "ada"
    assert override.details["justification"] == "hotfix: staging is down"
    assert override.details["fingerprint"] == rollout.fingerprint
    # The override bypasses the gate only: the approvals still apply.
    with pytest.raises(ApprovalRequired):
        flows.execute_rollout(rollout_id=rollout.id, actor=user("ada"), submit=False)


def test_only_an_admin_with_a_written_justification_may_override(gated):
    with pytest.raises(RolloutForbidden, match="Only an admin"):
        request(actor="olga", override_justification="trust me")
    with pytest.raises(RolloutForbidden, match="Only an admin"):
        request(actor="ann", override_justification="trust me")
    with pytest.raises(RolloutRefused, match="Promotion gate.*written justification"):
        request(actor="ada", override_justification="   ")
    assert not events("rollout.override")
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Rollout)) == 0


def test_an_unreachable_previous_environment_closes_the_gate(tmp_path, script_tree, closed_port):
    script_tree.linear(1)
    app = make_site(
        tmp_path / "site",
        script_tree,
        {
            "staging": f"postgresql+psycopg://u:p@127.0.0.1:{closed_port}/db",
            "production": "sqlite:///production.db",
        },
        {"production": {**PRODUCTION, "after": "staging"}},
    )
    with app.app_context():
        with pytest.raises(RolloutRefused, match="staging, which cannot be read") as refused:
            request()
        assert ":p@" not in str(refused.value)


# --- jobs on protected environments ---------------------------------------------------------


def test_a_job_on_a_protected_environment_needs_an_approved_rollout(site):
    with pytest.raises(JobRefused, match="production is protected"):
        jobs.request_job(
            environment_name="production",
            operation="upgrade",
            target="head",
            actor=user("ada"),
            submit=False,
        )
    pending = approve(request(), "ann")
    with pytest.raises(JobRefused, match="is pending, not approved"):
        jobs.request_job(
            environment_name="production",
            operation="upgrade",
            target="r02",
            actor=user("olga"),
            claim=flows.rollout_claim(pending.id),
            expected_fingerprint=fingerprint_of("production", "upgrade", "r02"),
            submit=False,
        )
    approved = approve(pending, "bob")
    with pytest.raises(JobRefused, match="approved for a different plan"):
        jobs.request_job(
            environment_name="production",
            operation="upgrade",
            target="r01",
            actor=user("olga"),
            claim=flows.rollout_claim(approved.id),
            expected_fingerprint=fingerprint_of("production", "upgrade", "r01"),
            submit=False,
        )
    with pytest.raises(JobRefused, match="never a stamp"):
        jobs.request_job(
            environment_name="production",
            operation="stamp",
            target="r02",
            actor=user("olga"),
            claim=flows.rollout_claim(approved.id),
            submit=False,
        )
    assert job_count() == 0
    assert rollouts.get_rollout(rollout_id=approved.id).state == "approved"


# --- execution ------------------------------------------------------------------------------


@pytest.mark.stores
def test_an_approved_rollout_runs_as_a_linked_job_and_the_audit_chain_verifies(site, tmp_path):
    rollout = approve(request(), "ann", "bob")

    job = run_rollout(rollout)

    assert job.state == "succeeded" and job.rollout_id == rollout.id
    finished = rollouts.get_rollout(rollout_id=rollout.id)
    assert finished.state == "executed" and finished.job_id == job.id
    assert finished.executed_at is not None and finished.finished_at is not None
    assert versions(f"sqlite:///{tmp_path / 'site' / 'production.db'}") == ["r02"]
    chain = [a for a in actions() if a.startswith(("rollout.", "job."))]
    assert chain == [
        "rollout.requested",
        "rollout.approved",
        "rollout.approved",
        "job.requested",
        "rollout.executed",
        "job.started",
        "job.succeeded",
        "rollout.succeeded",
    ]
    (executed,) = events("rollout.executed")
    assert executed.details["job"] == job.id and executed.details["fingerprint"] == job.fingerprint
    assert audit.verify().ok
    with pytest.raises(RolloutRefused, match="is executed"):
        flows.execute_rollout(rollout_id=rollout.id, actor=user("olga"), submit=False)


def test_a_rollout_cannot_be_executed_twice_while_its_job_is_queued(site):
    rollout = approve(request(), "ann", "bob")
    job = flows.execute_rollout(rollout_id=rollout.id, actor=user("olga"), submit=False)

    with pytest.raises(RolloutRefused, match=f"already executing as job #{job.id}"):
        flows.execute_rollout(rollout_id=rollout.id, actor=user("otto"), submit=False)
    assert job_count() == 1


def test_a_viewer_cannot_execute_an_approved_rollout(site):
    rollout = approve(request(), "ann", "bob")
    with pytest.raises(RolloutForbidden, match="operator role"):
        flows.execute_rollout(rollout_id=rollout.id, actor=user("vic"), submit=False)
    assert job_count() == 0


def test_a_failing_migration_fails_the_rollout_with_its_job_linked(tmp_path, script_tree):
    script_tree.linear(1)
    script_tree.add("r01", "r00", "broken", upgrade="raise RuntimeError('boom in production')")
    app = make_site(
        tmp_path / "site",
        script_tree,
        {"production": "sqlite:///production.db"},
        {"production": PRODUCTION},
    )
    with app.app_context():
        rollout = approve(request(), "ann", "bob")

        job = run_rollout(rollout)

        failed = rollouts.get_rollout(rollout_id=rollout.id)
        assert job.state == "failed"
        assert (failed.state, failed.job_id) == ("failed", job.id)
        assert "boom in production" in failed.state_reason
        (event,) = events("rollout.failed")
        assert event.details["job"] == job.id and event.details["outcome"] == "failed"
        with pytest.raises(RolloutRefused, match="is failed"):
            flows.execute_rollout(rollout_id=rollout.id, actor=user("olga"), submit=False)


def test_cancelling_a_rollouts_queued_job_fails_the_rollout(site):
    rollout = approve(request(), "ann", "bob")
    job = flows.execute_rollout(rollout_id=rollout.id, actor=user("olga"), submit=False)

    jobs.cancel_job(job_id=job.id, actor=user("olga"))

    failed = rollouts.get_rollout(rollout_id=rollout.id)
    assert failed.state == "failed" and f"job #{job.id} cancelled" in failed.state_reason
    assert events("rollout.failed")[0].details["outcome"] == "cancelled"


# --- staleness, on every backend ------------------------------------------------------------


@pytest.fixture
def production(tmp_path, script_tree, databases):
    """production (protected, 2 approvals) on a real database of the backend, at base."""
    script_tree.linear(3)
    url = databases.create()
    app = make_site(tmp_path / "site", script_tree, {"production": url}, {"production": PRODUCTION})
    with app.app_context():
        yield url
        db.engine.dispose()


def test_editing_a_script_in_the_plan_makes_the_rollout_stale(production, script_tree):
    rollout = approve(request(), "ann", "bob")
    script_tree.add_table("r01", "r00", "t1_renamed")

    with pytest.raises(RolloutStale, match="is stale and did not run"):
        flows.execute_rollout(rollout_id=rollout.id, actor=user("olga"), submit=False)

    stale = rollouts.get_rollout(rollout_id=rollout.id)
    assert stale.state == "stale" and "r01" in stale.state_reason
    (event,) = events("rollout.stale")
    assert event.details["reason"] == stale.state_reason
    assert event.details["fingerprint"] == rollout.fingerprint
    assert job_count() == 0 and versions(production) == []


def test_moving_the_environment_by_hand_makes_the_rollout_stale(production):
    rollout = approve(request(), "ann", "bob")
    execute(
        production,
        "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)",
        "INSERT INTO alembic_version (version_num) VALUES ('r00')",
    )

    with pytest.raises(RolloutStale, match="production moved: it was at base .* at r00 now"):
        flows.execute_rollout(rollout_id=rollout.id, actor=user("olga"), submit=False)

    assert rollouts.get_rollout(rollout_id=rollout.id).state == "stale"
    assert len(events("rollout.stale")) == 1
    assert job_count() == 0 and versions(production) == ["r00"]


def test_an_unrelated_later_revision_does_not_make_the_rollout_stale(production, script_tree):
    rollout = approve(request(target="head"), "ann", "bob")
    script_tree.add_table("r03", "r02", "t3")  # "head" now means r03; the rollout froze r02

    job = run_rollout(rollout)

    assert job.state == "succeeded", job.error
    assert rollouts.get_rollout(rollout_id=rollout.id).state == "executed"
    assert versions(production) == ["r02"]
    assert job.alembic_target == "r02" and job.fingerprint == rollout.fingerprint


# --- the command line -----------------------------------------------------------------------


def test_the_rollouts_command_lists_them_as_json(site):
    from dashboard.rollouts.cli import init_app

    init_app(site)
    first = approve(request(), "ann")
    second = request(actor="otto")
    rollouts.cancel_rollout(rollout_id=second.id, actor=user("otto"))
    runner = site.test_cli_runner()

    listed = json.loads(runner.invoke(args=["dashboard", "rollouts", "--json"]).output)
    pending = runner.invoke(args=["dashboard", "rollouts", "--state", "pending"])

    assert [(item["id"], item["state"]) for item in listed] == [
        (second.id, "cancelled"),
        (first.id, "pending"),
    ]
    assert listed[1]["approvals"] == ["ann"] and listed[1]["target_revision"] == "r02"
    assert pending.exit_code == 0 and f"#{first.id} " in pending.output
    assert f"#{second.id} " not in pending.output


# --- the store migration --------------------------------------------------------------------


def test_the_store_migrations_match_the_models_and_step_down_and_up(audit_app):
    import flask_migrate
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    directory = audit_app.extensions["migrate"].directory
    with audit_app.app_context():
        with db.engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, db.metadata) == []
        flask_migrate.downgrade(directory=directory, revision="16bab61f6bdc")
        assert "rollout" not in sa.inspect(db.engine).get_table_names()
        flask_migrate.upgrade(directory=directory)
        assert {"rollout", "rollout_vote"} <= set(sa.inspect(db.engine).get_table_names())
