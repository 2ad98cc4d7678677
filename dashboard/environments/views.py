"""Overview and Environment pages."""

from __future__ import annotations

from flask import Blueprint, abort, render_template, request

from dashboard.auth import role_required
from dashboard.drift import service as drift
from dashboard.environments import get_board, get_project
from dashboard.environments.status import EnvironmentStatus
from dashboard.htmx import is_htmx_request
from dashboard.rollouts import service as rollouts
from dashboard.users.models import Role

bp = Blueprint("environments", __name__)


def _statuses() -> list[EnvironmentStatus]:
    board = get_board()
    if request.args.get("refresh"):
        return board.refresh()
    # The first request after start-up may wait for the first read, bounded by its timeout.
    return board.snapshot(wait=board.timeout + 2)


@bp.get("/")
@role_required(Role.VIEWER)
def overview() -> str:
    """Every environment in promotion order with its status."""
    project = get_project()
    rows = list(zip(project.environments, _statuses(), strict=True))
    drift_reports = drift.latest_reports()
    pending_rollouts = rollouts.pending_counts()
    template = "environments/_table.html" if is_htmx_request() else "environments/overview.html"
    return render_template(
        template,
        project=project,
        rows=rows,
        drift_reports=drift_reports,
        pending_rollouts=pending_rollouts,
    )


@bp.get("/environments/<name>")
@role_required(Role.VIEWER)
def environment(name: str) -> str:
    """One environment: its current revision(s), what is pending and the last error."""
    project = get_project()
    env = project.get(name)
    if env is None:
        abort(404, description=f"There is no environment called “{name}” in {project.source.name}.")
    statuses = {status.name: status for status in _statuses()}
    graph = get_board().graph()
    recent_rollouts = rollouts.list_rollouts(environment=name, limit=5) if env.protected else []
    template = "environments/_detail.html" if is_htmx_request() else "environments/environment.html"
    return render_template(
        template,
        project=project,
        env=env,
        status=statuses[name],
        graph=graph,
        recent_rollouts=recent_rollouts,
    )
