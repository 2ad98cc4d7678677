"""Rollouts: request, vote on, cancel, expire and execute changes to protected environments.

Every rule lives here and holds whatever the caller is (a page, a forged POST, the CLI):
only protected environments take rollouts; requester ≠ approver, whatever the role; one vote
per person; N distinct approvals; any rejection ends it; the promotion gate (the one rule an
admin may override, with a written justification); expiry; and plan binding — a rollout runs
only the plan it was approved for, claimed again with the job itself (see flows.py).

Mutations lock the rollout's row (SELECT … FOR UPDATE; SQLite serialises every writer with
BEGIN IMMEDIATE) so two approvers voting at once both count, and a rollout runs once.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from flask import current_app

from dashboard.audit import service as audit
from dashboard.clock import as_aware, utcnow
from dashboard.environments import environment_named, get_project
from dashboard.environments.loader import Environment
from dashboard.errors import (
    ApprovalRequired,
    EnvironmentUnreachable,
    JobRefused,
    PlanError,
    RolloutForbidden,
    RolloutRefused,
    RolloutStale,
)
from dashboard.extensions import db
from dashboard.jobs.models import Job, JobState
from dashboard.limits import check_length
from dashboard.plans.blocking import check_block_on
from dashboard.plans.service import Plan, build_plan
from dashboard.rollouts.models import Rollout, RolloutState, RolloutVote, VoteDecision
from dashboard.target import adapter as alembic_adapter
from dashboard.users.models import Role, User

OPEN_STATES = (RolloutState.PENDING.value, RolloutState.APPROVED.value)
MAX_TICKET_URL = 500


def _timeout() -> float:
    return current_app.config["STATUS_CONNECT_TIMEOUT"]


def _lifetime() -> timedelta | None:
    # Checked at start-up (create_app): a number of hours, 0 = never.
    hours = current_app.config["ROLLOUT_LIFETIME_HOURS"]
    return timedelta(hours=hours) if hours else None


def _signed_in(actor: User | None, doing: str) -> User:
    if actor is None or not getattr(actor, "is_authenticated", False) or not actor.is_active:
        raise RolloutForbidden(f"Sign in as an active user to {doing}.")
    return actor


def _details(rollout: Rollout, **extra: Any) -> dict[str, Any]:
    return {
        "rollout": rollout.id,
        "direction": rollout.direction,
        "from": list(rollout.from_revisions or []),
        "to": rollout.target_revision,
        "target": rollout.requested_target,
        "fingerprint": rollout.fingerprint,
        **extra,
    }


def _frozen_plan(plan: Plan) -> dict[str, Any]:
    return {
        "environment": plan.environment,
        "direction": plan.direction,
        "requested_target": plan.requested_target,
        "alembic_target": plan.alembic_target,
        "from_revisions": list(plan.from_revisions),
        "revision_ids": plan.revision_ids,
        "steps": [
            {
                "revision": step.revision_id,
                "message": step.message,
                "down_revisions": list(step.down_revisions),
                "sql": step.sql,
                "unrenderable_reason": step.unrenderable_reason,
            }
            for step in plan.steps
        ],
        "warnings": list(plan.warnings),
        "transactions": plan.transactions,
        # Frozen as words: the page says what the approvers were shown, whatever changes later.
        "transactions_sentence": plan.transactions_sentence,
        "fingerprint": plan.fingerprint,
    }


def _check_ticket_url(ticket_url: str | None) -> str | None:
    ticket_url = (ticket_url or "").strip()
    if not ticket_url:
        return None
    parts = urlsplit(ticket_url)
    if (
        parts.scheme.lower() not in ("http", "https")
        or not parts.netloc
        or len(ticket_url) > MAX_TICKET_URL
        or any(character.isspace() for character in ticket_url)
    ):
        raise RolloutRefused(
            f"The ticket link must be an http:// or https:// address of at most "
            f"{MAX_TICKET_URL} characters."
        )
    return ticket_url


# --- reading --------------------------------------------------------------------------------


def get_rollout(*, rollout_id: int) -> Rollout | None:
    """Return the rollout with this id, or None (`current_state` says if it is overdue)."""
    return db.session.get(Rollout, rollout_id)


def _overdue() -> sa.ColumnElement[bool]:
    """Open rollouts past their expiry: expired, even before the background pass stores it."""
    return sa.and_(
        Rollout.state.in_(OPEN_STATES),
        Rollout.expires_at.is_not(None),
        Rollout.expires_at <= utcnow(),
    )


def _in_current_state(state: str) -> sa.ColumnElement[bool]:
    """Rollouts whose `current_state` is `state`."""
    if state == RolloutState.EXPIRED:
        return sa.or_(Rollout.state == state, _overdue())
    if state in OPEN_STATES:
        return sa.and_(Rollout.state == state, sa.not_(_overdue()))
    return Rollout.state == state


def list_rollouts(
    *, state: str | None = None, environment: str | None = None, limit: int = 100
) -> list[Rollout]:
    """Return rollouts, newest first, optionally only one (current) state or environment."""
    query = sa.select(Rollout).order_by(Rollout.id.desc()).limit(limit)
    if state:
        query = query.where(_in_current_state(state))
    if environment:
        query = query.where(Rollout.environment == environment)
    return list(db.session.scalars(query))


def pending_counts() -> dict[str, int]:
    """Return how many rollouts await approval, per environment (one query)."""
    rows = db.session.execute(
        sa.select(Rollout.environment, sa.func.count())
        .where(_in_current_state(RolloutState.PENDING.value))
        .group_by(Rollout.environment)
    )
    return {environment_name: count for environment_name, count in rows}


def pending_count(*, environment: str | None = None) -> int:
    """Return how many rollouts await approval, in one environment or in all."""
    counts = pending_counts()
    return counts.get(environment, 0) if environment else sum(counts.values())


def approvals_required(*, rollout: Rollout) -> int:
    """Return the approvals a rollout needs: as requested, or more if the file now asks more."""
    environment = get_project().get(rollout.environment)
    return max(rollout.approvals_required, environment.approvals if environment else 0, 1)


def approval_count(*, rollout: Rollout) -> int:
    """Return how many distinct people other than the requester approved the rollout."""
    return len(_approvers(rollout))


def _approvers(rollout: Rollout) -> set[int]:
    # The requester never counts, even if a vote of theirs got in by some other path.
    return {
        vote.user_id
        for vote in rollout.votes
        if vote.decision == VoteDecision.APPROVE and vote.user_id != rollout.requested_by_id
    }


# --- expiry ---------------------------------------------------------------------------------


def expire_due_rollouts() -> list[Rollout]:
    """Store overdue rollouts as expired, each audited once and committed on its own.

    Called by the background pass (dashboard.housekeeping), never by a page: pages show an
    overdue rollout as expired without writing.
    """
    overdue = list(db.session.scalars(sa.select(Rollout.id).where(_overdue()).order_by(Rollout.id)))
    expired = []
    for rollout_id in overdue:
        # Lock and look again: another process may have expired, cancelled or run it meanwhile.
        rollout = db.session.get(Rollout, rollout_id, with_for_update=True, populate_existing=True)
        if rollout is None or not rollout.is_overdue:
            db.session.rollback()
            continue
        _mark_expired(rollout)
        db.session.commit()
        expired.append(rollout)
    return expired


def _mark_expired(rollout: Rollout) -> None:
    rollout.state_reason = rollout.expiry_reason
    rollout.state = RolloutState.EXPIRED.value
    rollout.finished_at = utcnow()
    audit.record(
        action="rollout.expired",
        actor=None,
        actor_name="system",
        environment=rollout.environment,
        details=_details(rollout, expires_at=as_aware(rollout.expires_at).isoformat()),
    )


def _refuse_if_expired(rollout: Rollout) -> None:
    """Store an overdue rollout as expired now (committed and audited), then refuse the act."""
    if rollout.is_overdue:
        _mark_expired(rollout)
        db.session.commit()
        raise RolloutRefused(f"Rollout #{rollout.id} has expired: request it again.")


def _locked(rollout_id: int) -> Rollout:
    rollout = db.session.get(Rollout, rollout_id, with_for_update=True, populate_existing=True)
    if rollout is None:
        db.session.rollback()
        raise RolloutRefused(f"There is no rollout #{rollout_id}.")
    return rollout


def _refuse(error: RolloutRefused) -> RolloutRefused:
    # End the transaction first: on SQLite it holds the store's write lock.
    db.session.rollback()
    return error


# --- the promotion gate ---------------------------------------------------------------------


def promotion_gate(*, environment: Environment, target_revisions: Iterable[str]) -> str | None:
    """Return why promotion order forbids these targets here, or None when it allows them."""
    targets = [revision for revision in target_revisions if revision != "base"]
    if not environment.after or not targets:
        return None
    project = get_project()
    wanted = ", ".join(targets)
    previous = project.get(environment.after)
    if previous is None:
        return (
            f"Promotion gate: {environment.name} comes after “{environment.after}”, which is "
            "not an environment, so nothing shows that the target was applied first."
        )
    if previous.url is None:
        return (
            f"Promotion gate: {environment.name} comes after {previous.name}, which is not "
            f"configured ({previous.not_configured_reason}), so it cannot show that {wanted} "
            "was applied there first."
        )
    try:
        current = alembic_adapter.read_current_revisions(
            project.database(previous), timeout=_timeout()
        )
    except EnvironmentUnreachable as error:
        return (
            f"Promotion gate: {environment.name} comes after {previous.name}, which cannot be "
            f"read ({error}), so it cannot show that {wanted} was applied there first."
        )
    graph = alembic_adapter.load_graph(
        project.script_location, previous.python_path, previous.alembic_ini
    )
    applied = graph.ancestors(current)
    missing = [revision for revision in targets if revision not in applied]
    if missing:
        at = ", ".join(current) or "base"
        return (
            f"Promotion gate: {environment.name} comes after {previous.name}, which is at {at} "
            f"and does not have {', '.join(missing)} yet: apply it on {previous.name} first."
        )
    return None


# --- requesting -----------------------------------------------------------------------------


def request_rollout(
    *,
    environment_name: str,
    target: str,
    reason: str,
    actor: User | None,
    ticket_url: str | None = None,
    direction: str = "upgrade",
    override_justification: str | None = None,
) -> Rollout:
    """Plan the change, check the rules (gate included), freeze the plan and audit the request.

    A blank `override_justification` means "no override". A non-blank one from a non-admin is
    refused (RolloutForbidden); from an admin it is used only if the gate actually refuses.
    """
    actor = _signed_in(actor, "request a rollout")
    for field, value in (
        ("target", target),
        ("reason", reason),
        ("ticket_url", ticket_url),
        ("override_justification", override_justification),
    ):
        check_length(field, value)  # before anything is planned, stored or audited
    environment = environment_named(environment_name)
    _check_requestable(environment=environment, direction=direction, actor=actor)
    reason = (reason or "").strip()
    if not reason:
        raise RolloutRefused("Say why: a rollout needs a reason.")
    ticket_url = _check_ticket_url(ticket_url)
    justification = (override_justification or "").strip() or None
    if justification and not actor.has_role(Role.ADMIN):
        raise RolloutForbidden("Only an admin may override a promotion gate.")

    # Plan before touching the store: on SQLite every store transaction holds its write lock.
    plan = build_plan(
        project=get_project(),
        environment=environment,
        direction=direction,
        target=target,
        timeout=_timeout(),
    )
    if plan.is_empty:
        raise RolloutRefused(f"Nothing to do: {environment.name} is already at {target}.")
    check_block_on(
        environment=environment,
        plan=plan,
        actor=actor,
        justification=justification,
        refusal=RolloutRefused,
    )
    gate = _gate_refusal(environment=environment, plan=plan)
    if gate and not justification:
        raise RolloutRefused(
            f"{gate} (An admin may override the promotion gate with a written justification.)"
        )

    rollout = _new_rollout(
        environment=environment,
        plan=plan,
        reason=reason,
        ticket_url=ticket_url,
        actor=actor,
        gate=gate,
        justification=justification,
    )
    db.session.add(rollout)
    db.session.flush()
    _audit_request(rollout=rollout, plan=plan, actor=actor)
    db.session.commit()
    return rollout


def _check_requestable(*, environment: Environment, direction: str, actor: User) -> None:
    """Refuse a request the actor's role, the environment or the direction does not allow."""
    if not actor.has_role(Role.OPERATOR):
        raise RolloutForbidden("Requesting a rollout needs the operator role or higher.")
    if not environment.protected:
        raise RolloutRefused(
            f"{environment.name} is not protected: it takes no rollouts, run it directly."
        )
    if direction not in ("upgrade", "downgrade"):
        raise RolloutRefused(f"“{direction}” is not a direction; use upgrade or downgrade.")
    if direction == "downgrade" and not environment.allow_downgrade:
        raise RolloutRefused(
            f"{environment.name} does not allow downgrades (allow_downgrade: false)."
        )


