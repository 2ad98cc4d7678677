"""Jobs: request (rules, guard, audit), run under supervision, cancel, and notice dead ones."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NamedTuple, TypeVar

import sqlalchemy as sa
from flask import current_app

from dashboard.audit import service as audit
from dashboard.clock import as_aware, utcnow
from dashboard.environments import environment_named, get_board, get_project
from dashboard.environments.loader import Environment
from dashboard.errors import (
    DashboardError,
    EnvironmentUnreachable,
    FingerprintMissing,
    JobAlreadyRunning,
    JobRefused,
    PlanError,
)
from dashboard.extensions import db
from dashboard.jobs.executor import get_executor
from dashboard.jobs.models import ActiveJob, Job, JobLogLine, JobState
from dashboard.limits import check_length
from dashboard.plans.blocking import check_block_on
from dashboard.plans.service import build_plan
from dashboard.target import adapter as alembic_adapter
from dashboard.target.locks import lock_is_free, terminate_sessions
from dashboard.target.runner import LOCK_BUSY_EXIT, SQL_MARKER, STALE_EXIT, RunResult, run_in_child
from dashboard.users.models import Role, User

OPERATIONS = ("upgrade", "downgrade", "stamp")
LOG_FLUSH_SECONDS = 0.25
logger = logging.getLogger(__name__)
_T = TypeVar("_T")
# app.extensions key: functions called with job=… when a job ends (registered by the factory).
JOB_FINISHED_HOOKS = "dashboard.job_finished_hooks"


@dataclass(frozen=True)
class JobClaim:
    """Work a job is started for (an approved rollout), claimed in the job's own transaction.

    `take(environment=, operation=, target=, fingerprint=)` checks and locks it before the job
    exists, returning what `started(claimed=, job=, actor=)` records once the job does.
    """

    rollout_id: int
    take: Callable[..., Any]
    started: Callable[..., None]


def get_job(*, job_id: int) -> Job | None:
    """Return the job with this id, or None."""
    return db.session.get(Job, job_id)


def list_jobs(*, environment: str | None = None, limit: int = 50) -> list[Job]:
    """Return recent jobs, newest first."""
    query = sa.select(Job).order_by(Job.id.desc()).limit(limit)
    if environment:
        query = query.where(Job.environment == environment)
    return list(db.session.scalars(query))


def log_lines(*, job_id: int) -> list[JobLogLine]:
    """Return a job's log and statements in the order they happened."""
    return list(
        db.session.scalars(
            sa.select(JobLogLine).where(JobLogLine.job_id == job_id).order_by(JobLogLine.number)
        )
    )


LOG_TAIL_LINES = 500  # what the Job page shows at first; the whole log is a download away
LOG_BATCH_LINES = 500  # the most lines one poll, or one step of the download, reads


class LogLine(NamedTuple):
    """One line of a job's log as read for a page: its number, kind ('log' or 'sql') and text."""

    number: int
    kind: str
    text: str


@dataclass(frozen=True)
class LogTail:
    """The last lines of a job's log, and how many lines came before them."""

    lines: list[LogLine]
    earlier: int

    @property
    def last_number(self) -> int:
        return self.lines[-1].number if self.lines else 0


@dataclass(frozen=True)
class LogChunk:
    """The lines of a job's log after a line number, and whether more lines follow them."""

    lines: list[LogLine]
    more: bool
    last_number: int  # of the last line here, or the number asked after when there is none


def _log_rows(*, job_id: int, after: int, limit: int, newest_first: bool = False) -> list[LogLine]:
    """Read at most `limit` lines of one job through its (job_id, number) index, never more."""
    query = sa.select(JobLogLine.number, JobLogLine.kind, JobLogLine.text).where(
        JobLogLine.job_id == job_id, JobLogLine.number > after
    )
    order = JobLogLine.number.desc() if newest_first else JobLogLine.number
    return [LogLine(*row) for row in db.session.execute(query.order_by(order).limit(limit))]


