"""The demo shop's real history runs, up and down, on every backend."""

from __future__ import annotations

import sqlalchemy as sa

from dashboard.environments.status import Status, read_status
from dashboard.target import adapter as alembic_adapter
from dashboard.target.runner import run_in_child
from tests.helpers import DEMO_SCRIPTS, execute, project_for, table_names

BEFORE_BACKFILL = "4add470122e6"


def run(project, operation, target):
    result = run_in_child(
        project.database(project.get("target")), operation=operation, target=target
    )
    assert result.succeeded, "\n".join(result.lines)
    return result


def test_demo_history_has_a_branch_a_merge_and_one_head():
    graph = alembic_adapter.load_graph(DEMO_SCRIPTS)
    assert len(graph) >= 10
    assert len(graph.heads) == 1
    assert sum(revision.is_branch_point for revision in graph.revisions) == 1
    assert sum(revision.is_merge_point for revision in graph.revisions) == 1


def test_demo_scripts_upgrade_with_data_and_downgrade_on_every_backend(tmp_path, database_url):
    project = project_for(tmp_path, DEMO_SCRIPTS, {"target": database_url})
    run(project, "upgrade", BEFORE_BACKFILL)
    execute(
        database_url,
        "INSERT INTO customer (email, legacy_username) VALUES ('alice@example.com', 'alice42')",
        "INSERT INTO customer (email) VALUES ('bob.smith@example.com')",
    )

    result = run(project, "upgrade", "heads")

    assert any("backfill customer display_name" in line for line in result.lines)
    graph = alembic_adapter.load_graph(DEMO_SCRIPTS)
    status = read_status(
        project=project, environment=project.get("target"), graph=graph, timeout=3
    )
    assert status.status == Status.UP_TO_DATE
    engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    with engine.connect() as connection:
        names = connection.execute(
            sa.text("SELECT email, display_name FROM customer ORDER BY email")
        ).all()
        columns = {column["name"] for column in sa.inspect(connection).get_columns("customer")}
    engine.dispose()
    assert names == [("alice@example.com", "alice42"), ("bob.smith@example.com", "bob.smith")]
    assert "legacy_username" not in columns

    run(project, "downgrade", "base")
    assert table_names(database_url) == {"alembic_version"}
