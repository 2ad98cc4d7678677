"""Size bounds (issue 13): an oversized request is 413, an over-long field is 400 naming the
field and its limit, and neither reaches the store or the audit log."""

from __future__ import annotations

import html
import re
import secrets

import pytest
import sqlalchemy as sa

from dashboard import create_app
from dashboard.audit.models import AuditEvent
from dashboard.errors import ConfigurationError, FieldTooLong
from dashboard.extensions import db
from dashboard.jobs.models import Job
from dashboard.rollouts import service as rollouts
from dashboard.rollouts.models import Rollout, RolloutVote
from dashboard.users import service as users
from dashboard.users.models import LoginFailure, User
from tests.helpers import TEST_PASSWORD, Auth, make_app, upgrade_store, upgrade_with_a_job
from tests.servers import HttpSession, clean_environ

HX = {"HX-Request": "true"}
FIFTY_MILLION = 50_000_000


def text_of(response) -> str:
    return html.unescape(response.get_data(as_text=True))


def store_counts(app) -> dict[str, int]:
    """How many rows the tables a refused post could have written hold."""
    with app.app_context():
        return {
            model.__tablename__: db.session.scalar(sa.select(sa.func.count()).select_from(model))
            for model in (AuditEvent, Rollout, RolloutVote, Job, User, LoginFailure)
        }


def longest_audit_event(app) -> int:
    with app.app_context():
        events = db.session.scalars(sa.select(AuditEvent)).all()
        return max((len(str(event.details)) for event in events), default=0)


def request_production(client) -> int:
    """Request a rollout of production to head (staging must be at head already)."""
    response = Auth(client).post(
        "/environments/production/rollouts",
        {"target": "head", "reason": "ship the status column"},
    )
    assert response.status_code == 303, response.get_data(as_text=True)[:1000]
    return int(re.search(r"/rollouts/(\d+)$", response.headers["Location"]).group(1))


# --- the whole request ----------------------------------------------------------------------


def test_a_fifty_million_character_reason_is_413_and_stores_nothing(demo_app, clients):
    before = store_counts(demo_app)
    response = Auth(clients["operator"]).post(
        "/environments/production/rollouts", {"target": "head", "reason": "x" * FIFTY_MILLION}
    )
    text = text_of(response)

    assert response.status_code == 413
    assert "<html" in text and "larger than this dashboard accepts (at most 1,024 KiB)" in text
    assert "Nothing was saved" in text
    assert len(text) < 20_000
    assert store_counts(demo_app) == before


def test_an_oversized_htmx_post_gets_a_413_fragment_in_the_main_area(demo_app, clients):
    before = store_counts(demo_app)
    response = Auth(clients["operator"]).post(
        "/environments/production/rollouts",
        {"target": "head", "reason": "x" * 2_000_000},
        headers=HX,
    )
    text = text_of(response)

    assert response.status_code == 413
    assert "<html" not in text and "larger than this dashboard accepts" in text
    assert response.headers["HX-Retarget"] == "main"
    assert store_counts(demo_app) == before


def test_the_request_size_limit_comes_from_the_configuration(demo_folder, demo_passwords):
    small = make_app(demo_folder, MAX_CONTENT_LENGTH=4096)
    client = small.test_client()
    Auth(client).login("operator", demo_passwords["operator"])

    response = Auth(client).post("/drift/check", {"environment": "dev", "padding": "x" * 5000})

    assert response.status_code == 413
    assert "at most 4 KiB" in text_of(response)


def test_a_request_size_limit_that_is_not_a_number_stops_start_up(tmp_path):
    with pytest.raises(ConfigurationError, match="DASHBOARD_MAX_CONTENT_LENGTH must be a positive"):
        create_app("testing", {"MAX_CONTENT_LENGTH": "two megabytes"})


