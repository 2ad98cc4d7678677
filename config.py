"""Configuration classes; every value can be set from the process environment."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from dashboard.htmx import HTMX_CDN_URL

BASE_DIR = Path(__file__).resolve().parent
INSECURE_SECRET_KEY = "dev-only-insecure-secret-key"


def _float(name: str, default: float) -> float | str:
    """Read a number from the environment; a bad value is kept as text for create_app to report."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        return raw


def _int(name: str, default: int) -> int | str:
    """Read a whole number from the environment; a bad value is kept as text to be reported."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        return raw


def default_store_files(environments_file: str | os.PathLike[str]) -> tuple[str, Path]:
    """The store (a SQLite URL) and the audit anchor file when neither is set: in the folder
    `instance/` beside the environments file, so that two projects never share one store.

    For the demo's environments.yaml beside this file that is instance/dashboard.db here, as
    ever; a file called NAME.yaml (not environments.yaml) gets instance/dashboard-NAME.db.
    """
    source = Path(environments_file).resolve()
    folder = source.parent / "instance"
    suffix = "" if source.stem == "environments" else f"-{source.stem}"
    return f"sqlite:///{folder / f'dashboard{suffix}.db'}", folder / f"audit-anchors{suffix}.log"


class Config:
    SECRET_KEY = os.environ.get("SECRET_KEY", INSECURE_SECRET_KEY)
    # None: a SQLite file beside ENVIRONMENTS_FILE (default_store_files); the factory fills it in.
    SQLALCHEMY_DATABASE_URI = os.environ.get("DASHBOARD_DATABASE_URL") or None
    ENVIRONMENTS_FILE = os.environ.get("ENVIRONMENTS_FILE", str(BASE_DIR / "environments.yaml"))
    HTMX_URL = os.environ.get("HTMX_URL", HTMX_CDN_URL)
    # Seconds a status read may take to connect to a target database.
    STATUS_CONNECT_TIMEOUT = _float("DASHBOARD_CONNECT_TIMEOUT", 3.0)
    # Seconds between background status refreshes.
    STATUS_REFRESH_SECONDS = _float("DASHBOARD_REFRESH_SECONDS", 10.0)
    # One process of a deployment reads the statuses and runs the housekeeping: the one holding
    # a lease in the store, renewed three times per this many seconds. When it dies, another
    # process takes over once the lease lapses.
    STATUS_LEASE_SECONDS = _float("DASHBOARD_STATUS_LEASE_SECONDS", 30.0)
    # Seconds a page may wait for what is still being read after a start (statuses, the script
    # directory) before it answers with "reading…" for it; it fills in as the page polls.
    FIRST_PAINT_SECONDS = _float("DASHBOARD_FIRST_PAINT_SECONDS", 0.1)
    # Seconds the runner waits for a target database's migration lock.
    JOB_LOCK_WAIT_SECONDS = _float("DASHBOARD_JOB_LOCK_WAIT", 10.0)
    # A running job's heartbeat period, and how old it may get before the job counts as dead.
    JOB_HEARTBEAT_SECONDS = _float("DASHBOARD_JOB_HEARTBEAT", 2.0)
    JOB_STALE_SECONDS = _float("DASHBOARD_JOB_STALE", 30.0)
    # How long a job's supervisor keeps trying to store its log and outcome while the store
    # refuses connections (the migration itself needs no store).
    JOB_STORE_RETRY_SECONDS = _float("DASHBOARD_JOB_STORE_RETRY", 3600.0)
    # Hours a rollout may wait for approval and execution before it expires; 0 = never.
    ROLLOUT_LIFETIME_HOURS = _float("DASHBOARD_ROLLOUT_LIFETIME_HOURS", 72.0)
    # Bytes a request may carry; a bigger one is refused (413) before it is read or stored.
    MAX_CONTENT_LENGTH = _int("DASHBOARD_MAX_CONTENT_LENGTH", 1024 * 1024)
    # Werkzeug's own bound on a form's fields in memory (500 kB by default) follows it.
    MAX_FORM_MEMORY_SIZE = MAX_CONTENT_LENGTH
    # Rehearse a rollout's plan on a scratch database, in the background, when it is requested.
    ROLLOUT_REHEARSALS = os.environ.get("DASHBOARD_ROLLOUT_REHEARSALS", "1") not in ("0", "false")
    # Supervising threads in each web process.
    JOB_WORKERS = 4
    # Threads for background tasks (schema diffs, rehearsals, drift checks, plan renders), apart
    # from the jobs' so that a long rehearsal never holds up a migration.
    TASK_WORKERS = _int("DASHBOARD_TASK_WORKERS", 2)
    # Plans and schema diffs kept in each process's memory (least recently used go first).
    PLAN_CACHE_SIZE = _int("DASHBOARD_PLAN_CACHE_SIZE", 128)
    DIFF_CACHE_SIZE = _int("DASHBOARD_DIFF_CACHE_SIZE", 64)
    # A pooled store connection that died (a restart, a failover, an idle timeout) is replaced
    # before use instead of failing the next request.
    SQLALCHEMY_ENGINE_OPTIONS = {"pool_pre_ping": True}
    # Rehearsals, drift checks and schema diffs a person may start, over every server: the
    # count lives in Redis when REDIS_URL is set (else in each process's memory).
    EXPENSIVE_WORK_LIMIT = os.environ.get("DASHBOARD_EXPENSIVE_WORK_LIMIT", "20 per minute")
    RATELIMIT_STORAGE_URI = os.environ.get("REDIS_URL") or "memory://"
    RATELIMIT_KEY_PREFIX = os.environ.get("DASHBOARD_RATELIMIT_KEY_PREFIX", "migration-dashboard")
    RATELIMIT_HEADERS_ENABLED = True
    # Where jobs and background tasks run: "thread" (pools in each web process, the default) or
    # "rq" (enqueued on REDIS_URL for `flask dashboard worker` processes; see docs/deploy.md).
    JOB_EXECUTOR = os.environ.get("JOB_EXECUTOR", "thread")
    REDIS_URL = os.environ.get("REDIS_URL") or None
    # The RQ queues are named PREFIX-jobs and PREFIX-tasks (one prefix per deployment).
    RQ_QUEUE_PREFIX = os.environ.get("DASHBOARD_RQ_QUEUE_PREFIX", "migration-dashboard")
    # "text", or "json": one JSON object per log line, with the request's id.
    LOG_FORMAT = os.environ.get("DASHBOARD_LOG_FORMAT", "text")
    # An append-only file that gets every committed audit head (SEQ:HASH), which
    # `flask dashboard audit verify` checks: deleting the newest events and their checkpoints
    # is still found. Unset: beside the default store (default_store_files), or in the instance
    # folder when DASHBOARD_DATABASE_URL is set; empty: off.
    AUDIT_ANCHOR_FILE = os.environ.get("DASHBOARD_AUDIT_ANCHOR_FILE")
    # Also print every committed audit head on stderr (the process log); the image does.
    AUDIT_LOG_HEADS = os.environ.get("DASHBOARD_AUDIT_LOG_HEADS", "") not in ("", "0", "false")
    # The squawk that lints PostgreSQL plans (pip's squawk-cli installs it beside this Python);
    # when it is not there, squawk on PATH; with neither, plans say they were not linted.
    SQUAWK_BIN = os.environ.get("DASHBOARD_SQUAWK_BIN") or str(
        Path(sys.executable).with_name("squawk")
    )
    SESSION_COOKIE_HTTPONLY = True
    SESSION_COOKIE_SAMESITE = "Lax"
    REQUIRE_REAL_SECRET_KEY = False


class DevelopmentConfig(Config):
    DEBUG = False


class TestingConfig(Config):
    TESTING = True
    SECRET_KEY = "testing-secret-key"
    # Tests of the limit set their own; the others never meet it.
    EXPENSIVE_WORK_LIMIT = "10000 per minute"
    # A test's first page shows what was read, as a person a moment after a start would see.
    FIRST_PAINT_SECONDS = _float("DASHBOARD_FIRST_PAINT_SECONDS", 5.0)
    # Tests of rollout rehearsals turn them on; the rest would pay a rehearsal per request.
    ROLLOUT_REHEARSALS = False
    # Tests that check anchoring give each app its own file; the rest anchor nowhere.
    AUDIT_ANCHOR_FILE = os.environ.get("DASHBOARD_AUDIT_ANCHOR_FILE", "")


class ProductionConfig(Config):
    SESSION_COOKIE_SECURE = True
    REQUIRE_REAL_SECRET_KEY = True
    AUDIT_LOG_HEADS = os.environ.get("DASHBOARD_AUDIT_LOG_HEADS", "1") not in ("", "0", "false")


CONFIGS: dict[str, type[Config]] = {
    "development": DevelopmentConfig,
    "testing": TestingConfig,
    "production": ProductionConfig,
}
