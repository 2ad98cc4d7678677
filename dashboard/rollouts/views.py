"""Rollouts: request one for a protected environment, vote on it, execute it, follow it."""

from __future__ import annotations

from flask import Blueprint, Response, abort, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_login import current_user

from dashboard.auth import role_required
from dashboard.diffs.service import steps_schema_diff
from dashboard.diffs.views import SCHEMA_DIFF_NEEDS
from dashboard.environments import environment_or_404, get_project
from dashboard.error_pages import shows_errors_with
from dashboard.errors import DashboardError
from dashboard.htmx import is_htmx_request, stop_polling
from dashboard.plans.service import build_plan
from dashboard.ratelimits import expensive_work
from dashboard.rollouts import flows, policy
from dashboard.rollouts import service as rollouts
from dashboard.rollouts.evidence import evidence_of
from dashboard.rollouts.models import Rollout, RolloutState
from dashboard.users.models import Role

bp = Blueprint("rollouts", __name__)


def _rollout(rollout_id: int) -> Rollout:
    found = rollouts.get_rollout(rollout_id=rollout_id)
    if found is None:
        abort(404, description=f"There is no rollout #{rollout_id}.")
    return found


def _actor():
    return current_user._get_current_object()


def _go(target: str) -> ResponseReturnValue:
    if is_htmx_request():
        return Response(status=204, headers={"HX-Redirect": target})
    return redirect(target, code=303)


def _refused(error: DashboardError) -> str:
    """Say why a rollout action was refused, with the way back to the rollout."""
    template = "rollouts/_refused.html" if is_htmx_request() else "rollouts/refused.html"
    rollout_id = (request.view_args or {}).get("rollout_id")
    return render_template(template, message=str(error), rollout_id=rollout_id, status=error.status)


@bp.get("/rollouts")
@role_required(Role.VIEWER)
def index() -> ResponseReturnValue:
    """Rollouts, newest first, filtered by state and environment."""
    state = request.args.get("state") or None
    environment = request.args.get("environment") or None
    if state is not None and state not in {item.value for item in RolloutState}:
        abort(400, description=f"“{state}” is not a rollout state.")
    return render_template(
        "rollouts/index.html",
        rollouts=rollouts.list_rollouts(state=state, environment=environment),
        state=state,
        environment=environment,
        states=[item.value for item in RolloutState],
    )


@bp.get("/environments/<name>/rollouts/new")
@role_required(Role.OPERATOR)
def new(name: str) -> ResponseReturnValue:
    """The request form, with the plan it will freeze shown first."""
    environment = environment_or_404(name)
    target = request.args.get("target", "").strip() or "head"
    plan, error = None, None
    try:
        plan = build_plan(
            project=get_project(), environment=environment, direction="upgrade", target=target
        )
    except DashboardError as problem:
        error = str(problem)
    gate = None
    if plan is not None and not plan.is_empty:
        gate = rollouts.promotion_gate(
            environment=environment, target_revisions=(plan.alembic_target,)
        )
    return render_template(
        "rollouts/new.html", env=environment, target=target, plan=plan, error=error, gate=gate
    )


@bp.post("/environments/<name>/rollouts")
@role_required(Role.OPERATOR)
@shows_errors_with(_refused)
def create(name: str) -> ResponseReturnValue:
    """Request a rollout of the plan the requester reviewed."""
    environment = environment_or_404(name)
    created = flows.request_rollout(
        environment_name=environment.name,
        target=request.form.get("target", "").strip() or "head",
        reason=request.form.get("reason", ""),
        ticket_url=request.form.get("ticket_url", "").strip() or None,
        override_justification=request.form.get("override_justification", "").strip() or None,
        actor=_actor(),
    )
    return _go(url_for("rollouts.rollout", rollout_id=created.id))


@bp.get("/rollouts/<int:rollout_id>")
@role_required(Role.VIEWER)
def rollout(rollout_id: int) -> ResponseReturnValue:
    """One rollout: the frozen plan, warnings, schema diff, votes, timeline and actions."""
    found = _rollout(rollout_id)
    environment = get_project().get(found.environment)
    return render_template(
        "rollouts/rollout.html",
        rollout=found,
        env=environment,
        can=policy.allowed_actions(rollout=found, actor=_actor()),
        timeline=policy.timeline(rollout=found),
        evidence=evidence_of(found),
    )


