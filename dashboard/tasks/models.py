"""Background tasks: one row per piece of long work, its progress, and its result or error."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from dashboard.extensions import db


class TaskState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # its process stopped (stored when a later request notices)

    @property
    def active(self) -> bool:
        return self in (TaskState.QUEUED, TaskState.RUNNING)


def _now() -> datetime:
    return datetime.now(UTC)


class Task(db.Model):
    """One schema diff, rehearsal, drift check or plan render, keyed by what it computes.

    `active_key` (a digest of kind, environment and key) is set only while the task is queued or
    running, and is unique: two requests for the same work, from any process, get one task.
    """

    __tablename__ = "task"
    __table_args__ = (
        sa.UniqueConstraint("active_key", name="uq_task_active_key"),
        sa.Index("ix_task_kind_environment_key", "kind", "environment", "key"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(32))  # plan | schema_diff | rehearsal | drift_check
    environment: Mapped[str] = mapped_column(sa.String(64))  # "*" for every environment
    key: Mapped[str] = mapped_column(sa.String(255))  # e.g. the plan's fingerprint
    params: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)  # what was asked
    state: Mapped[str] = mapped_column(sa.String(16), default=TaskState.QUEUED.value, index=True)
    active_key: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
    progress_done: Mapped[int] = mapped_column(sa.Integer, default=0)
    progress_total: Mapped[int] = mapped_column(sa.Integer, default=0)
    progress_text: Mapped[str] = mapped_column(sa.String(255), default="")
    requested_by: Mapped[str] = mapped_column(sa.String(120))
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=_now)
    started_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
