"""`block_on:` — an environment that refuses plans with findings of a severity, unless an admin
overrides it with a written justification, which is audited."""

from __future__ import annotations

from dashboard.audit import service as audit
from dashboard.environments.loader import Environment
from dashboard.errors import DashboardError
from dashboard.limits import check_length
from dashboard.plans.lint import at_least
from dashboard.plans.service import Plan
from dashboard.users.models import Role, User

MAX_LISTED = 3


def blocking_findings(*, environment: Environment, plan: Plan) -> list[str]:
    """The findings of `plan` that `environment`'s block_on refuses (none without block_on)."""
    if not environment.block_on:
        return []
    return at_least(plan.warnings, environment.block_on)


def check_block_on(
    *,
    environment: Environment,
    plan: Plan,
    actor: User | None,
    justification: str | None,
    refusal: type[DashboardError],
) -> None:
    """Refuse a blocked plan with `refusal`, unless an admin justifies it (audited, uncommitted)."""
    check_length("override_justification", justification)
    blocking = blocking_findings(environment=environment, plan=plan)
    justification = (justification or "").strip() or None
    if not blocking:
        return
    is_admin = actor is not None and actor.has_role(Role.ADMIN)
    if justification is None or not is_admin:
        listed = "; ".join(blocking[:MAX_LISTED])
        more = f" (and {len(blocking) - MAX_LISTED} more)" if len(blocking) > MAX_LISTED else ""
        who = (
            "Only an admin may override it"
            if justification and not is_admin
            else "An admin may override it with a written justification"
        )
        raise refusal(
            f"{environment.name} refuses plans with {environment.block_on} findings "
            f"(block_on: {environment.block_on}): {listed}{more}. {who}."
        )
    audit.record(
        action="plan.block_overridden",
        actor=actor,
        environment=environment.name,
        details={
            "rule": f"block_on: {environment.block_on}",
            "direction": plan.direction,
            "from": list(plan.from_revisions),
            "to": plan.alembic_target,
            "fingerprint": plan.fingerprint,
            "findings": [str(finding) for finding in blocking],
            "justification": justification,
        },
    )
