"""Sign-in, roles, CSRF, redirects, throttling and headers: every rule enforced by the server."""

from __future__ import annotations

import re

import pytest
import sqlalchemy as sa

from dashboard.audit.models import AuditEvent
from dashboard.extensions import db
from dashboard.htmx import HTMX_CDN_URL, HTMX_SRI
from dashboard.jobs.models import Job
from dashboard.users import service as users
from dashboard.users.models import LoginFailure, User
from tests.helpers import TEST_PASSWORD, Auth, add_user

ROLES = ["anonymous", "viewer", "operator", "approver", "admin"]
HEAD = "8d3907739fa1"


def outcome(anonymous, viewer, operator=None, approver=None, admin=None):
    """Expected status per role; later roles default to the previous one."""
    operator = viewer if operator is None else operator
    approver = operator if approver is None else approver
    admin = approver if admin is None else admin
    return dict(zip(ROLES, (anonymous, viewer, operator, approver, admin), strict=True))


VIEWER_PAGE = outcome(302, 200)
OPERATOR_PAGE = outcome(302, 403, 200)
ADMIN_ONLY = outcome(302, 403, 403, 403, 200)
ADMIN_ACTION = outcome(302, 403, 403, 403, 302)

# (endpoint, method) -> expected status per role. A route missing here fails the matrix.
MATRIX = {
    ("environments.overview", "GET"): VIEWER_PAGE,
    ("environments.environment", "GET"): VIEWER_PAGE,
    ("environments.refresh", "POST"): outcome(302, 303),  # asks the lease holder to read now
    ("history.history", "GET"): VIEWER_PAGE,
    ("history.revision", "GET"): VIEWER_PAGE,
    ("history.highlight_css", "GET"): VIEWER_PAGE,
    ("audit.events", "GET"): VIEWER_PAGE,
    ("audit.export_csv", "GET"): VIEWER_PAGE,
    ("audit.export_json", "GET"): VIEWER_PAGE,
    ("auth.login", "GET"): outcome(200, 302),
    ("auth.login", "POST"): outcome(401, 401),  # wrong password for everyone
    ("auth.logout", "POST"): outcome(302, 302),
    ("auth.logout", "GET"): outcome(405, 405),
    ("auth.account", "GET"): outcome(302, 200),
    ("auth.account", "POST"): outcome(302, 400),  # the current password is missing
    ("users.index", "GET"): ADMIN_ONLY,
    ("users.create", "POST"): ADMIN_ONLY,
    ("users.change_role", "POST"): ADMIN_ACTION,
    ("users.deactivate", "POST"): ADMIN_ACTION,
    ("users.sign_out_everywhere", "POST"): ADMIN_ACTION,
    ("jobs.index", "GET"): VIEWER_PAGE,
    ("jobs.job", "GET"): VIEWER_PAGE,
    ("jobs.live", "GET"): outcome(302, 286),  # the job has ended: polling stops
    ("jobs.log_text", "GET"): VIEWER_PAGE,
    ("jobs.plan", "GET"): VIEWER_PAGE,
    ("jobs.start", "POST"): outcome(302, 403, 409),  # not the plan dev has now: refused
    ("jobs.cancel", "POST"): outcome(302, 403, 409),  # only a queued job can be cancelled
    ("diffs.diff", "GET"): VIEWER_PAGE,
    # Scratch work (schema diffs, rehearsals, drift checks, live comparisons) needs an operator.
    # They start a background task and send the page on to it.
    ("diffs.schema", "POST"): outcome(302, 403, 303),
    ("diffs.rehearsal", "POST"): outcome(302, 403, 303),
    ("diffs.render", "POST"): outcome(302, 303),  # the SQL of a long plan: anyone may read it
    ("tasks.task", "GET"): outcome(302, 404),  # no such task, once signed in
    ("diffs.sql_file", "GET"): VIEWER_PAGE,
    ("drift.index", "GET"): VIEWER_PAGE,
    ("drift.check", "POST"): outcome(302, 403, 303),
    ("drift.compare", "GET"): OPERATOR_PAGE,
    ("rollouts.index", "GET"): VIEWER_PAGE,
    ("rollouts.rollout", "GET"): outcome(302, 404),  # no such rollout, once signed in
    ("rollouts.schema", "GET"): outcome(302, 403, 404),
    ("rollouts.new", "GET"): outcome(302, 403, 200),
    ("rollouts.create", "POST"): outcome(302, 403, 409),  # dev is not protected
    ("rollouts.approve", "POST"): outcome(302, 403, 403, 404),
    ("rollouts.reject", "POST"): outcome(302, 403, 403, 404),
    ("rollouts.cancel", "POST"): outcome(302, 403, 404),
    ("rollouts.execute", "POST"): outcome(302, 403, 404),
    ("rollouts.rehearsal", "GET"): outcome(302, 404),  # no such rollout, once signed in
    ("rollouts.rehearse", "POST"): outcome(302, 403, 404),
    ("health.healthz", "GET"): outcome(200, 200),
    ("health.readyz", "GET"): outcome(200, 200),
    ("static", "GET"): outcome(200, 200),
}
FORM_DATA = {
    "users.create": {"username": "newcomer", "role": "viewer"},
    "users.change_role": {"role": "operator"},
    "auth.login": {"username": "nobody", "password": "wrong-password"},
    "jobs.start": {"operation": "upgrade", "target": "head", "fingerprint": "0" * 64},
    "drift.check": {"environment": "dev"},
    "rollouts.create": {"target": "head", "reason": "the matrix asks"},
}


