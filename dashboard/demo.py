"""Build the demo: the dashboard's store and SQLite environments at staggered revisions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import flask_migrate
from flask import current_app

from dashboard.environments import get_board, get_project
from dashboard.errors import ConfigurationError
from dashboard.target.runner import upgrade_in_child
from dashboard.users import service as users
from dashboard.users.models import Role

# How many revisions behind head each environment starts, in promotion order.
DEMO_BEHIND = (0, 2, 5)


def build_demo() -> Iterator[str]:
    """Reset every demo environment and the store; yield progress lines."""
    project = get_project()
    for environment in project.environments:
        if environment.url is None or environment.dialect != "sqlite":
            raise ConfigurationError(
                f"the demo only builds SQLite environments, and {environment.name} is "
                f"{environment.dialect or 'not configured'}: point ENVIRONMENTS_FILE at the "
                "demo's environments.yaml"
            )
    yield from _reset_store()

    graph = get_board().graph()
    for position, environment in enumerate(project.environments):
        assert environment.url is not None and environment.url.database
        behind = DEMO_BEHIND[position] if position < len(DEMO_BEHIND) else DEMO_BEHIND[-1]
        database = Path(environment.url.database)
        database.parent.mkdir(parents=True, exist_ok=True)
        database.unlink(missing_ok=True)
        target = "heads" if behind == 0 else _revision_behind(graph, behind)
        upgrade_in_child(
            project.database(environment),
            target=target,
            what=f"building the demo's {environment.name}",
        )
        yield f"{environment.name}: {database} upgraded to {target} ({behind} behind head)"
    yield from _create_demo_users()


def _create_demo_users() -> Iterator[str]:
    yield "demo users (passwords are shown only now):"
    for role in Role:
        if users.get_user(username=role.value) is not None:
            yield f"  {role.value:<9} exists already; password unchanged"
            continue
        password = users.generate_password()
        users.create_user(username=role.value, password=password, role=role, actor=None)
        yield f"  {role.value:<9} password {password}"


def _revision_behind(graph, behind: int) -> str:
    """Return the newest revision from which an upgrade to head runs exactly `behind` steps."""
    for revision in graph.revisions:
        if len(graph.pending([revision.id])) == behind:
            return revision.id
    raise ConfigurationError(f"the demo's script directory has no revision {behind} behind head")


def _reset_store() -> Iterator[str]:
    uri = current_app.config["SQLALCHEMY_DATABASE_URI"]
    if uri.startswith("sqlite:///"):
        store = Path(uri.removeprefix("sqlite:///"))
        store.parent.mkdir(parents=True, exist_ok=True)
        store.unlink(missing_ok=True)
        # The new store starts a new audit log: the old one's anchored heads no longer apply.
        anchors = current_app.config.get("AUDIT_ANCHOR_FILE")
        if anchors:
            Path(anchors).unlink(missing_ok=True)
    flask_migrate.upgrade(directory=current_app.extensions["migrate"].directory)
    yield "dashboard store: created and upgraded"
