"""Run jobs from the Environment page; follow them on the Job page; list them."""

from __future__ import annotations

from flask import Blueprint, Response, abort, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_login import current_user

from dashboard.auth import role_required
from dashboard.environments import get_project
from dashboard.error_pages import shows_errors_with
from dashboard.errors import DashboardError
from dashboard.htmx import is_htmx_request, stop_polling
from dashboard.jobs import service as jobs
from dashboard.plans.service import build_plan
from dashboard.users.models import Role

bp = Blueprint("jobs", __name__)


def _refused(error: DashboardError) -> str:
    """Say why a job was not started (or cancelled), with the way back."""
    template = "jobs/_refused.html" if is_htmx_request() else "jobs/refused.html"
    environment = (request.view_args or {}).get("name", "")
    return render_template(
        template, message=str(error), environment=environment, status=error.status
    )


@bp.post("/environments/<name>/jobs")
@role_required(Role.OPERATOR)
@shows_errors_with(_refused)
def start(name: str) -> ResponseReturnValue:
    """Queue an upgrade, downgrade or stamp for the plan the user reviewed."""
    job = jobs.request_job(
        environment_name=name,
        operation=request.form.get("operation", "upgrade"),
        target=request.form.get("target", "").strip() or "head",
        actor=current_user._get_current_object(),
        expected_fingerprint=request.form.get("fingerprint", "").strip() or None,
    )
    target = url_for("jobs.job", job_id=job.id)
    if is_htmx_request():
        return Response(status=204, headers={"HX-Redirect": target})
    return redirect(target, code=303)


@bp.post("/jobs/<int:job_id>/cancel")
@role_required(Role.OPERATOR)
@shows_errors_with(_refused)
def cancel(job_id: int) -> ResponseReturnValue:
    """Cancel a queued job."""
    job = jobs.cancel_job(job_id=job_id, actor=current_user._get_current_object())
    return redirect(url_for("jobs.job", job_id=job.id), code=303)


@bp.get("/jobs")
@role_required(Role.VIEWER)
def index() -> ResponseReturnValue:
    """Recent jobs, overall or for one environment."""
    environment = request.args.get("environment") or None
    return render_template(
        "jobs/index.html",
        jobs=jobs.list_jobs(environment=environment, limit=100),
        environment=environment,
    )


def _job_or_404(job_id: int):
    job = jobs.get_job(job_id=job_id)
    if job is None:
        abort(404, description=f"There is no job #{job_id}.")
    return job


@bp.get("/jobs/<int:job_id>")
@role_required(Role.VIEWER)
def job(job_id: int) -> ResponseReturnValue:
    """One job: its state, plan, live log and the statements it ran."""
    found = _job_or_404(job_id)
    return render_template(
        "jobs/job.html",
        job=found,
        lines=jobs.log_lines(job_id=job_id),
        heartbeat_is_stale=jobs.heartbeat_is_stale(job=found),
    )


@bp.get("/jobs/<int:job_id>/live")
@role_required(Role.VIEWER)
def live(job_id: int) -> ResponseReturnValue:
    """The live part of the Job page; answers 286 (stop polling) once the job has ended."""
    found = _job_or_404(job_id)
    response = Response(
        render_template(
            "jobs/_live.html",
            job=found,
            lines=jobs.log_lines(job_id=job_id),
            heartbeat_is_stale=jobs.heartbeat_is_stale(job=found),
        )
    )
    return stop_polling(response) if found.is_finished else response


@bp.get("/environments/<name>/plan")
@role_required(Role.VIEWER)
def plan(name: str) -> ResponseReturnValue:
    """What an upgrade (or downgrade) would run: steps, SQL, fingerprint — before the button."""
    project = get_project()
    environment = project.get(name)
    if environment is None:
        abort(404, description=f"There is no environment called “{name}”.")
    operation = request.args.get("operation", "upgrade")
    if operation not in ("upgrade", "downgrade"):
        abort(400, description="The operation must be upgrade or downgrade.")
    target = request.args.get("target", "").strip() or ("head" if operation == "upgrade" else "-1")
    error, built = None, None
    try:
        built = build_plan(
            project=project, environment=environment, direction=operation, target=target
        )
    except DashboardError as problem:
        error = str(problem)
    context = {
        "env": environment,
        "plan": built,
        "error": error,
        "operation": operation,
        "target": target,
        "running": jobs.active_job(environment=name),
    }
    template = "jobs/_plan.html" if is_htmx_request() else "jobs/plan.html"
    return render_template(template, **context)
