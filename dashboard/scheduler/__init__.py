"""One background refresher per deployment, elected by a lease row in the store."""

from __future__ import annotations

from flask import Flask

from dashboard.environments import get_board
from dashboard.scheduler import drift_schedule
from dashboard.scheduler.refresher import STATUS_LEASE, StoreCoordinator

__all__ = ["STATUS_LEASE", "StoreCoordinator", "init_app", "run_refresher"]


def init_app(app: Flask) -> None:
    """Link this process's status board to the store's lease; nothing starts until a request.

    With RQ workers (JOB_EXECUTOR=rq) a worker runs the refresher (`run_refresher`): the web
    processes never take the lease, they read what it stored and ask it for early runs.
    """
    lease = app.config["STATUS_LEASE_SECONDS"]  # checked by the app factory
    elect = app.config.get("JOB_EXECUTOR") != "rq"
    with app.app_context():
        get_board().coordinate_with(StoreCoordinator(app, lease_seconds=lease, elect=elect))
    drift_schedule.init_app(app)  # scheduled drift checks: a chore of whoever holds the lease


def run_refresher(app: Flask) -> None:
    """Take part in the lease election from this process (a worker) and start its refresher."""
    lease = app.config["STATUS_LEASE_SECONDS"]
    with app.app_context():
        board = get_board()
        board.coordinate_with(StoreCoordinator(app, lease_seconds=lease))
        board.start()
