"""Executors run queued jobs. The embedded default: a thread pool inside the web process.

The threads only supervise; each migration runs in its own child process (dashboard.runner).
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

from flask import Flask, current_app

logger = logging.getLogger(__name__)


class Executor(Protocol):
    def submit(self, job_id: int) -> Future | None: ...


class ThreadExecutor:
    """Run jobs on a small pool of supervising threads in this process."""

    def __init__(self, app: Flask, max_workers: int = 4) -> None:
        self.app = app
        self.pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="job")

    def submit(self, job_id: int) -> Future:
        return self.pool.submit(self._run, job_id)

    def _run(self, job_id: int) -> None:
        from dashboard.jobs import service

        with self.app.app_context():
            try:
                service.run_job(job_id=job_id)
            except Exception:
                # The job row says what went wrong where it can; this keeps the pool alive.
                logger.exception("job %s: the supervisor failed", job_id)
                raise


def get_executor() -> Executor:
    """Return the app's executor, creating the thread pool on first use."""
    app = current_app._get_current_object()
    executor = app.extensions.get("dashboard.executor")
    if executor is None:
        executor = app.extensions["dashboard.executor"] = ThreadExecutor(
            app, max_workers=app.config["JOB_WORKERS"]
        )
    return executor
