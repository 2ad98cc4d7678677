"""Helpers the tests share (fixtures live in conftest.py; these are plain functions)."""

from __future__ import annotations

from dashboard.environments import environment_named, get_project
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