def log_tail(*, job_id: int, limit: int = LOG_TAIL_LINES) -> LogTail:
    """Return the last `limit` lines of a job's log, and how many lines came before them."""
    lines = _log_rows(job_id=job_id, after=0, limit=limit, newest_first=True)[::-1]
    # The runner numbers a job's lines 1, 2, 3…: those before the tail are its first number - 1.
    return LogTail(lines=lines, earlier=lines[0].number - 1 if lines else 0)


def log_after(*, job_id: int, after: int, limit: int = LOG_BATCH_LINES) -> LogChunk:
    """Return up to `limit` lines of a job's log numbered after `after`, in order."""
    lines = _log_rows(job_id=job_id, after=after, limit=limit + 1)
    shown = lines[:limit]
    return LogChunk(
        lines=shown, more=len(lines) > limit, last_number=shown[-1].number if shown else after
    )


def log_text(*, job_id: int, batch: int = LOG_BATCH_LINES) -> Iterator[str]:
    """Yield a job's whole log as text, one batch of lines at a time ('SQL: ' before statements).

    Each batch is read in a transaction of its own, ended before the batch is handed on: a slow
    download neither holds the store (on SQLite, its write lock) nor keeps more than one batch.
    """
    after = 0
    while True:
        lines = _log_rows(job_id=job_id, after=after, limit=batch)
        db.session.rollback()
        if not lines:
            return
        yield "".join(
            f"SQL: {line.text}\n" if line.kind == "sql" else f"{line.text}\n" for line in lines
        )
        after = lines[-1].number


def active_job(*, environment: str) -> Job | None:
    """Return the queued or running job of an environment, if any."""
    guard = db.session.get(ActiveJob, environment)
    return db.session.get(Job, guard.job_id) if guard else None


def _check_rules(
    *, environment: Environment, operation: str, actor: User | None, rollout_id: int | None
) -> None:
    if operation not in OPERATIONS:
        raise JobRefused(f"“{operation}” is not a job; use upgrade, downgrade or stamp.")
    if actor is not None and not actor.has_role(Role.OPERATOR):
        raise JobRefused("Running jobs needs the operator role or higher.")
    # A rollout id is only a claim here: request_job checks the rollout before queuing.
    if environment.protected and rollout_id is None:
        raise JobRefused(
            f"{environment.name} is protected: changes go through an approved rollout."
        )
    if operation == "downgrade" and not environment.allow_downgrade:
        raise JobRefused(f"{environment.name} does not allow downgrades (allow_downgrade: false).")
    if environment.url is None:
        raise JobRefused(
            f"{environment.name} is not configured: {environment.not_configured_reason}"
        )


