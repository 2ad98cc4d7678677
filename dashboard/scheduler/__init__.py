"""One background refresher per deployment, elected by a lease row in the store."""

from __future__ import annotations

from flask import Flask

from dashboard.environments import get_board
from dashboard.scheduler.refresher import STATUS_LEASE, StoreCoordinator

__all__ = ["STATUS_LEASE", "StoreCoordinator", "init_app"]


def init_app(app: Flask) -> None:
    """Link this process's status board to the store's lease; nothing starts until a request."""
    lease = app.config["STATUS_LEASE_SECONDS"]  # checked by the app factory
    with app.app_context():
        get_board().coordinate_with(StoreCoordinator(app, lease_seconds=lease))
