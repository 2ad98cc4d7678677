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
