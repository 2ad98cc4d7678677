"""Executors run queued jobs and background tasks.

- `ThreadExecutor` (JOB_EXECUTOR=thread, the embedded default): thread pools inside the web
  process, for the demo and single-process installs.
- `RQExecutor` (JOB_EXECUTOR=rq with REDIS_URL): the web processes only enqueue; separate
  `flask dashboard worker` processes (dashboard.workers) run each job or task in an RQ work horse,
  so a deploy or a crash of a web process takes no running job with it.

Either way the executor only supervises: each migration runs in its own child process
(dashboard.target.runner), and the same `run_job` / `run_task` write the same states, log lines
and audit events. Tasks (schema diffs, rehearsals, drift checks, plan renders) get a pool (a
queue) of their own, so that a long rehearsal never keeps a migration job waiting.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Protocol

from flask import Flask, current_app

from dashboard.errors import ConfigurationError, DashboardError
from dashboard.logs import bind_request_id, current_request_id
from dashboard.redact import redact

if TYPE_CHECKING:
    from rq import Queue

# rq and redis are imported where the RQ executor uses them: every other process (the demo, a
# `flask dashboard status`) would pay a fifth of a second for them.

logger = logging.getLogger(__name__)
EXECUTOR = "dashboard.executor"
EXECUTORS = ("thread", "rq")
JOB, TASK = "job", "task"
# Seconds an RQ record of a finished job or task stays in Redis (the store keeps the outcome).
RQ_RESULT_TTL = 24 * 3600


class QueueUnavailable(DashboardError):
    """The job queue (Redis) did not take the work."""

    status = 503


class Executor(Protocol):
    def submit(self, job_id: int) -> Future | None: ...

    def submit_task(self, task_id: int) -> Future | None: ...

    def cancel(self, job_id: int) -> None: ...

    def problems(self) -> dict[str, str | None]: ...


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
        return self.pool.submit(self._run, job_id, current_request_id())

    def submit_task(self, task_id: int) -> Future:
        if self.run_task is None:
            raise RuntimeError("this executor was given no function that runs tasks")
        return self.task_pool.submit(self._run_task, task_id, current_request_id())

    def cancel(self, job_id: int) -> None:
        """Nothing to do: a cancelled job's thread finds it cancelled and returns."""

    def problems(self) -> dict[str, str | None]:
        """What keeps this executor from working: nothing, it needs no server."""
        return {}

    def _run_task(self, task_id: int, request_id: str | None = None) -> None:
        assert self.run_task is not None
        bind_request_id(request_id)
        with self.app.app_context():
            try:
                self.run_task(task_id=task_id)
            except Exception:
                # The task row says what went wrong where it can; this keeps the pool alive.
                logger.exception("task %s: the supervisor failed", task_id)
                raise

    def _run(self, job_id: int, request_id: str | None = None) -> None:
        bind_request_id(request_id)
        with self.app.app_context():
            try:
                self.run(job_id=job_id)
            except Exception:
                # The job row says what went wrong where it can; this keeps the pool alive.
                logger.exception("job %s: the supervisor failed", job_id)
                raise


