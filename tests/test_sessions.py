"""Sessions (issue 13): a session is a row in the store, checked on every request and deleted
at sign-out, so a cookie copied before sign-out opens nothing afterwards — on SQLite and on a
PostgreSQL store, through the Flask test client and through real servers."""

from __future__ import annotations

import copy
import hashlib
import secrets
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import flask_migrate
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from dashboard.clock import utcnow
from dashboard.extensions import db
from dashboard.users.models import UserSession
from tests.helpers import TEST_PASSWORD, Auth, DatabaseFactory, add_user, make_app
from tests.servers import HttpSession, Server, server_environ

BEFORE_SESSIONS = "9b1f3c5d7e20"  # the store revision before user_session


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty store database: a SQLite file, or a PostgreSQL database."""
    factory = DatabaseFactory(request.param, tmp_path)
    url: URL = factory.create()
    yield url.render_as_string(hide_password=False)
    factory.drop_all()


def shut(app) -> None:
    """Stop the app's background refresher and close its store connections (before the store
    database is dropped)."""
    app.extensions["dashboard.status_board"].stop()
    with app.app_context():
        db.engine.dispose()


@pytest.fixture
def store_app(store_database: URL, demo_folder: Path):
    """The demo dashboard on an upgraded store on each backend (the test is marked `stores`),
    with the user `vera` (viewer)."""
    store = store_database.render_as_string(hide_password=False)
    app = make_app(demo_folder, SQLALCHEMY_DATABASE_URI=store)
    add_user(app, "vera")
    yield app
    shut(app)


def copy_of(client, app):
    """A second browser holding a copy of `client`'s session cookie."""
    cookie = client.get_cookie("session")
    assert cookie is not None, "the client holds no session cookie"
    thief = app.test_client()
    thief.set_cookie("session", cookie.value)
    return thief


def session_rows(app) -> list[UserSession]:
    with app.app_context():
        return list(db.session.scalars(sa.select(UserSession)))


def signs_in(response) -> bool:
    """True when the answer sends the browser to the sign-in page."""
    return response.status_code == 302 and "/login" in response.headers["Location"]


# --- one browser, the Flask test client, both stores ----------------------------------------


@pytest.mark.stores
def test_a_cookie_copied_before_sign_out_opens_nothing_after(store_app):
    browser = store_app.test_client()
    Auth(browser).login("vera")
    copied = copy_of(browser, store_app)
    assert copied.get("/").status_code == 200  # the copy works while the session lives

    assert signs_in(Auth(browser).logout())

    assert signs_in(copied.get("/"))
    assert signs_in(copied.get("/history"))
    htmx = copied.get("/", headers={"HX-Request": "true"})
    assert htmx.status_code == 401 and htmx.headers["HX-Redirect"].startswith("/login")
    assert signs_in(browser.get("/"))


@pytest.mark.stores
def test_the_store_holds_one_row_per_session_and_only_a_digest_of_its_token(store_app):
    browser = store_app.test_client()
    Auth(browser).login("vera")
    [row] = session_rows(store_app)
    with browser.session_transaction() as session:
        user_id, _, token = session["_user_id"].partition(":")
    assert row.token_digest == hashlib.sha256(token.encode()).hexdigest()
    assert row.user_id == int(user_id)

    Auth(browser).logout()
    assert session_rows(store_app) == []


@pytest.mark.stores
def test_signing_out_of_one_browser_leaves_the_other_signed_in(store_app):
    laptop, phone = store_app.test_client(), store_app.test_client()
    Auth(laptop).login("vera")
    Auth(phone).login("vera")

    Auth(laptop).logout()

    assert signs_in(laptop.get("/"))
    assert phone.get("/").status_code == 200
    assert len(session_rows(store_app)) == 1


@pytest.mark.stores
def test_a_password_change_ends_copies_of_other_sessions_but_not_this_one(store_app):
    laptop, phone = store_app.test_client(), store_app.test_client()
    Auth(laptop).login("vera")
    Auth(phone).login("vera")
    copied_phone = copy_of(phone, store_app)
    copied_laptop = copy_of(laptop, store_app)

    changed = Auth(laptop).post(
        "/account",
        {
            "current_password": TEST_PASSWORD,
            "new_password": "a much newer passphrase",
            "confirm_password": "a much newer passphrase",
        },
    )

    assert changed.status_code == 302
    assert laptop.get("/").status_code == 200
    assert copied_laptop.get("/").status_code == 200  # the same session, as before
    assert signs_in(phone.get("/")) and signs_in(copied_phone.get("/"))


@pytest.mark.stores
def test_deactivation_and_sign_out_everywhere_end_every_copy(store_app):
    add_user(store_app, "ada", "admin")
    admin = store_app.test_client()
    Auth(admin).login("ada")
    browser = store_app.test_client()
    Auth(browser).login("vera")
    copied = copy_of(browser, store_app)
    with store_app.app_context():
        vera_id = db.session.scalar(sa.text("SELECT id FROM \"user\" WHERE username = 'vera'"))

    assert Auth(admin).post(f"/users/{vera_id}/sign-out").status_code == 302
    assert signs_in(copied.get("/")) and signs_in(browser.get("/"))

    Auth(browser).login("vera")
    copied = copy_of(browser, store_app)
    assert Auth(admin).post(f"/users/{vera_id}/deactivate").status_code == 302
    assert signs_in(copied.get("/"))
    assert session_rows(store_app) and all(
        row.user_id != vera_id for row in session_rows(store_app)
    )