def _url_for(rule, target_user_id: int, job_id: int = 0) -> str:
    values = {
        "job_id": str(job_id),
        "rollout_id": "999999",
        "task_id": "999999",
        "name": "dev",
        "revision_id": HEAD,
        "user_id": str(target_user_id),
        "filename": "dashboard.css",
    }
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", lambda match: values[match.group(1)], rule.rule)


def test_authorization_matrix_covers_every_route_and_role(demo_app, demo_passwords):
    rules = [
        (rule, method)
        for rule in demo_app.url_map.iter_rules()
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"})
    ]
    listed = {(rule.endpoint, method) for rule, method in rules}
    # GET on a POST-only route answers 405; the matrix lists those it checks explicitly.
    assert listed <= set(MATRIX), f"routes without an entry: {sorted(listed - set(MATRIX))}"
    rule_of = {rule.endpoint: rule for rule in demo_app.url_map.iter_rules()}
    with demo_app.app_context():
        finished = Job(
            environment="dev",
            operation="upgrade",
            requested_target="head",
            alembic_target=HEAD,
            requested_by="operator",
            state="succeeded",
        )
        db.session.add(finished)
        db.session.commit()
        job_id = finished.id

    mismatches = []
    for (endpoint, method), expected in MATRIX.items():
        rule = rule_of[endpoint]
        for role in ROLES:
            add_user(demo_app, f"target-{len(mismatches)}-{endpoint}-{method}-{role}"[:80])
            with demo_app.app_context():
                target = db.session.scalar(sa.select(sa.func.max(User.id)))
            client = demo_app.test_client()
            auth = Auth(client)
            if role != "anonymous":
                auth.login(role, demo_passwords[role])
            token = (
                auth.csrf_token("/login") if role == "anonymous" else auth.csrf_token("/account")
            )
            url = _url_for(rule, target, job_id)
            if method == "GET":
                response = client.get(url)
            else:
                data = {**FORM_DATA.get(endpoint, {}), "csrf_token": token}
                if endpoint == "users.create":
                    data["username"] = f"new-{role}"
                response = client.open(url, method=method, data=data)
            response.close()
            if response.status_code != expected[role]:
                mismatches.append(
                    f"{role} {method} {url}: {response.status_code} != {expected[role]}"
                )
            if response.status_code == 302 and role == "anonymous" and expected[role] == 302:
                assert "/login" in response.headers["Location"]
    assert mismatches == []


