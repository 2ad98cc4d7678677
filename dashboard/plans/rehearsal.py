"""Rehearsals: a plan run for real on a scratch database, before the environment is touched.

The scratch database has the environment's dialect and is built at the plan's from-revisions
(dashboard.schema.materialize); it is always removed afterwards. Each step runs in its own
child process (dashboard.target.runner), so each step has its own statements, duration and outcome.
Rehearsal stops at the first failing step; the steps after it are reported as not run.

What a step lists as `statements` is every statement the child executed, in order, including
Alembic's version-table bookkeeping (CREATE TABLE alembic_version, INSERT/UPDATE/DELETE of
its rows): that is what really runs. Set apart in `introspection`, because they change
nothing and would bury the migration's own statements:
- catalogue reads: SQLite PRAGMA and sqlite_master queries (batch mode reflects the table it
  rebuilds), PostgreSQL pg_catalog and information_schema queries, MySQL DESCRIBE/SHOW;
- reads of the version table alone (`SELECT version_num FROM alembic_version`);
- the runner's own lock calls (pg_advisory_unlock, GET_LOCK/RELEASE_LOCK).
A SELECT on the application's tables (a data migration reading through op.get_bind()) is
never set apart.

A step that reads or writes the application's rows (a data migration: a SELECT, INSERT, UPDATE
or DELETE on its tables, other than the version table and an SQLite batch rebuild's copy into
its `_alembic_tmp_` table) is marked `data_migration`: on the scratch database, which has the
schema but no rows, it found nothing to work on, so what it would run per row is not listed.

A step's duration runs from Alembic's "Running upgrade/downgrade" log line (else the step's
first statement) to the child's last line, timed in this process as the lines arrive: the
child interpreter's start-up is not the migration's time.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from typing import Any

import sqlparse
from sqlalchemy.engine import URL

from dashboard.environments.loader import Environment, Project
from dashboard.errors import (
    DashboardError,
    EnvironmentNotConfigured,
    MigrationFailed,
    PlanError,
    ScratchUnavailable,
)
from dashboard.plans.service import Plan, PlanStep
from dashboard.plans.warnings import sql_tokens, statement_findings
from dashboard.progress import Progress
from dashboard.schema.service import build_steps, materialize, reflect_schema
from dashboard.target.runner import CHUNK_STEPS, SQL_MARKER, run_in_child
from dashboard.target.spec import TargetDatabase

_CATALOGUES = {
    "sqlite_master",
    "sqlite_temp_master",
    "sqlite_schema",
    "pg_catalog",
    "information_schema",
}
_LOCK_FUNCTIONS = {
    "pg_advisory_lock",
    "pg_advisory_unlock",
    "pg_try_advisory_lock",
    "get_lock",
    "release_lock",
    "is_free_lock",
    "is_used_lock",
}
# Statements that only read the server's metadata.
_METADATA_COMMANDS = {"PRAGMA", "DESCRIBE", "DESC", "SHOW", "EXPLAIN"}
_ROW_COMMANDS = {"SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "WITH", "REPLACE", "COPY"}
_BATCH_COPY_PREFIX = "_alembic_tmp_"
# Dialects whose statements alone do not say what a change loses (an SQLite batch rebuild,
# a MySQL MODIFY that restates the type): the scratch schema is read before each such step.
_REFLECT_BEFORE_STEPS = ("sqlite", "mysql", "mariadb")


@dataclass(frozen=True)
class RehearsedStep:
    """One plan step as it ran on the scratch database (or why it did not run)."""

    revision_id: str
    message: str
    statements: tuple[str, ...]  # executed, in order (see the module docstring)
    duration_seconds: float
    succeeded: bool
    error: str | None
    warnings: tuple[str, ...] = ()
    introspection: tuple[str, ...] = ()  # catalogue/version/lock reads set apart
    ran: bool = True
    data_migration: bool = False  # read or wrote the application's rows (see the docstring)

    @property
    def status(self) -> str:
        """succeeded | failed | not_run."""
        if not self.ran:
            return "not_run"
        return "succeeded" if self.succeeded else "failed"

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "status": self.status}


@dataclass(frozen=True)
class Rehearsal:
    """A plan rehearsed on a scratch database: per step statements, durations and outcome."""

    environment: str
    direction: str
    from_revisions: tuple[str, ...]
    target: str  # the plan's alembic_target
    plan_fingerprint: str
    steps: tuple[RehearsedStep, ...]
    succeeded: bool
    error: str | None
    warnings: tuple[str, ...] = ()
    scratch: str = ""  # where the scratch database was (no password)
    unavailable: str | None = None  # why no scratch database could be built

    @property
    def status(self) -> str:
        """succeeded | failed | unavailable."""
        if self.unavailable is not None:
            return "unavailable"
        return "succeeded" if self.succeeded else "failed"

    @property
    def statements(self) -> list[str]:
        return [statement for step in self.steps for statement in step.statements]

    def as_dict(self) -> dict[str, Any]:
        return {
            "environment": self.environment,
            "direction": self.direction,
            "from_revisions": list(self.from_revisions),
            "target": self.target,
            "plan_fingerprint": self.plan_fingerprint,
            "status": self.status,
            "succeeded": self.succeeded,
            "error": self.error,
            "warnings": list(self.warnings),
            "scratch": self.scratch,
            "unavailable": self.unavailable,
            "steps": [step.as_dict() for step in self.steps],
        }


def is_introspection(statement: str, *, version_table: str = "alembic_version") -> bool:
    """Is this statement only a metadata, version-table or lock read (see the module docstring)?"""
    tokens = sql_tokens(statement)
    if not tokens:
        return False
    first = tokens[0][1].upper()
    if first in _METADATA_COMMANDS:
        return True
    if first != "SELECT":
        return False
    names = {
        token[1].strip('"`').lower()
        for token in tokens
        if token[0] in sqlparse.tokens.Name or token[0] in sqlparse.tokens.Literal.String.Symbol
    }
    if names & (_CATALOGUES | _LOCK_FUNCTIONS):
        return True
    return bool(names) and names <= {version_table.lower(), "version_num"}


def touches_rows(statement: str, *, version_table: str = "alembic_version") -> bool:
    """Does this statement read or write the application's rows (see the module docstring)?"""
    tokens = sql_tokens(statement)
    if not tokens or tokens[0][1].upper() not in _ROW_COMMANDS:
        return False
    names = {
        token[1].strip('"`[]').lower()
        for token in tokens
        if token[0] in sqlparse.tokens.Name or token[0] in sqlparse.tokens.Literal.String.Symbol
    }
    if any(name.startswith(_BATCH_COPY_PREFIX) for name in names):
        return False  # an SQLite batch rebuild copying the table it recreates
    return bool(names - {version_table.lower(), "version_num"})