def _gate_refusal(*, environment: Environment, plan: Plan) -> str | None:
    """Return why the promotion gate refuses an upgrade plan, or None (always for downgrades)."""
    if plan.direction != "upgrade":
        return None
    # The revisions the plan ends at ("heads" may be several), not the word typed.
    reached = [
        step.revision_id
        for step in plan.steps
        if not any(step.revision_id in later.down_revisions for later in plan.steps)
    ]
    return promotion_gate(environment=environment, target_revisions=reached)


def _new_rollout(
    *,
    environment: Environment,
    plan: Plan,
    reason: str,
    ticket_url: str | None,
    actor: User,
    gate: str | None,
    justification: str | None,
) -> Rollout:
    """Return a pending rollout that freezes `plan`, with the gate override if one was needed."""
    lifetime = _lifetime()
    now = utcnow()
    return Rollout(
        environment=environment.name,
        direction=plan.direction,
        requested_target=plan.requested_target,
        # "head" (or "+1") frozen as the revision it means now, so later scripts change nothing.
        target_revision=plan.alembic_target,
        from_revisions=list(plan.from_revisions),
        revision_ids=plan.revision_ids,
        plan=_frozen_plan(plan),
        fingerprint=plan.fingerprint,
        approvals_required=max(environment.approvals, 1),
        reason=reason,
        ticket_url=ticket_url,
        state=RolloutState.PENDING.value,
        requested_by_id=actor.id,
        requested_by=actor.username,
        override_justification=justification if gate else None,
        override_by=actor.username if gate else None,
        gate_refusal=gate,
        created_at=now,
        expires_at=now + lifetime if lifetime else None,
    )


