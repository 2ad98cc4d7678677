"""What each kind of task runs (over the plans, diffs, rehearsal and drift services), and what a
page needs to show its result.

A plan task renders the SQL of every step of a long plan; schema diffs and rehearsals run on
scratch databases; a drift check checks one environment or all of them.

A request for a plan's task is answered at once: planning (reading the environment's revision,
parsing the script directory) happens inside the task, whose first progress line says so. So
the task is keyed by what can be known without planning (`diffs.plan_request_key`: what was
asked, the script directory's signature and the environment's last read revisions), which two
requests for the same plan share. The form posts the steps fingerprint its page showed; a task
whose plan turns out different says the plan changed, and runs nothing. For drift the key is
the environments checked.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flask import url_for

from dashboard.clock import as_aware
from dashboard.diffs import service as diffs
from dashboard.drift import service as drift
from dashboard.environments import environment_named, get_project
from dashboard.environments import service as environments
from dashboard.environments.loader import Environment
from dashboard.errors import PlanError
from dashboard.jobs.executor import get_executor
from dashboard.plans.rehearsal import Rehearsal, RehearsedStep, rehearse
from dashboard.plans.service import Plan, build_plan, render_plan
from dashboard.progress import Progress
from dashboard.rollouts import flows as rollout_flows
from dashboard.schema import Change, SchemaDiff
from dashboard.tasks import service as tasks
from dashboard.tasks.models import Task
from dashboard.tasks.service import EVERY_ENVIRONMENT, TaskSpec
from dashboard.users.models import Role

PLAN, SCHEMA_DIFF, REHEARSAL, DRIFT_CHECK = "plan", "schema_diff", "rehearsal", "drift_check"
ROLLOUT_REHEARSAL = rollout_flows.ROLLOUT_REHEARSAL
KIND_NAMES = {
    PLAN: "SQL of every step",
    SCHEMA_DIFF: "schema diff",
    REHEARSAL: "rehearsal",
    DRIFT_CHECK: "drift check",
    ROLLOUT_REHEARSAL: "rollout rehearsal",
}
# Who may start (or run again) each kind: scratch work needs an operator; rendering a plan's SQL
# shows what a viewer may already read.
START_ROLES = {
    PLAN: Role.VIEWER,
    SCHEMA_DIFF: Role.OPERATOR,
    REHEARSAL: Role.OPERATOR,
    DRIFT_CHECK: Role.OPERATOR,
    ROLLOUT_REHEARSAL: Role.OPERATOR,
}
PLAN_CHANGED = (
    "The plan changed since this was asked for (the environment moved or a script changed): "
    "reload the diff page and run it again."
)
PLANNING = "planning…"


# --- plans from a request ---------------------------------------------------------------------


def plan_for_request(
    *, environment: Environment, args: Mapping[str, str], render: bool = True
) -> Plan:
    """The plan a diff page asks for: an upgrade/downgrade target, or two revisions."""
    project = get_project()
    if "from" in args:
        return diffs.revision_plan(
            project=project,
            environment=environment,
            from_revision=args["from"],
            to_revision=args["to"],
            render=render,
        )
    return build_plan(
        project=project,
        environment=environment,
        direction=args["operation"],
        target=args["target"],
        render=render,
    )


def task_key(*, environment: Environment, args: Mapping[str, str]) -> str:
    """The key of a plan's tasks, known without planning (see the module's docstring)."""
    return diffs.plan_request_key(
        project=get_project(),
        environment=environment,
        args=args,
        # Between two revisions the plan is offline: the environment's revision plays no part.
        known_current=None if "from" in args else _known_current(environment),
    )


def _known_current(environment: Environment) -> tuple[str, ...] | None:
    """The environment's revisions as last read in the background (None: not read yet)."""
    statuses = environments.stored_statuses(project=get_project(), reading_since=None)
    for status in statuses:
        if status.name == environment.name and status.checked_at is not None:
            return tuple(status.current)
    return None


def _steps_plan(spec: TaskSpec, progress: Progress) -> tuple[Environment, Plan]:
    """The environment and the plan a task was asked for, as long as it is the one the page
    showed (when the page said which)."""
    progress(0, 0, PLANNING)
    environment = environment_named(spec.environment)
    plan = plan_for_request(environment=environment, args=spec.params["args"], render=False)
    expected = spec.params.get("fingerprint")
    if expected is not None and plan.fingerprint != expected:
        raise PlanError(PLAN_CHANGED)
    return environment, plan


# --- the work of each kind --------------------------------------------------------------------


