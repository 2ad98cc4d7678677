"""Tasks: find or start the one task for a piece of long work, run it, keep it alive, read it.

A request for work that is already queued or running, from any web process, joins that task:
`Task.active_key` is unique and set only while a task is active, so of two processes inserting
at once one wins and the other reads the winner. A task that succeeded a short while ago
(TASK_FRESH_SECONDS) is reused unless the person asks to run it again.

Each process beats the heartbeat of the tasks it holds (queued in its executor, or running)
from one thread, which also stores their progress. A task whose heartbeat went stale is shown
as interrupted (computed on read: GET never writes), and stored so by the next request that
would start the same work.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from flask import Flask, current_app

from dashboard.clock import as_aware, utcnow
from dashboard.errors import DashboardError
from dashboard.extensions import db
from dashboard.tasks.models import Task, TaskState

logger = logging.getLogger(__name__)

KEEPER = "dashboard.task_keeper"
DEFAULT_FRESH_SECONDS = 300.0
DEFAULT_RESULT_BYTES = 4 * 1024 * 1024
# The lengths of the task table's key and progress_text columns.
KEY_LENGTH = 255
TEXT_LENGTH = 255
PROGRESS_FLUSH_SECONDS = 0.5
EVERY_ENVIRONMENT = "*"
INTERRUPTED = (
    "The process running this task stopped (its heartbeat went stale) before it finished: "
    "nothing was kept. Run it again."
)


class TaskBusy(DashboardError):
    """The same work was being started and finished at once, several times over."""

    status = 409


@dataclass(frozen=True)
class TaskSpec:
    """What a task computes, handed to its work function (no store row is held meanwhile)."""

    id: int
    kind: str
    environment: str
    key: str
    params: dict[str, Any]
    requested_by: str


# A kind's work: called with the task's spec and a progress callable; returns JSON-able data.
Work = Callable[..., dict[str, Any]]


def active_key(*, kind: str, environment: str, key: str) -> str:
    """Return the digest that identifies this work while a task computes it."""
    return hashlib.sha256(f"{kind}\0{environment}\0{key}".encode()).hexdigest()


def _seconds(name: str, default: float) -> float:
    return float(current_app.config.get(name, default))


def heartbeat_is_stale(*, task: Task) -> bool:
    """True for a queued or running task whose heartbeat is older than JOB_STALE_SECONDS."""
    if not TaskState(task.state).active:
        return False
    beat = as_aware(task.heartbeat_at or task.started_at or task.created_at)
    stale_after = timedelta(seconds=_seconds("JOB_STALE_SECONDS", 30.0))
    return beat is not None and utcnow() - beat >= stale_after


def shown_state(*, task: Task) -> TaskState:
    """The task's state as a page shows it: an active task whose heartbeat died is interrupted."""
    if heartbeat_is_stale(task=task):
        return TaskState.INTERRUPTED
    return TaskState(task.state)


def shown_error(*, task: Task) -> str | None:
    """The task's error as a page shows it."""
    if heartbeat_is_stale(task=task):
        return INTERRUPTED
    return task.error


def is_fresh(*, task: Task) -> bool:
    """True for a task that succeeded within TASK_FRESH_SECONDS."""
    finished = as_aware(task.finished_at)
    if task.state != TaskState.SUCCEEDED or finished is None:
        return False
    return utcnow() - finished < timedelta(
        seconds=_seconds("TASK_FRESH_SECONDS", DEFAULT_FRESH_SECONDS)
    )


def get_task(*, task_id: int) -> Task | None:
    """Return the task with this id, or None."""
    return db.session.get(Task, task_id)


