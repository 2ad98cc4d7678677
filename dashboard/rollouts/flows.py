"""Work that spans rollouts and other features: requesting a rollout and rehearsing its frozen
plan in the background, executing an approved rollout, and hearing how its job ended.

This sits above the services (none imports another here): the jobs service runs plans and
knows nothing of rollouts; the rollouts service decides about rollouts and starts no jobs or
tasks; the rehearsal runs as a background task (dashboard.tasks) of its own kind, whose work
(`rehearse_rollout`) stores the outcome with the rollout, so every server shows the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import current_app

from dashboard.environments import environment_named, get_project
from dashboard.errors import DashboardError, RolloutRefused
from dashboard.extensions import db
from dashboard.jobs import service as jobs
from dashboard.jobs.executor import get_executor
from dashboard.jobs.models import Job
from dashboard.plans.rehearsal import Rehearsal, rehearse
from dashboard.plans.service import Plan, build_plan
from dashboard.progress import Progress
from dashboard.rollouts import service as rollouts
from dashboard.rollouts.models import Rollout
from dashboard.tasks import service as tasks
from dashboard.tasks.models import Task
from dashboard.tasks.service import TaskSpec
from dashboard.users.models import User

ROLLOUT_REHEARSAL = "rollout_rehearsal"  # the task kind (see dashboard.tasks.flows.WORKS)
PLAN_CHANGED = (
    "the plan changed since the request ({why}): rehearsing today's plan would not rehearse "
    "the one under review. This rollout will be stale when executed: request it again"
)


def request_rollout(
    *,
    environment_name: str,
    target: str,
    reason: str,
    actor: User | None,
    ticket_url: str | None = None,
    override_justification: str | None = None,
) -> Rollout:
    """Request a rollout (rollouts.request_rollout), then rehearse its plan in the background."""
    rollout = rollouts.request_rollout(
        environment_name=environment_name,
        target=target,
        reason=reason,
        actor=actor,
        ticket_url=ticket_url,
        override_justification=override_justification,
    )
    name = rollout.requested_by
    if not current_app.config.get("ROLLOUT_REHEARSALS", True):
        return rollout  # the page says why (dashboard.rollouts.evidence)
    try:
        start_rehearsal(rollout=rollout, actor_name=name, again=False)
    except DashboardError as error:
        # The request stands; the page says why there is no rehearsal and offers to run one.
        rollouts.record_rehearsal(
            rollout_id=rollout.id,
            task_id=None,
            outcome=_not_rehearsed(rollout, f"the rehearsal could not be started: {error}"),
            actor_name=name,
        )
    return rollout


def start_rehearsal(
    *, rollout: Rollout, actor_name: str, again: bool = True, submit: bool = True
) -> Task:
    """Start (or join) the background rehearsal of a rollout's frozen plan; the rollout shows it.

    With `submit=False` the task is left queued for the caller to run (tasks.flows.run_task).
    """
    task, created = tasks.start_task(
        kind=ROLLOUT_REHEARSAL,
        environment=rollout.environment,
        key=f"rollout {rollout.id}",
        params={"rollout": rollout.id},
        requested_by=actor_name,
        again=again,
    )
    # Attached before it is submitted, so that its outcome always finds itself the current one.
    rollouts.attach_rehearsal(rollout_id=rollout.id, task_id=task.id)
    if created and submit:
        get_executor().submit_task(task.id)
    return task


def rehearse_again(*, rollout_id: int, actor: User | None) -> Task:
    """Rehearse a pending or approved rollout's frozen plan again (an operator asks)."""
    rollout = rollouts.check_rehearsable(rollout_id=rollout_id, actor=actor)
    assert actor is not None  # check_rehearsable refuses anyone not signed in
    return start_rehearsal(rollout=rollout, actor_name=actor.username, again=True)


