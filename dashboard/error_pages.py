"""One place that turns errors into pages (or htmx fragments) that say what happened."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa
from flask import Flask, Response, current_app, g, render_template, request
from flask_limiter.errors import RateLimitExceeded
from werkzeug.exceptions import HTTPException, InternalServerError, RequestEntityTooLarge

from dashboard.errors import DashboardError
from dashboard.extensions import db
from dashboard.htmx import into_main, is_htmx_request
from dashboard.store_errors import describe_store_error, is_store_unreachable, missing_from_store

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
ErrorPage = Callable[[DashboardError], str]

_TITLES = {
    400: "That request was not understood",
    403: "You may not do that",
    404: "Not found",
    405: "That is not allowed here",
    413: "That is too large",
    429: "Too many requests",
    500: "Something went wrong",
}

# A domain error's heading on the shared error page, by the status its class means.
_REFUSAL_TITLES = {
    400: "That cannot be done as asked",
    401: "Not signed in",
    403: "You may not do that",
    404: "Not found",
    409: "Not done",
    429: "Too many tries",
    503: "Not available right now",
}


def _render(status: int, title: str, message: str) -> tuple[str, int]:
    template = "errors/_message.html" if is_htmx_request() else "errors/error.html"
    return render_template(template, status=status, title=title, message=message), status


def handle_http_error(error: HTTPException) -> Response:
    status = error.code or 500
    title = _TITLES.get(status, error.name)
    message = error.description or ""
    if status == 404 and message == HTTPException.description:
        message = ""
    if isinstance(error, RequestEntityTooLarge):
        message = _too_large_message()
    if isinstance(error, RateLimitExceeded):
        message = (
            "Rehearsals, drift checks and schema diffs build scratch databases, so each person "
            f"may start {error.description} of them. Nothing was started: try again shortly."
        )
    if isinstance(error, InternalServerError):
        message = "The dashboard hit an unexpected error. It has been logged."
    body, status = _render(status, title, message or "There is nothing at this address.")
    response = Response(body, status=status)
    if isinstance(error, RequestEntityTooLarge) and is_htmx_request():
        # Whichever form sent it, the refusal belongs in the page's main area.
        return into_main(response)
    return response


def _too_large_message() -> str:
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    bound = f" (at most {limit / 1024:,.0f} KiB)" if isinstance(limit, int) else ""
    return (
        f"The request is larger than this dashboard accepts{bound}. Nothing was saved: "
        "shorten what you typed and send it again."
    )


def shows_errors_with(page: ErrorPage) -> Callable[[F], F]:
    """Have the error handler show this view's domain errors with `page` (its own form or
    refusal card, rendered with the error) instead of the shared error page."""

    def mark(view: F) -> F:
        view.error_page = page  # type: ignore[attr-defined]
        return view

    return mark


def handle_domain_error(error: DashboardError) -> Response:
    """Roll the store back; answer with the error's status, on its view's page or ours."""
    db.session.rollback()
    if error.status >= 500:
        logger.warning("%s: %s", type(error).__name__, error)
    view = current_app.view_functions.get(request.endpoint or "")
    page: ErrorPage | None = getattr(view, "error_page", None)
    if page is not None:
        body = page(error)
    else:
        title = _REFUSAL_TITLES.get(error.status, _TITLES[500])
        body, _ = _render(error.status, title, str(error))
    response = Response(body, status=error.status, headers=error.headers())
    # htmx swaps the answer into the page's main area, whichever element asked.
    return into_main(response) if is_htmx_request() else response


def handle_store_error(error: sa.exc.DBAPIError) -> Response:
    """The dashboard's own store refused a connection, or has no tables yet: 503 naming it and
    saying what to do, never 500.

    Target databases are reached only through dashboard.target, which turns their errors into
    domain errors; a driver error that reaches this boundary is the store's.
    """
    if missing_from_store(error) is None and not is_store_unreachable(error):
        return handle_unexpected(error)  # a programming error of ours, not the store's state
    message = describe_store_error(error, store=db.engine.url)
    logger.warning("%s", message)
    try:
        db.session.remove()  # give the broken connection back; the pool drops it
    except sa.exc.SQLAlchemyError:
        pass
    # The page must not ask the store who is signed in: show it as to nobody in particular.
    g._login_user = current_app.login_manager.anonymous_user()
    if missing_from_store(error) is not None:
        title = "The store is not set up"
    else:
        title = "The store is unreachable"
        message += " What you asked was not done; try again in a moment."
    body, status = _render(503, title, message)
    response = Response(body, status=status, headers={"Retry-After": "10"})
    return into_main(response) if is_htmx_request() else response


def handle_unexpected(error: Exception) -> Response:
    logger.exception("unhandled error", exc_info=error)
    return handle_http_error(InternalServerError())


def init_app(app: Flask) -> None:
    """Register the handlers."""
    app.register_error_handler(HTTPException, handle_http_error)
    app.register_error_handler(DashboardError, handle_domain_error)
    for failed in (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.ProgrammingError):
        app.register_error_handler(failed, handle_store_error)
    if not app.testing:
        app.register_error_handler(Exception, handle_unexpected)
