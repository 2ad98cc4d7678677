"""/healthz: is this process serving and its store reachable? Never touches a target database."""

from __future__ import annotations

import sqlalchemy as sa
from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

from dashboard.environments import get_project
from dashboard.extensions import db
from dashboard.redact import redact

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    """Answer 200 when the store answers, 503 (with the reason) when it does not."""
    try:
        db.session.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError as error:
        db.session.rollback()
        reason = redact(str(getattr(error, "orig", error)), [db.engine.url])
        return jsonify(status="unavailable", store=reason), 503
    return jsonify(status="ok", project=get_project().name)
