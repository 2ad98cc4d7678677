"""Migration Dashboard: Flask-Migrate / Alembic migrations across environments, in a browser."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dashboard import startup

# Before the imports below: a one-shot `flask dashboard upgrade` starts its zygote now, and
# pauses the garbage collector while the app is built (see dashboard/startup.py).
startup.begin(sys.argv)

from flask import Flask  # noqa: E402

from dashboard.cli_errors import reports_startup_errors  # noqa: E402
from dashboard.errors import ConfigurationError  # noqa: E402

STORE_MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


@reports_startup_errors  # under `flask …`, a bad environments.yaml is one line, no traceback
def create_app(
    config: str | type | None = None, overrides: Mapping[str, Any] | None = None
) -> Flask:
    """Build the app from a config class (or its name), then `overrides`; reads local files only."""
    # Without cyclic collection: what building makes (modules, classes, tables) lives as long
    # as the app, and each collection meanwhile would walk it all again (~0.2 s of a start-up).
    with startup.collection_paused():
        app = _build_app(config, overrides)
    startup.app_built()
    return app


def _build_app(config: str | type | None, overrides: Mapping[str, Any] | None) -> Flask:
    # Imported here, not at the top: the runner and renderer children import `dashboard.target`,
    # which loads this package, and must not pay for every blueprint and template on start.
    import config as config_module
    from dashboard import cli, environments, housekeeping, logs, models, scheduler, workers
    from dashboard.audit import cli as audit_cli
    from dashboard.audit import service as audit_service
    from dashboard.extensions import db, migrate
    from dashboard.jobs import service as jobs_service
    from dashboard.jobs.executor import EXECUTOR, make_executor
    from dashboard.rollouts import cli as rollouts_cli
    from dashboard.rollouts import flows as rollout_flows
    from dashboard.tasks import flows as task_flows

    app = Flask(__name__, instance_relative_config=True)
    app.config.from_object(_config_class(config, config_module))
    if overrides:
        app.config.update(overrides)
    _check_config(app, config_module)
    logs.init_app(app)  # first: what the others log at start is formatted already

    assert models.User is not None  # every table registered before Flask-Migrate looks
    db.init_app(app)
    migrate.init_app(app, db, directory=str(STORE_MIGRATIONS))
    environments.init_app(app)
    cli.init_app(app)
    rollouts_cli.init_app(app)
    workers.init_app(app)
    audit_service.init_app(app)
    cli.dashboard_cli.add_command(audit_cli.audit_cli)
    # Threads (or RQ, JOB_EXECUTOR=rq); the executor is handed what it runs.
    app.extensions[EXECUTOR] = make_executor(
        app, run=jobs_service.run_job, run_task=task_flows.run_task
    )
    app.extensions[jobs_service.JOB_FINISHED_HOOKS] = [rollout_flows.job_finished]
    housekeeping.init_app(app)  # runs in the status refresher's thread, once that starts
    scheduler.init_app(app)  # …and only in the process holding the refresher's lease
    if not startup.serves_no_pages(sys.argv):
        _add_web_tier(app)
    return app


def _add_web_tier(app: Flask) -> None:
    """Pages, their templates, error pages, sign-in, CSRF and rate limits."""
    from dashboard import error_pages, health, templating
    from dashboard.audit import views as audit_views
    from dashboard.auth import security
    from dashboard.auth import views as auth_views
    from dashboard.diffs.views import bp as diffs_bp
    from dashboard.drift.views import bp as drift_bp
    from dashboard.environments.views import bp as environments_bp
    from dashboard.history.views import bp as history_bp
    from dashboard.jobs import views as jobs_views
    from dashboard.ratelimits import limiter
    from dashboard.rollouts import views as rollouts_views
    from dashboard.tasks import views as tasks_views
    from dashboard.users import views as users_views

    limiter.init_app(app)
    templating.init_app(app)
    error_pages.init_app(app)
    security.init_app(app)
    app.register_blueprint(health.bp)
    app.register_blueprint(auth_views.bp)
    app.register_blueprint(users_views.bp)
    app.register_blueprint(jobs_views.bp)
    app.register_blueprint(environments_bp)
    app.register_blueprint(history_bp)
    app.register_blueprint(diffs_bp)
    app.register_blueprint(drift_bp)
    app.register_blueprint(tasks_views.bp)
    app.register_blueprint(rollouts_views.bp)
    app.register_blueprint(audit_views.bp)


def _config_class(config: str | type | None, config_module: Any) -> type:
    import os

    if isinstance(config, type):
        return config
    name = config or os.environ.get("DASHBOARD_CONFIG", "development")
    try:
        return config_module.CONFIGS[name]
    except KeyError:
        known = ", ".join(sorted(config_module.CONFIGS))
        raise ConfigurationError(
            f"DASHBOARD_CONFIG={name!r} is not a configuration; use one of: {known}"
        ) from None


def _check_config(app: Flask, config_module: Any) -> None:
    """Fill derived defaults and refuse values that cannot work, naming the setting."""
    for key, variable in (
        ("STATUS_CONNECT_TIMEOUT", "DASHBOARD_CONNECT_TIMEOUT"),
        ("STATUS_REFRESH_SECONDS", "DASHBOARD_REFRESH_SECONDS"),
        ("JOB_LOCK_WAIT_SECONDS", "DASHBOARD_JOB_LOCK_WAIT"),
        ("JOB_HEARTBEAT_SECONDS", "DASHBOARD_JOB_HEARTBEAT"),
        ("JOB_STALE_SECONDS", "DASHBOARD_JOB_STALE"),
        ("JOB_STORE_RETRY_SECONDS", "DASHBOARD_JOB_STORE_RETRY"),
        ("STATUS_LEASE_SECONDS", "DASHBOARD_STATUS_LEASE_SECONDS"),
    ):
        value = app.config[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ConfigurationError(
                f"{variable} must be a positive number of seconds, not {value!r}"
            )
    for key, variable, unit in (
        ("ROLLOUT_LIFETIME_HOURS", "DASHBOARD_ROLLOUT_LIFETIME_HOURS", "hours (0 = never)"),
        ("FIRST_PAINT_SECONDS", "DASHBOARD_FIRST_PAINT_SECONDS", "seconds (0 = do not wait)"),
    ):
        value = app.config[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ConfigurationError(f"{variable} must be a number of {unit}, not {value!r}")
    if app.config.get("REQUIRE_REAL_SECRET_KEY"):
        secret = app.config.get("SECRET_KEY") or ""
        if secret == config_module.INSECURE_SECRET_KEY or len(secret) < 32:
            raise ConfigurationError(
                "SECRET_KEY must be set to a random value of at least 32 characters in "
                'production, e.g. python -c "import secrets; print(secrets.token_hex(32))"'
            )
    if not app.config.get("SQLALCHEMY_DATABASE_URI"):
        store, anchors = config_module.default_store_files(app.config["ENVIRONMENTS_FILE"])
        app.config["SQLALCHEMY_DATABASE_URI"] = store
        if app.config.get("AUDIT_ANCHOR_FILE") is None:
            app.config["AUDIT_ANCHOR_FILE"] = str(anchors)
        # SQLite creates the file but not its folder (Flask-SQLAlchemy makes its own likewise).
        with contextlib.suppress(OSError):
            anchors.parent.mkdir(parents=True, exist_ok=True)
