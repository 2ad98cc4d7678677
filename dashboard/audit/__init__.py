"""The audit log: append-only, hash-chained events with signed checkpoints of the head."""

from __future__ import annotations

from flask import Flask
from sqlalchemy import event
from sqlalchemy.orm import Session

# Seconds an SQLite store waits for another writer's lock before giving up.
DEFAULT_SQLITE_BUSY_TIMEOUT = 15.0


def init_app(app: Flask) -> None:
    """Wire the audit log into the app (store locking, CLI, page)."""
    from dashboard.audit import cli, service, views
    from dashboard.cli import dashboard_cli
    from dashboard.extensions import db

    with app.app_context():
        engine = db.engine  # created by db.init_app; creating it does not connect
    if engine.dialect.name == "sqlite":
        busy_timeout = app.config.get("SQLITE_BUSY_TIMEOUT", DEFAULT_SQLITE_BUSY_TIMEOUT)
        service.use_immediate_transactions(engine, busy_timeout=busy_timeout)
    for name, listener in (
        ("after_commit", service.log_committed_checkpoints),
        ("after_transaction_end", service.forget_unlogged_checkpoints),
    ):
        if not event.contains(Session, name, listener):
            event.listen(Session, name, listener)

    dashboard_cli.add_command(cli.audit_cli)
    app.register_blueprint(views.bp)
