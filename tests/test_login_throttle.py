"""Login throttling holds under concurrency: counting and recording a try is one atomic step,
whichever of two gunicorn servers on one PostgreSQL or MariaDB store answers (issue 13)."""

from __future__ import annotations

import re
import secrets
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa

from dashboard.extensions import db
from dashboard.users.models import LoginFailure
from tests.helpers import DatabaseFactory, add_user, make_app
from tests.servers import HttpSession, server_environ

TRIES = 25
LIMIT = 5  # ThrottlePolicy.per_user_and_address
_CSRF_INPUT = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')


@pytest.fixture(params=["postgresql", "mariadb"])
def shared_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A throwaway store database on a server both app servers reach."""
    databases = DatabaseFactory(request.param, tmp_path)
    yield databases.create().render_as_string(hide_password=False)
    databases.drop_all()


def test_concurrent_wrong_passwords_over_two_servers_check_at_most_the_limit(
    tmp_path: Path, shared_store: str, demo_folder: Path, gunicorn
):
    store = shared_store
    secret_key = secrets.token_hex(32)
    app = make_app(demo_folder, SQLALCHEMY_DATABASE_URI=store, SECRET_KEY=secret_key)
    add_user(app, "vera")
    env = server_environ(
        tmp_path, store=store, environments=demo_folder / "environments.yaml", secret_key=secret_key
    )
    servers = [gunicorn(env, workers=2, threads=4) for _ in range(2)]

    # Each try is its own browser with its own CSRF token, ready before any is sent.
    browsers = []
    for number in range(TRIES):
        server = servers[number % 2]
        browser = HttpSession()
        token = _CSRF_INPUT.search(browser.get(server.url("/login")).text).group(1)
        browsers.append((browser, server, token))
    start = threading.Barrier(TRIES)

    def try_to_sign_in(entry) -> int:
        browser, server, token = entry
        start.wait()
        form = {"username": "vera", "password": "not-the-password", "csrf_token": token}
        return browser.post(server.url("/login"), form).status

    with ThreadPoolExecutor(max_workers=TRIES) as pool:
        statuses = Counter(pool.map(try_to_sign_in, browsers))

    assert not any(status >= 500 for status in statuses), statuses
    # A wrong password that was checked re-shows the form; a throttled try is 429.
    assert set(statuses) <= {200, 401, 429}, statuses
    checked = TRIES - statuses[429]
    assert checked <= LIMIT, statuses
    assert statuses[429] >= TRIES - LIMIT
    with app.app_context():
        recorded = db.session.scalar(sa.select(sa.func.count()).select_from(LoginFailure))
        if db.engine.dialect.name == "mysql":
            # GET_LOCK belongs to a connection: none of the servers' pooled ones may keep it.
            holder = db.session.scalar(
                sa.text("SELECT IS_USED_LOCK('migration_dashboard_login_throttle')")
            )
            assert holder is None, f"connection {holder} still holds the throttle lock"
    with app.app_context():  # the first context gave its connection back when it ended
        db.engine.dispose()
    assert recorded == checked
