"""The latest drift report per environment, kept so the Overview can show it without rebuilding.

A drift check builds a scratch database and reflects two schemas (seconds on a server), so it
runs when a person or `flask dashboard drift` asks, never on every page view. Reports live in
this process; each says when it was made.
"""

from __future__ import annotations

import threading

from dashboard.environments.loader import Environment, Project
from dashboard.schema import DriftReport, drift


class DriftBoard:
    """Remember the newest drift report of each environment; check one or all on request."""

    def __init__(self) -> None:
        self._reports: dict[str, DriftReport] = {}
        self._lock = threading.Lock()
        # One check per environment at a time: a double click waits for the first, not twice.
        self._checking: dict[str, threading.Lock] = {}

    def latest(self, name: str) -> DriftReport | None:
        """Return the newest report for `name`, or None when it was never checked."""
        with self._lock:
            return self._reports.get(name)

    def check(self, *, project: Project, environment: Environment) -> DriftReport:
        """Check one environment now and remember the report."""
        with self._lock:
            gate = self._checking.setdefault(environment.name, threading.Lock())
        with gate:
            report = drift(project=project, environment=environment)
        with self._lock:
            self._reports[environment.name] = report
        return report

    def forget(self) -> None:
        """Drop every remembered report."""
        with self._lock:
            self._reports.clear()
