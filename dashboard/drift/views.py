"""Drift page: live schemas against their revisions, and two environments side by side.

A check runs as a background task (dashboard.tasks): the table shows its progress, then the
reports it stored.
"""

from __future__ import annotations

from flask import Blueprint, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_login import current_user

from dashboard.auth import role_required
from dashboard.environments import environment_or_404, get_project
from dashboard.errors import DashboardError
from dashboard.htmx import is_htmx_request
from dashboard.ratelimits import expensive_work
from dashboard.schema import compare_live
from dashboard.tasks import flows as task_flows
from dashboard.tasks.views import fragment as task_fragment
from dashboard.users.models import Role

bp = Blueprint("drift", __name__)

# Why a viewer may read drift reports but not make them.
CHECK_NEEDS = (
    "A drift check builds a scratch database on the environment's server and runs the "
    "migration scripts there"
)
COMPARE_NEEDS = "A comparison connects to both environments' databases and reads their schemas"


@bp.get("/drift")
@role_required(Role.VIEWER)
def index() -> ResponseReturnValue:
    """Every environment's latest drift report, the checks under way, and a form to compare."""
    template = "drift/_table.html" if is_htmx_request() else "drift/index.html"
    return render_template(
        template, rows=task_flows.drift_rows(), drift_tasks=task_flows.drift_tasks()
    )


@bp.post("/drift/check")
@role_required(Role.OPERATOR, why=CHECK_NEEDS)
@expensive_work
def check() -> ResponseReturnValue:
    """Start checking one environment (`environment` in the form) or all of them."""
    name = request.form.get("environment", "").strip()
    task = task_flows.start_drift_check(
        environment=environment_or_404(name) if name else None, actor=current_user.username
    )
    if is_htmx_request():
        return task_fragment(task_flows.view_of(task))
    return redirect(url_for("drift.index"), code=303)


@bp.get("/drift/compare")
@role_required(Role.OPERATOR, why=COMPARE_NEEDS)
@expensive_work
def compare() -> ResponseReturnValue:
    """Two environments' live schemas side by side: what only one of them has, or differently."""
    project = get_project()
    first = request.args.get("a", "").strip()
    second = request.args.get("b", "").strip()
    changes, error = None, None
    if first and second:
        env_a, env_b = environment_or_404(first), environment_or_404(second)
        if env_a.name == env_b.name:
            error = "Pick two different environments."
        else:
            try:
                changes = compare_live(env_a=env_a, env_b=env_b)
            except DashboardError as problem:
                error = str(problem)
    return render_template(
        "drift/compare.html", project=project, a=first, b=second, changes=changes, error=error
    )
