"""`flask dashboard status`, `history` and `demo`, run as a person would."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import sqlalchemy as sa

from dashboard import create_app
from tests.helpers import Auth, make_app, table_names, write_environments

DEMO_HEAD = "8d3907739fa1"
DEMO_MERGE = "1aec4c5d1964"
DEMO_BRANCH_POINT = "b3c7cfcc6bed"


def test_demo_builds_three_environments_at_0_2_and_5_behind(app, runner, tmp_path):
    result = runner.invoke(args=["dashboard", "demo"])
    assert result.exit_code == 0, result.output
    assert "dev:" in result.output and "production:" in result.output

    status = runner.invoke(args=["dashboard", "status", "--json"])
    assert status.exit_code == 0, status.output
    rows = json.loads(status.output)

    assert [row["name"] for row in rows] == ["dev", "staging", "production"]
    assert [row["status"] for row in rows] == ["up_to_date", "behind", "behind"]
    assert [row["behind"] for row in rows] == [0, 2, 5]
    assert rows[0]["current"] == [DEMO_HEAD] and rows[0]["pending"] == []
    assert len(rows[2]["pending"]) == 5 and rows[2]["pending"][-1] == DEMO_HEAD
    assert all(row["error"] is None and row["checked_at"] for row in rows)
    assert set(rows[0]) == {"name", "status", "behind", "current", "pending", "error", "checked_at"}
    # The store was created by its own migrations.
    assert "alembic_version" in table_names(sa.make_url(app.config["SQLALCHEMY_DATABASE_URI"]))


def test_demo_resets_an_environment_that_was_moved(app, runner, tmp_path):
    assert runner.invoke(args=["dashboard", "demo"]).exit_code == 0
    dev = tmp_path / "demo" / "dev.db"
    engine = sa.create_engine(f"sqlite:///{dev}")
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE alembic_version SET version_num = 'feedfacecafe'"))
    engine.dispose()

    assert runner.invoke(args=["dashboard", "demo"]).exit_code == 0

    rows = json.loads(runner.invoke(args=["dashboard", "status", "--json"]).output)
    assert rows[0]["status"] == "up_to_date"


def test_demo_refuses_to_touch_a_server_database(tmp_path, script_tree):
    script_tree.linear(1)
    environments = write_environments(
        tmp_path,
        f"""
        migrations: {script_tree.path}
        environments:
          - name: production
            url: postgresql+psycopg://deploy:pw@127.0.0.1:1/shop
        """,
    )
    app = create_app(
        "testing",
        {
            "ENVIRONMENTS_FILE": str(environments),
            "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'store.db'}",
        },
    )

    result = app.test_cli_runner().invoke(args=["dashboard", "demo"])

    assert result.exit_code != 0
    assert "only builds SQLite environments" in result.output
    assert "production is postgresql" in result.output
    assert not (tmp_path / "store.db").exists()


def test_status_table_names_every_environment_and_error(app, runner):
    result = runner.invoke(args=["dashboard", "status"])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[1].split() == ["ENVIRONMENT", "STATUS", "PENDING", "CURRENT", "CHECKED"]
    assert lines[2].split()[:2] == ["dev", "unreachable"]
    assert "dev: the SQLite database file" in result.output

    runner.invoke(args=["dashboard", "demo"])
    result = runner.invoke(args=["dashboard", "status"])
    assert [line.split()[:2] for line in result.output.splitlines()[2:5]] == [
        ["dev", "up_to_date"],
        ["staging", "behind"],
        ["production", "behind"],
    ]
    assert "(5)" in result.output.splitlines()[4]


def test_history_lists_revisions_newest_first_with_marks_and_where_applied(app, runner):
    runner.invoke(args=["dashboard", "demo"])

    result = runner.invoke(args=["dashboard", "history", "--json"])
    assert result.exit_code == 0, result.output
    entries = json.loads(result.output)

    assert len(entries) == 13
    assert entries[0]["id"] == DEMO_HEAD and "head" in entries[0]["marks"]
    assert entries[0]["applied_in"] == ["dev"]
    by_id = {entry["id"]: entry for entry in entries}
    assert "merge" in by_id[DEMO_MERGE]["marks"] and len(by_id[DEMO_MERGE]["down_revisions"]) == 2
    assert by_id[DEMO_MERGE]["applied_in"] == ["dev", "staging", "production"]
    assert "branch point" in by_id[DEMO_BRANCH_POINT]["marks"]
    assert "base" in entries[-1]["marks"]

    text = runner.invoke(args=["dashboard", "history"]).output.splitlines()
    assert text[0].startswith(f"a86d1732ddb4 -> {DEMO_HEAD} (head)")
    assert text[0].endswith("[dev]")
    assert any("(merge)" in line and DEMO_MERGE in line for line in text)


def test_status_reports_a_broken_environments_file_clearly(tmp_path):
    environments = write_environments(tmp_path, "migrations: [\n")
    result_error = None
    try:
        create_app("testing", {"ENVIRONMENTS_FILE": str(environments)})
    except Exception as error:  # noqa: BLE001 - the assertion below names the type
        result_error = error
    assert type(result_error).__name__ == "ConfigurationError"
    assert f"{Path(environments)}, line 2" in str(result_error)


def test_diff_prints_the_plan_warnings_and_schema_diff(demo_app):
    result = demo_app.test_cli_runner().invoke(args=["dashboard", "diff", "production"])

    assert result.exit_code == 0, result.output
    assert "production: upgrade to head, 5 step(s), fingerprint" in result.output
    assert "7ca9ba531bc0: destructive: drops column customer.legacy_username" in result.output
    assert "cannot render offline" in result.output  # the data migration on SQLite
    schema = result.output.split("schema diff:")[1]
    assert "dropped" in schema and "customer.legacy_username" in schema
    assert "added" in schema and "orders.status" in schema


def test_drift_exits_non_zero_only_when_a_schema_drifted(demo_app, demo_folder):
    runner = demo_app.test_cli_runner()
    clean = runner.invoke(args=["dashboard", "drift", "--json"])
    assert clean.exit_code == 0, clean.output
    assert [report["status"] for report in json.loads(clean.output)] == ["none"] * 3

    staging = sa.create_engine(f"sqlite:///{demo_folder / 'demo' / 'staging.db'}")
    with staging.begin() as connection:
        connection.execute(sa.text("ALTER TABLE customer ADD COLUMN nickname VARCHAR(40)"))
    staging.dispose()

    drifted = runner.invoke(args=["dashboard", "drift", "staging"])
    assert drifted.exit_code == 1
    assert "staging: drift" in drifted.output
    assert "customer.nickname" in drifted.output


@pytest.mark.stores
def test_a_drift_check_from_cron_shows_on_every_overview(demo_app, demo_folder, demo_passwords):
    staging = sa.create_engine(f"sqlite:///{demo_folder / 'demo' / 'staging.db'}")
    with staging.begin() as connection:
        connection.execute(sa.text("ALTER TABLE customer ADD COLUMN nickname VARCHAR(40)"))
    staging.dispose()
    assert demo_app.test_cli_runner().invoke(args=["dashboard", "drift"]).exit_code == 1

    # Another process (a second web worker) reads the same store.
    other = make_app(
        demo_folder, SQLALCHEMY_DATABASE_URI=demo_app.config["SQLALCHEMY_DATABASE_URI"]
    )
    client = other.test_client()
    Auth(client).login("viewer", demo_passwords["viewer"])
    overview = client.get("/").get_data(as_text=True)
    assert "drift: 1 difference" in overview and overview.count("no drift") == 2
    drift_page = client.get("/drift").get_data(as_text=True)
    assert re.search(r'data-env="staging" data-drift="drift"', drift_page)
    assert 'data-name="nickname"' in drift_page