def rehearse(
    *,
    project: Project,
    environment: Environment,
    plan: Plan,
    chunk_steps: int = CHUNK_STEPS,
    progress: Progress | None = None,
) -> Rehearsal:
    """Run `plan` step by step on a scratch copy of `environment` at its from-revisions.

    The scratch database is built `chunk_steps` revisions per upgrade command; the plan's own
    steps then run one child each. `progress` hears of the build's steps, then of each
    rehearsed step, on one scale: the build's steps plus the plan's.
    """
    if plan.environment != environment.name:
        raise PlanError(
            f"this plan is for {plan.environment}, not {environment.name}: plan it again"
        )

    def result(**fields: Any) -> Rehearsal:
        return Rehearsal(
            environment=environment.name,
            direction=plan.direction,
            from_revisions=plan.from_revisions,
            target=plan.alembic_target,
            plan_fingerprint=plan.fingerprint,
            **fields,
        )

    if plan.is_empty:
        return result(steps=(), succeeded=True, error=None)

    steps: list[RehearsedStep] | None = None
    where = ""
    try:
        built = build_steps(project=project, environment=environment, revision=plan.from_revisions)
        scale = _Scale(progress, built=built, steps=len(plan.steps))
        with materialize(
            environment=environment,
            project=project,
            revision=plan.from_revisions,
            chunk_steps=chunk_steps,
            progress=scale.building,
        ) as url:
            where = _describe_scratch(environment, url)
            steps = _run_steps(
                project=project, environment=environment, plan=plan, url=url, scale=scale
            )
    except (ScratchUnavailable, EnvironmentNotConfigured, MigrationFailed) as error:
        if steps is not None:
            raise  # not a setup failure: never hide it behind "unavailable"
        # MigrationFailed here means the scratch could not be built at the current
        # revisions (a script below them fails): the plan itself was never run.
        return result(steps=(), succeeded=False, error=None, scratch=where, unavailable=str(error))
    return result(steps=tuple(steps), scratch=where, **_outcome(steps))


def _outcome(steps: list[RehearsedStep]) -> dict[str, Any]:
    """Whether the rehearsed steps succeeded, the first failure, and every step's warnings."""
    failed = next((step for step in steps if step.ran and not step.succeeded), None)
    return {
        "succeeded": failed is None,
        "error": f"{failed.revision_id}: {failed.error}" if failed is not None else None,
        "warnings": tuple(
            f"{step.revision_id[:12]}: {warning}" for step in steps for warning in step.warnings
        ),
    }


