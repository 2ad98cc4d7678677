"""Domain errors: raised once where the problem is found, rendered by the CLI and (later) views."""

from __future__ import annotations


class DashboardError(Exception):
    """Base class of every error the dashboard reports to a person."""


class ConfigurationError(DashboardError):
    """The dashboard's own configuration (config.py values, environments.yaml) is wrong."""


class ScriptDirectoryError(DashboardError):
    """The managed application's migration scripts cannot be read."""


class EnvironmentUnreachable(DashboardError):
    """A target database could not be reached or read within the timeout."""


class EnvironmentNotConfigured(DashboardError):
    """An environment's URL cannot be built, e.g. because a ${VAR} is not set."""


class UnknownEnvironment(DashboardError):
    """No environment has the given name."""


class MigrationFailed(DashboardError):
    """Running a migration (upgrade, downgrade, stamp) failed."""


class InvalidCredentials(DashboardError):
    """The username or password is wrong (we never say which)."""


class LoginThrottled(DashboardError):
    """Too many failed sign-ins for this username from this address, or from this address."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UserError(DashboardError):
    """A user-management request that cannot be done as asked (bad name, last admin, …)."""


class JobRefused(DashboardError):
    """A job cannot be started as asked (a rule, a stale plan, nothing to do)."""


class FingerprintMissing(DashboardError):
    """A request to run a plan did not say which plan (its fingerprint) it was shown."""


class JobAlreadyRunning(JobRefused):
    """The environment already has a queued or running job."""


class PlanError(DashboardError):
    """A plan cannot be made: the target is unknown, ambiguous or in the wrong direction."""


class OfflineRenderError(DashboardError):
    """One migration step cannot be rendered as SQL without a live database."""


class ScratchUnavailable(DashboardError):
    """No throwaway database can be made for an environment (no shadow_url, no CREATE DATABASE)."""


class RolloutRefused(DashboardError):
    """A rollout rule says no (the message names the rule)."""


class RolloutForbidden(RolloutRefused):
    """The actor's role or identity may not do this to the rollout (HTTP 403)."""


class RolloutStale(RolloutRefused):
    """The plan a rollout was approved for no longer matches the environment or the scripts."""


class ApprovalRequired(RolloutRefused):
    """The rollout does not have the approvals it needs yet."""


class PlanChanged(MigrationFailed):
    """Under the lock, the database or the steps were not what the plan said: nothing ran."""

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
