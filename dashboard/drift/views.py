"""Drift page: live schemas against their revisions, and two environments side by side."""

from __future__ import annotations

from flask import Blueprint, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_login import current_user

from dashboard.auth import role_required
from dashboard.drift import service as drift
from dashboard.environments import environment_or_404, get_project
from dashboard.environments.loader import Environment
from dashboard.errors import DashboardError
from dashboard.extensions import expensive_work
from dashboard.htmx import is_htmx_request
from dashboard.schema import compare_live
from dashboard.users.models import Role

bp = Blueprint("drift", __name__)

# Why a viewer may read drift reports but not make them.
CHECK_NEEDS = (
    "A drift check builds a scratch database on the environment's server and runs the "
    "migration scripts there"
)
COMPARE_NEEDS = "A comparison connects to both environments' databases and reads their schemas"


def _rows() -> list[tuple[Environment, object]]:
    reports = drift.latest_reports()
    return [(env, reports.get(env.name)) for env in get_project().environments]


@bp.get("/drift")
@role_required(Role.VIEWER)
def index() -> ResponseReturnValue:
    """Every environment's latest drift report, and a form to compare two environments."""
    template = "drift/_table.html" if is_htmx_request() else "drift/index.html"
    return render_template(template, rows=_rows())


@bp.post("/drift/check")
@role_required(Role.OPERATOR, why=CHECK_NEEDS)
@expensive_work
def check() -> ResponseReturnValue:
    """Check one environment (`environment` in the form) or all of them now."""
    project = get_project()
    name = request.form.get("environment", "").strip()
    targets = [environment_or_404(name)] if name else list(project.environments)
    for environment in targets:
        drift.check_drift(environment_name=environment.name, checked_by=current_user.username)
    if is_htmx_request():
        return render_template("drift/_table.html", rows=_rows())
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