def _describe_scratch(environment: Environment, url: URL) -> str:
    if url.get_backend_name() == "sqlite":
        return "a temporary SQLite file, removed afterwards"
    server = "the shadow_url server" if environment.shadow_url is not None else "the server"
    location = f"{url.host}:{url.port}" if url.port else f"{url.host}"
    return (
        f"the temporary database {url.database} on {server} of {environment.name} "
        f"({location}), dropped afterwards"
    )


def step_target(step: PlanStep, direction: str) -> str:
    """The Alembic target that runs exactly this one step from the revisions before it."""
    if direction == "upgrade":
        # Every earlier step is applied, so upgrading to this revision runs only it.
        return step.revision_id
    if len(step.down_revisions) > 1:
        # Down to one parent of a merge undoes exactly the merge: the other parent stays.
        return step.down_revisions[0]
    # One step down the branch this revision heads; a plain parent id would also undo the
    # other branches above that parent when the database is at several heads.
    return f"{step.revision_id}@-1"


class _Scale:
    """One progress scale for a rehearsal: the scratch build's steps, then the plan's."""

    def __init__(self, progress: Progress | None, *, built: int, steps: int) -> None:
        self.progress, self.built, self.total = progress, built, built + steps

    def building(self, done: int, total: int, text: str) -> None:  # noqa: ARG002
        # The build's own "N steps done" is left to the first rehearsed step to say.
        if self.progress is not None and done < self.built:
            self.progress(done, self.total, text)

    def rehearsing(self, index: int, count: int, step: PlanStep) -> None:
        if self.progress is not None:
            text = f"rehearsing step {index + 1} of {count}: {step.revision_id} {step.message}"
            self.progress(self.built + index, self.total, text.rstrip())

    def finished(self) -> None:
        if self.progress is not None:
            self.progress(self.total, self.total, "rehearsal finished")


def _run_steps(
    *, project: Project, environment: Environment, plan: Plan, url: URL, scale: _Scale
) -> list[RehearsedStep]:
    scratch = dataclasses.replace(project.database(environment), url=url)
    dialect = url.get_backend_name()
    steps: list[RehearsedStep] = []
    for index, step in enumerate(plan.steps):
        if steps and not steps[-1].succeeded:
            steps.append(
                RehearsedStep(
                    revision_id=step.revision_id,
                    message=step.message,
                    statements=(),
                    duration_seconds=0.0,
                    succeeded=False,
                    error=None,
                    ran=False,
                )
            )
            continue
        scale.rehearsing(index, len(plan.steps), step)
        tables = (
            _tables(url, environment.version_table) if dialect in _REFLECT_BEFORE_STEPS else None
        )
        steps.append(
            _run_step(
                scratch=scratch,
                step=step,
                direction=plan.direction,
                tables=tables,
            )
        )
    scale.finished()
    return steps


def _tables(url: URL, version_table: str) -> dict[str, dict[str, str]] | None:
    """The scratch database's columns per table, for the statement warnings."""
    try:
        schema = reflect_schema(url=url, version_table=version_table)
    except DashboardError:
        return None  # warnings are then less precise, never wrong: see statement_warnings
    return {
        name: {column.name: column.type for column in table.columns.values()}
        for name, table in schema.tables.items()
    }


def _run_step(
    *,
    scratch: TargetDatabase,
    step: PlanStep,
    direction: str,
    tables: dict[str, dict[str, str]] | None,
) -> RehearsedStep:
    arrivals: list[tuple[float, str]] = []

    def on_line(line: str) -> None:
        arrivals.append((time.perf_counter(), line))

    outcome = run_in_child(
        scratch,
        operation=direction,
        target=step_target(step, direction),
        on_line=on_line,
    )
    statements: list[str] = []
    introspection: list[str] = []
    started: float | None = None
    first_statement: float | None = None
    for arrived, line in arrivals:
        if line.startswith(SQL_MARKER):
            statement = json.loads(line[len(SQL_MARKER) :])
            if is_introspection(statement, version_table=scratch.version_table):
                introspection.append(statement)
            else:
                statements.append(statement)
                if first_statement is None:
                    first_statement = arrived
        elif f"Running {direction} " in line and started is None:
            started = arrived
    start = started if started is not None else first_statement
    duration = arrivals[-1][0] - start if start is not None and arrivals else 0.0
    return RehearsedStep(
        revision_id=step.revision_id,
        message=step.message,
        statements=tuple(statements),
        duration_seconds=duration,
        succeeded=outcome.succeeded,
        error=None if outcome.succeeded else outcome.failure_reason,
        # A step that could not render offline: what really ran is all squawk can read.
        warnings=tuple(
            statement_findings(
                statements,
                scratch.dialect,
                tables=tables,
                version_table=scratch.version_table,
                lint=step.sql is None,
            )
        ),
        introspection=tuple(introspection),
        data_migration=any(
            touches_rows(statement, version_table=scratch.version_table) for statement in statements
        ),
    )
