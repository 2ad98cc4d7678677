"""/healthz: is this process serving? /readyz: can it do its work — does its store answer, and
(with the RQ executor) its Redis? Neither touches a target database."""

from __future__ import annotations

import os

import sqlalchemy as sa
from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

from dashboard.environments import get_project
from dashboard.extensions import db
from dashboard.jobs.executor import get_executor
from dashboard.redact import redact

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    """Answer 200 while this process serves requests (liveness: it asks nothing else)."""
    return jsonify(status="ok", project=get_project().name, process=os.getpid())


@bp.get("/readyz")
def readyz() -> ResponseReturnValue:
    """Answer 200 when the store (and the job queue's Redis) answers, else 503 naming why."""
    checks = {"store": _store_problem()}
    checks.update(get_executor().problems())
    problems = {name: reason for name, reason in checks.items() if reason is not None}
    if problems:
        return jsonify(status="unavailable", **problems), 503
    return jsonify(status="ok", project=get_project().name, **dict.fromkeys(checks, "ok"))


def _store_problem() -> str | None:
    """Why the store does not answer, with any password masked; None when it does."""
    try:
        db.session.execute(sa.text("SELECT 1"))
        db.session.rollback()  # end the read: no transaction outlives a probe
    except sa.exc.SQLAlchemyError as error:
        db.session.rollback()
        return redact(str(getattr(error, "orig", error)), [db.engine.url]).strip()
    return None