def request_job(
    *,
    environment_name: str,
    operation: str,
    target: str,
    actor: User | None,
    actor_name: str | None = None,
    expected_fingerprint: str | None = None,
    claim: JobClaim | None = None,
    submit: bool = True,
    rendered_plan: bool = True,
    override_justification: str | None = None,
) -> Job:
    """Check the rules, plan, queue the job (one per environment) and audit the request.

    `expected_fingerprint` is the fingerprint of the plan the requester saw: a rendered plan's
    (the page, a rollout), or with `rendered_plan=False` a steps-only plan's (the CLI, which
    shows its steps and no SQL, so renders none).

    On a protected environment the job must carry a `claim`: an approved rollout for exactly
    this environment, direction, target and plan fingerprint, which the rollout flow
    (dashboard.rollouts.flows) claims in the job's own transaction.
    """
    check_length("target", target)
    environment = environment_named(environment_name)
    rollout_id = claim.rollout_id if claim is not None else None
    _check_rules(environment=environment, operation=operation, actor=actor, rollout_id=rollout_id)
    if claim is not None and operation == "stamp":
        raise JobRefused("A rollout runs an upgrade or a downgrade, never a stamp.")
    # Plan before touching the store: on SQLite every store transaction holds its write lock.
    project = get_project()
    if operation == "stamp":
        database = project.database(environment)
        current = alembic_adapter.read_current_revisions(
            database, timeout=current_app.config["STATUS_CONNECT_TIMEOUT"]
        )
        try:
            named = alembic_adapter.resolve_revisions(database, target)
        except PlanError as error:
            raise JobRefused(f"Cannot stamp {target}: {error}.") from error
        # A prefix or a branch form becomes the revision it names now; several stay as typed.
        alembic_target = named[0] if len(named) == 1 else ("base" if not named else target)
        planned, fingerprint = [], None
    else:
        plan = build_plan(
            project=project,
            environment=environment,
            direction=operation,
            target=target,
            timeout=current_app.config["STATUS_CONNECT_TIMEOUT"],
            render=rendered_plan,
        )
        if not expected_fingerprint:
            # Nothing would tie the request to a plan someone reviewed: a replayed or duplicated
            # form would run whatever the plan is now. (A stamp runs no plan, so has none.)
            raise FingerprintMissing(
                "This form has no plan fingerprint: reload the page, review the plan and run it "
                "again."
            )
        if expected_fingerprint != plan.fingerprint:
            raise JobRefused(
                "The plan changed since it was shown (the environment moved or a script "
                "changed): review the new plan and run it again."
            )
        if plan.is_empty:
            raise JobRefused(f"Nothing to do: {environment.name} is already at {target}.")
        if claim is None:  # a rollout's plan was checked when the rollout was requested
            check_block_on(
                environment=environment,
                plan=plan,
                actor=actor,
                justification=override_justification,
                refusal=JobRefused,
            )
        current, planned = plan.from_revisions, plan.revision_ids
        alembic_target, fingerprint = plan.alembic_target, plan.fingerprint

    reap_stale_jobs(environment=environment.name)  # may commit: claim the rollout after it
    claimed = None
    if claim is not None:
        claimed = claim.take(
            environment=environment.name,
            operation=operation,
            target=alembic_target,
            fingerprint=fingerprint,
        )
    running = active_job(environment=environment.name)
    if running is not None:
        refusal = _already_running(running)
        db.session.rollback()  # let go of a claimed rollout's row lock
        raise refusal
    name = actor.username if actor is not None else (actor_name or "cli")
    job = Job(
        environment=environment.name,
        operation=operation,
        requested_target=target,
        alembic_target=alembic_target,
        from_revisions=list(current),
        planned_revisions=list(planned),
        fingerprint=fingerprint,
        requested_by_id=actor.id if actor is not None else None,
        requested_by=name,
    )
    db.session.add(job)
    db.session.flush()
    db.session.add(ActiveJob(environment=environment.name, job_id=job.id))
    try:
        db.session.flush()
    except sa.exc.IntegrityError:
        db.session.rollback()
        running = active_job(environment=environment.name)
        raise _already_running(running) from None
    audit.record(
        action="job.requested",
        actor=actor,
        actor_name=name,
        environment=environment.name,
        details=_job_details(job),
    )
    if claim is not None:
        claim.started(claimed=claimed, job=job, actor=actor)
    db.session.commit()
    if submit:
        get_executor().submit(job.id)
    return job


def _already_running(job: Job | None) -> JobAlreadyRunning:
    if job is None:
        return JobAlreadyRunning("Another job on this environment was just queued: try again.")
    started = as_aware(job.started_at or job.created_at)
    return JobAlreadyRunning(
        f"{job.environment} already has job #{job.id} ({job.operation} to "
        f"{job.requested_target}, {job.state}), started by {job.requested_by} at "
        f"{started:%Y-%m-%d %H:%M:%S} UTC."
    )


