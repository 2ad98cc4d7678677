"""Scheduled drift checks: an environment with `drift_check_minutes: N` is checked every N minutes.

A chore of the status refresher, so it runs in the one process that holds the refresher's lease,
after each read of the statuses: it starts a background drift check (a task, as the Drift page's
button does, requested by "scheduler") of each environment whose newest check is N minutes old,
unless a check of it is under way. A check that fails without storing a report (the store was
out) is not started again by this process for N minutes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import sqlalchemy as sa
from flask import Flask

from dashboard.drift import service as drift
from dashboard.environments import get_board, get_project
from dashboard.errors import DashboardError
from dashboard.extensions import db
from dashboard.tasks import flows as task_flows
from dashboard.tasks import service as tasks

logger = logging.getLogger(__name__)

SCHEDULER = "scheduler"


def start_due_checks(*, started: dict[str, float]) -> list[str]:
    """Start a drift check of each environment that is due; return their names.

    `started` maps an environment to when (monotonic) this process last started its check.
    """
    under_way = {
        name
        for task in tasks.active_tasks(kind=task_flows.DRIFT_CHECK)
        for name in (task.params or {}).get("environments", ())
    }
    now = time.monotonic()
    begun = []
    for environment in drift.scheduled_checks_due():
        assert environment.drift_check_minutes is not None
        last = started.get(environment.name)
        if environment.name in under_way or (
            last is not None and now - last < environment.drift_check_minutes * 60
        ):
            continue
        task_flows.start_drift_check(environment=environment, actor=SCHEDULER)
        started[environment.name] = now
        begun.append(environment.name)
        logger.info("scheduled drift check of %s started", environment.name)
    return begun


def chore(app: Flask) -> Callable[[], None]:
    """The refresher's chore: start the drift checks that are due; a failing store is logged."""
    started: dict[str, float] = {}

    def scheduled_drift_checks() -> None:
        with app.app_context():
            try:
                start_due_checks(started=started)
            except (sa.exc.SQLAlchemyError, DashboardError) as error:
                db.session.rollback()
                logger.warning("scheduled drift checks: %s; the next pass tries again", error)

    return scheduled_drift_checks


def init_app(app: Flask) -> None:
    """Run the scheduled drift checks after every refresh (in the lease holder only)."""
    with app.app_context():
        if any(env.drift_check_minutes for env in get_project().environments):
            get_board().add_chore(chore(app))
