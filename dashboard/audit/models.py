"""Audit events and signed checkpoints of the chain head. No code path updates or deletes them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from dashboard.extensions import db


class AuditEvent(db.Model):
    __tablename__ = "audit_event"

    id: Mapped[int] = mapped_column(primary_key=True)
    # Assigned under the writers' lock: 1, 2, 3, … with no gaps.
    seq: Mapped[int] = mapped_column(sa.BigInteger, unique=True)
    occurred_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), index=True)
    actor_id: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    # The name as it was when the event happened, whatever becomes of the user.
    actor_name: Mapped[str | None] = mapped_column(sa.String(80), nullable=True, index=True)
    action: Mapped[str] = mapped_column(sa.String(64), index=True)
    environment: Mapped[str | None] = mapped_column(sa.String(64), nullable=True, index=True)
    details: Mapped[dict[str, Any]] = mapped_column(
        sa.JSON().with_variant(sa.dialects.postgresql.JSONB(), "postgresql"), default=dict
    )
    remote_addr: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
    user_agent: Mapped[str | None] = mapped_column(sa.String(256), nullable=True)
    prev_hash: Mapped[str] = mapped_column(sa.String(64))
    hash: Mapped[str] = mapped_column(sa.String(64), unique=True)


class AuditCheckpoint(db.Model):
    """An HMAC-signed note of the chain head, so deleting the newest events shows."""

    __tablename__ = "audit_checkpoint"

    id: Mapped[int] = mapped_column(primary_key=True)
    seq: Mapped[int] = mapped_column(sa.BigInteger, index=True)
    hash: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    signature: Mapped[str] = mapped_column(sa.String(64))
