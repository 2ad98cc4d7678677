"""What a person may do with a rollout right now (for the buttons), and its timeline.

The buttons are a courtesy: service.py enforces every rule again on the POST.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from dashboard.audit.models import AuditEvent
from dashboard.audit.service import as_utc
from dashboard.extensions import db
from dashboard.rollouts.models import Rollout, RolloutState
from dashboard.rollouts.service import OPEN_STATES, approval_count, approvals_required
from dashboard.users.models import Role, User


@dataclass(frozen=True)
class AllowedActions:
    """Which rollout buttons to show a person, and why the vote buttons are missing."""

    approve: bool = False
    reject: bool = False
    cancel: bool = False
    execute: bool = False
    why_not: str | None = None


def allowed_actions(*, rollout: Rollout, actor: User) -> AllowedActions:
    """Work out the actions `actor` may take on `rollout` as it stands."""
    is_open = rollout.current_state in OPEN_STATES
    is_requester = rollout.requested_by_id == actor.id
    voted = rollout.vote_by(actor.id) is not None
    may_vote = is_open and actor.has_role(Role.APPROVER) and not is_requester and not voted
    why_not = None
    if is_open and not may_vote:
        if is_requester:
            why_not = "You requested this rollout: someone else must approve it."
        elif voted:
            why_not = "You have voted on this rollout."
        elif not actor.has_role(Role.APPROVER):
            why_not = "Approving needs the approver role."
    enough = approval_count(rollout=rollout) >= approvals_required(rollout=rollout)
    runnable = rollout.current_state == RolloutState.APPROVED and enough
    return AllowedActions(
        approve=may_vote,
        reject=may_vote,
        cancel=is_open and (is_requester or actor.has_role(Role.ADMIN)),
        execute=runnable and actor.has_role(Role.OPERATOR),
        why_not=why_not,
    )


@dataclass(frozen=True)
class TimelineEntry:
    at: datetime
    action: str
    actor: str
    note: str | None


def timeline(*, rollout: Rollout) -> list[TimelineEntry]:
    """Return the audited events of a rollout and of its job, oldest first."""
    since = as_utc(rollout.created_at) - timedelta(seconds=5)
    events = db.session.scalars(
        sa.select(AuditEvent)
        .where(AuditEvent.environment == rollout.environment, AuditEvent.occurred_at >= since)
        .where(sa.or_(AuditEvent.action.like("rollout.%"), AuditEvent.action.like("job.%")))
        .order_by(AuditEvent.seq)
    )
    entries = []
    for event in events:
        details = event.details or {}
        mine = details.get("rollout") == rollout.id or (
            rollout.job_id is not None
            and details.get("job") == rollout.job_id
            and event.action.startswith("job.")
        )
        if mine:
            note = details.get("comment") or details.get("justification") or details.get("reason")
            entries.append(
                TimelineEntry(
                    at=as_utc(event.occurred_at),
                    action=event.action,
                    actor=event.actor_name or "system",
                    note=note if isinstance(note, str) else None,
                )
            )
    return entries
