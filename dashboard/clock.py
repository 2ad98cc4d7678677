"""The one clock: UTC, aware datetimes — and naive values from the store read back as UTC."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    """Return the current time in UTC."""
    return datetime.now(UTC)


def as_aware(moment: datetime | None) -> datetime | None:
    """Return `moment` with its UTC zone (SQLite and MariaDB hand back naive datetimes)."""
    if moment is None:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
