"""Environments: environments.yaml, and where each target database stands."""

from __future__ import annotations

from flask import Flask, abort, current_app

from dashboard.environments.loader import Environment, Project, load_project
from dashboard.environments.status import EnvironmentStatus, Status, StatusBoard
from dashboard.errors import UnknownEnvironment

__all__ = [
    "Environment",
    "EnvironmentStatus",
    "Project",
    "Status",
    "StatusBoard",
    "environment_named",
    "environment_or_404",
    "get_board",
    "get_project",
    "init_app",
    "load_project",
]


def init_app(app: Flask) -> None:
    """Read environments.yaml (a local file only) and attach an idle status board."""
    project = load_project(app.config["ENVIRONMENTS_FILE"])
    app.extensions["dashboard.project"] = project
    app.extensions["dashboard.status_board"] = StatusBoard(
        project=project,
        timeout=app.config["STATUS_CONNECT_TIMEOUT"],
        period=app.config["STATUS_REFRESH_SECONDS"],
    )


def get_project() -> Project:
    """Return the current app's project."""
    return current_app.extensions["dashboard.project"]


def get_board() -> StatusBoard:
    """Return the current app's status board."""
    return current_app.extensions["dashboard.status_board"]


def environment_named(name: str) -> Environment:
    """Return the environment called `name`, or raise UnknownEnvironment."""
    environment = get_project().get(name)
    if environment is None:
        raise UnknownEnvironment(f"There is no environment called “{name}”.")
    return environment


def environment_or_404(name: str) -> Environment:
    """Return the environment called `name`, or answer 404 in words."""
    environment = get_project().get(name)
    if environment is None:
        abort(404, description=f"There is no environment called “{name}”.")
    return environment