def _audit_request(*, rollout: Rollout, plan: Plan, actor: User) -> None:
    """Audit the request and, when the actor overrode the promotion gate, the override."""
    audit.record(
        action="rollout.requested",
        actor=actor,
        environment=rollout.environment,
        details=_details(
            rollout,
            revisions=rollout.revision_ids,
            reason=rollout.reason,
            ticket_url=rollout.ticket_url,
            approvals_required=rollout.approvals_required,
            warnings=list(plan.warnings),
        ),
    )
    if rollout.gate_refusal:
        audit.record(
            action="rollout.override",
            actor=actor,
            environment=rollout.environment,
            details=_details(
                rollout,
                rule="promotion gate",
                gate=rollout.gate_refusal,
                justification=rollout.override_justification,
            ),
        )


# --- deciding -------------------------------------------------------------------------------


def approve_rollout(*, rollout_id: int, actor: User | None, comment: str | None = None) -> Rollout:
    """Approve a rollout; it becomes approved once enough distinct approvers agree.

    A second vote by the same person is ignored: nothing is stored or audited and the rollout
    is returned unchanged (use `Rollout.vote_by(user_id)` to tell the person).
    """
    return _vote(rollout_id=rollout_id, actor=actor, decision=VoteDecision.APPROVE, comment=comment)