def _job_details(job: Job, **extra: object) -> dict:
    return {
        "job": job.id,
        "operation": job.operation,
        "from": list(job.from_revisions or []),
        "to": job.requested_target,
        "fingerprint": job.fingerprint,
        **extra,
    }


def cancel_job(*, job_id: int, actor: User | None, actor_name: str | None = None) -> Job:
    """Cancel a job that has not started yet."""
    job = db.session.get(Job, job_id)
    if job is None:
        raise JobRefused(f"There is no job #{job_id}.")
    if actor is not None and not actor.has_role(Role.OPERATOR):
        raise JobRefused("Cancelling jobs needs the operator role or higher.")
    if job.state != JobState.QUEUED:
        raise JobRefused(f"Job #{job.id} is {job.state}; only a queued job can be cancelled.")
    job.state = JobState.CANCELLED.value
    job.finished_at = utcnow()
    _release_guard(job)
    audit.record(
        action="job.cancelled",
        actor=actor,
        actor_name=actor.username if actor else actor_name,
        environment=job.environment,
        details=_job_details(job, outcome="cancelled"),
    )
    _job_finished(job)
    db.session.commit()
    get_executor().cancel(job.id)  # RQ: off the queue, or the horse that took it stopped
    return job


def _job_finished(job: Job) -> None:
    """Tell the work above the jobs service (a rollout) that a job ended; the caller commits."""
    for hook in current_app.extensions.get(JOB_FINISHED_HOOKS, ()):
        hook(job=job)


def _release_guard(job: Job) -> None:
    guard = db.session.get(ActiveJob, job.environment)
    if guard is not None and guard.job_id == job.id:
        db.session.delete(guard)


def heartbeat_is_stale(*, job: Job) -> bool:
    """True for a running job whose heartbeat is older than JOB_STALE_SECONDS.

    Pages show such a job as "interrupted?"; `reap_stale_jobs` (the background pass, or the next
    job request) stores it as interrupted once it has seen that the migration lock is free.
    """
    if job.state != JobState.RUNNING:
        return False
    beat = as_aware(job.heartbeat_at or job.started_at or job.created_at)
    stale_after = timedelta(seconds=current_app.config["JOB_STALE_SECONDS"])
    return beat is not None and utcnow() - beat >= stale_after


def reap_stale_jobs(*, environment: str | None = None) -> list[Job]:
    """Mark running jobs interrupted when their heartbeat is stale and their lock is free.

    Each job is locked, looked at again and committed on its own, so that when several
    processes look at once only one marks it and writes its `job.interrupted` event.
    """
    query = sa.select(Job).where(Job.state == JobState.RUNNING.value).order_by(Job.id)
    if environment:
        query = query.where(Job.environment == environment)
    candidates = [
        (job.id, job.environment)
        for job in db.session.scalars(query).all()
        if heartbeat_is_stale(job=job)
    ]
    # End the read before asking the target databases (on SQLite it holds the store's lock).
    db.session.commit()
    reaped = []
    for job_id, job_environment in candidates:
        if not _lock_seems_free(job_environment):
            continue
        job = db.session.get(Job, job_id, with_for_update=True, populate_existing=True)
        if job is None or not heartbeat_is_stale(job=job):
            db.session.rollback()  # another process marked it, or its heartbeat came back
            continue
        _mark_interrupted(job)
        db.session.commit()
        reaped.append(job)
    return reaped


def _lock_seems_free(environment_name: str) -> bool:
    """Whether the migration lock of an environment is free; False when it cannot be told."""
    target = get_project().get(environment_name)
    if target is None or target.url is None:
        return True
    try:
        return lock_is_free(
            url=target.url, version_table=target.version_table, schema=target.version_table_schema
        )
    except (DashboardError, sa.exc.SQLAlchemyError, OSError):
        return False  # cannot tell: leave it for a later look


