"""`flask db upgrade` from the store's first schema, with data in it, keeps every row and leaves
them usable (issue 13), on SQLite and on a PostgreSQL store."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from pathlib import Path

import flask_migrate
import pytest
import sqlalchemy as sa
from argon2 import PasswordHasher

from dashboard.extensions import db
from tests.helpers import Auth, DatabaseFactory, make_app

FIRST_SCHEMA = "11abbcde5132"  # the first revision that creates tables
PASSWORD = "an-old-but-good-password"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'old-store.db'}"
        return
    databases = DatabaseFactory("postgresql", tmp_path)
    yield databases.create().render_as_string(hide_password=False)
    databases.drop_all()


def test_upgrading_a_store_from_its_first_schema_keeps_users_and_failures(
    store_url: str, demo_folder: Path
):
    app = make_app(demo_folder, SQLALCHEMY_DATABASE_URI=store_url)
    directory = app.extensions["migrate"].directory
    now = datetime.now(UTC)
    with app.app_context():
        flask_migrate.upgrade(directory=directory, revision=FIRST_SCHEMA)
        with db.engine.begin() as connection:
            connection.execute(
                sa.text(
                    'INSERT INTO "user" (username, password_hash, role, active, session_token, '
                    "created_at) VALUES (:name, :hash, :role, :active, :token, :at)"
                ),
                [
                    {
                        "name": name,
                        "hash": PasswordHasher().hash(PASSWORD),
                        "role": role,
                        "active": True,
                        "token": secrets.token_hex(32),
                        "at": now,
                    }
                    for name, role in (("ada", "admin"), ("otto", "operator"))
                ],
            )
            connection.execute(
                sa.text(
                    "INSERT INTO login_failure (username, remote_addr, at) "
                    "VALUES ('otto', '10.0.0.1', :at)"
                ),
                {"at": now},
            )
        flask_migrate.upgrade(directory=directory)  # to head, through every revision
        with db.engine.connect() as connection:
            users = connection.execute(
                sa.text('SELECT username, role, active FROM "user" ORDER BY username')
            ).all()
            failures = connection.scalar(sa.text("SELECT count(*) FROM login_failure"))
        db.engine.dispose()

    assert [tuple(row) for row in users] == [("ada", "admin", True), ("otto", "operator", True)]
    assert failures == 1
    # The rows are not only there: the old password signs in on the new schema.
    client = app.test_client()
    Auth(client).login("ada", PASSWORD)  # expects the redirect of a successful sign-in
    assert "ada" in client.get("/").get_data(as_text=True)
    app.extensions["dashboard.status_board"].stop()
    with app.app_context():
        db.engine.dispose()