@bp.get("/rollouts/<int:rollout_id>/rehearsal")
@role_required(Role.VIEWER)
def rehearsal(rollout_id: int) -> ResponseReturnValue:
    """The rehearsal's progress (htmx polls it); once it ended, its outcome swapped in."""
    found = _rollout(rollout_id)
    if not is_htmx_request():
        return redirect(url_for("rollouts.rollout", rollout_id=rollout_id, _anchor="plan"))
    evidence = evidence_of(found)
    response = Response(
        render_template(
            "rollouts/_rehearsal_update.html",
            rollout=found,
            evidence=evidence,
            can=policy.allowed_actions(rollout=found, actor=_actor()),
        )
    )
    return response if evidence.active else stop_polling(response)


@bp.post("/rollouts/<int:rollout_id>/rehearse")
@role_required(Role.OPERATOR)
@expensive_work
@shows_errors_with(_refused)
def rehearse(rollout_id: int) -> ResponseReturnValue:
    """Rehearse the rollout's frozen plan again, in the background."""
    found = _rollout(rollout_id)
    flows.rehearse_again(rollout_id=found.id, actor=_actor())
    if not is_htmx_request():
        return redirect(url_for("rollouts.rollout", rollout_id=rollout_id, _anchor="plan"), 303)
    found = _rollout(rollout_id)
    return render_template("rollouts/_rehearsal.html", rollout=found, evidence=evidence_of(found))


@bp.get("/rollouts/<int:rollout_id>/schema")
@role_required(Role.OPERATOR, why=SCHEMA_DIFF_NEEDS)
@expensive_work
def schema(rollout_id: int) -> ResponseReturnValue:
    """The schema diff of the rollout's frozen plan."""
    found = _rollout(rollout_id)
    environment = environment_or_404(found.environment)
    changes, error = None, None
    try:
        changes = steps_schema_diff(
            project=get_project(),
            environment=environment,
            from_revisions=tuple(found.from_revisions or ()),
            direction=found.direction,
            revision_ids=found.revision_ids or [],
        )
    except DashboardError as problem:
        error = str(problem)
    return render_template("diffs/_schema.html", changes=changes, error=error)


def _decide(rollout_id: int, action) -> ResponseReturnValue:
    found = _rollout(rollout_id)
    action(rollout_id=found.id, actor=_actor(), comment=request.form.get("comment") or None)
    return _go(url_for("rollouts.rollout", rollout_id=rollout_id))


@bp.post("/rollouts/<int:rollout_id>/approve")
@role_required(Role.APPROVER)
@shows_errors_with(_refused)
def approve(rollout_id: int) -> ResponseReturnValue:
    """Approve someone else's rollout."""
    return _decide(rollout_id, rollouts.approve_rollout)


@bp.post("/rollouts/<int:rollout_id>/reject")
@role_required(Role.APPROVER)
@shows_errors_with(_refused)
def reject(rollout_id: int) -> ResponseReturnValue:
    """Reject a rollout: it ends there."""
    return _decide(rollout_id, rollouts.reject_rollout)


@bp.post("/rollouts/<int:rollout_id>/cancel")
@role_required(Role.OPERATOR)
@shows_errors_with(_refused)
def cancel(rollout_id: int) -> ResponseReturnValue:
    """Withdraw a rollout (its requester, or an admin)."""
    return _decide(rollout_id, rollouts.cancel_rollout)


@bp.post("/rollouts/<int:rollout_id>/execute")
@role_required(Role.OPERATOR)
@shows_errors_with(_refused)
def execute(rollout_id: int) -> ResponseReturnValue:
    """Run an approved rollout's plan as a job, if it still matches the environment."""
    found = _rollout(rollout_id)
    job = flows.execute_rollout(rollout_id=found.id, actor=_actor())
    return _go(url_for("jobs.job", job_id=job.id))