def _mark_interrupted(job: Job) -> None:
    job.state = JobState.INTERRUPTED.value
    job.finished_at = utcnow()
    job.error = (
        "The process supervising this job stopped (its heartbeat went stale) and the "
        "database's migration lock is free: the run was interrupted. Check the environment's "
        "revision before running again."
    )
    _release_guard(job)
    audit.record(
        action="job.interrupted",
        actor=None,
        actor_name="system",
        environment=job.environment,
        details=_job_details(job, outcome="interrupted", on_behalf_of=job.requested_by),
    )
    _job_finished(job)


class _Supervision:
    """From a thread of its own: keep a running job's heartbeat fresh and write its log.

    Log lines are written in small batches (every LOG_FLUSH_SECONDS), not one commit each:
    the page stays live, and a chatty migration does not wait on the store. A store that
    refuses connections only delays them: lines wait in memory, in order, and the beats resume
    when it returns. The supervision lasts until the job's outcome is stored, so a job that
    ends during an outage is never taken for a dead one.
    """

    def __init__(self, app, job_id: int, every: float) -> None:
        self.app, self.job_id, self.every = app, job_id, every
        self.stop = threading.Event()
        self.pending: list[JobLogLine] = []
        self.pending_lock = threading.Lock()
        self.flush_lock = threading.Lock()
        self.runner_pid: int | None = None
        self.thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id}", daemon=True)

    def add(self, line: JobLogLine) -> None:
        with self.pending_lock:
            self.pending.append(line)

    def flush(self) -> None:
        """Write the lines waiting so far; on a store error keep them for the next try.

        One flush at a time (the heartbeat thread's or the final one): batches commit in
        order, so a page that polls for the lines after its last one never skips any.
        """
        with self.flush_lock:
            with self.pending_lock:
                batch, self.pending = self.pending, []
            if not batch:
                return
            try:
                db.session.add_all(batch)
                db.session.commit()
            except sa.exc.SQLAlchemyError:
                _rollback_quietly()
                with self.pending_lock:
                    self.pending[:0] = batch  # written with the next batch, in order
                raise

    def beat(self) -> None:
        """Store the heartbeat (and the runner's pid, if the store missed it at the start)."""
        values: dict[str, object] = {"heartbeat_at": utcnow()}
        if self.runner_pid is not None:
            values["runner_pid"] = self.runner_pid
        db.session.execute(sa.update(Job).where(Job.id == self.job_id).values(**values))
        db.session.commit()
        self.runner_pid = None

    def _run(self) -> None:
        with self.app.app_context():
            last_beat = time.monotonic()
            while not self.stop.wait(LOG_FLUSH_SECONDS):
                try:
                    self.flush()
                    if time.monotonic() - last_beat >= self.every:
                        self.beat()
                        last_beat = time.monotonic()
                # The store may be briefly unreachable: keep the lines, beat again next time.
                except sa.exc.SQLAlchemyError as error:
                    logger.warning(
                        "job %s: the store refused a heartbeat or log (%s); trying again",
                        self.job_id,
                        _first_line(error),
                    )
                    _rollback_quietly()

    def __enter__(self) -> _Supervision:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def _first_line(error: BaseException) -> str:
    return str(getattr(error, "orig", None) or error).strip().splitlines()[0]


def _rollback_quietly() -> None:
    """Roll the session back after a store error; a dead connection cannot even do that."""
    try:
        db.session.rollback()
    except sa.exc.SQLAlchemyError:
        db.session.close()


