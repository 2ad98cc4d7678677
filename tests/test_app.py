"""The app factory: layered config, clear configuration errors, and no database touched."""

from __future__ import annotations

import gc

import pytest

from dashboard import create_app, startup
from dashboard.environments import get_board, get_project
from dashboard.errors import ConfigurationError
from tests.helpers import write_environments


def test_create_app_connects_to_nothing(tmp_path, script_tree, silent_port, closed_port):
    """Unreachable servers and a missing SQLite file cost nothing at start-up and stay untouched."""
    script_tree.linear(1)
    environments = write_environments(
        tmp_path,
        f"""
        migrations: {script_tree.path}
        environments:
          - name: dev
            url: sqlite:///never/dev.db
          - name: staging
            url: postgresql+psycopg://u:p@127.0.0.1:{silent_port}/db
          - name: production
            url: mysql+pymysql://u:p@127.0.0.1:{closed_port}/db
        """,
    )
    store = tmp_path / "store" / "dashboard.db"

    app = create_app(
        "testing",
        {"ENVIRONMENTS_FILE": str(environments), "SQLALCHEMY_DATABASE_URI": f"sqlite:///{store}"},
    )

    assert not (tmp_path / "never").exists()
    assert not store.parent.exists()
    with app.app_context():
        assert get_project().names == ["dev", "staging", "production"]
        board = get_board()
        assert board._thread is None  # nothing reads until someone asks


def test_production_refuses_to_start_without_a_real_secret_key(demo_environments):
    with pytest.raises(ConfigurationError, match="SECRET_KEY must be set"):
        create_app("production", {"ENVIRONMENTS_FILE": str(demo_environments)})
    with pytest.raises(ConfigurationError, match="SECRET_KEY must be set"):
        create_app(
            "production",
            {"ENVIRONMENTS_FILE": str(demo_environments), "SECRET_KEY": "short"},
        )


def test_production_starts_with_a_real_secret_key(demo_environments):
    app = create_app(
        "production",
        {"ENVIRONMENTS_FILE": str(demo_environments), "SECRET_KEY": "x" * 64},
    )
    assert app.config["SESSION_COOKIE_SECURE"] is True
    assert app.config["SESSION_COOKIE_HTTPONLY"] is True


def test_configuration_comes_from_environment_variables(monkeypatch, demo_environments):
    import importlib

    import config

    monkeypatch.setenv("ENVIRONMENTS_FILE", str(demo_environments))
    monkeypatch.setenv("DASHBOARD_CONNECT_TIMEOUT", "1.5")
    monkeypatch.setenv("DASHBOARD_DATABASE_URL", "postgresql+psycopg://store@127.0.0.1/store")
    monkeypatch.setenv("HTMX_URL", "/static/htmx.min.js")
    importlib.reload(config)
    try:
        app = create_app("testing")
        assert app.config["STATUS_CONNECT_TIMEOUT"] == 1.5
        assert app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql+psycopg://")
        assert app.config["HTMX_URL"] == "/static/htmx.min.js"
        with app.app_context():
            assert get_board().timeout == 1.5
    finally:
        monkeypatch.undo()
        importlib.reload(config)


def test_a_bad_number_names_the_variable(demo_environments):
    with pytest.raises(ConfigurationError, match="DASHBOARD_CONNECT_TIMEOUT must be a positive"):
        create_app(
            "testing",
            {"ENVIRONMENTS_FILE": str(demo_environments), "STATUS_CONNECT_TIMEOUT": "soon"},
        )


def test_unknown_config_name_is_refused(demo_environments):
    with pytest.raises(ConfigurationError, match="use one of: development, production, testing"):
        create_app("staging")


def test_default_store_lives_in_the_instance_folder(demo_environments):
    app = create_app("testing", {"ENVIRONMENTS_FILE": str(demo_environments)})
    assert app.config["SQLALCHEMY_DATABASE_URI"].endswith("/instance/dashboard.db")


@pytest.mark.parametrize("hours", [-1, "soon"])
def test_a_bad_rollout_lifetime_stops_start_up_naming_the_variable(demo_environments, hours):
    with pytest.raises(ConfigurationError, match="DASHBOARD_ROLLOUT_LIFETIME_HOURS must be"):
        create_app(
            "testing",
            {"ENVIRONMENTS_FILE": str(demo_environments), "ROLLOUT_LIFETIME_HOURS": hours},
        )


@pytest.mark.parametrize(
    ("argv", "pages"),
    [
        (["/srv/.venv/bin/flask", "dashboard", "status", "--json"], False),
        (["flask", "--app", "dashboard:create_app", "dashboard", "upgrade", "prod"], False),
        (["flask", "dashboard", "worker"], True),
        (["flask", "run"], True),
        (["gunicorn", "dashboard:create_app()"], True),
    ],
)
def test_a_one_shot_dashboard_command_builds_the_app_without_its_pages(
    monkeypatch, demo_environments, argv, pages
):
    # `flask dashboard status` is timed against `flask db current`: it skips the web tier.
    monkeypatch.setattr("sys.argv", argv)
    app = create_app("testing", {"ENVIRONMENTS_FILE": str(demo_environments)})

    assert ("auth.login" in app.view_functions) is pages
    assert ("limiter" in app.extensions) is pages
    assert ("csrf" in app.extensions) is pages
    assert "dashboard" in app.cli.commands


@pytest.mark.parametrize(
    ("argv", "one_shot"),
    [
        (["/srv/.venv/bin/flask", "dashboard", "status", "--json"], True),
        (["gunicorn", "dashboard:create_app()"], False),
        (["flask", "dashboard", "worker"], False),
    ],
)
def test_a_one_shot_command_collects_garbage_again_once_its_app_is_built(
    monkeypatch, demo_environments, argv, one_shot
):
    # Start-up runs without the cyclic collector; the command's own work must not.
    monkeypatch.setattr("sys.argv", argv)
    frozen_before = gc.get_freeze_count()
    collections: list[dict] = []

    def count(phase: str, info: dict) -> None:
        if phase == "start":
            collections.append(info)

    gc.collect()
    gc.callbacks.append(count)
    try:
        startup.begin(argv)
        assert gc.isenabled() is not one_shot
        create_app("testing", {"ENVIRONMENTS_FILE": str(demo_environments)})
        # None while it builds; at most the one that catches up once collection resumes.
        assert len(collections) <= 1, collections
        assert gc.isenabled()
        assert (gc.get_freeze_count() > frozen_before) is one_shot
    finally:
        gc.callbacks.remove(count)
        gc.unfreeze()
        gc.enable()