class RQExecutor:
    """Enqueue jobs and tasks on Redis for `flask dashboard worker` processes to run.

    A worker's app has the same executor, so its work horse calls the same `run` and
    `run_task` the thread executor would (through `perform`, the function RQ imports).
    """

    def __init__(
        self,
        app: Flask,
        *,
        run: Callable[..., object],
        run_task: Callable[..., object] | None = None,
        redis_url: str,
        queue_prefix: str = "migration-dashboard",
    ) -> None:
        self.app = app
        self.run = run
        self.run_task = run_task
        self.redis_url = redis_url
        self.queue_prefix = queue_prefix
        import redis
        from rq import Queue

        # Short timeouts: a web request that enqueues must not hang on a dead Redis.
        self.redis = redis.Redis.from_url(
            redis_url, socket_connect_timeout=3, socket_timeout=10, health_check_interval=30
        )
        self.jobs_queue = Queue(f"{queue_prefix}-jobs", connection=self.redis)
        self.tasks_queue = Queue(f"{queue_prefix}-tasks", connection=self.redis)

    @property
    def queues(self) -> list[Queue]:
        """Jobs first: a worker listening on both takes a waiting migration before a task."""
        return [self.jobs_queue, self.tasks_queue]

    def rq_job_id(self, kind: str, record_id: int) -> str:
        """The RQ job id of a dashboard job or task (found again to cancel it)."""
        return f"{self.queue_prefix}-{kind}-{record_id}"

    def submit(self, job_id: int) -> None:
        self._enqueue(self.jobs_queue, JOB, job_id)

    def submit_task(self, task_id: int) -> None:
        if self.run_task is None:
            raise RuntimeError("this executor was given no function that runs tasks")
        self._enqueue(self.tasks_queue, TASK, task_id)

    def _enqueue(self, queue: Queue, kind: str, record_id: int) -> None:
        import redis

        try:
            queue.enqueue_call(
                perform,
                args=(kind, record_id),
                job_id=self.rq_job_id(kind, record_id),
                description=f"dashboard {kind} #{record_id}",
                # A migration may run for hours: the dashboard's heartbeat watches it, not RQ.
                timeout=-1,
                result_ttl=RQ_RESULT_TTL,
                failure_ttl=RQ_RESULT_TTL,
                meta={"request_id": current_request_id()},
            )
        except redis.exceptions.RedisError as error:
            raise QueueUnavailable(
                f"The job queue (Redis) did not take {kind} #{record_id}: "
                f"{self._redacted(error)}. The {kind} stays queued; cancel it or try again "
                "when Redis answers."
            ) from error

    def cancel(self, job_id: int) -> None:
        """Take a cancelled job off the queue, or stop the work horse that already took it.

        The job's row is already `cancelled` (and its guard released) when this is called; a
        horse stopped by RQ's stop command takes its runner with it (the runner dies with its
        supervisor), and the runner's session lock in the target database ends with it.
        """
        import redis
        from rq.command import send_stop_job_command
        from rq.exceptions import InvalidJobOperation, NoSuchJobError
        from rq.job import Job as RQJob
        from rq.job import JobStatus as RQJobStatus

        try:
            rq_job = RQJob.fetch(self.rq_job_id(JOB, job_id), connection=self.redis)
            status = rq_job.get_status(refresh=True)
            if status == RQJobStatus.STARTED:
                send_stop_job_command(self.redis, rq_job.id)
            elif status in (RQJobStatus.QUEUED, RQJobStatus.DEFERRED, RQJobStatus.SCHEDULED):
                rq_job.cancel()
        except (NoSuchJobError, InvalidJobOperation):
            return  # already done, or never enqueued: nothing runs it
        except redis.exceptions.RedisError as error:
            # The row says cancelled: a worker that takes the job later finds that and returns.
            logger.warning(
                "job %s: could not take it off the queue: %s", job_id, self._redacted(error)
            )

    def problems(self) -> dict[str, str | None]:
        """Why the job queue cannot take work, by name ('redis'); None for each that can."""
        import redis

        try:
            self.redis.ping()
        except redis.exceptions.RedisError as error:
            return {"redis": self._redacted(error)}
        return {"redis": None}

    def _redacted(self, error: BaseException) -> str:
        text = " ".join(str(error).split()) or type(error).__name__
        password = self.redis.connection_pool.connection_kwargs.get("password")
        return redact(text.replace(password, "***") if password else text)


def perform(kind: str, record_id: int) -> None:
    """Run one dashboard job or task in an RQ work horse (the worker pushed the app context)."""
    # Imported here: rq imports the function by name in the horse, where the app already exists.
    from rq import get_current_job

    rq_job = get_current_job()
    bind_request_id((rq_job.meta or {}).get("request_id") if rq_job is not None else None)
    executor = get_executor()
    try:
        if kind == JOB:
            executor.run(job_id=record_id)
        elif kind == TASK and executor.run_task is not None:
            executor.run_task(task_id=record_id)
        else:
            raise ValueError(f"unknown kind of work: {kind!r}")
    except Exception:
        # The row says what went wrong where it can; RQ keeps the traceback with its job.
        logger.exception("%s %s: the supervisor failed", kind, record_id)
        raise


def make_executor(
    app: Flask, *, run: Callable[..., object], run_task: Callable[..., object]
) -> ThreadExecutor | RQExecutor:
    """Build the executor JOB_EXECUTOR names (threads by default; rq needs REDIS_URL)."""
    kind = str(app.config.get("JOB_EXECUTOR") or "thread").lower()
    if kind not in EXECUTORS:
        raise ConfigurationError(
            f"JOB_EXECUTOR must be one of {', '.join(EXECUTORS)}, not {kind!r}"
        )
    app.config["JOB_EXECUTOR"] = kind
    if kind == "rq":
        redis_url = app.config.get("REDIS_URL")
        if not redis_url:
            raise ConfigurationError(
                "JOB_EXECUTOR=rq needs REDIS_URL (e.g. redis://redis:6379/0): the job queue "
                "lives in Redis"
            )
        return RQExecutor(
            app,
            run=run,
            run_task=run_task,
            redis_url=redis_url,
            queue_prefix=app.config.get("RQ_QUEUE_PREFIX") or "migration-dashboard",
        )
    # Threads start only when the first job is submitted.
    return ThreadExecutor(
        app,
        run=run,
        run_task=run_task,
        max_workers=app.config["JOB_WORKERS"],
        task_workers=app.config.get("TASK_WORKERS", 2),
    )


def get_executor() -> Executor:
    """Return the app's executor (the app factory installs it)."""
    return current_app.extensions[EXECUTOR]