def _until_stored(what: str, job_id: int, write: Callable[[], _T]) -> _T:
    """Run `write` until the store takes it: a job's outcome must outlive a store outage.

    Only connection errors are retried (for JOB_STORE_RETRY_SECONDS); any other error, or an
    outage longer than that, is raised.
    """
    deadline = time.monotonic() + current_app.config["JOB_STORE_RETRY_SECONDS"]
    delay = 0.25
    while True:
        try:
            return write()
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as error:
            _rollback_quietly()
            if time.monotonic() > deadline:
                raise
            logger.warning(
                "job %s: the store refused %s (%s); trying again in %.1f s",
                job_id,
                what,
                _first_line(error),
                delay,
            )
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def run_job(*, job_id: int, on_line: Callable[[str], None] | None = None) -> Job:
    """Run a queued job in a supervised child process, streaming its log into the store."""
    app = current_app._get_current_object()
    job = db.session.get(Job, job_id)
    if job is None or job.state != JobState.QUEUED:
        return job
    environment = environment_named(job.environment)
    job.state = JobState.RUNNING.value
    job.started_at = job.heartbeat_at = utcnow()
    audit.record(
        action="job.started",
        actor=None,
        actor_name=job.requested_by,
        environment=job.environment,
        details=_job_details(job, on_behalf_of=job.requested_by),
    )
    db.session.commit()
    run = {
        "operation": job.operation,
        "target": job.alembic_target,
        "expected_from": tuple(job.from_revisions or ()),
        "planned": None if job.operation == "stamp" else tuple(job.planned_revisions or ()),
    }
    with _Supervision(app, job_id, every=app.config["JOB_HEARTBEAT_SECONDS"]) as supervision:
        result = run_in_child(
            get_project().database(environment),
            on_line=_line_writer(job_id, supervision, on_line),
            lock_wait=app.config["JOB_LOCK_WAIT_SECONDS"],
            on_start=lambda pid: _remember_pid(job_id, pid, supervision),
            **run,
        )
        outcome = _outcome(result=result, environment=environment)
        _until_stored("the job's log", job_id, supervision.flush)
        job = _until_stored(
            "the job's outcome",
            job_id,
            lambda: _store_outcome(job_id=job_id, result=result, outcome=outcome),
        )
    get_board().refresh_soon()
    return job


def _line_writer(
    job_id: int, supervision: _Supervision, on_line: Callable[[str], None] | None
) -> Callable[[str], None]:
    """Number each line the runner prints and hand it to the supervision to store."""
    counter = {"number": 0}

    def store_line(raw: str) -> None:
        if raw.startswith(SQL_MARKER):
            kind, text = "sql", json.loads(raw[len(SQL_MARKER) :])
        else:
            kind, text = "log", raw
        counter["number"] += 1
        supervision.add(
            JobLogLine(job_id=job_id, number=counter["number"], kind=kind, text=text, at=utcnow())
        )
        if on_line is not None:
            on_line(("SQL: " + text) if kind == "sql" else text)

    return store_line


def _remember_pid(job_id: int, pid: int, supervision: _Supervision) -> None:
    """Store the runner's pid now, or with the next heartbeat if the store refuses it."""
    try:
        db.session.execute(sa.update(Job).where(Job.id == job_id).values(runner_pid=pid))
        db.session.commit()
    except sa.exc.SQLAlchemyError:
        _rollback_quietly()
        supervision.runner_pid = pid


class _Outcome(NamedTuple):
    """What the target database says once the runner has ended (read without the store)."""

    to_revisions: list[str] | None
    reread_error: str | None
    ended_sessions: list[str]


def _outcome(*, result: RunResult, environment: Environment) -> _Outcome:
    """End a killed runner's sessions and re-read where the database now stands."""
    ended_sessions: list[str] = []
    if result.signal_name is not None:
        # The runner died mid-run: its sessions may still be migrating, and hold the lock.
        ended_sessions = terminate_sessions(url=environment.url, session_ids=list(result.sessions))
    try:
        to_revisions = list(
            alembic_adapter.read_current_revisions(
                get_project().database(environment),
                timeout=current_app.config["STATUS_CONNECT_TIMEOUT"],
            )
        )
    except EnvironmentUnreachable as error:
        return _Outcome(None, f"could not re-read the revision afterwards: {error}", ended_sessions)
    return _Outcome(to_revisions, None, ended_sessions)


