"""The Audit page: filter, page through and download the audit log."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, abort, render_template, request
from flask.typing import ResponseReturnValue

from dashboard.audit import service as audit
from dashboard.auth import role_required
from dashboard.htmx import is_htmx_request
from dashboard.users.models import Role

bp = Blueprint("audit", __name__)

FILTER_NAMES = ("actor", "action", "environment", "since", "until")
PER_PAGE = 50
_REFUSED = {"refused", "denied", "failed", "error"}
# A fingerprint or hash: long enough that only its start is worth showing in a row.
_DIGEST = re.compile(r"[0-9a-f]{32,}")
DIGEST_SHOWN = 12
# Shown in their own places (the outcome badge, the actor column), not among the details.
_NOT_DETAILS = {"outcome", "on_behalf_of"}


def _filter_texts() -> dict[str, str]:
    """The filters as typed, for the form and for links that keep them."""
    return {name: request.args[name] for name in FILTER_NAMES if request.args.get(name)}


def _filters() -> dict[str, Any]:
    try:
        return audit.parse_filters(**_filter_texts())
    except audit.InvalidAuditFilter as error:
        abort(400, description=str(error))


@bp.app_template_filter("audit_time")
def audit_time(moment: datetime) -> str:
    """Show an event's time in UTC."""
    return audit.as_utc(moment).strftime("%Y-%m-%d %H:%M:%S UTC")


@bp.app_template_filter("audit_tone")
def audit_tone(outcome: Any) -> str:
    """Return the colour class of an outcome: bad for refusals and failures, else ok."""
    return "bad" if str(outcome).lower() in _REFUSED else "ok"


@dataclass(frozen=True)
class DetailShown:
    """One detail of an event as the page shows it: its key, its full text, and whether it is a
    digest (shown shortened, with a copy button)."""

    key: str
    text: str
    digest: bool

    @property
    def short(self) -> str:
        return f"{self.text[:DIGEST_SHOWN]}…" if self.digest else self.text


@dataclass(frozen=True)
class EventShown:
    """What the Audit page shows of an event besides its columns."""

    details: list[DetailShown]
    job: int | None  # the background job that acted, on `on_behalf_of`'s behalf
    on_behalf_of: str | None


def _detail_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return ", ".join(value) or "none"
    return json.dumps(value, ensure_ascii=False)


@bp.app_template_global("audit_shown")
def audit_shown(event: Any) -> EventShown:
    """Prepare an event's details for the page, and say which job acted for whom, if one did."""
    details = event.details or {}
    shown = [
        DetailShown(key, text, bool(_DIGEST.fullmatch(text)))
        for key, value in sorted(details.items())
        if key not in _NOT_DETAILS
        for text in [_detail_text(value)]
    ]
    on_behalf_of = details.get("on_behalf_of")
    job = details.get("job")
    if on_behalf_of and isinstance(job, int) and event.actor_id is None:
        return EventShown(shown, job, str(on_behalf_of))
    return EventShown(shown, None, None)


@bp.get("/audit")
@role_required(Role.VIEWER)
def events() -> ResponseReturnValue:
    """The audit log, newest first, filtered by actor, action, environment and time."""
    texts = _filter_texts()
    pagination = audit.page_events(
        **_filters(), page=request.args.get("page", 1, type=int), per_page=PER_PAGE
    )
    # htmx asks for the whole page again when it restores history it has not cached.
    fragment = is_htmx_request() and request.headers.get("HX-History-Restore-Request") != "true"
    if fragment:
        return render_template("audit/_events.html", pagination=pagination, filters=texts)
    return render_template(
        "audit/events.html", pagination=pagination, filters=texts, choices=audit.filter_choices()
    )


def _download(body: str, mimetype: str, extension: str) -> Response:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return Response(
        body,
        mimetype=mimetype,
        headers={"Content-Disposition": f'attachment; filename="audit-{stamp}.{extension}"'},
    )


@bp.get("/audit/export.csv")
@role_required(Role.VIEWER)
def export_csv() -> ResponseReturnValue:
    """The filtered events as CSV."""
    # Built whole: on SQLite the request holds the store's lock until the response is made.
    body = "".join(audit.to_csv(audit.export_rows(**_filters())))
    return _download(body, "text/csv", "csv")


@bp.get("/audit/export.json")
@role_required(Role.VIEWER)
def export_json() -> ResponseReturnValue:
    """The filtered events as JSON."""
    body = "".join(audit.to_json(audit.export_rows(**_filters())))
    return _download(body, "application/json", "json")
