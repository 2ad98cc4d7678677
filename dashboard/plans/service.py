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

import dataclasses
import functools
import hashlib
import json
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cachetools import LRUCache
from flask import current_app, has_app_context

from dashboard.environments.loader import Environment, Project
from dashboard.errors import PlanError
from dashboard.limits import check_length
from dashboard.plans.warnings import plan_warnings
from dashboard.progress import Progress, no_progress
from dashboard.target import adapter as alembic_adapter
from dashboard.target import launcher
from dashboard.target.renderer import RenderedStep, render_in_child, without_password

# Plans kept per process (app config PLAN_CACHE_SIZE); each holds its steps' SQL.
DEFAULT_PLAN_CACHE_SIZE = 128
# A plan renders in one child process per slice of steps, so that its progress can be told.
# A child renders all its steps in one env.py run (about 1.5 ms a step), but first reads every
# script of the directory (about a second per 1,000 revisions), so a slice is at least this
# many steps and a plan has at most RENDER_SLICES of them. Measured (bench/render.py's tree,
# 1,000 revisions, all pending): 5 children 4.5 s, 2 children 2.4 s, 1 child 1.4 s.
RENDER_SLICE_STEPS = 1000
RENDER_SLICES = 3

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
    # The revisions the database holds just before this step: what its SQL renders from.
    heads_before: tuple[str, ...] = ()


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
    # The findings (`warnings`), or how to find them on first use: a CLI run on an environment
    # without block_on never reads them, and finding them parses every script of the plan
    # (~0.1 s per 200 steps).
    findings: tuple[str, ...] | Callable[[], list[str]] = field(
        default=(), compare=False, repr=False
    )
    # False for a steps-only plan (the CLI's): no SQL rendered, the fingerprint binds the steps,
    # their scripts and env.py. Pages, downloads and rollouts always use a rendered plan.
    rendered: bool = True

    @functools.cached_property
    def warnings(self) -> tuple[str, ...]:
        """What is risky in this plan, per step (ours and squawk's), then for the whole plan."""
        return tuple(self.findings() if callable(self.findings) else self.findings)

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


_plan_cache: LRUCache = LRUCache(maxsize=DEFAULT_PLAN_CACHE_SIZE)
_plan_cache_lock = threading.Lock()  # an LRUCache reorders itself on every read


def _cache() -> LRUCache:
    """This process's plan cache, sized by the app's PLAN_CACHE_SIZE (started anew on a change)."""
    global _plan_cache
    size = DEFAULT_PLAN_CACHE_SIZE
    if has_app_context():
        size = max(1, int(current_app.config.get("PLAN_CACHE_SIZE", DEFAULT_PLAN_CACHE_SIZE)))
    with _plan_cache_lock:
        if _plan_cache.maxsize != size:
            _plan_cache = LRUCache(maxsize=size)
        return _plan_cache


def build_plan(
    *,
    project: Project,
    environment: Environment,
    direction: str,
    target: str,
    current: tuple[str, ...] | None = None,
    timeout: float = 3.0,
    render: bool = True,
    progress: Progress = no_progress,
) -> Plan:
    """Resolve the target against the current revision(s) and render each step's SQL.

    With `render=False` the plan has its steps but no SQL (nothing runs env.py offline): what a
    CLI run binds to, which shows its steps and no SQL. `progress` hears "rendered i of N steps".
    """
    if direction not in ("upgrade", "downgrade"):
        raise PlanError(f"unknown direction {direction!r}: use upgrade or downgrade")
    check_length("target", target)
    database = project.database(environment)  # raises EnvironmentNotConfigured without a URL
    # A child (to render this plan, or to run it) follows: let the zygote import meanwhile.
    launcher.prestart()
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
    cache = _cache()
    with _plan_cache_lock:
        cached = cache.get(key)
    if cached is not None:
        return cached
    plan = _make_plan(
        project=project,
        environment=environment,
        direction=direction,
        target=target,
        current=current,
        render=render,
        progress=progress,
    )
    with _plan_cache_lock:
        cache[key] = plan
    return plan


def render_plan(
    *, project: Project, environment: Environment, plan: Plan, progress: Progress = no_progress
) -> Plan:
    """Render the SQL of every step of a steps-only `plan`, from the revisions it was made at."""
    if plan.rendered:
        return plan
    return build_plan(
        project=project,
        environment=environment,
        direction=plan.direction,
        target=plan.requested_target,
        current=plan.from_revisions,
        progress=progress,
    )


def render_steps(
    *, project: Project, environment: Environment, plan: Plan, start: int, stop: int
) -> tuple[PlanStep, ...]:
    """Return the steps `plan.steps[start:stop]` with their SQL (one child renders them)."""
    chosen = plan.steps[start:stop]
    if plan.rendered or not chosen:
        return chosen
    rendered = render_in_child(
        project.database(environment),
        direction=plan.direction,
        steps=[(step.revision_id, step.heads_before) for step in chosen],
    )
    return tuple(
        dataclasses.replace(step, sql=output.sql, unrenderable_reason=output.unrenderable_reason)
        for step, output in zip(chosen, rendered, strict=True)
    )


def clear_plan_cache() -> None:
    """Forget every cached plan."""
    with _plan_cache_lock:
        _plan_cache.clear()


def _render_in_slices(
    database: Any, *, direction: str, steps: list[tuple[str, tuple[str, ...]]], progress: Progress
) -> list[RenderedStep]:
    """Render the steps in a few children, telling `progress` after each."""
    size = max(RENDER_SLICE_STEPS, math.ceil(len(steps) / RENDER_SLICES))
    rendered: list[RenderedStep] = []
    progress(0, len(steps), f"rendering the SQL of {len(steps)} steps")
    for start in range(0, len(steps), size):
        rendered += render_in_child(
            database, direction=direction, steps=steps[start : start + size]
        )
        progress(len(rendered), len(steps), f"rendered {len(rendered)} of {len(steps)} steps")
    return rendered


def _make_plan(
    *,
    project: Project,
    environment: Environment,
    direction: str,
    target: str,
    current: tuple[str, ...],
    render: bool,
    progress: Progress = no_progress,
) -> Plan:
    assert environment.url is not None
    script_location = project.script_location
    database = project.database(environment)
    resolved = alembic_adapter.resolve_steps(
        database, current=current, direction=direction, target=target
    )
    if render:
        rendered = _render_in_slices(
            database,
            direction=direction,
            steps=list(zip(resolved.revision_ids, resolved.heads_before, strict=True)),
            progress=progress,
        )
        assert [output.revision_id for output in rendered] == list(resolved.revision_ids)
        outputs = [(output.sql, output.unrenderable_reason) for output in rendered]
    else:
        outputs = [(None, None)] * len(resolved.revision_ids)
    graph = alembic_adapter.load_graph(
        script_location, environment.python_path, environment.alembic_ini
    )
    steps = []
    for revision_id, heads_before, (sql, unrenderable_reason) in zip(
        resolved.revision_ids, resolved.heads_before, outputs, strict=True
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
                heads_before=tuple(heads_before),
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
    # A rendered plan is linted now (squawk reads the app's SQUAWK_BIN); a steps-only plan's
    # findings come from its scripts alone, on first use.
    findings: tuple[str, ...] | Callable[[], list[str]] = functools.partial(
        plan_warnings,
        steps=[(step.revision_id, step.path, step.sql) for step in steps],
        direction=direction,
        dialect=environment.dialect,
        heads=len(graph.heads),
        environment=environment,
        transactions=transactions,
    )
    if render:
        findings = tuple(findings())
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
        findings=findings,
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