def reject_rollout(*, rollout_id: int, actor: User | None, comment: str | None = None) -> Rollout:
    """Reject a rollout: one rejection ends it. A second vote by the same person is ignored."""
    return _vote(rollout_id=rollout_id, actor=actor, decision=VoteDecision.REJECT, comment=comment)


def _vote(
    *, rollout_id: int, actor: User | None, decision: VoteDecision, comment: str | None
) -> Rollout:
    verb = "approve" if decision == VoteDecision.APPROVE else "reject"
    check_length("comment", comment)
    actor = _signed_in(actor, f"{verb} a rollout")
    if not actor.has_role(Role.APPROVER):
        raise RolloutForbidden(f"Only an approver or an admin may {verb} a rollout.")
    rollout = _locked(rollout_id)
    if rollout.requested_by_id == actor.id:
        if decision == VoteDecision.APPROVE:
            raise _refuse(
                RolloutForbidden(
                    f"You requested rollout #{rollout.id}: someone else must approve it, "
                    "whatever your role."
                )
            )
        raise _refuse(RolloutRefused(f"You requested rollout #{rollout.id}: cancel it instead."))
    _refuse_if_expired(rollout)
    if rollout.vote_by(actor.id) is not None:
        db.session.rollback()
        return rollout  # one vote per person: a second one is ignored
    if rollout.state not in OPEN_STATES:
        raise _refuse(
            RolloutRefused(
                f"Rollout #{rollout.id} is {rollout.state}: it can no longer be voted on."
            )
        )
    comment = (comment or "").strip() or None
    vote = RolloutVote(
        rollout=rollout,
        user_id=actor.id,
        username=actor.username,
        decision=decision.value,
        comment=comment,
        at=utcnow(),
    )
    db.session.add(vote)
    try:
        db.session.flush()
    except sa.exc.IntegrityError:
        # The same person voting twice at once: the unique key keeps one; this one is ignored.
        db.session.rollback()
        return db.session.get(Rollout, rollout_id)
    if decision == VoteDecision.REJECT:
        rollout.state = RolloutState.REJECTED.value
        rollout.decided_at = rollout.finished_at = utcnow()
        rollout.state_reason = f"rejected by {actor.username}" + (f": {comment}" if comment else "")
        action = "rollout.rejected"
        extra: dict[str, Any] = {}
    else:
        count, required = approval_count(rollout=rollout), approvals_required(rollout=rollout)
        if count >= required and rollout.state == RolloutState.PENDING:
            rollout.state = RolloutState.APPROVED.value
            rollout.decided_at = utcnow()
        action = "rollout.approved"
        # What the approver was shown of the rehearsal when approving.
        extra = {
            "approvals": count,
            "approvals_required": required,
            "rehearsal": rollout.rehearsal_outcome,
        }
    audit.record(
        action=action,
        actor=actor,
        environment=rollout.environment,
        details=_details(rollout, comment=comment, state=rollout.state, **extra),
    )
    db.session.commit()
    return rollout