@pytest.mark.stores
def test_a_viewer_denied_an_admin_action_leaves_an_audit_event(clients, demo_app):
    response = Auth(clients["viewer"]).post("/users", {"username": "sneaky", "role": "admin"})
    assert response.status_code == 403
    with demo_app.app_context():
        event = db.session.scalar(sa.select(AuditEvent).order_by(AuditEvent.seq.desc()))
    assert (event.action, event.actor_name) == ("access.denied", "viewer")
    assert (event.details["method"], event.details["path"]) == ("POST", "/users")


def test_a_viewer_denied_an_admin_page_is_logged_not_audited(clients, demo_app, caplog):
    def newest_event() -> int:
        with demo_app.app_context():
            return db.session.scalar(sa.select(sa.func.max(AuditEvent.seq)))

    before = newest_event()
    with caplog.at_level("WARNING", logger="dashboard.auth"):
        response = clients["viewer"].get("/users")
    assert response.status_code == 403
    assert newest_event() == before  # GET never writes, not even a refusal
    assert "access denied: viewer (viewer) GET /users needs the admin role" in caplog.text


@pytest.mark.stores
def test_post_without_csrf_token_is_rejected_and_changes_nothing(clients, demo_app):
    admin = clients["admin"]
    refused = admin.post("/users", data={"username": "sneaky", "role": "admin"})
    assert refused.status_code == 400
    assert "CSRF" in refused.get_data(as_text=True)
    with demo_app.app_context():
        assert users.get_user(username="sneaky") is None

    accepted = Auth(admin).post("/users", data={"username": "sneaky", "role": "viewer"})
    assert accepted.status_code == 200
    with demo_app.app_context():
        assert users.get_user(username="sneaky").role == "viewer"


@pytest.mark.stores
def test_htmx_requests_send_the_csrf_token_in_a_header(clients, demo_app):
    admin = clients["admin"]
    page = admin.get("/users").get_data(as_text=True)
    token = re.search(r'"X-CSRFToken": "([^"]+)"', page).group(1)
    response = admin.post(
        "/users",
        data={"username": "via-htmx", "role": "viewer"},
        headers={"HX-Request": "true", "X-CSRFToken": token},
    )
    assert response.status_code == 200
    with demo_app.app_context():
        assert users.get_user(username="via-htmx") is not None


@pytest.mark.parametrize(
    "target",
    ["https://evil.example", "//evil.example/x", "/\\evil.example", "javascript:alert(1)"],
)
def test_next_only_accepts_local_paths(demo_app, demo_passwords, target):
    client = demo_app.test_client()
    response = client.post(
        "/login",
        data={
            "username": "viewer",
            "password": demo_passwords["viewer"],
            "next": target,
            "csrf_token": Auth(client).csrf_token(),
        },
    )
    assert response.status_code == 302
    assert response.headers["Location"] == "/"


def test_next_takes_you_back_to_the_page_you_wanted(demo_app, demo_passwords):
    client = demo_app.test_client()
    bounced = client.get("/history?page=1")
    assert bounced.status_code == 302
    assert (
        "next=/history?page%3D1" in bounced.headers["Location"]
        or "next=" in (bounced.headers["Location"])
    )
    response = client.post(
        "/login",
        data={
            "username": "viewer",
            "password": demo_passwords["viewer"],
            "next": "/history?page=1",
            "csrf_token": Auth(client).csrf_token(),
        },
    )
    assert response.headers["Location"] == "/history?page=1"


def test_htmx_request_without_a_session_is_sent_to_sign_in(demo_app):
    response = demo_app.test_client().get("/", headers={"HX-Request": "true"})
    assert response.status_code == 401
    assert response.headers["HX-Redirect"].startswith("/login")


