"""Plans: what an upgrade or downgrade of one environment would run, step by step, with its SQL.

A plan resolves a target against the environment's current revisions, renders each step's
SQL for the environment's dialect in a child process (Alembic offline mode) and carries a
fingerprint that an approval or a job binds to.

Each step renders from the revisions the database holds just before it, so a merge step
renders from *all* its parents (Alembic deletes one version row and updates the other, as a
real run does) and a step that opens a new branch renders as an INSERT into the version table.
A step's SQL carries no BEGIN/COMMIT: the plan says how the run groups its steps into
transactions (`Plan.transactions`), and `Plan.sql` brackets them that way.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dashboard.environments.loader import Environment, Project
from dashboard.errors import PlanError
from dashboard.limits import check_length
from dashboard.plans.warnings import plan_warnings
from dashboard.target import adapter as alembic_adapter
from dashboard.target.renderer import render_in_child, without_password

_CACHE_SIZE = 128

# How a run groups its steps into transactions (Plan.transactions), as Alembic does it online.
ONE_TRANSACTION = "one"  # transactional DDL: one transaction for the whole run
TRANSACTION_PER_STEP = "per_step"  # transactional DDL with transaction_per_migration
NO_TRANSACTION = "none"  # SQLite, MySQL/MariaDB: each step commits on its own, DDL stays
_DIALECT_NAMES = {"postgresql": "PostgreSQL", "sqlite": "SQLite", "mysql": "MySQL/MariaDB"}


@dataclass(frozen=True)
class PlanStep:
    """One revision the plan runs, with its SQL or why that cannot be shown beforehand."""

    revision_id: str
    message: str
    down_revisions: tuple[str, ...]
    path: Path
    sql: str | None  # None when it cannot render offline
    unrenderable_reason: str | None


@dataclass(frozen=True)
class Plan:
    """An environment, a direction and a target resolved into steps, SQL and a fingerprint."""

    environment: str
    direction: str  # "upgrade" | "downgrade"
    requested_target: str  # as the user typed it
    alembic_target: str  # what to pass to alembic command.upgrade/downgrade
    from_revisions: tuple[str, ...]  # the environment's current revisions when planned
    steps: tuple[PlanStep, ...]  # in execution order
    fingerprint: str  # hex sha256
    dialect: str  # the environment's database, e.g. "postgresql"
    transactions: str  # ONE_TRANSACTION | TRANSACTION_PER_STEP | NO_TRANSACTION
    warnings: tuple[str, ...] = ()
    # False for a steps-only plan (the CLI's): no SQL rendered, the fingerprint binds the steps,
    # their scripts and env.py. Pages, downloads and rollouts always use a rendered plan.
    rendered: bool = True

    @property
    def revision_ids(self) -> list[str]:
        return [step.revision_id for step in self.steps]

    @property
    def is_empty(self) -> bool:
        return not self.steps

    @property
    def transactions_sentence(self) -> str:
        """One plain sentence: how the run groups these steps into transactions."""
        return transactions_sentence(
            transactions=self.transactions, dialect=self.dialect, steps=len(self.steps)
        )

    @property
    def sql(self) -> str:
        """The run's SQL, runnable as is: each step under a comment, in the run's transactions."""
        if not self.steps:
            return ""
        parts = [f"-- {self.transactions_sentence}\n"]
        if self.transactions == ONE_TRANSACTION:
            parts.append("BEGIN;\n")
        for step in self.steps:
            title = step.message.splitlines()[0] if step.message else ""
            header = f"-- {self.direction} {step.revision_id}: {title}".rstrip(": ")
            if step.sql is None:
                parts.append(f"{header}\n-- cannot render offline: {step.unrenderable_reason}\n")
            elif self.transactions == TRANSACTION_PER_STEP:
                parts.append(f"{header}\nBEGIN;\n\n{step.sql.strip()}\n\nCOMMIT;\n")
            else:
                parts.append(f"{header}\n{step.sql.strip()}\n")
        if self.transactions == ONE_TRANSACTION:
            parts.append("COMMIT;\n")
        return "\n".join(parts)


def run_transactions(*, environment: Environment) -> str:
    """How a run of `environment` groups its steps into transactions (Alembic's rules)."""
    if not environment.transactional_ddl:
        return NO_TRANSACTION
    if environment.transaction_per_migration:
        return TRANSACTION_PER_STEP
    return ONE_TRANSACTION


def transactions_sentence(*, transactions: str, dialect: str, steps: int) -> str:
    """Say in one sentence what a failure undoes, for a plan of `steps` steps."""
    if dialect in ("mysql", "mariadb"):
        # The server commits DDL itself, whatever transactions Alembic opens around it.
        return (
            "MySQL/MariaDB commit each DDL statement as it runs, and each step on its own: "
            "a step that fails half-way is not rolled back."
        )
    name = _DIALECT_NAMES.get(dialect, dialect)
    if transactions == NO_TRANSACTION:
        if dialect == "sqlite":
            # Python's sqlite3 runs DDL outside a transaction until the step's first DML.
            return (
                "SQLite commits each step on its own and may not roll back the DDL a step ran: "
                "a step that fails half-way can stay half-applied."
            )
        return (
            "Each step commits on its own (transactional_ddl: false): "
            "the steps before a failing one stay applied."
        )
    if steps == 1:
        return f"{name} runs this step in one transaction: if it fails, it is rolled back."
    if transactions == TRANSACTION_PER_STEP:
        return (
            "Each step runs in its own transaction: if one fails, it is rolled back, "
            "and the steps before it stay applied."
        )
    return (
        f"{name} runs these {steps} steps in one transaction: "
        "if one fails, every step is rolled back."
    )


_plan_cache: OrderedDict[tuple[Any, ...], Plan] = OrderedDict()
_plan_cache_lock = threading.Lock()


def build_plan(
    *,
    project: Project,
    environment: Environment,
    direction: str,
    target: str,
    current: tuple[str, ...] | None = None,
    timeout: float = 3.0,
    render: bool = True,
) -> Plan:
    """Resolve the target against the current revision(s) and render each step's SQL.

    With `render=False` the plan has its steps but no SQL (nothing runs env.py offline): what a
    CLI run binds to, which shows its steps and no SQL.
    """
    if direction not in ("upgrade", "downgrade"):
        raise PlanError(f"unknown direction {direction!r}: use upgrade or downgrade")
    check_length("target", target)
    database = project.database(environment)  # raises EnvironmentNotConfigured without a URL
    if current is None:
        current = alembic_adapter.read_current_revisions(database, timeout=timeout)
    current = tuple(current)
    script_location = project.script_location
    key = (
        environment.name,
        without_password(environment.url).render_as_string(hide_password=False),
        environment.version_table,
        environment.version_table_schema,
        environment.python_path,
        environment.configure_args,
        script_location,
        current,
        direction,
        target,
        alembic_adapter.script_signature(script_location),
        render,
    )
    with _plan_cache_lock:
        cached = _plan_cache.get(key)
        if cached is not None:
            _plan_cache.move_to_end(key)
            return cached

    plan = _make_plan(
        project=project,
        environment=environment,
        direction=direction,
        target=target,
        current=current,
        render=render,
    )
    with _plan_cache_lock:
        _plan_cache[key] = plan
        while len(_plan_cache) > _CACHE_SIZE:
            _plan_cache.popitem(last=False)
    return plan


def clear_plan_cache() -> None:
    """Forget every cached plan."""
    with _plan_cache_lock:
        _plan_cache.clear()


def _make_plan(
    *,
    project: Project,
    environment: Environment,
    direction: str,
    target: str,
    current: tuple[str, ...],
    render: bool,
) -> Plan:
    assert environment.url is not None
    script_location = project.script_location
    database = project.database(environment)
    resolved = alembic_adapter.resolve_steps(
        database, current=current, direction=direction, target=target
    )
    if render:
        rendered = render_in_child(
            database,
            direction=direction,
            steps=list(zip(resolved.revision_ids, resolved.heads_before, strict=True)),
        )
        assert [output.revision_id for output in rendered] == list(resolved.revision_ids)
        outputs = [(output.sql, output.unrenderable_reason) for output in rendered]
    else:
        outputs = [(None, None)] * len(resolved.revision_ids)
    graph = alembic_adapter.load_graph(script_location, environment.python_path)
    steps = []
    for revision_id, (sql, unrenderable_reason) in zip(
        resolved.revision_ids, outputs, strict=True
    ):
        revision = graph.get(revision_id)
        assert revision is not None
        steps.append(
            PlanStep(
                revision_id=revision_id,
                message=revision.message,
                down_revisions=revision.down_revisions,
                path=revision.path,
                sql=sql,
                unrenderable_reason=unrenderable_reason,
            )
        )
    transactions = run_transactions(environment=environment)
    fingerprint = plan_fingerprint(
        environment=environment.name,
        current=current,
        direction=direction,
        alembic_target=resolved.alembic_target,
        steps=steps,
        env_py=script_location / "env.py",
        transactions=transactions,
        rendered=render,
    )
    warnings = plan_warnings(
        steps=[(step.revision_id, step.path) for step in steps],
        direction=direction,
        dialect=environment.dialect,
        heads=len(graph.heads),
    )
    return Plan(
        environment=environment.name,
        direction=direction,
        requested_target=target,
        alembic_target=resolved.alembic_target,
        from_revisions=current,
        steps=tuple(steps),
        fingerprint=fingerprint,
        dialect=environment.dialect or "",
        transactions=transactions,
        warnings=tuple(warnings),
        rendered=render,
    )


def plan_fingerprint(
    *,
    environment: str,
    current: tuple[str, ...],
    direction: str,
    alembic_target: str,
    steps: list[PlanStep],
    env_py: Path,
    transactions: str,
    rendered: bool = True,
) -> str:
    """Return the sha256 that binds an approval to exactly this plan."""
    canonical = {
        "environment": environment,
        "current": sorted(current),
        "direction": direction,
        "alembic_target": alembic_target,
        "revisions": [step.revision_id for step in steps],
        "scripts": [_file_digest(step.path) for step in steps],
        "env_py": _file_digest(env_py),
        # A steps-only plan binds no SQL, so never matches a rendered plan's fingerprint.
        "sql": (
            [step.sql if step.sql is not None else step.unrenderable_reason for step in steps]
            if rendered
            else None
        ),
        # What a failure undoes is part of what an approver approves.
        "transactions": transactions,
    }
    encoded = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(encoded.encode("utf-8")).hexdigest()


def _file_digest(path: Path) -> str:
    # Bytes, not text: a change in encoding or line endings is a change to what runs.
    return hashlib.sha256(path.read_bytes()).hexdigest()