def _render_all(*, spec: TaskSpec, progress: Progress) -> dict[str, Any]:
    environment, plan = _steps_plan(spec, progress)
    rendered = render_plan(
        project=get_project(), environment=environment, plan=plan, progress=progress
    )
    return {
        "fingerprint": rendered.fingerprint,
        "steps_fingerprint": plan.fingerprint,
        "steps": [
            {
                "revision_id": step.revision_id,
                "sql": step.sql,
                "unrenderable_reason": step.unrenderable_reason,
            }
            for step in rendered.steps
        ],
    }


def _schema_diff(*, spec: TaskSpec, progress: Progress) -> dict[str, Any]:
    environment, plan = _steps_plan(spec, progress)
    changes = diffs.plan_schema_diff(
        project=get_project(), environment=environment, plan=plan, progress=progress
    )
    return {**changes.as_dict(), "steps_fingerprint": plan.fingerprint}


def _rehearsal(*, spec: TaskSpec, progress: Progress) -> dict[str, Any]:
    environment, plan = _steps_plan(spec, progress)
    result = rehearse(project=get_project(), environment=environment, plan=plan, progress=progress)
    return {**result.as_dict(), "steps_fingerprint": plan.fingerprint}


def _drift_check(*, spec: TaskSpec, progress: Progress) -> dict[str, Any]:
    reports = drift.check_environments(
        environment_names=list(spec.params["environments"]),
        checked_by=spec.requested_by,
        progress=progress,
    )
    return {"reports": [{"environment": r.environment, "status": r.status} for r in reports]}


WORKS: dict[str, tasks.Work] = {
    PLAN: _render_all,
    SCHEMA_DIFF: _schema_diff,
    REHEARSAL: _rehearsal,
    DRIFT_CHECK: _drift_check,
    ROLLOUT_REHEARSAL: rollout_flows.rehearse_rollout,
}


def run_task(*, task_id: int) -> Task | None:
    """Run a queued task (what the executor is handed)."""
    return tasks.run_task(task_id=task_id, works=WORKS)


# --- starting ---------------------------------------------------------------------------------


def start_plan_task(
    *,
    kind: str,
    environment: Environment,
    args: Mapping[str, str],
    fingerprint: str | None,
    actor: str,
    again: bool,
) -> Task:
    """Start (or join, or reuse) a plan render, schema diff or rehearsal of the plan asked for,
    without planning it here: the task plans, and refuses a plan other than `fingerprint`."""
    key = task_key(environment=environment, args=args)
    if not again and fingerprint is not None:
        # A fresh result counts only if it is about the plan the page showed.
        fresh = tasks.current_task(kind=kind, environment=environment.name, key=key)
        again = fresh is not None and not shows_plan(fresh, fingerprint)
    params: dict[str, Any] = {"args": dict(args)}
    if fingerprint is not None:
        params["fingerprint"] = fingerprint
    return _submit(
        kind=kind, environment=environment.name, key=key, params=params, actor=actor, again=again
    )


def shows_plan(task: Task, fingerprint: str) -> bool:
    """Whether a plan's task belongs on a page showing the steps fingerprint `fingerprint`: it
    is under way, or it was asked for that plan (or for none) and, if it planned, found it."""
    if tasks.shown_state(task=task).active:
        return True
    asked = (task.params or {}).get("fingerprint")
    planned = (task.result or {}).get("steps_fingerprint")
    return asked in (None, fingerprint) and planned in (None, fingerprint)


def start_drift_check(*, environment: Environment | None, actor: str) -> Task:
    """Start (or join) a drift check of one environment, or of all of them."""
    names = [environment.name] if environment else get_project().names
    return _submit(
        kind=DRIFT_CHECK,
        environment=environment.name if environment else EVERY_ENVIRONMENT,
        key=",".join(names),
        params={"environments": names},
        actor=actor,
        # A check is asked for to know now: the table already shows the last one's answer.
        again=True,
    )


def _submit(
    *, kind: str, environment: str, key: str, params: dict[str, Any], actor: str, again: bool
) -> Task:
    task, created = tasks.start_task(
        kind=kind,
        environment=environment,
        key=key,
        params=params,
        requested_by=actor,
        again=again,
    )
    if created:
        get_executor().submit_task(task.id)
    return task


# --- showing ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskView:
    """A task as a page shows it: its state (interrupted when its heartbeat died), progress
    line, when it was computed, where it came from, and its result ready for its template."""

    task: Task
    state: str
    active: bool
    error: str | None
    progress_line: str
    elapsed: float
    finished_at: datetime | None
    origin_url: str
    start_url: str
    start_role: Role
    result: dict[str, Any]

    @property
    def name(self) -> str:
        return KIND_NAMES.get(self.task.kind, self.task.kind)


