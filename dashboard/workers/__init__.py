"""`flask dashboard worker`: run the jobs and tasks a deployment with JOB_EXECUTOR=rq enqueues.

The worker runs in the app context and forks an RQ work horse per job or task; a child process
of it takes part in the election of the one background refresher of the deployment
(dashboard.scheduler: statuses, reaping interrupted jobs, expiring rollouts). The horse starts
with fresh store connections (the pool inherited from the worker is dropped, not closed, since
the worker's own connections share its sockets), and dies with the worker: a worker killed
mid-job leaves its job to the heartbeat reaping like a killed horse does, never a migration
running on with nobody to record it.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from typing import TYPE_CHECKING

import click
import sqlalchemy as sa
from flask import Flask, current_app
from flask.cli import with_appcontext

from dashboard import scheduler
from dashboard.cli import dashboard_cli
from dashboard.cli_errors import reports_errors
from dashboard.environments import get_board
from dashboard.errors import ConfigurationError
from dashboard.extensions import db
from dashboard.jobs.executor import RQExecutor, get_executor
from dashboard.processes import die_with_parent
from dashboard.scheduler import service as leases

if TYPE_CHECKING:
    from rq import Queue
    from rq.job import Job as RQJob

logger = logging.getLogger(__name__)


def _dashboard_worker_class() -> type:
    """RQ's Worker whose work horses run in a fresh app context of the worker's app (built
    here: only a worker imports rq)."""
    from rq import Worker

    class DashboardWorker(Worker):
        """An RQ worker whose work horses run in a fresh app context of the worker's app."""

        app: Flask

        def main_work_horse(self, job: RQJob, queue: Queue) -> None:
            die_with_parent()
            with self.app.app_context():
                # Forget (without closing) the store connections inherited from the worker.
                for engine in db.engines.values():
                    engine.dispose(close=False)
                super().main_work_horse(job, queue)  # ends the process (os._exit)

        def perform_job(self, job: RQJob, queue: Queue, execution) -> bool:  # type: ignore[override]
            performed = super().perform_job(job, queue, execution)
            # A job moved an environment: ask the refresher, wherever it runs, to read it now.
            try:
                leases.request_run(name=scheduler.STATUS_LEASE)
            except sa.exc.SQLAlchemyError as error:  # the next periodic read shows it anyway
                db.session.rollback()
                logger.warning("could not ask the refresher for an early read: %s", error)
            return performed

    return DashboardWorker


@click.command("worker")
@click.option(
    "--queue",
    "queues",
    type=click.Choice(["jobs", "tasks"]),
    multiple=True,
    help="Only this queue (repeatable); default: jobs first, then tasks.",
)
@click.option("--burst", is_flag=True, help="Stop once the queues are empty.")
@click.option(
    "--no-refresher",
    is_flag=True,
    help="Do not take part in the election of the deployment's background refresher.",
)
@click.option("--name", default=None, help="The worker's name in RQ (default: host.pid).")
@with_appcontext
@reports_errors
def worker_command(queues: tuple[str, ...], burst: bool, no_refresher: bool, name: str | None):
    """Run enqueued jobs and tasks (JOB_EXECUTOR=rq), one RQ work horse each."""
    app = current_app._get_current_object()
    executor = get_executor()
    if not isinstance(executor, RQExecutor):
        raise ConfigurationError(
            "flask dashboard worker needs JOB_EXECUTOR=rq and REDIS_URL: with the thread "
            "executor, jobs run inside the web processes"
        )
    chosen = [
        queue
        for queue, kind in ((executor.jobs_queue, "jobs"), (executor.tasks_queue, "tasks"))
        if not queues or kind in queues
    ]
    if app.config["LOG_FORMAT"] == "text" and not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s"
        )
    refresher = None if no_refresher else _start_refresher(app)
    worker = _dashboard_worker_class()(
        chosen,
        connection=executor.redis,
        name=name or f"{socket.gethostname()}.{os.getpid()}",
    )
    worker.app = app
    click.echo(f"worker {worker.name}: listening on {', '.join(q.name for q in chosen)}", err=True)
    try:
        worker.work(burst=burst, logging_level="INFO")
    finally:
        if refresher is not None:
            _stop(refresher)


def _start_refresher(app: Flask) -> int:
    """Fork the process that takes part in the refresher's election; return its pid.

    The refresher's threads live there, not here: this process forks a work horse per job, and
    a fork copies no thread but every lock one of them held at that moment.
    """
    pid = os.fork()
    if pid:
        return pid
    try:
        die_with_parent()
        stopping = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stopping.set())
        with app.app_context():
            for engine in db.engines.values():
                engine.dispose(close=False)  # the worker's connections are the worker's
        scheduler.run_refresher(app)
        while not stopping.wait(1.0):
            pass
        with app.app_context():
            get_board().stop()  # lets the lease lapse now, so another process takes over
    finally:
        os._exit(0)


def _stop(pid: int) -> None:
    """Stop the refresher process and wait for it (it dies with this process anyway)."""
    try:
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def init_app(app: Flask) -> None:
    """Add `worker` to the `flask dashboard` group."""
    dashboard_cli.add_command(worker_command)
