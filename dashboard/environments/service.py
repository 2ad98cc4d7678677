"""Environment statuses in the store: written by the lease holder, read by every process's pages."""

from __future__ import annotations

import time
from datetime import datetime

import sqlalchemy as sa

from dashboard.clock import as_aware
from dashboard.environments.loader import Project
from dashboard.environments.models import StoredStatus
from dashboard.environments.status import EnvironmentStatus, Status
from dashboard.extensions import db

# How often a page waiting for a read looks at the store again.
_LOOK_AGAIN = 0.1


def mark_reading(*, names: list[str], asked_at: datetime, read_by: str) -> None:
    """Note that a read of these environments starts now: a "reading since `asked_at`" row for
    each never read, and `asked_at` on the others (a Refresh waits for reads asked after it)."""
    known = set(
        db.session.scalars(sa.select(StoredStatus.name).where(StoredStatus.name.in_(names)))
    )
    db.session.execute(
        sa.update(StoredStatus)
        .where(StoredStatus.name.in_(known), StoredStatus.checked_at.is_not(None))
        .values(asked_at=asked_at)
        .execution_options(synchronize_session=False)
    )
    for name in names:
        if name not in known:
            db.session.add(
                StoredStatus(
                    name=name,
                    status=Status.READING.value,
                    behind=0,
                    current=[],
                    pending=[],
                    asked_at=asked_at,
                    read_by=read_by,
                )
            )
    try:
        db.session.commit()
    except sa.exc.IntegrityError:  # a process that took the lease over a moment ago added them
        db.session.rollback()


def store_statuses(*, statuses: list[EnvironmentStatus], read_by: str) -> None:
    """Store statuses just read, one row per environment."""
    for status in statuses:
        row = db.session.get(StoredStatus, status.name)
        if row is None:
            row = StoredStatus(name=status.name, asked_at=status.checked_at)
            db.session.add(row)
        row.store(status, read_by)
    db.session.commit()


def _stored_rows(project: Project) -> dict[str, StoredStatus]:
    rows = db.session.scalars(
        sa.select(StoredStatus)
        .where(StoredStatus.name.in_(project.names))
        .execution_options(populate_existing=True)
    )
    return {row.name: row for row in rows}


def reads_started(*, project: Project) -> dict[str, datetime | None]:
    """Return when the newest read of each environment started (None: never read yet)."""
    rows = _stored_rows(project)
    return {
        name: as_aware(rows[name].asked_at) if name in rows and rows[name].checked_at else None
        for name in project.names
    }


def stored_statuses(*, project: Project, reading_since: datetime | None) -> list[EnvironmentStatus]:
    """Return each environment's stored status in promotion order ("reading" where none is)."""
    return _statuses_of(project, _stored_rows(project), reading_since)


def _statuses_of(
    project: Project, rows: dict[str, StoredStatus], reading_since: datetime | None
) -> list[EnvironmentStatus]:
    return [
        rows[name].as_status()
        if name in rows
        else EnvironmentStatus(name=name, status=Status.READING, reading_since=reading_since)
        for name in project.names
    ]


def wait_for_statuses(
    *,
    project: Project,
    reading_since: datetime | None,
    wait: float,
    after: dict[str, datetime | None] | None = None,
) -> list[EnvironmentStatus]:
    """Return the stored statuses once every one is read (by a read started after `after`'s
    time for it, if given), or after `wait` seconds with what is known then."""
    ends = time.monotonic() + wait
    while True:
        rows = _stored_rows(project)
        done = all(_is_read(rows.get(name), (after or {}).get(name)) for name in project.names)
        if done or time.monotonic() >= ends:
            return _statuses_of(project, rows, reading_since)
        # End this read's transaction before waiting: an SQLite store's transactions hold the
        # write lock the refresher needs, and MariaDB's would keep showing the same snapshot.
        db.session.rollback()
        time.sleep(_LOOK_AGAIN)


def _is_read(row: StoredStatus | None, after: datetime | None) -> bool:
    """Whether `row` holds a read that landed, and (with `after`) started after that time.

    Both times come from the holder's clock, so clocks that differ between hosts do not matter.
    """
    if row is None or row.checked_at is None:
        return False
    if after is None:
        return True
    asked_at, checked_at = as_aware(row.asked_at), as_aware(row.checked_at)
    assert asked_at is not None and checked_at is not None
    return asked_at > after and checked_at >= asked_at