def _store_outcome(*, job_id: int, result: RunResult, outcome: _Outcome) -> Job:
    """Store how the job ended, release its guard and audit it, in one transaction."""
    db.session.expire_all()
    job = db.session.get(Job, job_id)
    environment = environment_named(job.environment)
    job.to_revisions = outcome.to_revisions
    job.finished_at = utcnow()
    if result.succeeded:
        job.state = JobState.SUCCEEDED.value
    elif result.returncode == STALE_EXIT:
        job.state = JobState.STALE.value
        job.error = f"The plan no longer holds: {result.stale or result.failure_reason}."
    elif result.signal_name is not None:
        job.state = JobState.INTERRUPTED.value
        job.error = _killed_report(job, result, outcome.ended_sessions)
    else:
        job.state = JobState.FAILED.value
        job.error = _failure_report(job, result, environment)
    if outcome.reread_error:
        job.error = f"{job.error}; {outcome.reread_error}" if job.error else outcome.reread_error
    _release_guard(job)
    audit.record(
        action=f"job.{job.state}",
        actor=None,
        actor_name=job.requested_by,
        environment=job.environment,
        details=_job_details(
            job,
            outcome=job.state,
            after=job.to_revisions,
            half_applied=job.half_applied,
            failed_revision=job.failed_revision,
            failed_step=job.failed_step,
            on_behalf_of=job.requested_by,
        ),
    )
    _job_finished(job)
    db.session.commit()
    return job


def _at(revisions: list[str] | None) -> str:
    if revisions is None:
        return "an unknown revision (it could not be re-read)"
    return ", ".join(revisions) or "base"


def _failure_report(job: Job, result: RunResult, environment: Environment) -> str:
    """Say which step failed, why, and whether the database is consistent or half-applied."""
    failure = result.failure
    if result.returncode == LOCK_BUSY_EXIT and failure is None:
        return f"Nothing ran: {result.failure_reason}."
    if failure is None or failure.revision is None:
        reason = failure.error if failure is not None else result.failure_reason
        return (
            f"The run failed before its first step: {reason}. Nothing was migrated; the "
            f"database is at {_at(job.to_revisions)}."
        )
    job.failed_revision, job.failed_step = failure.revision, failure.step
    headline = f"{job.failing_step.capitalize()} failed: {failure.error.rstrip('.')}."
    if environment.transactional_ddl:
        scope = (
            "its transaction was rolled back"
            if environment.transaction_per_migration
            else "the run's one transaction was rolled back, with every step before it"
        )
        at = _at(job.to_revisions)
        return f"{headline} {scope.capitalize()}: the database is consistent at {at}."
    if failure.ddl_ran:
        job.half_applied = True
        listed = "; ".join(failure.ddl_ran)
        kept = (
            "MySQL/MariaDB does not roll back DDL"
            if environment.dialect in ("mysql", "mariadb")
            else "SQLite may keep the DDL of a failed step"
        )
        return (
            f"{headline} {kept}, and this step had already run "
            f"{len(failure.ddl_ran)} schema change(s): {listed}. The database may be "
            f"half-applied: its version table says {_at(job.to_revisions)}, but its schema has "
            "those changes. Check the schema, then stamp the revision it matches."
        )
    return (
        f"{headline} The step had changed no schema: the database is consistent at "
        f"{_at(job.to_revisions)}."
    )


def _killed_report(job: Job, result: RunResult, ended_sessions: list[str]) -> str:
    """Say that the runner was killed, where, and what became of its database sessions."""
    where = ""
    if result.last_step is not None:
        job.failed_step, job.failed_revision = result.last_step
        where = f" during {job.failing_step}"
    sessions = f" Its database sessions: {'; '.join(ended_sessions)}." if ended_sessions else ""
    return (
        f"The runner was killed by {result.signal_name}{where}.{sessions} The database is "
        f"at {_at(job.to_revisions)}: check it before running again."
    )