def test_a_real_server_takes_its_size_limit_from_the_environment_and_answers_413(
    tmp_path, demo_folder, demo_passwords, gunicorn
):
    secret_key = secrets.token_hex(32)
    store = f"sqlite:///{demo_folder / 'store.db'}"
    env = clean_environ(
        HOME=str(tmp_path),
        DASHBOARD_CONFIG="production",
        SECRET_KEY=secret_key,
        DASHBOARD_DATABASE_URL=store,
        ENVIRONMENTS_FILE=str(demo_folder / "environments.yaml"),
        DASHBOARD_MAX_CONTENT_LENGTH="65536",
    )
    server = gunicorn(env, workers=1, threads=2)
    browser = HttpSession()
    browser.login(server, "operator", demo_passwords["operator"])
    form_page = browser.get(server.url("/environments/production/rollouts/new"))
    before = store_counts(make_app(demo_folder))

    reply = browser.post(
        server.url("/environments/production/rollouts"),
        {
            "csrf_token": form_page.hidden_input("csrf_token"),
            "target": "head",
            "reason": "x" * 100_000,
        },
    )

    assert reply.status == 413
    assert "larger than this dashboard accepts (at most 64 KiB)" in html.unescape(reply.text)
    assert store_counts(make_app(demo_folder)) == before


# --- one field ------------------------------------------------------------------------------


def test_an_over_long_reason_is_400_naming_the_field_and_its_limit(demo_app, clients):
    before = store_counts(demo_app)
    response = Auth(clients["operator"]).post(
        "/environments/production/rollouts", {"target": "head", "reason": "x" * 500_000}
    )
    text = text_of(response)

    assert response.status_code == 400
    assert "The reason is 500,000 characters long; the limit is 2,000." in text
    assert "xxxxxxxxxx" not in text  # the value itself is not shown back
    assert store_counts(demo_app) == before


@pytest.mark.parametrize(
    ("field", "label", "limit"),
    [
        ("ticket_url", "ticket link", 500),
        ("override_justification", "override justification", 2_000),
        ("target", "target", 255),
    ],
)
def test_each_rollout_field_has_its_limit(demo_app, clients, field, label, limit):
    before = store_counts(demo_app)
    form = {"target": "head", "reason": "a fine reason", field: "y" * (limit + 1)}
    response = Auth(clients["admin"]).post("/environments/production/rollouts", form)

    assert response.status_code == 400
    assert f"The {label} is {limit + 1:,} characters long; the limit is {limit:,}." in text_of(
        response
    )
    assert store_counts(demo_app) == before


def test_a_reason_at_the_limit_is_stored_whole(demo_app, clients):
    upgrade_with_a_job(demo_app, "staging")
    reason = "r" * 1_999 + "\r\n"  # a browser sends a textarea's line break as two characters
    response = Auth(clients["operator"]).post(
        "/environments/production/rollouts", {"target": "head", "reason": reason}
    )
    assert response.status_code == 303, text_of(response)[:1000]
    with demo_app.app_context():
        assert db.session.scalar(sa.select(Rollout.reason)) == "r" * 1_999


@pytest.mark.parametrize("decision", ["approve", "reject"])
def test_an_over_long_vote_comment_is_refused_and_the_vote_not_counted(
    demo_app, clients, decision
):
    upgrade_with_a_job(demo_app, "staging")
    rollout_id = request_production(clients["operator"])
    before = store_counts(demo_app)
    longest_before = longest_audit_event(demo_app)

    response = Auth(clients["approver"]).post(
        f"/rollouts/{rollout_id}/{decision}", {"comment": "c" * 100_000}
    )

    assert response.status_code == 400
    assert "The comment is 100,000 characters long; the limit is 2,000." in text_of(response)
    assert store_counts(demo_app) == before
    assert longest_audit_event(demo_app) == longest_before
    page = text_of(clients["viewer"].get(f"/rollouts/{rollout_id}"))
    assert 'data-state="pending"' in page and "No votes yet." in page


def test_an_over_long_job_target_is_refused_before_any_job(demo_app, clients):
    before = store_counts(demo_app)
    response = Auth(clients["operator"]).post(
        "/environments/dev/jobs",
        {"operation": "upgrade", "target": "t" * 10_000, "fingerprint": "0" * 64},
    )
    assert response.status_code == 400
    assert "The target is 10,000 characters long; the limit is 255." in text_of(response)
    assert store_counts(demo_app) == before


def test_an_unknown_over_long_field_is_refused_too(demo_app, clients):
    response = Auth(clients["operator"]).post("/drift/check", {"anything": "z" * 1_001})
    assert response.status_code == 400
    assert "The anything is 1,001 characters long; the limit is 1,000." in text_of(response)


# --- sign-in and users ----------------------------------------------------------------------