def cancel_rollout(*, rollout_id: int, actor: User | None, comment: str | None = None) -> Rollout:
    """Cancel a pending or approved rollout: its requester or an admin may."""
    check_length("comment", comment)
    actor = _signed_in(actor, "cancel a rollout")
    rollout = _locked(rollout_id)
    if rollout.requested_by_id != actor.id and not actor.has_role(Role.ADMIN):
        raise _refuse(RolloutForbidden("Only the requester or an admin may cancel a rollout."))
    _refuse_if_expired(rollout)
    if rollout.state not in OPEN_STATES:
        raise _refuse(
            RolloutRefused(
                f"Rollout #{rollout.id} is {rollout.state}: it can no longer be cancelled."
            )
        )
    comment = (comment or "").strip() or None
    rollout.state = RolloutState.CANCELLED.value
    rollout.decided_at = rollout.finished_at = utcnow()
    rollout.state_reason = f"cancelled by {actor.username}" + (f": {comment}" if comment else "")
    audit.record(
        action="rollout.cancelled",
        actor=actor,
        environment=rollout.environment,
        details=_details(rollout, comment=comment),
    )
    db.session.commit()
    return rollout


# --- executing ------------------------------------------------------------------------------


def prepare_execution(*, rollout_id: int, actor: User | None) -> dict[str, Any]:
    """Check an approved rollout and re-plan it; return its frozen plan, or mark it stale.

    dashboard.rollouts.flows.execute_rollout then runs the frozen plan as a job.
    """
    actor = _signed_in(actor, "execute a rollout")
    if not actor.has_role(Role.OPERATOR):
        raise RolloutForbidden("Executing a rollout needs the operator role or higher.")
    rollout = _locked(rollout_id)
    _refuse_if_expired(rollout)
    _check_executable(rollout)
    frozen = {
        "environment_name": rollout.environment,
        "direction": rollout.direction,
        "target": rollout.target_revision,
        "from": list(rollout.from_revisions or []),
        "revisions": list(rollout.revision_ids or []),
        "fingerprint": rollout.fingerprint,
        "plan": dict(rollout.plan or {}),
    }
    # Let go of the store while planning against the target (SQLite: the write lock).
    db.session.commit()

    environment = environment_named(frozen["environment_name"])
    try:
        plan = build_plan(
            project=get_project(),
            environment=environment,
            direction=frozen["direction"],
            target=frozen["target"],
            timeout=_timeout(),
        )
    except PlanError as error:
        stale = f"the approved plan can no longer be made: {error}"
    else:
        stale = _stale_reason(frozen, plan)
    if stale:
        _mark_stale(rollout_id, stale, actor)
        raise RolloutStale(
            f"Rollout #{rollout_id} is stale and did not run: {stale}. Request it again."
        )
    return frozen


