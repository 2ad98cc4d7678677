"""A truthful preview: the transactions a run really uses, and SQL that runs as it is shown."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from dashboard.environments import environment_named, get_project
from dashboard.plans.service import Plan, build_plan
from tests.helpers import (
    Auth,
    DatabaseFactory,
    ScriptTree,
    app_for_tree,
    project_for,
    run_job_to_the_end,
    signed_in_client,
    table_names,
    upgrade_with_a_job,
    versions,
)

ONE_TRANSACTION = (
    "PostgreSQL runs these 3 steps in one transaction: if one fails, every step is rolled back."
)
PER_STEP = (
    "Each step runs in its own transaction: if one fails, it is rolled back, "
    "and the steps before it stay applied."
)
NOT_ROLLED_BACK = {
    "sqlite": "SQLite commits each step on its own and may not roll back the DDL a step ran: "
    "a step that fails half-way can stay half-applied.",
    "mariadb": "MySQL/MariaDB commit each DDL statement as it runs, and each step on its own: "
    "a step that fails half-way is not rolled back.",
}
PER_MIGRATION = {"configure_args": {"transaction_per_migration": True}}


def sql_lines(sql: str) -> list[str]:
    """The lines of SQL that are not comments or blank."""
    return [line.strip() for line in sql.splitlines() if line.strip() and not line.startswith("--")]


def current_plan(app, environment: str = "dev") -> Plan:
    """The upgrade-to-head plan a person would review now."""
    with app.app_context():
        return build_plan(
            project=get_project(),
            environment=environment_named(environment),
            direction="upgrade",
            target="head",
        )


def psql(url: URL, path: Path) -> subprocess.CompletedProcess[str]:
    """Run a SQL file with the real psql client, stopping at the first error."""
    command = shutil.which("psql")
    if command is None:
        pytest.skip("psql is not installed")
    return subprocess.run(
        [command, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(path)]
        + ["-h", url.host or "127.0.0.1", "-p", str(url.port or 5432)]
        + ["-U", url.username or "postgres", "-d", url.database or ""],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# --- SQL that runs as downloaded ---------------------------------------------------------------


@pytest.mark.parametrize("style", ["flask", "plain"])
def test_downloaded_postgresql_sql_runs_in_psql_with_its_percent_signs(
    tmp_path, script_tree, plain_script_tree, style
):
    tree = script_tree if style == "flask" else plain_script_tree
    tree.add(
        "r00",
        None,
        "create offer",
        upgrade="op.create_table('offer', sa.Column('id', sa.Integer, primary_key=True),"
        " sa.Column('note', sa.Text))",
    )
    tree.add(
        "r01",
        "r00",
        "ten offers",
        upgrade='op.execute("INSERT INTO offer (id, note) '
        "SELECT g, 'full price' FROM generate_series(1, 10) AS g\")",
    )
    tree.add(
        "r02",
        "r01",
        "every fifth at half price",
        upgrade="op.execute(\"UPDATE offer SET note = '50% off' WHERE id % 5 = 0\")",
    )
    databases = DatabaseFactory("postgresql", tmp_path)
    try:
        environment_url, scratch_url = databases.create(), databases.create()
        app = app_for_tree(tmp_path / "site", tree, {"prod": environment_url})
        client = signed_in_client(app, "viewer")

        response = client.get("/environments/prod/diff.sql")

        assert response.status_code == 200
        body = response.get_data(as_text=True)
        assert "%%" not in body
        assert "UPDATE offer SET note = '50% off' WHERE id % 5 = 0;" in body
        assert current_plan(app, "prod").fingerprint in body
        script = tmp_path / "prod.sql"
        script.write_text(body)
        finished = psql(scratch_url, script)
        assert finished.returncode == 0, finished.stderr
        assert versions(scratch_url) == ["r02"]
        engine = sa.create_engine(scratch_url, poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as connection:
                rows = connection.execute(sa.text("SELECT id, note FROM offer ORDER BY id")).all()
        finally:
            engine.dispose()
        assert [row.id for row in rows if row.note == "50% off"] == [5, 10]
        assert len(rows) == 10
    finally:
        databases.drop_all()


def test_a_begin_and_commit_the_script_executes_itself_are_kept(tmp_path, script_tree):
    script_tree.add_table("r00", None, "t0")
    script_tree.add(
        "r01",
        "r00",
        "its own transaction",
        upgrade="""
        op.execute("COMMIT")
        op.execute("BEGIN")
        """,
    )
    # Offline rendering never connects: nothing listens on this port.
    project = project_for(tmp_path, script_tree, {"dev": "postgresql+psycopg://u@127.0.0.1:9/x"})

    plan = build_plan(
        project=project,
        environment=project.get("dev"),
        direction="upgrade",
        target="head",
        current=(),
    )

    assert "BEGIN" not in plan.steps[0].sql and "COMMIT" not in plan.steps[0].sql
    own = sql_lines(plan.steps[1].sql)
    assert own[:2] == ["COMMIT;", "BEGIN;"]
    assert own[2].startswith("UPDATE alembic_version")


# --- PostgreSQL: one transaction for the run, or one per step ---------------------------------


def test_postgresql_preview_shows_one_transaction_for_the_whole_run(tmp_path, script_tree):
    script_tree.linear(3)
    databases = DatabaseFactory("postgresql", tmp_path)
    try:
        app = app_for_tree(tmp_path / "site", script_tree, {"dev": databases.create()})
        client = signed_in_client(app, "viewer")

        plan_page = client.get("/environments/dev/plan").get_data(as_text=True)
        diff_page = client.get("/environments/dev/diff").get_data(as_text=True)
        download = client.get("/environments/dev/diff.sql").get_data(as_text=True)
        plan = current_plan(app)
    finally:
        databases.drop_all()

    assert plan.transactions == "one"
    assert plan.transactions_sentence == ONE_TRANSACTION
    for page in (plan_page, diff_page):
        assert f'<p class="transactions">{ONE_TRANSACTION}</p>' in page
        assert "BEGIN;" not in page and "COMMIT;" not in page
    for step in plan.steps:
        assert not re.search(r"\b(BEGIN|COMMIT)\b", step.sql)
    lines = sql_lines(download)
    assert lines[0] == "BEGIN;" and lines[-1] == "COMMIT;"
    assert lines.count("BEGIN;") == 1 and lines.count("COMMIT;") == 1
    assert f"-- {ONE_TRANSACTION}" in download


def test_transaction_per_migration_brackets_each_step(tmp_path, script_tree):
    script_tree.linear(3)
    databases = DatabaseFactory("postgresql", tmp_path)
    try:
        url = databases.create()
        default = current_plan(app_for_tree(tmp_path / "default", script_tree, {"dev": url}))
        app = app_for_tree(
            tmp_path / "site", script_tree, {"dev": url}, ENV_EXTRA={"dev": PER_MIGRATION}
        )
        client = signed_in_client(app, "viewer")

        plan_page = client.get("/environments/dev/plan").get_data(as_text=True)
        download = client.get("/environments/dev/diff.sql").get_data(as_text=True)
        plan = current_plan(app)
    finally:
        databases.drop_all()

    assert plan.transactions == "per_step"
    assert f'<p class="transactions">{PER_STEP}</p>' in plan_page
    assert [step.sql for step in plan.steps] == [step.sql for step in default.steps]
    # Approving one grouping is not approving the other.
    assert plan.fingerprint != default.fingerprint
    steps = re.split(r"(?m)^-- upgrade .*$", download)[1:]
    assert len(steps) == 3
    for step in steps:
        lines = sql_lines(step)
        assert lines[0] == "BEGIN;" and lines[-1] == "COMMIT;"
        assert lines.count("BEGIN;") == 1 and lines.count("COMMIT;") == 1


# --- SQLite and MariaDB: no transaction around a step's DDL -----------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "mariadb"])
def test_sqlite_and_mariadb_previews_say_ddl_is_not_rolled_back(
    tmp_path, script_tree, backend, database_url
):
    script_tree.linear(3)
    app = app_for_tree(tmp_path / "site", script_tree, {"dev": database_url})
    client = signed_in_client(app, "viewer")

    plan_page = client.get("/environments/dev/plan").get_data(as_text=True)
    diff_page = client.get("/environments/dev/diff").get_data(as_text=True)
    download = client.get("/environments/dev/diff.sql").get_data(as_text=True)
    plan = current_plan(app)

    assert plan.transactions == "none"
    sentence = NOT_ROLLED_BACK[backend]
    for page in (plan_page, diff_page):
        assert f'<p class="transactions">{sentence}</p>' in page
    assert f"-- {sentence}" in download
    for sql in [step.sql for step in plan.steps] + [download]:
        assert not re.search(r"\b(BEGIN|COMMIT)\b", sql)
    assert "CREATE TABLE t2" in download


def test_a_rollout_shows_the_sentence_its_approvers_were_shown(demo_app, clients):
    upgrade_with_a_job(demo_app, "staging")  # production may then go to head
    operator = clients["operator"]
    sentence = NOT_ROLLED_BACK["sqlite"]  # the demo's environments are SQLite

    form = operator.get("/environments/production/rollouts/new").get_data(as_text=True)
    response = Auth(operator).post(
        "/environments/production/rollouts", {"target": "head", "reason": "ship it"}
    )

    assert f'<p class="transactions">{sentence}</p>' in form
    assert response.status_code == 303, response.get_data(as_text=True)
    page = clients["viewer"].get(response.headers["Location"]).get_data(as_text=True)
    assert f'<p class="transactions">{sentence}</p>' in page


# --- what a failure really undoes ------------------------------------------------------------


def three_steps_the_last_failing(tree: ScriptTree) -> None:
    """t0, t1, then a step that creates t2 and fails (on every backend; 1/0 is NULL on some)."""
    tree.add_table("r00", None, "t0")
    tree.add_table("r01", "r00", "t1")
    tree.add(
        "r02",
        "r01",
        "fails",
        upgrade="""
        op.create_table('t2', sa.Column('id', sa.Integer, primary_key=True))
        op.execute("SELECT * FROM no_such_table")
        """,
    )


def run_to_head(app) -> tuple[Plan, str, str | None]:
    """Run the reviewed upgrade-to-head plan as a job; return it, the job's state and error."""
    plan = current_plan(app)
    finished = run_job_to_the_end(app, fingerprint=plan.fingerprint)
    return plan, finished.state, finished.error


