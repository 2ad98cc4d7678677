"""environments.yaml: shape, interpolation, paths, and messages that name file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from dashboard.environments import load_project
from dashboard.errors import ConfigurationError
from tests.helpers import write_environments


@pytest.fixture
def scripts(script_tree) -> Path:
    script_tree.linear(2)
    return script_tree.path


def load(tmp_path: Path, text: str, environ: dict[str, str] | None = None):
    return load_project(write_environments(tmp_path, text), environ=environ or {})


def load_error(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigurationError) as caught:
        load(tmp_path, text, environ)
    return str(caught.value)


def test_environments_come_in_promotion_order_whatever_the_file_order(tmp_path, scripts):
    project = load(
        tmp_path,
        f"""
        project: shop
        migrations: {scripts}
        environments:
          - name: production
            url: sqlite:///prod.db
            after: staging
            protected: true
            approvals: 2
            allow_downgrade: false
          - name: dev
            url: sqlite:///dev.db
          - name: staging
            url: sqlite:///staging.db
            after: dev
        """,
    )
    assert project.name == "shop"
    assert project.names == ["dev", "staging", "production"]
    production = project.get("production")
    assert production.protected and production.approvals == 2
    assert production.allow_downgrade is False
    assert project.get("dev").protected is False and project.get("dev").approvals == 0


def test_relative_sqlite_path_resolves_against_the_file_not_the_working_directory(
    tmp_path, scripts, monkeypatch
):
    config_folder = tmp_path / "conf"
    config_folder.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    project = load(
        config_folder,
        f"""
        migrations: {scripts}
        environments:
          - name: dev
            url: sqlite:///instance/dev.db
        """,
    )
    assert project.get("dev").url.database == str(config_folder / "instance" / "dev.db")


def test_migrations_folder_is_relative_to_the_file(tmp_path, script_tree, monkeypatch):
    script_tree.linear(1)
    monkeypatch.chdir("/")
    relative = script_tree.path.relative_to(tmp_path)
    project = load(
        tmp_path,
        f"""
        migrations: {relative}
        environments:
          - name: dev
            url: sqlite:///dev.db
        """,
    )
    assert project.script_location == script_tree.path


def test_missing_variable_marks_only_that_environment_not_configured(tmp_path, scripts):
    project = load(
        tmp_path,
        f"""
        migrations: {scripts}
        environments:
          - name: dev
            url: sqlite:///dev.db
          - name: staging
            url: ${{STAGING_DATABASE_URL}}
        """,
    )
    assert project.get("dev").is_configured
    staging = project.get("staging")
    assert not staging.is_configured
    assert staging.not_configured_reason == "environment variable STAGING_DATABASE_URL not set"


def test_variables_are_interpolated_with_optional_defaults(tmp_path, scripts):
    project = load(
        tmp_path,
        f"""
        migrations: {scripts}
        environments:
          - name: staging
            url: postgresql+psycopg://app:${{DB_PASSWORD}}@db.internal/${{DB_NAME:-shop}}
        """,
        environ={"DB_PASSWORD": "s3cr3t-pw"},
    )
    url = project.get("staging").url
    assert url.password == "s3cr3t-pw" and url.database == "shop"
    assert "s3cr3t-pw" not in project.get("staging").display_url
    assert "s3cr3t-pw" not in repr(project.get("staging"))


def test_version_table_and_python_path_per_project_and_environment(tmp_path, scripts):
    (tmp_path / "src").mkdir()
    project = load(
        tmp_path,
        f"""
        migrations: {scripts}
        version_table: shop_version
        python_path: src
        environments:
          - name: dev
            url: sqlite:///dev.db
          - name: reporting
            url: sqlite:///reporting.db
            version_table: reporting_version
            version_table_schema: audit
            python_path: [lib]
        """,
    )
    assert project.get("dev").version_table == "shop_version"
    assert project.get("dev").python_path == (tmp_path / "src",)
    reporting = project.get("reporting")
    assert (reporting.version_table, reporting.version_table_schema) == (
        "reporting_version",
        "audit",
    )
    assert reporting.python_path == (tmp_path / "src", tmp_path / "lib")


def test_configure_args_per_environment_decide_the_transactions(tmp_path, scripts):
    project = load(
        tmp_path,
        f"""
        migrations: {scripts}
        environments:
          - name: dev
            url: sqlite:///dev.db
          - name: staging
            url: postgresql+psycopg://u@db.internal/shop
          - name: production
            url: postgresql+psycopg://u@db.internal/shop
            configure_args:
              transaction_per_migration: true
              transactional_ddl: false
        """,
    )
    dev, staging, production = (project.get(name) for name in ("dev", "staging", "production"))
    assert (dev.configure_options, dev.transactional_ddl) == ({}, False)
    assert staging.transactional_ddl and not staging.transaction_per_migration
    assert production.configure_options == {
        "transaction_per_migration": True,
        "transactional_ddl": False,
    }
    assert production.transaction_per_migration and not production.transactional_ddl


def test_misspelt_configure_arg_names_line_key_and_close_match(tmp_path, scripts):
    message = load_error(
        tmp_path,
        f"""
        migrations: {scripts}
        environments:
          - name: production
            url: sqlite:///prod.db
            configure_args:
              transaction_per_migraton: true
        """,
    )
    assert str(tmp_path / "environments.yaml") in message
    assert "line 6, key 'environments[0] (production).configure_args.transaction_per_migraton'" in (
        message
    )
    assert "did you mean 'transaction_per_migration'?" in message


@pytest.mark.parametrize("value", ["1", "'yes'", "[true]"])
def test_configure_arg_that_is_not_true_or_false_is_refused(tmp_path, scripts, value):
    message = load_error(
        tmp_path,
        f"""
        migrations: {scripts}
        environments:
          - name: production
            url: sqlite:///prod.db
            configure_args:
              transactional_ddl: {value}
        """,
    )
    assert (
        "line 6, key 'environments[0] (production).configure_args.transactional_ddl': "
        "expected true or false"
    ) in message


def test_bad_yaml_names_file_and_line(tmp_path, scripts):
    message = load_error(
        tmp_path,
        f"""
        migrations: {scripts}
        environments:
          - name: dev
            url: sqlite:///dev.db
           after: [unclosed
        """,
    )
    assert str(tmp_path / "environments.yaml") in message
    assert "line 5" in message
    assert "not valid YAML" in message


def test_misspelt_key_names_line_key_and_close_match(tmp_path, scripts):
    message = load_error(
        tmp_path,
        f"""
        migrations: {scripts}
        environments:
          - name: dev
            url: sqlite:///dev.db
          - name: production
            url: sqlite:///prod.db
            protectd: true
        """,
    )
    assert str(tmp_path / "environments.yaml") in message
    assert "line 7" in message
    assert "environments[1] (production).protectd" in message
    assert "did you mean 'protected'?" in message


def test_unknown_top_level_key(tmp_path, scripts):
    message = load_error(
        tmp_path,
        f"""
        migrations: {scripts}
        enviroments: []
        """,
    )
    assert "line 2, key 'enviroments'" in message
    assert "did you mean 'environments'?" in message


def test_duplicate_environment_name(tmp_path, scripts):
    message = load_error(
        tmp_path,
        f"""
        migrations: {scripts}
        environments:
          - name: dev
            url: sqlite:///dev.db
          - name: dev
            url: sqlite:///dev2.db
        """,
    )
    assert "line 5, key 'environments[1].name'" in message
    assert "'dev' is already defined" in message


def test_after_naming_an_unknown_environment(tmp_path, scripts):
    message = load_error(
        tmp_path,
        f"""
        migrations: {scripts}
        environments:
          - name: staging
            url: sqlite:///staging.db
          - name: production
            url: sqlite:///prod.db
            after: stagign
        """,
    )
    assert "line 7, key 'environments (production).after'" in message
    assert "no environment is named 'stagign'; did you mean 'staging'?" in message


def test_promotion_cycle(tmp_path, scripts):
    message = load_error(
        tmp_path,
        f"""
        migrations: {scripts}
        environments:
          - name: staging
            url: sqlite:///staging.db
            after: production
          - name: production
            url: sqlite:///prod.db
            after: staging
        """,
    )
    assert "line 5, key 'environments (staging).after'" in message
    assert "cycle: staging -> production -> staging" in message


def test_wrong_value_types(tmp_path, scripts):
    message = load_error(
        tmp_path,
        f"""
        migrations: {scripts}
        environments:
          - name: production
            url: sqlite:///prod.db
            protected: true
            approvals: two
        """,
    )
    assert "line 6, key 'environments[0] (production).approvals': expected a whole number" in (
        message
    )


def test_missing_required_key(tmp_path, scripts):
    message = load_error(
        tmp_path,
        f"""
        migrations: {scripts}
        environments:
          - name: dev
        """,
    )
    assert "line 3, key 'environments[0].url': this key is required" in message


def test_migrations_folder_without_env_py(tmp_path):
    message = load_error(
        tmp_path,
        """
        migrations: nowhere/migrations
        environments:
          - name: dev
            url: sqlite:///dev.db
        """,
    )
    assert "line 1, key 'migrations'" in message
    assert "not an Alembic script directory" in message


def test_no_password_in_any_error(tmp_path, scripts):
    not_a_url = load_error(
        tmp_path,
        f"""
        migrations: {scripts}
        environments:
          - name: prod
            url: "postgresql+psycopg//admin:hunter2-secret@db/prod"
        """,
    )
    assert "line 4, key 'environments[0] (prod).url'" in not_a_url
    assert "hunter2-secret" not in not_a_url
    misspelt = load_error(
        tmp_path,
        """
        migrations: {scripts}
        environments:
          - name: prod
            urll: postgresql+psycopg://admin:hunter2-secret@db/prod
        """.replace("{scripts}", str(scripts)),
    )
    assert "did you mean 'url'?" in misspelt
    assert "hunter2-secret" not in misspelt


def test_missing_file(tmp_path):
    with pytest.raises(ConfigurationError, match="cannot read the environments file"):
        load_project(tmp_path / "absent.yaml")