@pytest.mark.stores
def test_a_session_older_than_the_session_lifetime_opens_nothing(store_app):
    browser = store_app.test_client()
    Auth(browser).login("vera")
    lifetime = store_app.permanent_session_lifetime
    with store_app.app_context():
        db.session.execute(
            sa.update(UserSession).values(created_at=utcnow() - lifetime - timedelta(minutes=1))
        )
        db.session.commit()

    assert signs_in(browser.get("/"))
    # The next sign-in clears the expired row away.
    Auth(store_app.test_client()).login("vera")
    assert len(session_rows(store_app)) == 1


@pytest.mark.stores
def test_a_forged_session_id_opens_nothing(store_app):
    browser = store_app.test_client()
    Auth(browser).login("vera")
    with browser.session_transaction() as session:
        user_id = session["_user_id"].partition(":")[0]
        session["_user_id"] = f"{user_id}:{secrets.token_urlsafe(32)}"
    assert signs_in(browser.get("/"))


# --- the upgrade keeps browsers signed in ---------------------------------------------------


def test_the_upgrade_turns_each_users_token_into_a_session_and_keeps_users(store_url, demo_folder):
    app = make_app(demo_folder, SQLALCHEMY_DATABASE_URI=store_url)
    directory = app.extensions["migrate"].directory
    with app.app_context():
        flask_migrate.upgrade(directory=directory, revision=BEFORE_SESSIONS)
        from argon2 import PasswordHasher

        password_hash = PasswordHasher().hash(TEST_PASSWORD)
        with db.engine.begin() as connection:
            for name, active in (("olive", True), ("gone", False)):
                connection.execute(
                    sa.text(
                        'INSERT INTO "user" (username, password_hash, role, active, '
                        "session_token, created_at) VALUES (:name, :hash, 'operator', :active, "
                        ":token, CURRENT_TIMESTAMP)"
                    ),
                    {"name": name, "hash": password_hash, "active": active, "token": name * 4},
                )
            olive_id = connection.scalar(sa.text("SELECT id FROM \"user\" WHERE username='olive'"))
        db.engine.dispose()
    # A browser that signed in before the upgrade holds "id:token" in its cookie.
    before = app.test_client()
    with before.session_transaction() as session:
        session["_user_id"] = f"{olive_id}:{'olive' * 4}"
        session["_fresh"] = True
    with app.app_context():
        flask_migrate.upgrade(directory=directory)
        with db.engine.connect() as connection:
            assert connection.scalar(sa.text('SELECT count(*) FROM "user"')) == 2
            assert "session_token" not in {
                column["name"] for column in sa.inspect(connection).get_columns("user")
            }
        db.engine.dispose()

    page = before.get("/")
    assert page.status_code == 200 and "olive" in page.get_data(as_text=True)
    Auth(app.test_client()).login("olive")  # and the password still works
    copied = copy_of(before, app)
    Auth(before).logout()
    assert signs_in(copied.get("/"))
    shut(app)


# --- real servers: two gunicorns on one PostgreSQL store ------------------------------------


@pytest.fixture
def two_servers(tmp_path: Path, pg_store: URL, demo_folder: Path, gunicorn) -> Iterator[list]:
    """Two gunicorn servers (2 workers × 4 threads each) sharing a PostgreSQL store."""
    store = pg_store.render_as_string(hide_password=False)
    secret_key = secrets.token_hex(32)
    app = make_app(demo_folder, SQLALCHEMY_DATABASE_URI=store, SECRET_KEY=secret_key)
    add_user(app, "vera")
    env = server_environ(
        tmp_path,
        store=store,
        environments=demo_folder / "environments.yaml",
        secret_key=secret_key,
        DASHBOARD_CONFIG="production",
    )
    servers = [gunicorn(env, workers=2, threads=4) for _ in range(2)]
    yield servers
    shut(app)


def sign_out(browser: HttpSession, server: Server) -> None:
    account = browser.get(server.url("/account"))
    reply = browser.post(server.url("/logout"), {"csrf_token": account.hidden_input("csrf_token")})
    assert reply.status == 302 and reply.location.endswith("/login"), reply.text[:500]


def test_a_replayed_cookie_after_sign_out_gets_the_sign_in_page_on_every_server(two_servers):
    first, second = two_servers
    browser = HttpSession()
    browser.login(first, "vera", TEST_PASSWORD)
    # The session, and its CSRF token, work on the other server's processes too.
    for _ in range(4):
        assert browser.get(second.url("/")).status == 200
    thief = HttpSession()
    for cookie in browser.cookies:
        thief.cookies.set_cookie(copy.copy(cookie))
    assert thief.get(first.url("/")).status == 200

    sign_out(browser, second)

    for server in (first, second):
        for _ in range(4):  # whichever worker answers
            reply = thief.get(server.url("/"))
            assert reply.status == 302 and "/login" in (reply.location or ""), reply.text[:300]
    followed = thief.get(first.url("/login"))
    assert followed.status == 200 and 'name="password"' in followed.text