@pytest.mark.stores
def test_sixth_failed_attempt_is_throttled_and_audited(demo_app, demo_passwords):
    client = demo_app.test_client()
    auth = Auth(client)
    for _ in range(5):
        auth.login("admin", "wrong-password", expect=401)

    throttled = auth.login("admin", "wrong-password", expect=429)
    assert int(throttled.headers["Retry-After"]) > 0
    assert "Too many failed sign-ins" in throttled.get_data(as_text=True)
    # The right password during the cool-down is refused too.
    auth.login("admin", demo_passwords["admin"], expect=429)

    with demo_app.app_context():
        actions = list(db.session.scalars(sa.select(AuditEvent.action).order_by(AuditEvent.seq)))
        failed = db.session.scalars(
            sa.select(AuditEvent).where(AuditEvent.action == "login.failed")
        ).all()
    assert actions.count("login.failed") == 5
    assert actions.count("login.throttled") == 2
    assert all(event.details["username"] == "admin" for event in failed)
    assert all(demo_passwords["admin"] not in str(event.details) for event in failed)
    assert all("wrong-password" not in str(event.details) for event in failed)


@pytest.mark.stores
def test_throttling_one_address_does_not_lock_the_admin_out_elsewhere(demo_app, demo_passwords):
    stranger = demo_app.test_client()
    auth = Auth(stranger)
    for _ in range(6):
        stranger.post(
            "/login",
            data={"username": "admin", "password": "guess", "csrf_token": auth.csrf_token()},
            environ_base={"REMOTE_ADDR": "203.0.113.9"},
        )
    admin = demo_app.test_client()
    Auth(admin).login("admin", demo_passwords["admin"])
    assert admin.get("/users").status_code == 200


@pytest.mark.stores
def test_many_usernames_from_one_address_hit_the_address_limit(demo_app):
    client = demo_app.test_client()
    auth = Auth(client)
    statuses = [
        client.post(
            "/login",
            data={"username": f"user{index}", "password": "x", "csrf_token": auth.csrf_token()},
        ).status_code
        for index in range(21)
    ]
    assert statuses[:20] == [401] * 20
    assert statuses[20] == 429
    with demo_app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(LoginFailure)) == 20


@pytest.mark.stores
def test_a_deactivated_users_session_stops_working_at_once(demo_app, clients, demo_passwords):
    operator = clients["operator"]
    assert operator.get("/").status_code == 200
    with demo_app.app_context():
        operator_id = users.get_user(username="operator").id

    assert Auth(clients["admin"]).post(f"/users/{operator_id}/deactivate").status_code == 302

    assert operator.get("/").status_code == 302
    Auth(demo_app.test_client()).login("operator", demo_passwords["operator"], expect=401)


@pytest.mark.stores
def test_admin_signs_a_user_out_everywhere(demo_app, clients):
    viewer = clients["viewer"]
    with demo_app.app_context():
        viewer_id = users.get_user(username="viewer").id
    Auth(clients["admin"]).post(f"/users/{viewer_id}/sign-out")
    assert viewer.get("/").status_code == 302


@pytest.mark.stores
def test_the_last_active_admin_cannot_be_demoted_or_deactivated(demo_app, clients):
    admin = Auth(clients["admin"])
    with demo_app.app_context():
        admin_id = users.get_user(username="admin").id

    demoted = admin.post(f"/users/{admin_id}/role", data={"role": "viewer"})
    deactivated = admin.post(f"/users/{admin_id}/deactivate")

    assert demoted.status_code == deactivated.status_code == 400
    assert "last active admin" in demoted.get_data(as_text=True)
    with demo_app.app_context():
        still = users.get_user(username="admin")
        assert (still.role, still.active) == ("admin", True)


@pytest.mark.stores
def test_user_changes_own_password_and_other_sessions_end(demo_app, demo_passwords):
    first, second = demo_app.test_client(), demo_app.test_client()
    Auth(first).login("viewer", demo_passwords["viewer"])
    Auth(second).login("viewer", demo_passwords["viewer"])

    response = Auth(first).post(
        "/account",
        data={
            "current_password": demo_passwords["viewer"],
            "new_password": "a brand new passphrase",
            "confirm_password": "a brand new passphrase",
        },
    )

    assert response.status_code == 302
    assert first.get("/").status_code == 200  # this session carries on
    assert second.get("/").status_code == 302  # the other one is signed out
    Auth(demo_app.test_client()).login("viewer", "a brand new passphrase")


