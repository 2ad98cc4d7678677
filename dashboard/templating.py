"""Jinja filters and globals shared by every page."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

from flask import Flask, current_app, url_for
from markupsafe import Markup, escape
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import PythonLexer, SqlLexer

from dashboard.environments.status import EnvironmentStatus, Status
from dashboard.htmx import HTMX_CDN_URL, HTMX_SRI
from dashboard.plans import lint
from dashboard.users.models import Role

_TONES = {
    Status.UP_TO_DATE: "ok",
    Status.BEHIND: "warn",
    Status.MULTIPLE_HEADS: "warn",
    Status.AHEAD_UNKNOWN: "bad",
    Status.UNREACHABLE: "bad",
    Status.NOT_CONFIGURED: "muted",
    Status.UNKNOWN: "muted",
}


def status_label(status: EnvironmentStatus) -> str:
    """Say a status in words a person reads at a glance."""
    match status.status:
        case Status.UP_TO_DATE:
            return "Up to date"
        case Status.BEHIND:
            return f"{status.behind} behind"
        case Status.AHEAD_UNKNOWN:
            return "Unknown revision"
        case Status.MULTIPLE_HEADS:
            return "Multiple heads"
        case Status.UNREACHABLE:
            return "Unreachable"
        case Status.NOT_CONFIGURED:
            return "Not configured"
    return "Checking…"


def status_tone(status: EnvironmentStatus) -> str:
    """Return the colour class of a status: ok, warn, bad or muted."""
    return _TONES.get(status.status, "muted")


def ago(moment: datetime | None) -> str:
    """Say how long ago `moment` was, e.g. '12 s ago'."""
    if moment is None:
        return "not read yet"
    seconds = max(0, int((datetime.now(UTC) - moment).total_seconds()))
    if seconds < 60:
        return f"{seconds} s ago"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"


def short(revision_id: str) -> str:
    """Shorten a revision id for display (Alembic's ids are 12 hex digits already)."""
    return revision_id[:12]


source_formatter = HtmlFormatter(cssclass="source", linenos="table", wrapcode=True)
_sql_formatter = HtmlFormatter(cssclass="source", wrapcode=True)


def script_source(path: Path) -> Markup:
    """Return a migration script's source highlighted as HTML (or why it cannot be read)."""
    try:
        source = path.read_text(encoding="utf-8")
    except OSError as error:
        source = f"# cannot read {path}: {error.strerror}"
    return Markup(highlight(source, PythonLexer(), source_formatter))


def sql_source(sql: str) -> Markup:
    """Return SQL highlighted as HTML."""
    return Markup(highlight(sql, SqlLexer(), _sql_formatter))


_JOB_MENTION = re.compile(r"\b([Jj]ob #)([0-9]{1,18})\b")


def link_jobs(message: str) -> Markup:
    """Escape a message and link each "job #N" it mentions to that job's page."""
    return Markup(
        _JOB_MENTION.sub(
            lambda found: (
                f'<a href="{url_for("jobs.job", job_id=int(found.group(2)))}">'
                f"{found.group(1)}{found.group(2)}</a>"
            ),
            str(escape(message)),
        )
    )


def htmx_script() -> dict[str, str | None]:
    """Return the htmx script's URL and, for the pinned CDN copy, its SRI hash."""
    url = current_app.config["HTMX_URL"]
    return {"url": url, "integrity": HTMX_SRI if url == HTMX_CDN_URL else None}


def init_app(app: Flask) -> None:
    """Register the filters and globals."""
    app.add_template_filter(status_label)
    app.add_template_filter(status_tone)
    app.add_template_filter(ago)
    app.add_template_filter(short)
    app.add_template_filter(link_jobs)
    app.add_template_global(htmx_script)
    app.add_template_filter(script_source)
    app.add_template_filter(sql_source)
    app.add_template_filter(lint.grouped, name="grouped_findings")
    app.context_processor(
        lambda: {"project": current_app.extensions["dashboard.project"], "Role": Role}
    )
