"""Each environment's status as the one background refresher last read it, for every process."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import Mapped, mapped_column

from dashboard.clock import as_aware
from dashboard.environments.status import EnvironmentStatus, Status
from dashboard.extensions import db

# A time to the microsecond on every store (MariaDB's DATETIME would keep whole seconds): a
# Refresh compares when reads started with each other.
PRECISE_TIME = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


class StoredStatus(db.Model):
    """One row per environment: the newest read (or the read in progress before the first)."""

    __tablename__ = "environment_status"

    name: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    status: Mapped[str] = mapped_column(sa.String(16))
    behind: Mapped[int] = mapped_column(sa.Integer, default=0)
    current: Mapped[list[str]] = mapped_column(sa.JSON, default=list)
    pending: Mapped[list[str]] = mapped_column(sa.JSON, default=list)
    error: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    # When the newest read started (before the first lands: when the first was asked for, which
    # the page shows as "reading… since"); the holder's clock, as checked_at.
    asked_at: Mapped[datetime] = mapped_column(PRECISE_TIME)
    checked_at: Mapped[datetime | None] = mapped_column(PRECISE_TIME, nullable=True)
    duration: Mapped[float | None] = mapped_column(sa.Float, nullable=True)
    # The lease holder (hostname:pid:random) that wrote the row.
    read_by: Mapped[str] = mapped_column(sa.String(120))

    def store(self, status: EnvironmentStatus, read_by: str) -> None:
        """Copy a fresh read into this row."""
        self.status = str(status.status)
        self.behind = status.behind
        self.current = list(status.current)
        self.pending = list(status.pending)
        self.error = status.error
        self.checked_at = status.checked_at
        self.duration = status.duration
        self.read_by = read_by

    def as_status(self) -> EnvironmentStatus:
        """Return the row as the status board's value ("reading" before the first read)."""
        if self.checked_at is None:
            return EnvironmentStatus(
                name=self.name, status=Status.READING, reading_since=as_aware(self.asked_at)
            )
        return EnvironmentStatus(
            name=self.name,
            status=Status(self.status),
            behind=self.behind,
            current=list(self.current or ()),
            pending=list(self.pending or ()),
            error=self.error,
            checked_at=as_aware(self.checked_at),
            duration=self.duration,
        )
