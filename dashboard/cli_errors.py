"""The CLI's error boundary: a domain error is its message and exit status 1, no traceback."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click
from flask import current_app, has_app_context

from dashboard.errors import DashboardError

F = TypeVar("F", bound=Callable[..., Any])


def reports_errors(function: F) -> F:
    """Under the `flask` command, turn a DashboardError into a ClickException (its message on
    stderr, exit 1) after rolling the store back; elsewhere let it propagate unchanged.

    Every command carries it, and so does `create_app`, which the `flask` command calls while it
    looks for the command to run: a bad environments.yaml is then one line, not a traceback.
    """

    @wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except DashboardError as error:
            if click.get_current_context(silent=True) is None:
                raise  # a WSGI server or a test called it: the caller reports the error
            if has_app_context() and "sqlalchemy" in current_app.extensions:
                current_app.extensions["sqlalchemy"].session.rollback()
            raise click.ClickException(str(error)) from error

    wrapper.reports_errors = True  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]
