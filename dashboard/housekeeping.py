"""The background pass: store what pages only show — expired rollouts, interrupted jobs.

GET requests never write. A page shows an open rollout past its lifetime as expired
(`Rollout.current_state`) and a running job whose heartbeat went stale as "interrupted?"
(`jobs.heartbeat_is_stale`); this pass, run after every refresh by the status refresher of the
one process that holds the refresher's lease (dashboard.scheduler), stores those states with
their audit events. Each row is still locked and looked at again before it is written, so that
a holder that lost its lease a moment ago and the new one never write an event twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import sqlalchemy as sa
from flask import Flask

from dashboard.environments import get_board
from dashboard.errors import DashboardError
from dashboard.extensions import db
from dashboard.jobs import service as jobs
from dashboard.rollouts import service as rollouts

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Housekeeping:
    """What one pass stored: the ids of the jobs it interrupted and the rollouts it expired."""

    interrupted_jobs: list[int]
    expired_rollouts: list[int]


def persist_overdue_states() -> Housekeeping:
    """Store stale running jobs as interrupted and overdue rollouts as expired, each audited."""
    return Housekeeping(
        interrupted_jobs=_ids_of("marking interrupted jobs", jobs.reap_stale_jobs),
        expired_rollouts=_ids_of("expiring rollouts", rollouts.expire_due_rollouts),
    )


def _ids_of(doing: str, step: Callable[[], Iterable[object]]) -> list[int]:
    """Run one step; a store that fails is logged and left for the next pass, never raised."""
    try:
        return [item.id for item in step()]  # type: ignore[attr-defined]
    except (sa.exc.SQLAlchemyError, DashboardError):
        logger.exception("background housekeeping: %s failed; the next pass tries again", doing)
        db.session.rollback()
        return []


def init_app(app: Flask) -> None:
    """Run the pass after every refresh of the status refresher (in the lease holder only)."""

    def housekeeping() -> None:
        with app.app_context():
            persist_overdue_states()

    with app.app_context():
        get_board().add_chore(housekeeping)
