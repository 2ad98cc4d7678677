"""Drift checks: run one (it builds a scratch database), keep the newest per environment.

Checks run when a person or `flask dashboard drift` (from cron or CI) asks, never on a page view;
the report is kept in the store, so every web process and the Overview show the same answer.
"""

from __future__ import annotations

import threading

import sqlalchemy as sa

from dashboard.drift.models import DriftCheck
from dashboard.environments import get_project
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


def latest_reports() -> dict[str, DriftReport]:
    """Return the newest drift report of each environment that was ever checked."""
    rows = db.session.scalars(sa.select(DriftCheck))
    return {row.environment: row.as_report() for row in rows}
