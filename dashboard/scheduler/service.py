"""Take, renew and read leases in the store: one UPDATE decides, on SQLite, PostgreSQL and MariaDB.

`UPDATE lease … WHERE name = :name AND (expires_at < :now OR holder = :me)` is atomic on every
store: PostgreSQL re-checks the WHERE on the newest row after waiting for a concurrent writer,
InnoDB's UPDATE reads the newest committed row under its lock, and SQLite has one writer at a
time. The first holder INSERTs the row; a concurrent INSERT loses on the primary key.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa

from dashboard.clock import as_aware, utcnow
from dashboard.extensions import db
from dashboard.scheduler.models import Lease


def hold_lease(*, name: str, holder: str, seconds: float) -> bool:
    """Take the lease `name` if it is free or lapsed, or renew it for `holder`; say if held."""
    now = utcnow()
    expires_at = now + timedelta(seconds=seconds)
    renewed = db.session.execute(
        sa.update(Lease)
        .where(Lease.name == name, sa.or_(Lease.expires_at < now, Lease.holder == holder))
        .values(holder=holder, expires_at=expires_at)
        .execution_options(synchronize_session=False)
    )
    if renewed.rowcount == 1:
        db.session.commit()
        return True
    db.session.rollback()
    if db.session.get(Lease, name) is not None:
        db.session.rollback()
        return False  # someone else holds it
    db.session.add(Lease(name=name, holder=holder, expires_at=expires_at))
    try:
        db.session.commit()
    except sa.exc.IntegrityError:  # another process inserted it first: that one holds it
        db.session.rollback()
        return False
    return True


def release_lease(*, name: str, holder: str) -> None:
    """Let the lease `name` lapse now if `holder` has it, so another process takes over at once."""
    db.session.execute(
        sa.update(Lease)
        .where(Lease.name == name, Lease.holder == holder)
        .values(expires_at=utcnow() - timedelta(seconds=1))
        .execution_options(synchronize_session=False)
    )
    db.session.commit()


def request_run(*, name: str) -> datetime:
    """Ask whichever process holds the lease `name` to run its work now; return when asked."""
    asked_at = utcnow()
    # No row yet means nobody has held the lease: its first holder runs the work at once anyway.
    db.session.execute(
        sa.update(Lease)
        .where(Lease.name == name)
        .values(run_requested_at=asked_at)
        .execution_options(synchronize_session=False)
    )
    db.session.commit()
    return asked_at


def run_requested_at(*, name: str) -> datetime | None:
    """Return when a process last asked the holder of the lease `name` for an early run."""
    asked = db.session.scalar(sa.select(Lease.run_requested_at).where(Lease.name == name))
    db.session.rollback()  # end the read: a holder polls, and MariaDB would keep its snapshot
    return as_aware(asked)