def _check_executable(rollout: Rollout) -> None:
    if rollout.state == RolloutState.PENDING:
        count, required = approval_count(rollout=rollout), approvals_required(rollout=rollout)
        raise _refuse(
            ApprovalRequired(
                f"Rollout #{rollout.id} has {count} of {required} approvals: it runs only once "
                f"{required} approvers other than the requester approve it."
            )
        )
    if rollout.state == RolloutState.EXECUTING:
        raise _refuse(
            RolloutRefused(f"Rollout #{rollout.id} is already executing as job #{rollout.job_id}.")
        )
    if rollout.state != RolloutState.APPROVED:
        reason = f" ({rollout.state_reason})" if rollout.state_reason else ""
        raise _refuse(
            RolloutRefused(f"Rollout #{rollout.id} is {rollout.state}{reason}: it cannot run.")
        )
    count, required = approval_count(rollout=rollout), approvals_required(rollout=rollout)
    if count < required:
        # environments.yaml may have raised `approvals` since the rollout was approved.
        raise _refuse(
            ApprovalRequired(
                f"Rollout #{rollout.id} has {count} of {required} approvals: it needs more "
                "before it can run."
            )
        )


def _stale_reason(frozen: dict[str, Any], plan: Plan) -> str | None:
    if plan.fingerprint == frozen["fingerprint"]:
        return None
    was = ", ".join(frozen["from"]) or "base"
    now = ", ".join(plan.from_revisions) or "base"
    if sorted(plan.from_revisions) != sorted(frozen["from"]):
        return f"{plan.environment} moved: it was at {was} when requested and is at {now} now"
    if plan.revision_ids != frozen["revisions"]:
        return (
            f"the revisions to run changed from {', '.join(frozen['revisions'])} "
            f"to {', '.join(plan.revision_ids) or 'none'}"
        )
    old_sql = {step["revision"]: step.get("sql") for step in frozen["plan"].get("steps", [])}
    changed = [step.revision_id for step in plan.steps if old_sql.get(step.revision_id) != step.sql]
    if changed:
        return f"the SQL of {', '.join(changed)} changed since the request"
    return "a script in the plan or env.py changed since the request"


def _mark_stale(rollout_id: int, reason: str, actor: User) -> None:
    rollout = _locked(rollout_id)
    if rollout.state != RolloutState.APPROVED:
        db.session.rollback()
        return
    rollout.state = RolloutState.STALE.value
    rollout.finished_at = utcnow()
    rollout.state_reason = reason
    audit.record(
        action="rollout.stale",
        actor=actor,
        environment=rollout.environment,
        details=_details(rollout, reason=reason),
    )
    db.session.commit()


# --- rehearsal evidence (written by dashboard.rollouts.flows, in the background) ----------


def check_rehearsable(*, rollout_id: int, actor: User | None) -> Rollout:
    """Return the rollout if `actor` may rehearse it again now: an operator, an open rollout."""
    actor = _signed_in(actor, "rehearse a rollout")
    if not actor.has_role(Role.OPERATOR):
        raise RolloutForbidden("Rehearsing a rollout needs the operator role or higher.")
    rollout = get_rollout(rollout_id=rollout_id)
    if rollout is None:
        raise RolloutRefused(f"There is no rollout #{rollout_id}.")
    if rollout.current_state not in OPEN_STATES:
        raise RolloutRefused(
            f"Rollout #{rollout.id} is {rollout.current_state}: only a pending or approved "
            "rollout is rehearsed."
        )
    return rollout


def attach_rehearsal(*, rollout_id: int, task_id: int) -> Rollout:
    """Make this task the rollout's rehearsal; an outcome another task stored is set aside."""
    rollout = _locked(rollout_id)
    rollout.rehearsal_task_id = task_id
    if (rollout.rehearsal or {}).get("task") != task_id:
        rollout.rehearsal = None
    db.session.commit()
    return rollout


