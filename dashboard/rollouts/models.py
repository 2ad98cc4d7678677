"""Rollouts (a request to run one frozen plan on a protected environment) and their votes."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from dashboard.clock import as_aware, utcnow
from dashboard.extensions import db


class RolloutState(StrEnum):
    PENDING = "pending"  # awaiting approvals
    APPROVED = "approved"  # enough approvals; may be executed
    EXECUTING = "executing"  # its job is queued or running
    EXECUTED = "executed"
    REJECTED = "rejected"
    CANCELLED = "cancelled"
    STALE = "stale"  # the plan it binds to no longer matches the environment or the scripts
    EXPIRED = "expired"
    FAILED = "failed"  # its job failed, was interrupted or cancelled

    @property
    def open(self) -> bool:
        """True while the rollout can still be decided on or executed."""
        return self in (RolloutState.PENDING, RolloutState.APPROVED)

    @property
    def finished(self) -> bool:
        return self not in (RolloutState.PENDING, RolloutState.APPROVED, RolloutState.EXECUTING)


class VoteDecision(StrEnum):
    APPROVE = "approve"
    REJECT = "reject"


def _now() -> datetime:
    return datetime.now(UTC)


class Rollout(db.Model):
    __tablename__ = "rollout"

    id: Mapped[int] = mapped_column(primary_key=True)
    environment: Mapped[str] = mapped_column(sa.String(64), index=True)
    direction: Mapped[str] = mapped_column(sa.String(16))  # upgrade | downgrade
    requested_target: Mapped[str] = mapped_column(sa.String(255))  # as the requester typed it
    # The concrete revision id (or "base") the target resolved to when requested: "head" is
    # frozen here so that a later, unrelated revision does not change what runs.
    target_revision: Mapped[str] = mapped_column(sa.String(255))
    from_revisions: Mapped[list[str]] = mapped_column(sa.JSON, default=list)
    revision_ids: Mapped[list[str]] = mapped_column(sa.JSON, default=list)
    # A frozen copy of the plan as it was shown to the approvers (steps, SQL, warnings).
    plan: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    fingerprint: Mapped[str] = mapped_column(sa.String(64))
    approvals_required: Mapped[int] = mapped_column(sa.Integer)
    reason: Mapped[str] = mapped_column(sa.Text)
    ticket_url: Mapped[str | None] = mapped_column(sa.String(500), nullable=True)
    state: Mapped[str] = mapped_column(
        sa.String(16), default=RolloutState.PENDING.value, index=True
    )
    state_reason: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    requested_by_id: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    requested_by: Mapped[str] = mapped_column(sa.String(120))
    override_justification: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    override_by: Mapped[str | None] = mapped_column(sa.String(120), nullable=True)
    gate_refusal: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=_now)
    expires_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)
    decided_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)
    executed_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)
    # The job that executes it; no foreign key both ways, so either row can be written first.
    job_id: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    # The background task that rehearses the frozen plan on a scratch database (the newest, when
    # rehearsed again), and the outcome it stored: Rehearsal.as_dict() plus `task` and
    # `rehearsed_at`. Kept here, not only in the task, so every server shows the same evidence.
    rehearsal_task_id: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    rehearsal: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON, nullable=True)

    votes: Mapped[list[RolloutVote]] = relationship(
        back_populates="rollout", order_by="RolloutVote.id", lazy="selectin"
    )

    @property
    def is_overdue(self) -> bool:
        """True for an open rollout past its expiry, whether or not `expired` is stored yet."""
        return (
            RolloutState(self.state).open
            and self.expires_at is not None
            and as_aware(self.expires_at) <= utcnow()
        )

    @property
    def current_state(self) -> str:
        """The state to show and to act on: an overdue rollout is expired, stored or not."""
        return RolloutState.EXPIRED.value if self.is_overdue else self.state

    @property
    def expiry_reason(self) -> str | None:
        """Why an expired (or overdue) rollout ended, in words."""
        if self.expires_at is None:
            return None
        return (
            f"it expired at {as_aware(self.expires_at):%Y-%m-%d %H:%M} UTC before it was executed"
        )

    @property
    def current_reason(self) -> str | None:
        """The reason to show beside `current_state`."""
        return self.expiry_reason if self.is_overdue else self.state_reason

    @property
    def approvals(self) -> list[RolloutVote]:
        return [vote for vote in self.votes if vote.decision == VoteDecision.APPROVE]

    @property
    def rejections(self) -> list[RolloutVote]:
        return [vote for vote in self.votes if vote.decision == VoteDecision.REJECT]

    @property
    def rehearsal_outcome(self) -> str:
        """What its rehearsal says, as stored: succeeded, failed, not rehearsed, or pending
        (its task has stored no outcome yet)."""
        stored = self.rehearsal or {}
        if not stored or stored.get("task") != self.rehearsal_task_id:
            return "pending" if self.rehearsal_task_id is not None else "not rehearsed"
        status = stored.get("status")
        return "not rehearsed" if status == "unavailable" else str(status)

    def vote_by(self, user_id: int | None) -> RolloutVote | None:
        """Return the vote this user cast, or None."""
        return next((vote for vote in self.votes if vote.user_id == user_id), None)

    def describe(self) -> dict[str, Any]:
        """Return the JSON shape used by `flask dashboard rollouts --json`."""
        return {
            "id": self.id,
            "environment": self.environment,
            "direction": self.direction,
            "target": self.requested_target,
            "target_revision": self.target_revision,
            "from": self.from_revisions,
            "revisions": self.revision_ids,
            "fingerprint": self.fingerprint,
            "state": self.current_state,
            "state_reason": self.current_reason,
            "reason": self.reason,
            "ticket_url": self.ticket_url,
            "requested_by": self.requested_by,
            "approvals": [vote.username for vote in self.approvals],
            "approvals_required": self.approvals_required,
            "rejections": [vote.username for vote in self.rejections],
            "override_by": self.override_by,
            "override_justification": self.override_justification,
            "created_at": _iso(self.created_at),
            "expires_at": _iso(self.expires_at),
            "executed_at": _iso(self.executed_at),
            "job": self.job_id,
            "rehearsal": self.rehearsal_outcome,
        }


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()


class RolloutVote(db.Model):
    """One person's decision on a rollout; the unique key makes it one vote per person."""

    __tablename__ = "rollout_vote"
    __table_args__ = (
        sa.UniqueConstraint("rollout_id", "user_id", name="uq_rollout_vote_rollout_user"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    rollout_id: Mapped[int] = mapped_column(sa.ForeignKey("rollout.id"), index=True)
    user_id: Mapped[int] = mapped_column(sa.Integer)
    username: Mapped[str] = mapped_column(sa.String(120))
    decision: Mapped[str] = mapped_column(sa.String(16))  # approve | reject
    comment: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=_now)

    rollout: Mapped[Rollout] = relationship(back_populates="votes")
