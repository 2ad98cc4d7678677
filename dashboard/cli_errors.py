"""The CLI's error boundary: a domain error — or a store that is unreachable or not set up — is
its message and exit status 1, no traceback."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click
import sqlalchemy as sa
from flask import current_app, has_app_context

from dashboard.errors import DashboardError
from dashboard.store_errors import describe_store_error, is_store_unreachable, missing_from_store

F = TypeVar("F", bound=Callable[..., Any])


def reports_errors(function: F) -> F:
    """Under the `flask` command, turn a DashboardError into a ClickException (its message on
    stderr, exit 1) after rolling the store back; elsewhere let it propagate unchanged.

    Every command carries it; `create_app` carries `reports_startup_errors` instead.
    """

    @wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except DashboardError as error:
            if click.get_current_context(silent=True) is None:
                raise  # a WSGI server or a test called it: the caller reports the error
            _roll_back()
            raise click.ClickException(str(error)) from error
        except sa.exc.DBAPIError as error:
            # The store is unreachable, or nobody ran `flask db upgrade`: say so, no traceback.
            if click.get_current_context(silent=True) is None or not has_app_context():
                raise
            if missing_from_store(error) is None and not is_store_unreachable(error):
                raise
            store = current_app.extensions["sqlalchemy"].engine.url
            _roll_back()
            raise click.ClickException(describe_store_error(error, store=store)) from error

    wrapper.reports_errors = True  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


def _roll_back() -> None:
    if has_app_context() and "sqlalchemy" in current_app.extensions:
        try:
            current_app.extensions["sqlalchemy"].session.rollback()
        except sa.exc.SQLAlchemyError:
            current_app.extensions["sqlalchemy"].session.close()


def reports_startup_errors(factory: F) -> F:
    """Under the `flask` command, print a DashboardError from the app factory (a bad
    environments.yaml, a bad setting) as its one-line message and exit 1; elsewhere (a WSGI
    server, a test) let it propagate unchanged.

    The `flask` command calls the factory on several paths, and only exiting here is clean on all
    of them: a ClickException is shown as a full traceback while `flask --help` lists the commands
    (Flask spares only its own NoAppException that), and a NoAppException while Flask looks up a
    command such as `flask dashboard status` is followed by a misleading "No such command".
    """

    @wraps(factory)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return factory(*args, **kwargs)
        except DashboardError as error:
            if click.get_current_context(silent=True) is None:
                raise  # a WSGI server or a test called it: the caller reports the error
            click.ClickException(str(error)).show()
            raise SystemExit(1) from error

    return wrapper  # type: ignore[return-value]