def test_a_failing_step_rolls_the_whole_postgresql_run_back(tmp_path, script_tree):
    three_steps_the_last_failing(script_tree)
    databases = DatabaseFactory("postgresql", tmp_path)
    try:
        url = databases.create()
        app = app_for_tree(tmp_path / "site", script_tree, {"dev": url})

        plan, state, error = run_to_head(app)

        assert plan.transactions_sentence == ONE_TRANSACTION
        assert all(step.sql is not None for step in plan.steps)
        assert state == "failed" and "no_such_table" in (error or "")
        assert error.startswith("Step 3 of 3 (revision r02) failed:")
        assert error.endswith(
            "The run's one transaction was rolled back, with every step before it: the database "
            "is consistent at base."
        )
        assert "half-applied" not in error
        assert versions(url) == []
        assert not {"t0", "t1", "t2"} & table_names(url)
    finally:
        databases.drop_all()


def test_with_transaction_per_migration_the_steps_before_a_failure_stay(tmp_path, script_tree):
    three_steps_the_last_failing(script_tree)
    databases = DatabaseFactory("postgresql", tmp_path)
    try:
        url = databases.create()
        app = app_for_tree(
            tmp_path / "site", script_tree, {"dev": url}, ENV_EXTRA={"dev": PER_MIGRATION}
        )

        plan, state, error = run_to_head(app)

        assert plan.transactions_sentence == PER_STEP
        assert state == "failed" and "no_such_table" in (error or "")
        assert error.startswith("Step 3 of 3 (revision r02) failed:")
        assert error.endswith("Its transaction was rolled back: the database is consistent at r01.")
        assert "half-applied" not in error
        assert versions(url) == ["r01"]
        assert {"t0", "t1"} <= table_names(url)
        assert "t2" not in table_names(url)
    finally:
        databases.drop_all()


@pytest.mark.parametrize("backend", ["sqlite", "mariadb"])
def test_on_sqlite_and_mariadb_the_steps_before_a_failure_and_its_ddl_stay(
    tmp_path, script_tree, backend, database_url
):
    three_steps_the_last_failing(script_tree)
    app = app_for_tree(tmp_path / "site", script_tree, {"dev": database_url})

    plan, state, _ = run_to_head(app)

    assert plan.transactions_sentence == NOT_ROLLED_BACK[backend]
    assert state == "failed"
    assert versions(database_url) == ["r01"]
    assert {"t0", "t1", "t2"} <= table_names(database_url)
