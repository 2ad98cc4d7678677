"""The status board's link to the store: the `status-refresher` lease, run requests, statuses.

Every web process runs a board thread; the one holding the lease reads the target databases,
runs the chores (housekeeping) and writes the statuses into the store. The others only try to
take the lease, about three times per lease period, so one takes over when the holder dies.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from flask import Flask

from dashboard.environments import service as statuses_service
from dashboard.environments.status import EnvironmentStatus
from dashboard.scheduler import service as leases

logger = logging.getLogger(__name__)

STATUS_LEASE = "status-refresher"
# What a store step answers when the store failed (it was logged).
_FAILED = object()


class StoreCoordinator:
    """The store's side of a status board (see status.Coordinator); never raises for the store."""

    def __init__(
        self, app: Flask, *, lease_seconds: float, name: str = STATUS_LEASE, elect: bool = True
    ) -> None:
        self.app = app
        # False in a web process of a deployment with workers: a worker holds the lease there,
        # and this process only reads what it stores (and asks it for early runs).
        self.elect = elect
        self.name = name
        self.lease_seconds = lease_seconds
        self._holder: tuple[int, str] | None = None
        self._looked_at: float | None = None
        self._held = False
        self._request_seen: datetime | None = None
        self._requests_noted = False

    @property
    def holder(self) -> str:
        """This process's name as a holder: hostname:pid:random (new after a fork)."""
        if self._holder is None or self._holder[0] != os.getpid():
            name = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
            self._holder = (os.getpid(), name[-120:])
        return self._holder[1]

    def hold(self) -> bool:
        """Take or renew the lease, at most three times per lease period; say if it is held."""
        if not self.elect:
            return False
        now = time.monotonic()
        if self._looked_at is not None and now - self._looked_at < self.lease_seconds / 3:
            return self._held
        held = self._ask(
            "take the lease",
            lambda: leases.hold_lease(
                name=self.name, holder=self.holder, seconds=self.lease_seconds
            ),
        )
        held = held is True
        if held and not self._held:
            logger.info("%s holds the %s lease now", self.holder, self.name)
        self._looked_at, self._held = now, held
        return held

    def run_requested(self) -> bool:
        """Say whether some process asked for a run since the last look."""
        asked = self._ask("look for run requests", lambda: leases.run_requested_at(name=self.name))
        if asked is _FAILED:
            return False
        first, self._requests_noted = not self._requests_noted, True
        changed = asked != self._request_seen
        self._request_seen = asked
        return changed and not first

    def reading(self, *, names: list[str], asked_at: datetime) -> None:
        """Note in the store that these environments are being read."""
        self._ask(
            "note the read",
            lambda: statuses_service.mark_reading(
                names=names, asked_at=asked_at, read_by=self.holder
            ),
        )

    def publish(self, statuses: list[EnvironmentStatus]) -> None:
        """Store statuses just read."""
        self._ask(
            "store statuses",
            lambda: statuses_service.store_statuses(statuses=statuses, read_by=self.holder),
        )

    def request_run(self) -> None:
        """Ask the holder to read again now."""
        self._ask("ask for a read", lambda: leases.request_run(name=self.name))

    def release(self) -> None:
        """Let the lease lapse now, so that another process takes over without waiting."""
        self._ask(
            "release the lease", lambda: leases.release_lease(name=self.name, holder=self.holder)
        )
        self._held, self._looked_at = False, None

    def _ask(self, doing: str, step: Callable[[], Any]) -> Any:
        """Run one store step in an app context; a store that fails is logged, never raised."""
        with self.app.app_context():
            try:
                return step()
            except sa.exc.SQLAlchemyError as error:
                # One line, no traceback: the store is out, and the next look tries again.
                reason = " ".join(str(getattr(error, "orig", error)).split())
                logger.warning("status refresher: cannot %s: %s", doing, reason[:300])
                return _FAILED