def view_of(task: Task) -> TaskView:
    """Describe a task for the templates (reads only)."""
    state = tasks.shown_state(task=task)
    elapsed = tasks.elapsed_seconds(task=task)
    return TaskView(
        task=task,
        state=state.value,
        active=state.active,
        error=tasks.shown_error(task=task),
        progress_line=_progress_line(task, state.value, elapsed),
        elapsed=elapsed,
        finished_at=as_aware(task.finished_at),
        origin_url=_origin_url(task),
        start_url=_start_url(task),
        start_role=START_ROLES[task.kind],
        result=_result_context(task) if state.value == "succeeded" else {},
    )


def _progress_line(task: Task, state: str, elapsed: float) -> str:
    if state == "queued":
        return f"Waiting for a worker · {elapsed:.1f} s"
    done, total, text = task.progress_done, task.progress_total, task.progress_text
    words = text or (f"{done} of {total}" if total else "starting")
    return f"{words} · {elapsed:.1f} s elapsed"


def _args(task: Task) -> dict[str, str]:
    return dict((task.params or {}).get("args") or {})


def _origin_url(task: Task) -> str:
    if task.kind == DRIFT_CHECK:
        return url_for("drift.index")
    if task.kind == ROLLOUT_REHEARSAL:
        return url_for("rollouts.rollout", rollout_id=task.params["rollout"])
    return url_for("diffs.diff", name=task.environment, **_args(task))


def _start_url(task: Task) -> str:
    endpoint = {PLAN: "diffs.render", SCHEMA_DIFF: "diffs.schema", REHEARSAL: "diffs.rehearsal"}
    if task.kind == DRIFT_CHECK:
        return url_for("drift.check")
    if task.kind == ROLLOUT_REHEARSAL:
        return url_for("rollouts.rehearse", rollout_id=task.params["rollout"])
    # Run again for the plan this task was asked for: if it has changed since, the task says so.
    fingerprint = (task.params or {}).get("fingerprint")
    extra = {"fingerprint": fingerprint} if fingerprint else {}
    return url_for(endpoint[task.kind], name=task.environment, **_args(task), **extra)


def _result_context(task: Task) -> dict[str, Any]:
    result = task.result or {}
    if task.kind == SCHEMA_DIFF:
        return {"changes": schema_diff_from(result)}
    if task.kind in (REHEARSAL, ROLLOUT_REHEARSAL):
        return {"rehearsal": rehearsal_from(result)}
    return dict(result)


def schema_diff_from(result: Mapping[str, Any]) -> SchemaDiff:
    """The schema diff a task stored."""
    return SchemaDiff(tuple(Change(**change) for change in result.get("changes", ())))


def rehearsal_from(result: Mapping[str, Any]) -> Rehearsal:
    """The rehearsal a task stored."""
    step_fields = {field.name for field in dataclasses.fields(RehearsedStep)}
    steps = tuple(
        RehearsedStep(
            **{
                name: tuple(value) if isinstance(value, list) else value
                for name, value in step.items()
                if name in step_fields
            }
        )
        for step in result.get("steps", ())
    )
    return Rehearsal(
        environment=result["environment"],
        direction=result["direction"],
        from_revisions=tuple(result.get("from_revisions", ())),
        target=result["target"],
        plan_fingerprint=result["plan_fingerprint"],
        steps=steps,
        succeeded=result["succeeded"],
        error=result.get("error"),
        warnings=tuple(result.get("warnings", ())),
        scratch=result.get("scratch", ""),
        unavailable=result.get("unavailable"),
    )


def rendered_plan_from(*, plan: Plan, task: Task | None) -> Plan | None:
    """The steps-only `plan` with the SQL a finished plan task rendered for it, if any."""
    result = (task.result or {}) if task is not None else {}
    if (
        task is None
        or task.kind != PLAN
        or task.state != "succeeded"
        or result.get("steps_fingerprint") != plan.fingerprint
    ):
        return None
    by_id = {step["revision_id"]: step for step in result.get("steps", ())}
    if set(by_id) != set(plan.revision_ids):
        return None
    steps = tuple(
        dataclasses.replace(
            step,
            sql=by_id[step.revision_id]["sql"],
            unrenderable_reason=by_id[step.revision_id]["unrenderable_reason"],
        )
        for step in plan.steps
    )
    return dataclasses.replace(plan, steps=steps, fingerprint=result["fingerprint"], rendered=True)


def drift_rows() -> list[tuple[Environment, Any]]:
    """Each environment with its newest drift report (None when never checked)."""
    reports = drift.latest_reports()
    return [(env, reports.get(env.name)) for env in get_project().environments]


def drift_tasks() -> list[TaskView]:
    """The drift checks under way (not those whose process died), as the Drift page shows them."""
    views = [view_of(task) for task in tasks.active_tasks(kind=DRIFT_CHECK)]
    return [view for view in views if view.active]
