"""Drift checks: run one (it builds a scratch database), keep the newest per environment.

Checks run when a person or `flask dashboard drift` (from cron or CI) asks, or every
`drift_check_minutes` (the status refresher's lease holder starts them, see
dashboard.scheduler.drift_schedule) — never on a page view. The report is kept in the store, so
every web process and the Overview show the same answer. A report is shown as outdated once the
environment's status, read after the check, names other revisions than the check found.
"""

from __future__ import annotations

import dataclasses
import threading
from datetime import datetime, timedelta

import sqlalchemy as sa

from dashboard.clock import as_aware, utcnow
from dashboard.drift.models import DriftCheck
from dashboard.environments import EnvironmentStatus, Status, get_project
from dashboard.environments import service as statuses
from dashboard.environments.loader import Environment
from dashboard.errors import UnknownEnvironment
from dashboard.extensions import db
from dashboard.progress import Progress, no_progress
from dashboard.schema import DriftReport, drift

# One check per environment at a time in this process: a double click waits for the first.
_checking: dict[str, threading.Lock] = {}
_checking_lock = threading.Lock()


def check_environments(
    *, environment_names: list[str], checked_by: str, progress: Progress = no_progress
) -> list[DriftReport]:
    """Check each named environment in turn, telling `progress` "environment i of N: name"."""
    reports = []
    total = len(environment_names)
    for index, name in enumerate(environment_names):
        where = f"environment {index + 1} of {total}: {name}"
        progress(index, total, where)
        within = _within(progress, done=index, total=total, where=where)
        reports.append(check_drift(environment_name=name, checked_by=checked_by, progress=within))
    progress(total, total, f"checked {total} environment{'' if total == 1 else 's'}")
    return reports


def _within(progress: Progress, *, done: int, total: int, where: str) -> Progress:
    """The progress of one environment's check, told as part of checking all of them."""

    def within(step: int, steps: int, text: str) -> None:
        progress(done, total, f"{where}: {text}" if text else where)

    return within


def check_drift(
    *, environment_name: str, checked_by: str, progress: Progress = no_progress
) -> DriftReport:
    """Check one environment now and keep the report as its newest."""
    project = get_project()
    environment = project.get(environment_name)
    if environment is None:
        raise UnknownEnvironment(f"There is no environment called “{environment_name}”.")
    with _checking_lock:
        gate = _checking.setdefault(environment.name, threading.Lock())
    with gate:
        # No store transaction is open while the scratch database is built (SQLite: the lock).
        db.session.commit()
        report = drift(project=project, environment=environment, progress=progress)
        row = db.session.get(DriftCheck, environment.name) or DriftCheck(
            environment=environment.name
        )
        row.store(report, checked_by)
        db.session.add(row)
        db.session.commit()
    return report


def latest_reports(read: list[EnvironmentStatus] | None = None) -> dict[str, DriftReport]:
    """Return the newest drift report of each environment that was ever checked, each marked
    outdated (`moved_to`) when its environment was read at other revisions since (`read`: the
    stored statuses, if the caller has them already)."""
    rows = list(db.session.scalars(sa.select(DriftCheck)))
    if not rows:
        return {}
    if read is None:
        read = statuses.stored_statuses(project=get_project(), reading_since=None)
    by_name = {status.name: status for status in read}
    return {
        row.environment: with_freshness(row.as_report(), by_name.get(row.environment))
        for row in rows
    }


# Statuses that name the revisions a database is at (the others could not read them).
_READ = {Status.UP_TO_DATE, Status.BEHIND, Status.AHEAD_UNKNOWN, Status.MULTIPLE_HEADS}


def with_freshness(report: DriftReport, status: EnvironmentStatus | None) -> DriftReport:
    """Mark `report` outdated when `status`, read after the check, is at other revisions."""
    if status is None or status.status not in _READ or status.checked_at is None:
        return report
    if as_aware(status.checked_at) <= report.checked_at:
        return report  # the status predates the check: the check knows better
    if sorted(status.current) == sorted(report.revisions):
        return report
    return dataclasses.replace(report, moved_to=tuple(sorted(status.current)))


def scheduled_checks_due(*, now: datetime | None = None) -> list[Environment]:
    """Return the environments with `drift_check_minutes` whose newest check is that old (or
    that were never checked)."""
    scheduled = [env for env in get_project().environments if env.drift_check_minutes]
    if not scheduled:
        return []
    now = now or utcnow()
    checked = dict(
        db.session.execute(
            sa.select(DriftCheck.environment, DriftCheck.checked_at).where(
                DriftCheck.environment.in_([env.name for env in scheduled])
            )
        ).all()
    )
    db.session.rollback()  # end the read: the refresher polls (SQLite locks, MariaDB snapshots)
    due = []
    for env in scheduled:
        last = as_aware(checked.get(env.name))
        assert env.drift_check_minutes is not None
        if last is None or now - last >= timedelta(minutes=env.drift_check_minutes):
            due.append(env)
    return due
