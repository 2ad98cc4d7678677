"""Executors run queued jobs and background tasks. The embedded default: thread pools inside
the web process.

The threads only supervise; each migration runs in its own child process (dashboard.target.runner).
Tasks (schema diffs, rehearsals, drift checks, plan renders) get a pool of their own, so that a
long rehearsal never keeps a migration job waiting for a thread.
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

    def submit_task(self, task_id: int) -> Future | None: ...


class ThreadExecutor:
    """Run jobs and tasks on small pools of supervising threads in this process.

    The executor is handed the functions that run a job and a task (the app factory gives it
    `jobs.service.run_job` and `tasks.flows.run_task`), so it depends on nothing above it.
    """

    def __init__(
        self,
        app: Flask,
        *,
        run: Callable[..., object],
        run_task: Callable[..., object] | None = None,
        max_workers: int = 4,
        task_workers: int = 2,
    ) -> None:
        self.app = app
        self.run = run
        self.run_task = run_task
        self.pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="job")
        self.task_pool = ThreadPoolExecutor(max_workers=task_workers, thread_name_prefix="task")

    def submit(self, job_id: int) -> Future:
        return self.pool.submit(self._run, job_id)

    def submit_task(self, task_id: int) -> Future:
        if self.run_task is None:
            raise RuntimeError("this executor was given no function that runs tasks")
        return self.task_pool.submit(self._run_task, task_id)

    def _run_task(self, task_id: int) -> None:
        assert self.run_task is not None
        with self.app.app_context():
            try:
                self.run_task(task_id=task_id)
            except Exception:
                # The task row says what went wrong where it can; this keeps the pool alive.
                logger.exception("task %s: the supervisor failed", task_id)
                raise

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
