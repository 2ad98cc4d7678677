"""One place that turns errors into pages (or htmx fragments) that say what happened."""

from __future__ import annotations

import logging

from flask import Flask, render_template
from werkzeug.exceptions import HTTPException, InternalServerError

from dashboard.errors import ConfigurationError, DashboardError, ScriptDirectoryError
from dashboard.htmx import is_htmx_request

logger = logging.getLogger(__name__)

_TITLES = {
    400: "That request was not understood",
    403: "You may not do that",
    404: "Not found",
    405: "That is not allowed here",
    500: "Something went wrong",
}


def _render(status: int, title: str, message: str) -> tuple[str, int]:
    template = "errors/_message.html" if is_htmx_request() else "errors/error.html"
    return render_template(template, status=status, title=title, message=message), status


def handle_http_error(error: HTTPException) -> tuple[str, int]:
    status = error.code or 500
    title = _TITLES.get(status, error.name)
    message = error.description or ""
    if status == 404 and message == HTTPException.description:
        message = ""
    if isinstance(error, InternalServerError):
        message = "The dashboard hit an unexpected error. It has been logged."
    return _render(status, title, message or "There is nothing at this address.")


def handle_configuration_error(error: DashboardError) -> tuple[str, int]:
    logger.error("configuration error: %s", error)
    return _render(500, "Configuration error", str(error))


def handle_unexpected(error: Exception) -> tuple[str, int]:
    logger.exception("unhandled error", exc_info=error)
    return handle_http_error(InternalServerError())


def init_app(app: Flask) -> None:
    """Register the handlers."""
    app.register_error_handler(HTTPException, handle_http_error)
    app.register_error_handler(ConfigurationError, handle_configuration_error)
    app.register_error_handler(ScriptDirectoryError, handle_configuration_error)
    if not app.testing:
        app.register_error_handler(Exception, handle_unexpected)
