"""Leases: which one process of a deployment does a piece of background work that must run once."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import Mapped, mapped_column

from dashboard.extensions import db

# A time to the microsecond on every store (MariaDB's DATETIME would keep whole seconds), for
# times that are compared with each other: two asks or two reads may fall in one second.
PRECISE_TIME = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


class Lease(db.Model):
    """One row per piece of work: who holds it, until when, and when someone asked for a run."""

    __tablename__ = "lease"

    name: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    # hostname:pid:random, so that a restarted process (same pid) is a new holder.
    holder: Mapped[str] = mapped_column(sa.String(120))
    expires_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    # Set by any process (a Refresh button, a finished job); the holder runs the work early.
    run_requested_at: Mapped[datetime | None] = mapped_column(PRECISE_TIME, nullable=True)
