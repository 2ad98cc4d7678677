"""Diff page: per step the script and its SQL, warnings, the schema diff, a rehearsal, SQL file.

Schema diffs, rehearsals and the SQL of a long plan are background tasks (dashboard.tasks): a
POST starts one (or joins the one under way) without planning, and answers at once with its
progress; the task plans, then the page swaps in its result.
"""

from __future__ import annotations

import re

from flask import (
    Blueprint,
    Response,
    abort,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.typing import ResponseReturnValue
from flask_login import current_user

from dashboard.auth import role_required
from dashboard.environments import environment_or_404, get_project
from dashboard.environments.loader import Environment
from dashboard.errors import DashboardError
from dashboard.htmx import is_htmx_request
from dashboard.paging import paging as steps_paging
from dashboard.plans.service import Plan, render_plan, render_steps
from dashboard.ratelimits import expensive_work
from dashboard.tasks import flows
from dashboard.tasks import service as tasks
from dashboard.users.models import Role

bp = Blueprint("diffs", __name__)

# Why a viewer may read a plan and its SQL, but not build scratch databases for it.
SCHEMA_DIFF_NEEDS = (
    "A schema diff builds two scratch databases on the environment's server and runs the "
    "migration scripts there"
)
REHEARSAL_NEEDS = (
    "A rehearsal builds a scratch database on the environment's server and runs the plan's "
    "scripts there"
)
FINGERPRINT = re.compile(r"[0-9a-f]{64}")


def _request_args() -> dict[str, str]:
    """The plan the request asks for: an upgrade/downgrade target, or two revisions."""
    if "from" in request.args or "to" in request.args:
        return {
            "from": request.args.get("from", "").strip() or "base",
            "to": request.args.get("to", "").strip() or "head",
        }
    operation = request.args.get("operation", "upgrade")
    if operation not in ("upgrade", "downgrade"):
        abort(400, description="The operation must be upgrade or downgrade.")
    default = "head" if operation == "upgrade" else "-1"
    return {"operation": operation, "target": request.args.get("target", "").strip() or default}


def _posted_fingerprint() -> str | None:
    """The steps fingerprint the page showed (form or query string), or None if it sent none."""
    text = request.values.get("fingerprint", "").strip()
    if text and not FINGERPRINT.fullmatch(text):
        abort(
            400,
            description=f"The fingerprint must be the 64 hex digits of the plan the diff page "
            f"showed, not “{text[:20]}”.",
        )
    return text or None


def _diff_context(environment: Environment, args: dict[str, str]) -> dict[str, object]:
    """The plan, the steps this page shows with their SQL, and the tasks about this plan."""
    steps_plan = flows.plan_for_request(environment=environment, args=args, render=False)
    key = flows.task_key(environment=environment, args=args)
    shown = {
        kind: tasks.current_task(kind=kind, environment=environment.name, key=key)
        for kind in (flows.PLAN, flows.SCHEMA_DIFF, flows.REHEARSAL)
    }
    # A task about another plan (the environment moved since) is not this page's.
    shown = {
        kind: task if task and flows.shows_plan(task, steps_plan.fingerprint) else None
        for kind, task in shown.items()
    }
    views = {kind: flows.view_of(task) if task else None for kind, task in shown.items()}
    paging = steps_paging(len(steps_plan.steps))
    # The forms post the steps fingerprint: the task refuses to run any other plan.
    common = {"tasks": views, "steps_fingerprint": steps_plan.fingerprint}
    if paging.pages == 1:
        plan = flows.plan_for_request(environment=environment, args=args)
        return {"plan": plan, "steps": plan.steps, "paging": None, **common}
    rendered = flows.rendered_plan_from(plan=steps_plan, task=shown[flows.PLAN])
    if rendered is not None:
        steps = rendered.steps[paging.start : paging.stop]
    else:
        steps = render_steps(
            project=get_project(),
            environment=environment,
            plan=steps_plan,
            start=paging.start,
            stop=paging.stop,
        )
    plan = rendered or steps_plan
    return {"plan": plan, "steps": steps, "paging": paging, **common}


@bp.get("/environments/<name>/diff")
@role_required(Role.VIEWER)
def diff(name: str) -> ResponseReturnValue:
    """What a plan would do to an environment, or what lies between two revisions."""
    environment = environment_or_404(name)
    args = _request_args()
    context: dict[str, object] = {"plan": None, "error": None, "tasks": {}}
    try:
        context.update(_diff_context(environment, args))
    except DashboardError as problem:
        context["error"] = str(problem)
    return render_template("diffs/diff.html", env=environment, args=args, **context)


def _start(kind: str, name: str) -> ResponseReturnValue:
    """Start (or join) a task about the plan the query string names; show its progress."""
    environment = environment_or_404(name)
    task = flows.start_plan_task(
        kind=kind,
        environment=environment,
        args=_request_args(),
        fingerprint=_posted_fingerprint(),
        actor=current_user.username,
        again=request.form.get("again") == "1",
    )
    if is_htmx_request():
        return render_template("tasks/_task.html", view=flows.view_of(task))
    return redirect(url_for("tasks.task", task_id=task.id), code=303)


@bp.post("/environments/<name>/diff/schema")
@role_required(Role.OPERATOR, why=SCHEMA_DIFF_NEEDS)
@expensive_work
def schema(name: str) -> ResponseReturnValue:
    """Start the schema diff of a plan: built at both ends in scratch databases and compared."""
    return _start(flows.SCHEMA_DIFF, name)


@bp.post("/environments/<name>/diff/rehearsal")
@role_required(Role.OPERATOR, why=REHEARSAL_NEEDS)
@expensive_work
def rehearsal(name: str) -> ResponseReturnValue:
    """Start a rehearsal: the plan run on a scratch copy at the starting revision."""
    return _start(flows.REHEARSAL, name)


@bp.post("/environments/<name>/diff/render")
@role_required(Role.VIEWER)
@expensive_work
def render(name: str) -> ResponseReturnValue:
    """Start rendering the SQL of every step of a long plan."""
    return _start(flows.PLAN, name)


def _rendered_plan(environment: Environment, args: dict[str, str]) -> Plan:
    """The plan with every step's SQL: from a finished render task if there is one."""
    plan = flows.plan_for_request(environment=environment, args=args, render=False)
    key = flows.task_key(environment=environment, args=args)
    task = tasks.current_task(kind=flows.PLAN, environment=environment.name, key=key)
    rendered = flows.rendered_plan_from(plan=plan, task=task)
    if rendered is not None:
        return rendered
    return render_plan(project=get_project(), environment=environment, plan=plan)


@bp.get("/environments/<name>/diff.sql")
@role_required(Role.VIEWER)
def sql_file(name: str) -> ResponseReturnValue:
    """The whole plan's SQL as a file, each step under a comment naming it."""
    environment = environment_or_404(name)
    plan = _rendered_plan(environment, _request_args())
    header = [
        f"-- {get_project().name}: {plan.direction} of {environment.name} "
        f"({environment.dialect}) from {', '.join(plan.from_revisions) or 'base'} "
        f"to {plan.requested_target}",
        f"-- plan fingerprint {plan.fingerprint}",
        *(f"-- warning: {warning}" for warning in plan.warnings),
        "",
    ]
    body = "\n".join(header) + "\n" + (plan.sql or "-- nothing to run\n")
    label = re.sub(
        r"[^A-Za-z0-9_.-]+",
        "_",
        f"{environment.name}-{plan.direction}-"
        f"{plan.revision_ids[-1][:12] if plan.steps else 'nothing'}",
    )
    return Response(
        body,
        mimetype="application/sql",
        headers={"Content-Disposition": f'attachment; filename="{label}.sql"'},
    )
