"""Run jobs from the Environment page; follow them on the Job page; list them."""

from __future__ import annotations

import re

from flask import (
    Blueprint,
    Response,
    abort,
    redirect,
    render_template,
    request,
    stream_with_context,
    url_for,
)
from flask.typing import ResponseReturnValue
from flask_login import current_user

from dashboard.auth import role_required
from dashboard.environments import get_project
from dashboard.error_pages import shows_errors_with
from dashboard.errors import DashboardError
from dashboard.htmx import is_htmx_request, stop_polling
from dashboard.jobs import service as jobs
from dashboard.paging import paging as steps_paging
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
        override_justification=request.form.get("override_justification"),
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
    """One job: its state, plan, and the tail of its log, which then follows the job."""
    found = _job_or_404(job_id)
    tail = jobs.log_tail(job_id=job_id)
    return render_template(
        "jobs/job.html",
        job=found,
        tail=tail,
        after=tail.last_number,
        more=False,
        heartbeat_is_stale=jobs.heartbeat_is_stale(job=found),
    )


# A line number a page may ask after: a whole number that fits the store's integer column.
_LINE_NUMBER = re.compile(r"[0-9]{1,9}")


@bp.get("/jobs/<int:job_id>/live")
@role_required(Role.VIEWER)
def live(job_id: int) -> ResponseReturnValue:
    """The job's state and its log lines after `?after=`; 286 (stop polling) once all is shown."""
    after = request.args.get("after", "0")
    if not _LINE_NUMBER.fullmatch(after):
        abort(400, description="“after” must be a line number: a whole number, 0 or more.")
    found = _job_or_404(job_id)  # the state first: once it has ended, every line is stored
    chunk = jobs.log_after(job_id=job_id, after=int(after))
    response = Response(
        render_template(
            "jobs/_log_update.html",
            job=found,
            chunk=chunk,
            asked_after=int(after),
            after=chunk.last_number,
            more=chunk.more,
            heartbeat_is_stale=jobs.heartbeat_is_stale(job=found),
        )
    )
    return stop_polling(response) if found.is_finished and not chunk.more else response


@bp.get("/jobs/<int:job_id>/log.txt")
@role_required(Role.VIEWER)
def log_text(job_id: int) -> ResponseReturnValue:
    """The job's whole log as a text file, streamed from the store a batch at a time."""
    found = _job_or_404(job_id)
    return Response(
        stream_with_context(jobs.log_text(job_id=found.id)),
        mimetype="text/plain",
        headers={"Content-Disposition": f'attachment; filename="job-{found.id}-log.txt"'},
    )


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
    error, built, steps, paging = None, None, (), None
    try:
        built = build_plan(
            project=project, environment=environment, direction=operation, target=target
        )
    except DashboardError as problem:
        error = str(problem)
    else:
        # A long plan is shown a page of steps at a time (the Run form binds all of them).
        paging = steps_paging(len(built.steps))
        steps = built.steps[paging.start : paging.stop]
        if paging.pages == 1:
            paging = None
    context = {
        "env": environment,
        "plan": built,
        "steps": steps,
        "paging": paging,
        "error": error,
        "operation": operation,
        "target": target,
        "running": jobs.active_job(environment=name),
    }
    template = "jobs/_plan.html" if is_htmx_request() else "jobs/plan.html"
    return render_template(template, **context)
