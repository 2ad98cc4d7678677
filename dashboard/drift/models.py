"""The newest drift report of each environment, kept in the store so every process shows it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from dashboard.extensions import db
from dashboard.schema import Change, DriftReport, SchemaDiff


class DriftCheck(db.Model):
    """One row per environment: the last drift check, whoever ran it (a page or the CLI)."""

    __tablename__ = "drift_check"

    environment: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    status: Mapped[str] = mapped_column(sa.String(16))  # none | drift | unavailable
    reason: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    revisions: Mapped[list[str]] = mapped_column(sa.JSON, default=list)
    differences: Mapped[list[dict[str, Any]] | None] = mapped_column(sa.JSON, nullable=True)
    checked_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    checked_by: Mapped[str] = mapped_column(sa.String(120))

    def store(self, report: DriftReport, checked_by: str) -> None:
        """Copy a fresh report into this row."""
        self.status = report.status
        self.reason = report.reason
        self.revisions = list(report.revisions)
        self.differences = (
            None if report.differences is None else report.differences.as_dict()["changes"]
        )
        self.checked_at = report.checked_at
        self.checked_by = checked_by

    def as_report(self) -> DriftReport:
        """Return the stored report as the schema service made it."""
        checked_at = self.checked_at
        if checked_at.tzinfo is None:  # SQLite and MariaDB hand back naive UTC
            checked_at = checked_at.replace(tzinfo=UTC)
        differences = None
        if self.differences is not None:
            differences = SchemaDiff(tuple(Change(**change) for change in self.differences))
        return DriftReport(
            environment=self.environment,
            status=self.status,
            differences=differences,
            reason=self.reason,
            checked_at=checked_at,
            revisions=tuple(self.revisions or ()),
        )