def current_task(*, kind: str, environment: str, key: str) -> Task | None:
    """Return the task a page shows for this work: the active one, else the newest one that
    finished within TASK_FRESH_SECONDS (succeeded or not), else None."""
    found = db.session.scalar(
        sa.select(Task)
        .where(Task.kind == kind, Task.environment == environment, Task.key == key)
        .order_by(Task.id.desc())
        .limit(1)
    )
    if found is None or TaskState(found.state).active:
        return found
    finished = as_aware(found.finished_at)
    window = timedelta(seconds=_seconds("TASK_FRESH_SECONDS", DEFAULT_FRESH_SECONDS))
    return found if finished is not None and utcnow() - finished < window else None


def active_tasks(*, kind: str) -> list[Task]:
    """Return the queued and running tasks of a kind, oldest first (stale ones included)."""
    return list(
        db.session.scalars(
            sa.select(Task).where(Task.kind == kind, Task.active_key.is_not(None)).order_by(Task.id)
        )
    )


def _fresh_result(*, kind: str, environment: str, key: str) -> Task | None:
    newest = db.session.scalar(
        sa.select(Task)
        .where(
            Task.kind == kind,
            Task.environment == environment,
            Task.key == key,
            Task.state == TaskState.SUCCEEDED.value,
        )
        .order_by(Task.id.desc())
        .limit(1)
    )
    return newest if newest is not None and is_fresh(task=newest) else None


def fit_key(key: str) -> str:
    """A task's key as stored: itself, or a digest of it when longer than its column (the
    names of 31 environments, say)."""
    if len(key) <= KEY_LENGTH:
        return key
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def fit_text(text: str) -> str:
    """A progress line as stored: cut to its column with an ellipsis."""
    return text if len(text) <= TEXT_LENGTH else text[: TEXT_LENGTH - 1] + "…"


def start_task(
    *,
    kind: str,
    environment: str,
    key: str,
    params: Mapping[str, Any],
    requested_by: str,
    again: bool = False,
) -> tuple[Task, bool]:
    """Join the active task for this work, reuse a fresh result, or queue a new task.

    Returns the task and whether it is new (the caller then submits it to the executor).
    """
    key = fit_key(key)
    if not again:
        fresh = _fresh_result(kind=kind, environment=environment, key=key)
        if fresh is not None:
            db.session.commit()  # end the read (SQLite holds its lock for a transaction)
            return fresh, False
    digest = active_key(kind=kind, environment=environment, key=key)
    for _ in range(5):
        running = db.session.scalar(sa.select(Task).where(Task.active_key == digest))
        if running is not None and not heartbeat_is_stale(task=running):
            db.session.commit()
            return running, False
        if running is not None:
            _retire(running)
        now = utcnow()
        task = Task(
            kind=kind,
            environment=environment,
            key=key,
            params=dict(params),
            state=TaskState.QUEUED.value,
            active_key=digest,
            requested_by=requested_by,
            created_at=now,
            heartbeat_at=now,
            progress_done=0,
            progress_total=0,
            progress_text="",
        )
        db.session.add(task)
        try:
            db.session.commit()
        except sa.exc.IntegrityError:
            db.session.rollback()  # another process queued it first: join that one
            continue
        task_keeper(current_app._get_current_object()).hold_queued(task.id)
        return task, True
    raise TaskBusy("That work was being started and finished at the same moment: try again.")


def _retire(task: Task) -> None:
    """Store a task whose heartbeat went stale as interrupted, freeing its work for a new one."""
    cutoff = utcnow() - timedelta(seconds=_seconds("JOB_STALE_SECONDS", 30.0))
    db.session.execute(
        sa.update(Task)
        .where(
            Task.id == task.id,
            Task.active_key.is_not(None),
            sa.func.coalesce(Task.heartbeat_at, Task.created_at) < cutoff,
        )
        .values(
            state=TaskState.INTERRUPTED.value,
            active_key=None,
            finished_at=utcnow(),
            error=INTERRUPTED,
        )
        .execution_options(synchronize_session=False)
    )
    db.session.commit()