def rehearse_rollout(*, spec: TaskSpec, progress: Progress) -> dict[str, Any]:
    """The task's work: rehearse the rollout's frozen plan, store the outcome with it, audited."""
    rollout_id = int(spec.params["rollout"])
    rollout = rollouts.get_rollout(rollout_id=rollout_id)
    if rollout is None:
        raise RolloutRefused(f"There is no rollout #{rollout_id}.")
    frozen = _Frozen.of(rollout)
    db.session.commit()  # hold no store transaction while the target side works
    try:
        outcome = _rehearse_frozen(frozen, progress)
    except DashboardError as error:
        outcome = frozen.not_rehearsed(f"the rehearsal stopped: {error}")
    rollouts.record_rehearsal(
        rollout_id=rollout_id, task_id=spec.id, outcome=outcome, actor_name=spec.requested_by
    )
    return outcome


@dataclass(frozen=True)
class _Frozen:
    """What a rollout froze, read before its store transaction ends."""

    environment: str
    direction: str
    target: str
    fingerprint: str
    from_revisions: tuple[str, ...]

    @classmethod
    def of(cls, rollout: Rollout) -> _Frozen:
        return cls(
            environment=rollout.environment,
            direction=rollout.direction,
            target=rollout.target_revision,
            fingerprint=rollout.fingerprint,
            from_revisions=tuple(rollout.from_revisions or ()),
        )

    def not_rehearsed(self, why: str) -> dict[str, Any]:
        """A Rehearsal that never ran, saying why (its `unavailable`)."""
        return Rehearsal(
            environment=self.environment,
            direction=self.direction,
            from_revisions=self.from_revisions,
            target=self.target,
            plan_fingerprint=self.fingerprint,
            steps=(),
            succeeded=False,
            error=None,
            unavailable=why,
        ).as_dict()


def _rehearse_frozen(frozen: _Frozen, progress: Progress) -> dict[str, Any]:
    """Plan again (cached while nothing changed); rehearse it if it is still the frozen plan."""
    progress(0, 0, "checking that the frozen plan still matches the environment and scripts")
    environment = environment_named(frozen.environment)
    plan = build_plan(
        project=get_project(),
        environment=environment,
        direction=frozen.direction,
        target=frozen.target,
    )
    if plan.fingerprint != frozen.fingerprint:
        return frozen.not_rehearsed(PLAN_CHANGED.format(why=_why_changed(frozen, plan)))
    return rehearse(
        project=get_project(), environment=environment, plan=plan, progress=progress
    ).as_dict()


def _why_changed(frozen: _Frozen, plan: Plan) -> str:
    if sorted(frozen.from_revisions) != sorted(plan.from_revisions):
        was = ", ".join(frozen.from_revisions) or "base"
        now = ", ".join(plan.from_revisions) or "base"
        return f"{plan.environment} was at {was} and is at {now} now"
    return "a script in the plan or env.py changed"


def _not_rehearsed(rollout: Rollout, why: str) -> dict[str, Any]:
    return _Frozen.of(rollout).not_rehearsed(why)


def rollout_claim(rollout_id: int) -> jobs.JobClaim:
    """The claim a job makes on the approved rollout it runs, in the job's own transaction."""

    # jobs.request_job calls this with `environment=` holding the environment's name.
    def take(*, environment: str, operation: str, target: str, fingerprint: str | None):
        return rollouts.claim_for_job(
            rollout_id=rollout_id,
            environment_name=environment,
            operation=operation,
            target=target,
            fingerprint=fingerprint,
        )

    def started(*, claimed, job: Job, actor: User | None) -> None:
        rollouts.start_execution(rollout=claimed, job=job, actor=actor)

    return jobs.JobClaim(rollout_id=rollout_id, take=take, started=started)


def execute_rollout(*, rollout_id: int, actor: User | None, submit: bool = True) -> Job:
    """Re-plan; run the approved plan as a job if it is unchanged, else mark the rollout stale."""
    frozen = rollouts.prepare_execution(rollout_id=rollout_id, actor=actor)
    return jobs.request_job(
        environment_name=frozen["environment_name"],
        operation=frozen["direction"],
        target=frozen["target"],
        actor=actor,
        expected_fingerprint=frozen["fingerprint"],
        claim=rollout_claim(rollout_id),
        submit=submit,
    )


def job_finished(*, job: Job) -> None:
    """Mark the rollout a finished job ran (if any) executed, failed or stale."""
    rollouts.job_finished(job=job)
