"""One error boundary: each domain error, raised for real, is its mapped status on a page, an htmx
fragment in the main area, and its message with exit status 1 from a CLI command."""

from __future__ import annotations

import html
import importlib
import os
import pkgutil
import subprocess
import sys

import click
import pytest
import sqlalchemy as sa

import dashboard
from dashboard.cli_errors import reports_errors
from dashboard.errors import STATUSES, DashboardError, LoginThrottled, PlanChanged
from dashboard.jobs import service as jobs
from dashboard.users import service as users
from tests.helpers import (
    REPO,
    TEST_PASSWORD,
    Auth,
    app_for_tree,
    fingerprint_of,
    make_app,
    signed_in_client,
    upgrade_with_a_job,
    versions,
    write_environments,
)

HTMX = {"HX-Request": "true"}


def _all_domain_errors() -> list[type[DashboardError]]:
    """Every DashboardError subclass in the package, wherever it is defined."""
    for module in pkgutil.walk_packages(dashboard.__path__, "dashboard."):
        importlib.import_module(module.name)
    found, pending = [], [DashboardError]
    while pending:
        for subclass in pending.pop().__subclasses__():
            found.append(subclass)
            pending.append(subclass)
    return sorted(set(found), key=lambda cls: f"{cls.__module__}.{cls.__qualname__}")


DOMAIN_ERRORS = _all_domain_errors()


def _instance(cls: type[DashboardError]) -> DashboardError:
    if issubclass(cls, LoginThrottled):
        return cls(f"{cls.__name__} said no", retry_after=7)
    if issubclass(cls, PlanChanged):
        return cls(expected=("a1",), found=("b2",))
    return cls(f"{cls.__name__} said no")


def text_of(response) -> str:
    return html.unescape(response.get_data(as_text=True))


def assert_page(response, status: int, message: str) -> str:
    """A whole page with the status and the message."""
    text = text_of(response)
    assert response.status_code == status, text[:800]
    assert "<html" in text and message in text, text[:2000]
    return text


def assert_fragment(response, status: int, message: str) -> str:
    """An htmx answer: the status, the message, no page around it, swapped into <main>."""
    text = text_of(response)
    assert response.status_code == status, text[:800]
    assert "<html" not in text and message in text, text[:2000]
    assert response.headers["HX-Retarget"] == "main"
    return text


