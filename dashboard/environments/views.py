"""Overview and Environment pages, and the Refresh that asks for every status to be read again."""

from __future__ import annotations

from flask import Blueprint, redirect, render_template, url_for
from flask.typing import ResponseReturnValue

from dashboard.auth import role_required
from dashboard.drift import service as drift
from dashboard.environments import (
    environment_or_404,
    fresh_statuses,
    get_board,
    get_project,
    shared_statuses,
)
from dashboard.environments.status import EnvironmentStatus
from dashboard.htmx import is_htmx_request
from dashboard.rollouts import service as rollouts
from dashboard.users.models import Role

bp = Blueprint("environments", __name__)


def _overview(rows_statuses: list[EnvironmentStatus]) -> str:
    project = get_project()
    template = "environments/_table.html" if is_htmx_request() else "environments/overview.html"
    return render_template(
        template,
        project=project,
        rows=list(zip(project.environments, rows_statuses, strict=True)),
        drift_reports=drift.latest_reports(rows_statuses),
        pending_rollouts=rollouts.pending_counts(),
    )


def _environment(name: str, all_statuses: list[EnvironmentStatus]) -> str:
    env = environment_or_404(name)
    status = next(status for status in all_statuses if status.name == name)
    recent_rollouts = rollouts.list_rollouts(environment=name, limit=5) if env.protected else []
    template = "environments/_detail.html" if is_htmx_request() else "environments/environment.html"
    return render_template(
        template,
        project=get_project(),
        env=env,
        status=status,
        graph=get_board().graph(),
        recent_rollouts=recent_rollouts,
        drift_report=drift.latest_reports(all_statuses).get(name),
    )


@bp.get("/")
@role_required(Role.VIEWER)
def overview() -> str:
    """Every environment in promotion order with its status."""
    return _overview(shared_statuses())


@bp.get("/environments/<name>")
@role_required(Role.VIEWER)
def environment(name: str) -> str:
    """One environment: its current revision(s), what is pending and the last error."""
    environment_or_404(name)
    return _environment(name, shared_statuses())


@bp.post("/")
@bp.post("/environments/<name>")
@role_required(Role.VIEWER)
def refresh(name: str | None = None) -> ResponseReturnValue:
    """Read every environment again now; answer with the table (or one environment) read."""
    if name is not None:
        environment_or_404(name)
    fresh = fresh_statuses()
    if not is_htmx_request():
        target = url_for("environments.environment", name=name) if name else url_for(".overview")
        return redirect(target, 303)
    return _environment(name, fresh) if name else _overview(fresh)
