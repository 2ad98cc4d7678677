"""Diff page: per step the script and its SQL, warnings, the schema diff, a rehearsal, SQL file."""

from __future__ import annotations

import re

from flask import Blueprint, Response, abort, render_template, request
from flask.typing import ResponseReturnValue

from dashboard.auth import role_required
from dashboard.diffs import service as diffs
from dashboard.environments import environment_or_404, get_project
from dashboard.environments.loader import Environment
from dashboard.errors import DashboardError
from dashboard.extensions import expensive_work
from dashboard.htmx import is_htmx_request
from dashboard.plans.rehearsal import rehearse
from dashboard.plans.service import Plan, build_plan
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


def _plan(environment: Environment, args: dict[str, str]) -> Plan:
    project = get_project()
    if "from" in args:
        return diffs.revision_plan(
            project=project,
            environment=environment,
            from_revision=args["from"],
            to_revision=args["to"],
        )
    return build_plan(
        project=project,
        environment=environment,
        direction=args["operation"],
        target=args["target"],
    )


def _fragment_or_page(fragment: str, **context: object) -> str:
    template = fragment if is_htmx_request() else "diffs/section.html"
    return render_template(template, fragment=fragment, **context)


@bp.get("/environments/<name>/diff")
@role_required(Role.VIEWER)
def diff(name: str) -> ResponseReturnValue:
    """What a plan would do to an environment, or what lies between two revisions."""
    environment = environment_or_404(name)
    args = _request_args()
    plan, error = None, None
    try:
        plan = _plan(environment, args)
    except DashboardError as problem:
        error = str(problem)
    return render_template("diffs/diff.html", env=environment, args=args, plan=plan, error=error)


@bp.get("/environments/<name>/diff/schema")
@role_required(Role.OPERATOR, why=SCHEMA_DIFF_NEEDS)
@expensive_work
def schema(name: str) -> ResponseReturnValue:
    """The schema diff of a plan: built at both ends in scratch databases and compared."""
    environment = environment_or_404(name)
    args = _request_args()
    changes, error = None, None
    try:
        plan = _plan(environment, args)
        changes = diffs.plan_schema_diff(project=get_project(), environment=environment, plan=plan)
    except DashboardError as problem:
        error = str(problem)
    return _fragment_or_page(
        "diffs/_schema.html", env=environment, args=args, changes=changes, error=error
    )


@bp.get("/environments/<name>/diff/rehearsal")
@role_required(Role.OPERATOR, why=REHEARSAL_NEEDS)
@expensive_work
def rehearsal(name: str) -> ResponseReturnValue:
    """Run the plan on a scratch copy at the starting revision and show what really ran."""

    environment = environment_or_404(name)
    args = _request_args()
    result, error = None, None
    try:
        plan = _plan(environment, args)
        result = rehearse(project=get_project(), environment=environment, plan=plan)
    except DashboardError as problem:
        error = str(problem)
    return _fragment_or_page(
        "diffs/_rehearsal.html", env=environment, args=args, rehearsal=result, error=error
    )


@bp.get("/environments/<name>/diff.sql")
@role_required(Role.VIEWER)
def sql_file(name: str) -> ResponseReturnValue:
    """The whole plan's SQL as a file, each step under a comment naming it."""
    environment = environment_or_404(name)
    plan = _plan(environment, _request_args())
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