def assert_cli_error(result, message: str) -> None:
    """The message, exit status 1, no traceback."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert message in result.output, result.output
    assert "Traceback" not in result.output


def poster(client, path: str, form: dict[str, str] | None = None):
    """Return a function that posts `form` to `path` from `client` (with headers, say)."""

    def post(**kwargs):
        return Auth(client).post(path, form or {}, **kwargs)

    return post


def run_form(client, environment: str, **fields: str):
    """Return a poster of the Run form of `environment`."""
    return poster(client, f"/environments/{environment}/jobs", {"operation": "upgrade", **fields})


# --- the map ---------------------------------------------------------------------------------


def test_every_domain_error_class_is_found():
    names = {cls.__name__ for cls in DOMAIN_ERRORS}
    assert {"LockBusy", "RolloutForbidden", "JobAlreadyRunning", "PlanChanged"} <= names


@pytest.mark.parametrize("cls", DOMAIN_ERRORS, ids=lambda cls: cls.__name__)
def test_every_domain_error_class_maps_to_a_status(cls):
    # The base's 500 is no answer: a new error class must say what it means.
    assert cls.status in STATUSES


@pytest.mark.parametrize("cls", DOMAIN_ERRORS, ids=lambda cls: cls.__name__)
def test_the_one_handler_answers_every_domain_error_with_its_status(app, cls):
    """Errors no page raises for real (a failed migration is recorded on its job, an offline
    render error on its step) still get their status, message and fragment from the handler."""

    def raise_it():
        raise _instance(cls)

    app.add_url_rule("/raise-it", "raise_it", raise_it)
    client = signed_in_client(app)
    message = str(_instance(cls))

    page = client.get("/raise-it")
    assert_page(page, cls.status, message)
    assert f'data-status="{cls.status}"' in text_of(page)
    assert_fragment(client.get("/raise-it", headers=HTMX), cls.status, message)
    if issubclass(cls, LoginThrottled):
        assert page.headers["Retry-After"] == "7"


@pytest.mark.parametrize("cls", DOMAIN_ERRORS, ids=lambda cls: cls.__name__)
def test_the_one_cli_decorator_reports_every_domain_error(app, cls):
    @app.cli.command("raise-it")
    @reports_errors
    def raise_it() -> None:
        raise _instance(cls)

    result = app.test_cli_runner().invoke(args=["raise-it"])
    assert_cli_error(result, f"Error: {_instance(cls)}")


def test_every_dashboard_command_carries_the_cli_decorator(app):
    def commands(group: click.Group, path: str):
        for name, command in group.commands.items():
            if isinstance(command, click.Group):
                yield from commands(command, f"{path} {name}")
            else:
                yield f"{path} {name}", command

    listed = dict(commands(app.cli.commands["dashboard"], "dashboard"))
    assert {"dashboard status", "dashboard audit verify", "dashboard rollouts"} <= set(listed)
    bare = [
        name
        for name, command in listed.items()
        if not getattr(command.callback, "reports_errors", False)
    ]
    assert bare == []


# --- raised for real, through the pages and the commands --------------------------------------


def test_unknown_environment_is_404_and_exit_1(demo_app, clients):
    message = "There is no environment called “nowhere”."
    post = run_form(clients["operator"], "nowhere", target="head", fingerprint="x")
    text = assert_page(post(), 404, message)
    assert "The job was not started" in text  # the run form's own refusal card
    assert_fragment(post(headers=HTMX), 404, message)

    result = demo_app.test_cli_runner().invoke(args=["dashboard", "upgrade", "nowhere"])
    assert_cli_error(result, message)
    result = demo_app.test_cli_runner().invoke(args=["dashboard", "drift", "nowhere"])
    assert_cli_error(result, message)


def test_a_refused_job_is_409_and_exit_1(demo_app, clients):
    message = "The plan changed since it was shown"
    post = run_form(clients["operator"], "staging", target="head", fingerprint="not-the-plan")
    assert "The job was not started" in assert_page(post(), 409, message)
    assert 'data-status="409"' in assert_fragment(post(headers=HTMX), 409, message)

    # dev is at head already.
    result = demo_app.test_cli_runner().invoke(args=["dashboard", "upgrade", "dev"])
    assert_cli_error(result, "Nothing to do: dev is already at head.")


def test_a_job_while_another_is_queued_is_409_and_exit_1(demo_app, clients):
    with demo_app.app_context():
        fingerprint = fingerprint_of("staging")
        queued = jobs.request_job(
            environment_name="staging",
            operation="upgrade",
            target="head",
            actor=None,
            actor_name="cli:test",
            expected_fingerprint=fingerprint,
            submit=False,
        )
        message = f"staging already has job #{queued.id}"
        linked = f'staging already has <a href="/jobs/{queued.id}">job #{queued.id}</a>'
    post = run_form(clients["operator"], "staging", target="head", fingerprint=fingerprint)
    assert_page(post(), 409, linked)
    assert_fragment(post(headers=HTMX), 409, linked)

    result = demo_app.test_cli_runner().invoke(args=["dashboard", "upgrade", "staging"])
    assert_cli_error(result, message)


def test_a_run_without_its_plan_fingerprint_is_400(clients):
    message = "This form has no plan fingerprint"
    post = run_form(clients["operator"], "staging", target="head")
    assert_page(post(), 400, message)
    assert_fragment(post(headers=HTMX), 400, message)


def test_an_unknown_target_is_a_plan_error_400_and_exit_1(demo_app, clients):
    message = "unknown revision 'nosuchrev'"
    post = run_form(clients["operator"], "staging", target="nosuchrev", fingerprint="x")
    assert_page(post(), 400, message)
    assert_fragment(post(headers=HTMX), 400, message)
    download = clients["viewer"].get("/environments/dev/diff.sql?target=nosuchrev")
    assert_page(download, 400, message)

    args = ["dashboard", "upgrade", "staging", "--target", "nosuchrev"]
    assert_cli_error(demo_app.test_cli_runner().invoke(args=args), message)


def test_wrong_credentials_are_401_on_the_sign_in_form(demo_app):
    response = Auth(demo_app.test_client()).login("admin", "wrong-password", expect=401)
    text = assert_page(response, 401, "The username or password is not right.")
    assert 'name="password"' in text and 'value="admin"' in text


def test_a_throttled_sign_in_is_429_with_retry_after_on_the_sign_in_form(demo_app):
    auth = Auth(demo_app.test_client())
    for _ in range(5):
        auth.login("admin", "wrong-password", expect=401)
    response = auth.login("admin", "wrong-password", expect=429)
    text = assert_page(response, 429, "Too many failed sign-ins for this username")
    assert 'name="password"' in text
    assert int(response.headers["Retry-After"]) > 0


def test_a_refused_user_change_is_400_on_the_users_page_and_exit_1(demo_app, clients):
    message = "A user called “admin” already exists."
    response = Auth(clients["admin"]).post(
        "/users", {"username": "admin", "role": "viewer", "password": TEST_PASSWORD}
    )
    assert 'name="username"' in assert_page(response, 400, message)

    result = demo_app.test_cli_runner().invoke(
        args=["dashboard", "create-user", "admin", "--password-stdin"], input=TEST_PASSWORD + "\n"
    )
    assert_cli_error(result, message)


def test_a_rollout_on_an_unprotected_environment_is_refused_409(clients):
    message = "dev is not protected"
    post = poster(clients["operator"], "/environments/dev/rollouts", {"reason": "try"})
    assert "Not done" in assert_page(post(), 409, message)
    assert_fragment(post(headers=HTMX), 409, message)


def request_production(client) -> int:
    """Request a rollout of production to head; return its id."""
    response = Auth(client).post(
        "/environments/production/rollouts",
        {"target": "head", "reason": "ship it", "ticket_url": "https://t/1"},
    )
    assert response.status_code == 303, text_of(response)[:800]
    return int(response.headers["Location"].rsplit("/", 1)[1])


@pytest.fixture
def production_rollout(demo_app, clients):
    """A pending rollout of production to head, requested by the operator (staging at head)."""
    upgrade_with_a_job(demo_app, "staging")
    return request_production(clients["operator"])


def test_approving_your_own_rollout_is_forbidden_403(demo_app, clients):
    upgrade_with_a_job(demo_app, "staging")
    own = request_production(clients["approver"])
    message = "someone else must approve it"

    approve = poster(clients["approver"], f"/rollouts/{own}/approve")
    text = assert_page(approve(), 403, message)
    assert "You may not do that" in text and f"Back to rollout #{own}" in text
    assert_fragment(approve(headers=HTMX), 403, message)


def test_executing_without_the_approvals_is_409(clients, production_rollout):
    message = "0 of 2 approvals"
    post = poster(clients["operator"], f"/rollouts/{production_rollout}/execute")
    assert f"Back to rollout #{production_rollout}" in assert_page(post(), 409, message)
    assert_fragment(post(headers=HTMX), 409, message)


def test_executing_a_rollout_whose_environment_moved_is_stale_409(
    demo_app, demo_folder, clients, production_rollout
):
    second = demo_app.test_client()
    with demo_app.app_context():
        users.create_user(username="approver2", password=TEST_PASSWORD, role="approver", actor=None)
    Auth(second).login("approver2")
    for approver in (clients["approver"], second):
        response = Auth(approver).post(f"/rollouts/{production_rollout}/approve")
        assert response.status_code == 303
    # Someone moves production by hand after the approvals.
    (staging_at,) = versions(f"sqlite:///{demo_folder / 'demo' / 'staging.db'}")
    engine = sa.create_engine(f"sqlite:///{demo_folder / 'demo' / 'production.db'}")
    with engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE alembic_version SET version_num = :v"), {"v": staging_at}
        )
    engine.dispose()

    execute = poster(clients["operator"], f"/rollouts/{production_rollout}/execute")
    assert_fragment(execute(headers=HTMX), 409, "is stale and did not run")
    assert_page(execute(), 409, "is stale")


def test_an_unreachable_environment_is_503_and_exit_1(demo_folder, demo_passwords, closed_port):
    with (demo_folder / "environments.yaml").open("a") as file:
        file.write(
            "  - name: analytics\n"
            f"    url: postgresql+psycopg://report:hunter2-secret@127.0.0.1:{closed_port}/shop\n"
        )
    app = make_app(demo_folder)
    client = app.test_client()
    Auth(client).login("operator", demo_passwords["operator"])
    message = "Connection refused"
    post = run_form(client, "analytics", target="head", fingerprint="x")
    for text in (
        assert_page(post(), 503, message),
        assert_fragment(post(headers=HTMX), 503, message),
    ):
        assert "hunter2-secret" not in text

    result = app.test_cli_runner().invoke(args=["dashboard", "upgrade", "analytics"])
    assert_cli_error(result, message)
    assert "hunter2-secret" not in result.output


def test_an_environment_without_its_url_is_503_and_exit_1(demo_folder, demo_passwords):
    assert "BOUNDARY_TEST_UNSET_URL" not in os.environ
    with (demo_folder / "environments.yaml").open("a") as file:
        file.write("  - name: qa\n    url: ${BOUNDARY_TEST_UNSET_URL}\n")
    app = make_app(demo_folder)
    client = app.test_client()
    Auth(client).login("viewer", demo_passwords["viewer"])
    message = "qa is not configured"
    assert_page(client.get("/environments/qa/diff.sql"), 503, message)
    assert_fragment(client.get("/environments/qa/diff.sql", headers=HTMX), 503, message)

    result = app.test_cli_runner().invoke(args=["dashboard", "diff", "qa"])
    assert_cli_error(result, message)
    assert "BOUNDARY_TEST_UNSET_URL" in result.output


def test_unreadable_migration_scripts_are_503_and_exit_1(tmp_path, script_tree):
    script_tree.linear(1)
    (script_tree.path / "versions" / "zz_broken.py").write_text(
        'raise RuntimeError("broken on purpose")\n'
    )
    app = app_for_tree(tmp_path / "site", script_tree, {"dev": "sqlite:///dev.db"})
    client = signed_in_client(app)
    message = "cannot read the migration scripts"
    text = assert_page(client.get("/history"), 503, message)
    assert "broken on purpose" in text
    assert_fragment(client.get("/history", headers=HTMX), 503, message)

    assert_cli_error(app.test_cli_runner().invoke(args=["dashboard", "history"]), message)


def test_no_scratch_database_is_exit_1_from_the_diff_command(tmp_path, script_tree, pg_databases):
    script_tree.linear(1)
    app = app_for_tree(
        tmp_path / "site",
        script_tree,
        {"pg": pg_databases.create()},
        ENV_EXTRA={"pg": {"shadow_url": "mysql+pymysql://root@127.0.0.1:3306/test"}},
    )
    result = app.test_cli_runner().invoke(args=["dashboard", "diff", "pg"])
    assert_cli_error(result, "the shadow_url of pg is a mysql server, but pg is a postgresql")


def test_a_bad_environments_file_is_one_line_from_the_flask_command(tmp_path, script_tree):
    path = write_environments(
        tmp_path,
        f"""
        migrations: {script_tree.path}
        enviroments:
          - name: dev
            url: sqlite:///dev.db
        """,
    )
    finished = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "dashboard", "dashboard", "status"],
        cwd=REPO,
        env={**os.environ, "ENVIRONMENTS_FILE": str(path), "DASHBOARD_CONFIG": "testing"},
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert finished.returncode == 1
    assert finished.stdout == ""
    assert finished.stderr.splitlines() == [
        f"Error: {path}, line 2, key 'enviroments': unknown key; did you mean 'environments'? "
        "(known keys: alembic_ini, env, environments, migrations, project, python_path, "
        "version_table, version_table_schema)"
    ]
