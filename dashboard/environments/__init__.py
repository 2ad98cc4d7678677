"""Environments: environments.yaml, and where each target database stands."""

from __future__ import annotations

from flask import Flask, abort, current_app

from dashboard.environments import service
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
    "fresh_statuses",
    "get_board",
    "get_project",
    "init_app",
    "load_project",
    "shared_statuses",
]


def init_app(app: Flask) -> None:
    """Read environments.yaml (a local file only) and attach an idle status board (the
    scheduler links it to the store's lease)."""
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


def shared_statuses() -> list[EnvironmentStatus]:
    """Return the statuses the lease holder stored; right after a start, wait a moment
    (FIRST_PAINT_SECONDS) for those not read yet, then say "reading…" for them."""
    board = get_board()
    board.start()
    # Only while this process takes part can it expect a read to land (a test may keep it out).
    wait = current_app.config["FIRST_PAINT_SECONDS"] if board.is_running() else 0
    return service.wait_for_statuses(
        project=get_project(), reading_since=board.started_at, wait=wait
    )


def fresh_statuses() -> list[EnvironmentStatus]:
    """Ask for every status to be read now, by the lease holder wherever it runs, and return
    them once read (or what is known after the read's own deadline)."""
    board = get_board()
    project = get_project()
    before = service.reads_started(project=project)
    board.request_refresh()
    return service.wait_for_statuses(
        project=project,
        reading_since=board.started_at,
        wait=board.timeout + 2 + board.poll,
        after=before,
    )
