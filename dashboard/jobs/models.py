"""Jobs, their log and statements, and the one-active-job-per-environment guard."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from dashboard.extensions import db


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    CANCELLED = "cancelled"
    STALE = "stale"  # under the lock, the database was not where the plan started: nothing ran

    @property
    def finished(self) -> bool:
        return self not in (JobState.QUEUED, JobState.RUNNING)


def _now() -> datetime:
    return datetime.now(UTC)


class Job(db.Model):
    __tablename__ = "job"

    id: Mapped[int] = mapped_column(primary_key=True)
    environment: Mapped[str] = mapped_column(sa.String(64), index=True)
    operation: Mapped[str] = mapped_column(sa.String(16))  # upgrade | downgrade | stamp
    requested_target: Mapped[str] = mapped_column(sa.String(255))
    alembic_target: Mapped[str] = mapped_column(sa.String(255))
    from_revisions: Mapped[list[str]] = mapped_column(sa.JSON, default=list)
    planned_revisions: Mapped[list[str]] = mapped_column(sa.JSON, default=list)
    to_revisions: Mapped[list[str] | None] = mapped_column(sa.JSON, nullable=True)
    fingerprint: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
    state: Mapped[str] = mapped_column(sa.String(16), default=JobState.QUEUED.value, index=True)
    requested_by_id: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    requested_by: Mapped[str] = mapped_column(sa.String(120))
    reason: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=_now)
    started_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)
    error: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    half_applied: Mapped[bool] = mapped_column(default=False)
    runner_pid: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    # The step that failed: its revision and its 1-based position in the run.
    failed_revision: Mapped[str | None] = mapped_column(sa.String(255), nullable=True)
    failed_step: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    # Set only for a job that executes an approved rollout (protected environments).
    rollout_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("rollout.id"), nullable=True, index=True
    )

    @property
    def job_state(self) -> JobState:
        return JobState(self.state)

    @property
    def is_finished(self) -> bool:
        return self.job_state.finished

    @property
    def badge(self) -> str:
        """The colour class of this job's state."""
        return {
            JobState.SUCCEEDED: "ok",
            JobState.FAILED: "bad",
            JobState.INTERRUPTED: "bad",
            JobState.RUNNING: "warn",
            JobState.STALE: "warn",
        }.get(self.job_state, "muted")

    @property
    def failing_step(self) -> str | None:
        """'step 2 of 3 (revision abc)' for a failed job whose failing step is known."""
        if self.failed_revision is None:
            return None
        total = len(self.planned_revisions or [])
        position = f"step {self.failed_step} of {total}" if total else f"step {self.failed_step}"
        return f"{position} (revision {self.failed_revision})"

    def describe(self) -> dict[str, Any]:
        """Return the JSON shape used by `flask dashboard jobs --json`."""
        return {
            "id": self.id,
            "environment": self.environment,
            "operation": self.operation,
            "target": self.requested_target,
            "state": self.state,
            "from": self.from_revisions,
            "to": self.to_revisions,
            "fingerprint": self.fingerprint,
            "requested_by": self.requested_by,
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "error": self.error,
            "failed_revision": self.failed_revision,
            "failed_step": self.failed_step,
            "half_applied": self.half_applied,
            "rollout": self.rollout_id,
        }


class JobLogLine(db.Model):
    """One line a job printed (kind 'log') or one statement it ran on the target (kind 'sql')."""

    __tablename__ = "job_log_line"
    __table_args__ = (sa.UniqueConstraint("job_id", "number", name="uq_job_log_line_number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(sa.ForeignKey("job.id"), index=True)
    number: Mapped[int] = mapped_column(sa.Integer)
    kind: Mapped[str] = mapped_column(sa.String(8), default="log")
    text: Mapped[str] = mapped_column(sa.Text)
    at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=_now)


class ActiveJob(db.Model):
    """At most one queued or running job per environment: the primary key is the guard."""

    __tablename__ = "active_job"

    environment: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    job_id: Mapped[int] = mapped_column(sa.ForeignKey("job.id"))
