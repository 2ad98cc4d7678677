"""Executors run queued jobs. The embedded default: a thread pool inside the web process.

The threads only supervise; each migration runs in its own child process (dashboard.target.runner).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

from flask import Flask, current_app

logger = logging.getLogger(__name__)
EXECUTOR = "dashboard.executor"


class Executor(Protocol):
    def submit(self, job_id: int) -> Future | None: ...


class ThreadExecutor:
    """Run jobs on a small pool of supervising threads in this process.

    The executor is handed the function that runs a job (the app factory gives it
    `jobs.service.run_job`), so it depends on nothing above it.
    """

    def __init__(self, app: Flask, *, run: Callable[..., object], max_workers: int = 4) -> None:
        self.app = app
        self.run = run
        self.pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="job")

    def submit(self, job_id: int) -> Future:
        return self.pool.submit(self._run, job_id)

    def _run(self, job_id: int) -> None:
        with self.app.app_context():
            try:
                self.run(job_id=job_id)
            except Exception:
                # The job row says what went wrong where it can; this keeps the pool alive.
                logger.exception("job %s: the supervisor failed", job_id)
                raise


def get_executor() -> Executor:
    """Return the app's executor (the app factory installs it)."""
    return current_app.extensions[EXECUTOR]