def test_wrong_current_password_changes_nothing(demo_app, clients, demo_passwords):
    response = Auth(clients["viewer"]).post(
        "/account",
        data={
            "current_password": "not it",
            "new_password": "another passphrase",
            "confirm_password": "another passphrase",
        },
    )
    assert response.status_code == 400
    assert "current password is not right" in response.get_data(as_text=True)
    Auth(demo_app.test_client()).login("viewer", demo_passwords["viewer"])


def test_passwords_are_hashed_with_argon2(demo_app):
    with demo_app.app_context():
        stored = users.get_user(username="viewer").password_hash
    assert stored.startswith("$argon2id$")


def test_security_headers(demo_client):
    response = demo_client.get("/")
    policy = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy
    assert f"script-src 'self' {HTMX_CDN_URL} '{HTMX_SRI}'" in policy
    assert "frame-ancestors 'none'" in policy
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "same-origin"


def test_session_cookie_flags(demo_app, demo_passwords):
    client = demo_app.test_client()
    response = Auth(client).login("viewer", demo_passwords["viewer"])
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie


@pytest.mark.stores
def test_login_and_logout_are_audited(demo_app, demo_passwords):
    client = demo_app.test_client()
    auth = Auth(client)
    auth.login("approver", demo_passwords["approver"])
    auth.logout()
    with demo_app.app_context():
        events = db.session.scalars(
            sa.select(AuditEvent).where(AuditEvent.actor_name == "approver")
        ).all()
    assert [event.action for event in events][-2:] == ["login", "logout"]
    assert events[-1].remote_addr == "127.0.0.1"


@pytest.mark.stores
def test_admin_creates_a_user_with_a_generated_password_shown_once(clients, demo_app):
    page = Auth(clients["admin"]).post("/users", data={"username": "newbie", "role": "operator"})
    html = page.get_data(as_text=True)
    password = re.search(r'<code class="secret">([^<]+)</code>', html).group(1)
    Auth(demo_app.test_client()).login("newbie", password)
    assert "secret" not in clients["admin"].get("/users").get_data(as_text=True)
    with demo_app.app_context():
        event = db.session.scalar(
            sa.select(AuditEvent)
            .where(AuditEvent.action == "user.created")
            .order_by(AuditEvent.seq.desc())
        )
    assert event.details == {"user": "newbie", "role": "operator", "outcome": "created"}
    assert event.actor_name == "admin"


@pytest.mark.stores
def test_cli_user_management(demo_app):
    runner = demo_app.test_cli_runner()
    created = runner.invoke(
        args=["dashboard", "create-user", "carol", "--role", "operator", "--password-stdin"],
        input=TEST_PASSWORD + "\n",
    )
    assert created.exit_code == 0, created.output
    assert TEST_PASSWORD not in created.output

    assert runner.invoke(args=["dashboard", "set-role", "carol", "approver"]).exit_code == 0
    assert runner.invoke(args=["dashboard", "deactivate", "carol"]).exit_code == 0
    with demo_app.app_context():
        carol = users.get_user(username="carol")
        assert (carol.role, carol.active) == ("approver", False)
        actions = list(
            db.session.scalars(
                sa.select(AuditEvent.action).where(
                    AuditEvent.details["user"].as_string() == "carol"
                )
            )
        )
    assert actions == ["user.created", "user.role_changed", "user.deactivated"]

    short = runner.invoke(
        args=["dashboard", "create-user", "dave", "--password-stdin"], input="short\n"
    )
    assert short.exit_code != 0 and "at least 10 characters" in short.output
    last_admin = runner.invoke(args=["dashboard", "deactivate", "admin"])
    assert last_admin.exit_code != 0 and "last active admin" in last_admin.output
