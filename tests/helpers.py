"""Helpers the tests share (fixtures live in conftest.py; these are plain functions)."""

from __future__ import annotations

from dashboard.environments import environment_named, get_project
from dashboard.extensions import db
from dashboard.jobs import service as jobs
from dashboard.plans.service import build_plan


def fingerprint_of(environment: str, operation: str = "upgrade", target: str = "head") -> str:
    """The fingerprint of the plan a person would review now (call inside an app context)."""
    plan = build_plan(
        project=get_project(),
        environment=environment_named(environment),
        direction=operation,
        target=target,
    )
    return plan.fingerprint


def queue_job(environment: str = "dev", operation: str = "upgrade", target: str = "head"):
    """Queue a job for the plan a person would review now, without running it (inside an app
    context)."""
    return jobs.request_job(
        environment_name=environment,
        operation=operation,
        target=target,
        actor=None,
        actor_name="cli:test",
        expected_fingerprint=fingerprint_of(environment, operation, target),
        submit=False,
    )


def run_job_to_the_end(
    app,
    environment: str = "dev",
    operation: str = "upgrade",
    target: str = "head",
    *,
    actor=None,
    fingerprint: str | None = None,
):
    """Request a job for the plan a person would review now and run it in this thread, as the
    CLI does; return the finished job, detached from the session."""
    with app.app_context():
        if fingerprint is None and operation != "stamp":
            fingerprint = fingerprint_of(environment, operation, target)
        job = jobs.request_job(
            environment_name=environment,
            operation=operation,
            target=target,
            actor=actor,
            actor_name="cli:test",
            expected_fingerprint=fingerprint,
            submit=False,
        )
        finished = jobs.run_job(job_id=job.id)
        db.session.refresh(finished)
        db.session.expunge(finished)
        return finished