def test_an_over_long_username_at_sign_in_is_400_not_echoed_not_counted(demo_app):
    before = store_counts(demo_app)
    client = demo_app.test_client()
    response = client.post(
        "/login",
        data={
            "username": "u" * 400_000,
            "password": "whatever",
            "csrf_token": Auth(client).csrf_token(),
        },
    )
    text = text_of(response)

    assert response.status_code == 400
    assert "The username is 400,000 characters long; the limit is 80." in text
    assert 'name="username" value=""' in text and len(text) < 20_000
    assert store_counts(demo_app) == before


def test_an_over_long_password_at_sign_in_is_400_and_counts_no_failure(demo_app):
    before = store_counts(demo_app)
    client = demo_app.test_client()
    response = Auth(client).login("viewer", "p" * 1_025, expect=400)
    assert "The password is 1,025 characters long; the limit is 1,024." in text_of(response)
    assert store_counts(demo_app) == before


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"username": "n" * 81, "role": "viewer"}, "The username is 81 characters long"),
        (
            {"username": "newcomer", "role": "viewer", "password": "p" * 2_000},
            "The password is 2,000 characters long; the limit is 1,024.",
        ),
    ],
)
def test_an_admin_cannot_create_a_user_with_an_over_long_field(demo_app, clients, form, message):
    before = store_counts(demo_app)
    response = Auth(clients["admin"]).post("/users", form)
    assert response.status_code == 400
    assert message in text_of(response)
    assert store_counts(demo_app) == before


def test_an_over_long_new_password_is_refused_and_the_old_one_still_works(
    demo_app, clients, demo_passwords
):
    new = "q" * 5_000
    response = Auth(clients["viewer"]).post(
        "/account",
        {
            "current_password": demo_passwords["viewer"],
            "new_password": new,
            "confirm_password": new,
        },
    )
    assert response.status_code == 400
    assert "The new password is 5,000 characters long; the limit is 1,024." in text_of(response)
    Auth(demo_app.test_client()).login("viewer", demo_passwords["viewer"])


def test_the_cli_meets_the_same_limits(demo_app, demo_folder):
    runner = demo_app.test_cli_runner()
    result = runner.invoke(
        args=["dashboard", "create-user", "m" * 200, "--password-stdin"],
        input=f"{TEST_PASSWORD}\n",
    )
    assert result.exit_code == 1
    assert "The username is 200 characters long; the limit is 80." in result.output

    result = runner.invoke(
        args=["dashboard", "create-user", "mallory", "--password-stdin"],
        input="p" * 3_000 + "\n",
    )
    assert result.exit_code == 1
    assert "The password is 3,000 characters long; the limit is 1,024." in result.output
    with demo_app.app_context():
        assert users.get_user(username="mallory") is None


def test_the_service_refuses_an_over_long_sign_in_before_throttling(demo_app):
    with demo_app.app_context():
        upgrade_store(demo_app)
        with pytest.raises(FieldTooLong, match="the limit is 80"):
            users.authenticate(username="v" * 81, password="x", remote_addr="127.0.0.1")
        assert db.session.scalar(sa.select(sa.func.count()).select_from(LoginFailure)) == 0


def test_forms_tell_the_browser_the_limits(clients):
    login = clients["anonymous"].get("/login").get_data(as_text=True)
    assert 'name="username" value="" maxlength="80"' in login
    new = clients["operator"].get("/environments/production/rollouts/new").get_data(as_text=True)
    assert 'name="reason" rows="3" maxlength="2000"' in new
    assert 'name="ticket_url" maxlength="500"' in new



def test_the_services_bound_fields_for_callers_without_a_form(demo_app):
    """The CLI and any other caller meet the same limits as the pages."""
    before = store_counts(demo_app)
    result = demo_app.test_cli_runner().invoke(
        args=["dashboard", "upgrade", "dev", "--target", "r" * 300]
    )
    assert result.exit_code == 1
    assert "The target is 300 characters long; the limit is 255. Nothing was saved." in (
        result.output
    )
    with demo_app.app_context():
        operator = db.session.scalar(sa.select(User).where(User.username == "operator"))
        with pytest.raises(FieldTooLong, match="The reason is 2,001 characters long"):
            rollouts.request_rollout(
                environment_name="production", target="head", reason="x" * 2001, actor=operator
            )
    assert store_counts(demo_app) == before
