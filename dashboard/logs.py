"""Process logs: plain text by default, or one JSON object per line with the request's id
(DASHBOARD_LOG_FORMAT=json) for a log collector.

Every request gets an id: the caller's `X-Request-ID` when it is a sane token (a load balancer's),
else a new one. It is sent back in the response's `X-Request-ID` header, added to every log line
written while the request is served, and handed with a queued job or task to the worker that runs
it (dashboard.jobs.executor), so one id follows a click from the web process into the worker.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
import traceback
import uuid
from datetime import UTC, datetime

from flask import Flask, Response, g, request

from dashboard.errors import ConfigurationError

LOG_FORMATS = ("text", "json")
REQUEST_ID_HEADER = "X-Request-ID"
# What a caller's request id may look like; anything else is replaced by a new one.
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "dashboard_request_id", default=None
)
# The attributes every LogRecord has; anything else was passed through `extra=` and is kept.
_STANDARD_ATTRIBUTES = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
requests_logger = logging.getLogger("dashboard.requests")


def current_request_id() -> str | None:
    """Return the id of the request (or queued work) this code runs for, if any."""
    return _request_id.get()


def bind_request_id(request_id: str | None) -> contextvars.Token:
    """Make `request_id` the id of the work running now (a worker does this for a job)."""
    return _request_id.set(request_id)


class RequestIdFilter(logging.Filter):
    """Put the current request id on every record (None outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = _request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, request id, extras, error."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
            "process": record.process,
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRIBUTES and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["error"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, default=str, ensure_ascii=False)


class _JsonHandler(logging.StreamHandler):
    """The handler this module installs on the root logger (found again by its class)."""


def configure_json_logging(stream=None) -> None:
    """Send every logger's records to `stream` (stderr) as JSON lines, replacing the root's
    handlers; called again, it replaces its own handler rather than adding a second."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = _JsonHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)


def init_app(app: Flask) -> None:
    """Give every request an id; with LOG_FORMAT=json, log as JSON lines, one per request too."""
    log_format = str(app.config.get("LOG_FORMAT") or "text").lower()
    if log_format not in LOG_FORMATS:
        raise ConfigurationError(
            f"DASHBOARD_LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}"
        )
    app.config["LOG_FORMAT"] = log_format
    as_json = log_format == "json"
    if as_json:
        configure_json_logging()
        # Flask's own handler would write the app's records a second time, as text.
        app.logger.handlers.clear()

    @app.before_request
    def take_request_id() -> None:
        asked = request.headers.get(REQUEST_ID_HEADER, "")
        request_id = asked if _SANE_REQUEST_ID.fullmatch(asked) else uuid.uuid4().hex
        g.request_id = request_id
        g.request_id_token = _request_id.set(request_id)
        g.request_started = time.monotonic()

    @app.after_request
    def send_request_id(response: Response) -> Response:
        request_id = g.get("request_id")
        if request_id:
            response.headers[REQUEST_ID_HEADER] = request_id
        if as_json and "request_started" in g:
            requests_logger.info(
                "%s %s %s",
                request.method,
                request.path,
                response.status_code,
                extra={
                    "method": request.method,
                    "path": request.path,
                    "status": response.status_code,
                    "duration_ms": round((time.monotonic() - g.request_started) * 1000, 1),
                    "remote_addr": request.remote_addr,
                },
            )
        return response

    @app.teardown_request
    def forget_request_id(error: BaseException | None = None) -> None:
        token = g.pop("request_id_token", None)
        if token is not None:
            try:
                _request_id.reset(token)
            except ValueError:  # set in another context (a copied one): leave it
                _request_id.set(None)
