"""Work that spans rollouts and jobs: executing an approved rollout and hearing how it ended.

This sits above both services (neither imports the other): the jobs service runs plans and
knows nothing of rollouts; the rollouts service decides about rollouts and starts no jobs.
"""

from __future__ import annotations

from dashboard.jobs import service as jobs
from dashboard.jobs.models import Job
from dashboard.rollouts import service as rollouts
from dashboard.users.models import User


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