def record_rehearsal(
    *, rollout_id: int, task_id: int | None, outcome: dict[str, Any], actor_name: str
) -> Rollout | None:
    """Store and audit the outcome of a rollout's rehearsal (a Rehearsal.as_dict()).

    The outcome of a task that is no longer the rollout's rehearsal (it was rehearsed again
    meanwhile) is dropped: None.
    """
    rollout = _locked(rollout_id)
    if task_id is not None and rollout.rehearsal_task_id not in (None, task_id):
        db.session.rollback()
        return None
    rollout.rehearsal = {**outcome, "task": task_id, "rehearsed_at": utcnow().isoformat()}
    rollout.rehearsal_task_id = task_id
    steps = outcome.get("steps") or []
    status = outcome.get("status")
    audit.record(
        action="rollout.rehearsed",
        actor=None,
        actor_name=actor_name,
        environment=rollout.environment,
        details=_details(
            rollout,
            task=task_id,
            outcome="not rehearsed" if status == "unavailable" else status,
            reason=outcome.get("unavailable") or outcome.get("error"),
            steps_run=sum(1 for step in steps if step.get("ran", True)),
            statements=sum(len(step.get("statements") or ()) for step in steps),
            warnings=list(outcome.get("warnings") or ()),
        ),
    )
    db.session.commit()
    return rollout


# --- the link with jobs (used by dashboard.rollouts.flows) ---------------------------------


def claim_for_job(
    *,
    rollout_id: int,
    environment_name: str,
    operation: str,
    target: str,
    fingerprint: str | None,
) -> Rollout:
    """Lock the approved rollout a job is about to run, or raise JobRefused; caller commits."""
    rollout = db.session.get(Rollout, rollout_id, with_for_update=True, populate_existing=True)
    problem = None
    if rollout is None:
        problem = f"there is no rollout #{rollout_id}"
    elif rollout.environment != environment_name or rollout.direction != operation:
        problem = f"rollout #{rollout.id} is for a {rollout.direction} of {rollout.environment}"
    elif rollout.state != RolloutState.APPROVED:
        problem = f"rollout #{rollout.id} is {rollout.state}, not approved"
    elif rollout.is_overdue:
        problem = f"rollout #{rollout.id} has expired"
    elif approval_count(rollout=rollout) < approvals_required(rollout=rollout):
        problem = f"rollout #{rollout.id} does not have its approvals"
    elif target != rollout.target_revision or fingerprint != rollout.fingerprint:
        problem = f"rollout #{rollout.id} was approved for a different plan"
    if problem:
        db.session.rollback()
        raise JobRefused(f"{environment_name} is protected and {problem}: this job cannot run.")
    return rollout


def start_execution(*, rollout: Rollout, job: Job, actor: User | None) -> None:
    """Link a just-queued job to its rollout, mark it executing and audit it; caller commits."""
    job.rollout_id = rollout.id
    job.reason = f"rollout #{rollout.id}: {rollout.reason}"
    rollout.state = RolloutState.EXECUTING.value
    rollout.job_id = job.id
    rollout.executed_at = utcnow()
    audit.record(
        action="rollout.executed",
        actor=actor,
        actor_name=job.requested_by,
        environment=rollout.environment,
        details=_details(rollout, job=job.id, outcome="started"),
    )


def job_finished(*, job: Job) -> Rollout | None:
    """Mark the rollout a finished job ran as executed or failed, audited; caller commits."""
    if job.rollout_id is None:
        return None
    rollout = db.session.get(Rollout, job.rollout_id, with_for_update=True, populate_existing=True)
    if rollout is None or rollout.state != RolloutState.EXECUTING:
        return rollout
    rollout.finished_at = utcnow()
    if job.state == JobState.SUCCEEDED:
        rollout.state = RolloutState.EXECUTED.value
        rollout.state_reason = None
        action = "rollout.succeeded"
    elif job.state == JobState.STALE:
        rollout.state = RolloutState.STALE.value
        rollout.state_reason = f"job #{job.id} found {job.error}; request a new rollout"
        action = "rollout.stale"
    else:
        rollout.state = RolloutState.FAILED.value
        error = f": {job.error}" if job.error else ""
        rollout.state_reason = f"job #{job.id} {job.state}{error}; request a new rollout"
        action = "rollout.failed"
    audit.record(
        action=action,
        actor=None,
        actor_name=job.requested_by,
        environment=rollout.environment,
        details=_details(
            rollout,
            job=job.id,
            outcome=job.state,
            after=job.to_revisions,
            error=job.error,
            on_behalf_of=job.requested_by,
        ),
    )
    return rollout
