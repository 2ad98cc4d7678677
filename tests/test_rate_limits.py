"""Expensive work (rehearsals, drift checks, schema diffs) is rate-limited per person, with a
clear 429 page; with REDIS_URL the count is shared by every server (issue 13)."""

from __future__ import annotations

import secrets
from pathlib import Path

import redis

from dashboard.drift.models import DriftCheck
from dashboard.extensions import db
from tests.helpers import TEST_PASSWORD, Auth, add_user, make_app
from tests.servers import HttpSession, server_environ
from tests.test_tasks import wait_for_drift_checks

REDIS_URL = "redis://127.0.0.1:6379/0"


def signed_in(app, username: str):
    client = app.test_client()
    Auth(client).login(username)
    return client


def last_check_of(app, environment: str):
    with app.app_context():
        return db.session.get(DriftCheck, environment).checked_at


def test_drift_checks_past_the_limit_are_429_and_start_nothing(demo_folder: Path):
    app = make_app(demo_folder, EXPENSIVE_WORK_LIMIT="2 per minute")
    add_user(app, "olga", "operator")
    add_user(app, "otto", "operator")
    olga, otto = signed_in(app, "olga"), signed_in(app, "otto")

    for _ in range(2):
        assert Auth(olga).post("/drift/check", {"environment": "dev"}).status_code == 303
    wait_for_drift_checks(olga)  # checks run as background tasks (issue 14)
    checked_at = last_check_of(app, "dev")
    refused = Auth(olga).post("/drift/check", {"environment": "dev"})

    assert refused.status_code == 429
    page = refused.get_data(as_text=True)
    assert "Too many requests" in page and "each person may start 2 per 1 minute" in page
    assert "Nothing was started" in page and refused.headers["Retry-After"]
    assert last_check_of(app, "dev") == checked_at  # no check ran
    # The budget is each person's own.
    assert Auth(otto).post("/drift/check", {"environment": "dev"}).status_code == 303


def test_with_redis_the_count_is_shared_by_two_servers(
    tmp_path: Path, demo_folder: Path, gunicorn
):
    prefix = f"dashboard-test-{secrets.token_hex(6)}"
    app = make_app(demo_folder)
    add_user(app, "olga", "operator")
    env = server_environ(
        tmp_path,
        store=app.config["SQLALCHEMY_DATABASE_URI"],
        environments=demo_folder / "environments.yaml",
        secret_key=secrets.token_hex(32),
        REDIS_URL=REDIS_URL,
        DASHBOARD_RATELIMIT_KEY_PREFIX=prefix,
        DASHBOARD_EXPENSIVE_WORK_LIMIT="3 per minute",
    )
    servers = [gunicorn(env, workers=2, threads=2) for _ in range(2)]
    browser = HttpSession()
    browser.login(servers[0], "olga", TEST_PASSWORD)
    try:
        statuses = [browser.get(servers[n % 2].url("/drift/compare")).status for n in range(5)]
        assert statuses == [200, 200, 200, 429, 429]
        assert redis.Redis.from_url(REDIS_URL).keys(f"*{prefix}*")
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(f"*{prefix}*"):
            client.delete(key)