def run_task(*, task_id: int, works: Mapping[str, Work]) -> Task | None:
    """Run a queued task with its kind's work, storing progress, then its result or error."""
    app = current_app._get_current_object()
    keeper = task_keeper(app)
    keeper.hold_running(task_id)
    try:
        spec = _claim(task_id)
        if spec is None:
            return db.session.get(Task, task_id)
        work = works[spec.kind]

        def progress(done: int, total: int, text: str) -> None:
            keeper.report(task_id, done, total, text)

        result, error = None, None
        try:
            result = _bounded(work(spec=spec, progress=progress))
        except DashboardError as failure:
            error = str(failure)
        except Exception as failure:  # the task says it failed; the log keeps the traceback
            logger.exception("task %s (%s) failed", task_id, spec.kind)
            error = f"The task failed unexpectedly ({type(failure).__name__}); it has been logged."
    finally:
        keeper.release(task_id)
    return _finish(task_id=task_id, result=result, error=error, progress=keeper.last(task_id))


def _claim(task_id: int) -> TaskSpec | None:
    """Mark a queued task running; None when it is not queued (another worker has it)."""
    now = utcnow()
    claimed = db.session.execute(
        sa.update(Task)
        .where(Task.id == task_id, Task.state == TaskState.QUEUED.value)
        .values(state=TaskState.RUNNING.value, started_at=now, heartbeat_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    db.session.commit()
    if not claimed:
        return None
    task = db.session.get(Task, task_id, populate_existing=True)
    spec = TaskSpec(
        id=task.id,
        kind=task.kind,
        environment=task.environment,
        key=task.key,
        params=dict(task.params or {}),
        requested_by=task.requested_by,
    )
    db.session.commit()  # hold no store transaction while the work runs
    return spec


def _bounded(result: dict[str, Any]) -> dict[str, Any]:
    """The result, if its JSON fits TASK_RESULT_BYTES."""
    limit = int(current_app.config.get("TASK_RESULT_BYTES", DEFAULT_RESULT_BYTES))
    size = len(json.dumps(result).encode())
    if size > limit:
        raise TaskResultTooLarge(
            f"The result is {size / 1024 / 1024:.1f} MiB, more than the "
            f"{limit / 1024 / 1024:.1f} MiB a task keeps (TASK_RESULT_BYTES)."
        )
    return result


class TaskResultTooLarge(DashboardError):
    """A task's result is larger than the store keeps for one."""

    status = 409


def _finish(
    *,
    task_id: int,
    result: dict[str, Any] | None,
    error: str | None,
    progress: tuple[int, int, str] | None,
) -> Task | None:
    values: dict[str, Any] = {
        "state": (TaskState.FAILED if error is not None else TaskState.SUCCEEDED).value,
        "active_key": None,
        "finished_at": utcnow(),
        "result": result,
        "error": error,
    }
    if progress is not None:
        done, total, text = progress
        values.update(progress_done=done, progress_total=total, progress_text=fit_text(text))
    if error is None and progress is not None and progress[1]:
        values["progress_done"] = progress[1]
    db.session.execute(
        sa.update(Task)
        .where(Task.id == task_id, Task.state == TaskState.RUNNING.value)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    db.session.commit()
    return db.session.get(Task, task_id, populate_existing=True)


def elapsed_seconds(*, task: Task, now: datetime | None = None) -> float:
    """Seconds the task has run (until it finished), or waited while queued."""
    start = as_aware(task.started_at or task.created_at)
    end = as_aware(task.finished_at) or now or utcnow()
    return max(0.0, (end - start).total_seconds()) if start else 0.0


# --- the keeper: one thread per process beats its tasks and stores their progress ------------


class _Keeper:
    """Beat the heartbeat of the tasks this process holds and store their newest progress.

    A process holds a task it queued (while it stays queued: its executor has it) and a task
    it runs. One thread for all of them, alive while the process holds any: progress is written
    at most every PROGRESS_FLUSH_SECONDS, the heartbeat every JOB_HEARTBEAT_SECONDS.
    """

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.queued: set[int] = set()
        self.running: set[int] = set()
        self.pending: dict[int, tuple[int, int, str]] = {}
        self.latest: dict[int, tuple[int, int, str]] = {}
        self.thread: threading.Thread | None = None

    def hold_queued(self, task_id: int) -> None:
        with self.lock:
            self.queued.add(task_id)
            self._start()

    def hold_running(self, task_id: int) -> None:
        with self.lock:
            self.queued.discard(task_id)
            self.running.add(task_id)
            self._start()

    def release(self, task_id: int) -> None:
        """Stop holding a task (it finished, or was never handed to an executor)."""
        with self.lock:
            self.queued.discard(task_id)
            self.running.discard(task_id)
            self.pending.pop(task_id, None)

    def report(self, task_id: int, done: int, total: int, text: str) -> None:
        entry = (max(0, int(done)), max(0, int(total)), str(text)[:255])
        with self.lock:
            self.pending[task_id] = self.latest[task_id] = entry

    def last(self, task_id: int) -> tuple[int, int, str] | None:
        with self.lock:
            return self.latest.pop(task_id, None)

    def stop(self, timeout: float = 2.0) -> None:
        """Hold nothing more and let the thread end (the app is going away: its store too)."""
        with self.lock:
            self.queued.clear()
            self.running.clear()
            self.pending.clear()
            thread = self.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=timeout)

    def _start(self) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="task-keeper", daemon=True)
            self.thread.start()

    def _run(self) -> None:
        every = float(self.app.config.get("JOB_HEARTBEAT_SECONDS", 2.0))
        last_beat = 0.0
        with self.app.app_context():
            while True:
                time.sleep(PROGRESS_FLUSH_SECONDS)
                with self.lock:
                    if not self.queued and not self.running:
                        self.thread = None
                        return
                    queued, running = set(self.queued), set(self.running)
                    pending, self.pending = self.pending, {}
                beat = time.monotonic() - last_beat >= every
                try:
                    if beat:
                        self._beat(queued, running)
                        last_beat = time.monotonic()
                    self._store_progress(pending)
                # The store may be briefly unreachable: beat again, and store progress, later.
                except sa.exc.SQLAlchemyError:
                    logger.warning("the store refused a task heartbeat or progress")
                    db.session.rollback()
                    with self.lock:
                        for task_id, entry in pending.items():
                            self.pending.setdefault(task_id, entry)
                finally:
                    db.session.remove()

    def _beat(self, queued: set[int], running: set[int]) -> None:
        still_queued = Task.state == TaskState.QUEUED.value
        db.session.execute(
            sa.update(Task)
            .where(
                Task.active_key.is_not(None),
                sa.or_(Task.id.in_(running), sa.and_(Task.id.in_(queued), still_queued)),
            )
            .values(heartbeat_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        db.session.commit()
        if queued:
            # A task another process took (or that ended) is that process's to beat.
            waiting = set(
                db.session.scalars(sa.select(Task.id).where(Task.id.in_(queued), still_queued))
            )
            db.session.commit()
            with self.lock:
                self.queued -= queued - waiting

    @staticmethod
    def _store_progress(pending: dict[int, tuple[int, int, str]]) -> None:
        for task_id, (done, total, text) in pending.items():
            db.session.execute(
                sa.update(Task)
                .where(Task.id == task_id, Task.state == TaskState.RUNNING.value)
                .values(progress_done=done, progress_total=total, progress_text=fit_text(text))
                .execution_options(synchronize_session=False)
            )
        if pending:
            db.session.commit()


_keepers_lock = threading.Lock()


def task_keeper(app: Flask) -> _Keeper:
    """Return the app's keeper in this process (made on first use)."""
    with _keepers_lock:
        keeper = app.extensions.get(KEEPER)
        if keeper is None:
            keeper = app.extensions[KEEPER] = _Keeper(app)
        return keeper
