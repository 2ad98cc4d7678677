"""A plain Alembic env.py that takes its URL from its own variable and calls
`fileConfig(config.config_file_name)` on an alembic.ini two folders up runs unmodified, through
`alembic_ini:` and `env:` in environments.yaml (issue 15, item 8)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

from dashboard.environments import environment_named, get_board, get_project, load_project
from dashboard.errors import ConfigurationError
from dashboard.plans.service import build_plan
from dashboard.target.spec import TargetDatabase
from tests.helpers import make_app, run_job_to_the_end, upgrade_store, versions

# A plain env.py as teams write them: its URL from its own variable (never sqlalchemy.url), and
# logging from the ini without the generic template's `is not None` guard.
ENV_PY = """
import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine, pool

config = context.config
fileConfig(config.config_file_name)
url = os.environ["USER_DB_URI"]


def run_migrations_offline():
    context.configure(url=url, literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online():
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
"""

INI = """
[alembic]
script_location = %(here)s/db/migrations
# Never used: the env.py above reads USER_DB_URI.
sqlalchemy.url = driver://nobody:nothing@nowhere/none

[loggers]
keys = root

[handlers]
keys = console

[formatters]
keys = generic

[logger_root]
level = WARNING
handlers = console

[handler_console]
class = StreamHandler
args = (sys.stderr,)
level = NOTSET
formatter = generic

[formatter_generic]
format = %(levelname)-5.5s [%(name)s] %(message)s
"""

REVISION = '''"""create widget

Revision ID: 0a1b2c3d4e5f
Revises:
Create Date: 2026-01-01 00:00:00.000000

"""
from alembic import op
import sqlalchemy as sa

revision = "0a1b2c3d4e5f"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table("widget", sa.Column("id", sa.Integer, primary_key=True))


def downgrade():
    op.drop_table("widget")
'''


def plain_project(root: Path, url: URL, options: str) -> Path:
    """root/alembic.ini, root/db/migrations (the env.py above, one revision) and
    root/deploy/environments.yaml with `options` at the project level; return the yaml's folder."""
    scripts = root / "db" / "migrations"
    (scripts / "versions").mkdir(parents=True)
    (scripts / "env.py").write_text(ENV_PY)
    (scripts / "script.py.mako").write_text("")
    (scripts / "versions" / "0a1b2c3d4e5f_create_widget.py").write_text(REVISION)
    (root / "alembic.ini").write_text(INI)
    deploy = root / "deploy"
    deploy.mkdir()
    (deploy / "environments.yaml").write_text(
        "migrations: ../db/migrations\n"
        + textwrap.dedent(options).strip()
        + "\nenvironments:\n"
        + f"  - name: dev\n    url: {url.render_as_string(hide_password=False)}\n"
    )
    return deploy


OPTIONS = """
alembic_ini: ../alembic.ini
env:
  USER_DB_URI: ${url}
"""


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_a_plain_env_py_reading_its_own_variable_renders_and_runs_unmodified(
    tmp_path: Path, database_url: URL
):
    app = make_app(plain_project(tmp_path / "proj", database_url, OPTIONS))
    upgrade_store(app)
    with app.app_context():
        plan = build_plan(
            project=get_project(),
            environment=environment_named("dev"),
            direction="upgrade",
            target="head",
        )
    assert [step.unrenderable_reason for step in plan.steps] == [None]
    assert "CREATE TABLE widget" in plan.sql

    finished = run_job_to_the_end(app, "dev")

    assert finished.state == "succeeded", finished.error
    assert versions(database_url) == ["0a1b2c3d4e5f"]
    engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    with engine.connect() as connection:
        assert "widget" in sa.inspect(connection).get_table_names()
    engine.dispose()


def test_without_alembic_ini_the_job_and_the_plan_say_which_ini_is_missing(tmp_path: Path):
    database = tmp_path / "dev.db"
    database.touch()
    deploy = plain_project(
        tmp_path / "proj", make_url(f"sqlite:///{database}"), "env:\n  USER_DB_URI: ${url}"
    )
    app = make_app(deploy)
    upgrade_store(app)
    with app.app_context():
        plan = build_plan(
            project=get_project(),
            environment=environment_named("dev"),
            direction="upgrade",
            target="head",
        )
    scripts = tmp_path / "proj" / "db" / "migrations"
    expected = (
        "env.py calls fileConfig(config.config_file_name), but there is no alembic.ini "
        f"(looked for {scripts / 'alembic.ini'} or {scripts.parent / 'alembic.ini'}): name "
        "yours with `alembic_ini:` in environments.yaml"
    )
    assert plan.steps[0].unrenderable_reason == expected

    finished = run_job_to_the_end(app, "dev")

    assert finished.state == "failed"
    assert expected in finished.error and "NoneType" not in finished.error, finished.error
    assert versions(f"sqlite:///{database}") == []


def test_an_alembic_ini_that_is_not_there_stops_loading_naming_the_file(tmp_path: Path):
    deploy = plain_project(
        tmp_path / "proj", make_url("sqlite:///dev.db"), "alembic_ini: ../missing.ini"
    )
    missing = tmp_path / "proj" / "missing.ini"
    with pytest.raises(ConfigurationError) as raised:
        load_project(deploy / "environments.yaml", environ={})
    assert str(raised.value) == (
        f"{deploy / 'environments.yaml'}, line 2, key 'alembic_ini': {missing} does not exist"
    )


def test_env_values_expand_the_url_and_process_variables_in_the_child_only(tmp_path: Path):
    deploy = plain_project(
        tmp_path / "proj",
        make_url("postgresql+psycopg://deploy:s3cret@db.internal/shop"),
        """
        alembic_ini: ../alembic.ini
        env:
          USER_DB_URI: ${url}
          APP_MODE: migrate-${REGION:-eu}
          TOKEN: ${APP_TOKEN}
        """,
    )
    text = (deploy / "environments.yaml").read_text()
    (deploy / "environments.yaml").write_text(
        text + "  - name: prod\n    url: sqlite:///prod.db\n    env:\n      APP_MODE: prod\n"
    )
    project = load_project(deploy / "environments.yaml", environ={"APP_TOKEN": "t0k"})
    dev, prod = (project.database(project.get(name)) for name in ("dev", "prod"))

    assert dev.alembic_ini == tmp_path / "proj" / "alembic.ini"
    assert dev.child_environment({"APP_TOKEN": "t0k"}) == {
        "USER_DB_URI": "postgresql+psycopg://deploy:s3cret@db.internal/shop",
        "APP_MODE": "migrate-eu",
        "TOKEN": "t0k",
    }
    assert prod.child_environment({"APP_TOKEN": "t0k", "REGION": "us"})["APP_MODE"] == "prod"
    # What travels to the child holds the placeholders, never the password.
    spec = dev.to_spec()
    assert "s3cret" not in json.dumps(spec)
    assert TargetDatabase.from_spec(spec, dev.url) == dev

    # A variable a value names that is not set leaves only that environment unusable.
    unset = load_project(deploy / "environments.yaml", environ={})
    assert unset.get("dev").url is None
    assert unset.get("dev").not_configured_reason == "environment variable APP_TOKEN not set (env:)"


@pytest.mark.parametrize(
    ("env", "line", "key", "problem"),
    [
        ("env: [USER_DB_URI]", 2, "env", "expected a mapping of variable names to values"),
        ("env:\n  USER-DB: x", 3, "env.USER-DB", "a variable name is letters, digits and '_'"),
        ("env:\n  A: [1, 2]", 3, "env.A", "expected text"),
    ],
)
def test_a_malformed_env_names_line_and_key(tmp_path: Path, env, line, key, problem):
    deploy = plain_project(tmp_path / "proj", make_url("sqlite:///dev.db"), env)
    with pytest.raises(ConfigurationError) as raised:
        load_project(deploy / "environments.yaml", environ={})
    assert (
        str(raised.value) == f"{deploy / 'environments.yaml'}, line {line}, key '{key}': {problem}"
    )


def test_history_plans_and_jobs_read_the_script_directory_as_the_alembic_ini_describes_it(
    tmp_path: Path,
):
    url = make_url(f"sqlite:///{tmp_path / 'dev.db'}")
    (tmp_path / "dev.db").touch()  # an empty database: the plan reads its (absent) revision
    deploy = plain_project(tmp_path / "proj", url, OPTIONS)
    more = tmp_path / "proj" / "db" / "more_versions"
    more.mkdir()
    (more / "9f8e7d6c5b4a_second.py").write_text(
        REVISION.replace('"0a1b2c3d4e5f"', '"9f8e7d6c5b4a"', 1)
        .replace("down_revision = None", 'down_revision = "0a1b2c3d4e5f"')
        .replace('"widget"', '"gadget"')
    )
    ini = tmp_path / "proj" / "alembic.ini"
    ini.write_text(
        INI.replace(
            "[alembic]\n",
            "[alembic]\npath_separator = space\nversion_locations = "
            "%(here)s/db/migrations/versions %(here)s/db/more_versions\n",
        )
    )
    app = make_app(deploy)
    upgrade_store(app)
    with app.app_context():
        graph = get_board().graph()
        plan = build_plan(
            project=get_project(),
            environment=environment_named("dev"),
            direction="upgrade",
            target="head",
        )
    assert [revision.id for revision in graph.revisions] == ["9f8e7d6c5b4a", "0a1b2c3d4e5f"]
    # The plan and the job see the second folder's revision too, as the history does.
    assert plan.revision_ids == ["0a1b2c3d4e5f", "9f8e7d6c5b4a"]
    assert "CREATE TABLE gadget" in plan.sql
    finished = run_job_to_the_end(app, "dev")
    assert finished.state == "succeeded", finished.error
    assert versions(url) == ["9f8e7d6c5b4a"]
