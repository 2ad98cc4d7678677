"""A store nobody upgraded (or one older than the dashboard) says `flask db upgrade` first, in
the CLI and in the pages, on every store backend — never a traceback or a 500 (issue 15)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from dashboard.extensions import db
from dashboard.users.models import User
from tests.helpers import TEST_PASSWORD, Auth, make_app
from tests.servers import clean_environ

UPGRADE_FIRST = "run `flask db upgrade` first"


def flask(
    *args: str, store: URL, environments: Path, stdin: str = ""
) -> subprocess.CompletedProcess:
    env = clean_environ(
        DASHBOARD_DATABASE_URL=store.render_as_string(hide_password=False),
        ENVIRONMENTS_FILE=str(environments),
        FLASK_APP="dashboard",
        DASHBOARD_AUDIT_ANCHOR_FILE=str(environments.parent / "anchors.log"),
    )
    return subprocess.run(
        ["flask", *args],
        cwd=environments.parent,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.slow  # every command, each its own `flask` process, on each store backend
def test_commands_on_a_store_without_tables_say_to_upgrade_it_first(
    database_url: URL, demo_environments: Path
):
    for args, stdin in (
        (("dashboard", "create-user", "ann", "--role", "admin", "--password-stdin"), TEST_PASSWORD),
        (("dashboard", "jobs"), ""),
        (("dashboard", "audit", "verify"), ""),
    ):
        result = flask(*args, store=database_url, environments=demo_environments, stdin=stdin)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert UPGRADE_FIRST in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr, result.stderr

    upgraded = flask("db", "upgrade", store=database_url, environments=demo_environments)
    assert upgraded.returncode == 0, upgraded.stderr
    created = flask(
        "dashboard",
        "create-user",
        "ann",
        "--role",
        "admin",
        "--password-stdin",
        store=database_url,
        environments=demo_environments,
        stdin=TEST_PASSWORD,
    )
    assert created.returncode == 0, created.stderr
    # A real command hashes with argon2id at 19 MiB, 2 passes, 1 lane (64 MiB was argon2-cffi's
    # default: a worker signing several people in at once grew by that much for each).
    engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    with engine.connect() as connection:
        stored = connection.scalar(sa.select(User.password_hash))
    engine.dispose()
    assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$"), stored


def test_pages_on_a_store_without_tables_say_to_upgrade_it_first(
    database_url: URL, demo_environments: Path
):
    app = make_app(
        demo_environments.parent,
        SQLALCHEMY_DATABASE_URI=database_url.render_as_string(hide_password=False),
    )
    auth = Auth(app.test_client())
    assert auth.client.get("/login").status_code == 200  # the sign-in form needs no store
    reply = auth.login("ann", expect=503)
    page = reply.get_data(as_text=True)
    assert "The store is not set up" in page and UPGRADE_FIRST in page
    with app.app_context():
        db.engine.dispose()
