"""Domain errors: raised once where the problem is found; each names the HTTP status it means.

One handler renders them for the pages (dashboard.error_pages) and one decorator for the CLI
(dashboard.cli_errors); views and commands do not catch them one by one.
"""

from __future__ import annotations

from typing import ClassVar

# The statuses a domain error may mean; tests check that every error class has one of them.
STATUSES = frozenset({400, 401, 403, 404, 409, 429, 503})


class DashboardError(Exception):
    """Base class of every error the dashboard reports to a person."""

    # Each subclass names its own status; 500 only for this base, raised without a kind.
    status: ClassVar[int] = 500

    def headers(self) -> dict[str, str]:
        """Return the HTTP headers that go with this error's answer."""
        return {}


class ConfigurationError(DashboardError):
    """The dashboard's own configuration (config.py values, environments.yaml) is wrong."""

    status = 503


class ScriptDirectoryError(DashboardError):
    """The managed application's migration scripts cannot be read."""

    status = 503


class EnvironmentUnreachable(DashboardError):
    """A target database could not be reached or read within the timeout."""

    status = 503


class EnvironmentNotConfigured(DashboardError):
    """An environment's URL cannot be built, e.g. because a ${VAR} is not set."""

    status = 503


class UnknownEnvironment(DashboardError):
    """No environment has the given name."""

    status = 404


class MigrationFailed(DashboardError):
    """Running a migration (upgrade, downgrade, stamp) failed."""

    status = 409


class InvalidCredentials(DashboardError):
    """The username or password is wrong (we never say which)."""

    status = 401


class LoginThrottled(DashboardError):
    """Too many failed sign-ins for this username from this address, or from this address."""

    status = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        """Return Retry-After: when the next sign-in may be tried."""
        return {"Retry-After": str(self.retry_after)}


class UserError(DashboardError):
    """A user-management request that cannot be done as asked (bad name, last admin, …)."""

    status = 400


class FieldTooLong(DashboardError):
    """A field someone sent is longer than its limit (the message names both)."""

    status = 400


class JobRefused(DashboardError):
    """A job cannot be started as asked (a rule, a stale plan, nothing to do)."""

    status = 409


class FingerprintMissing(DashboardError):
    """A request to run a plan did not say which plan (its fingerprint) it was shown."""

    status = 400


class JobAlreadyRunning(JobRefused):
    """The environment already has a queued or running job."""

    status = 409


class PlanError(DashboardError):
    """A plan cannot be made: the target is unknown, ambiguous or in the wrong direction."""

    status = 400


class OfflineRenderError(DashboardError):
    """One migration step cannot be rendered as SQL without a live database."""

    status = 400


class ScratchUnavailable(DashboardError):
    """No throwaway database can be made for an environment (no shadow_url, no CREATE DATABASE)."""

    status = 503


class RolloutRefused(DashboardError):
    """A rollout rule says no (the message names the rule)."""

    status = 409


class RolloutForbidden(RolloutRefused):
    """The actor's role or identity may not do this to the rollout (HTTP 403)."""

    status = 403


class RolloutStale(RolloutRefused):
    """The plan a rollout was approved for no longer matches the environment or the scripts."""

    status = 409


class ApprovalRequired(RolloutRefused):
    """The rollout does not have the approvals it needs yet."""

    status = 409


class PlanChanged(MigrationFailed):
    """Under the lock, the database or the steps were not what the plan said: nothing ran."""

    status = 409

    def __init__(
        self,
        *,
        expected: tuple[str, ...],
        found: tuple[str, ...],
        steps: tuple[str, ...] | None = None,
    ) -> None:
        self.expected, self.found, self.steps = expected, found, steps
        expected_text = ", ".join(expected) or "base"
        found_text = ", ".join(found) or "base"
        if steps is None:
            message = (
                f"the plan was made at {expected_text}, but the database is at {found_text} "
                "now (another job or a person moved it): nothing ran"
            )
        else:
            message = (
                f"from {found_text} Alembic would now run {', '.join(steps) or 'nothing'}, "
                "not the plan's steps (a script changed?): nothing ran"
            )
        super().__init__(message)
