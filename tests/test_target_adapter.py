"""The Alembic adapter on real databases: graphs, current revisions, runs and statuses."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from dashboard.environments.status import Status, read_all, read_status
from dashboard.errors import EnvironmentUnreachable, ScriptDirectoryError
from dashboard.target import adapter as alembic_adapter
from dashboard.target.runner import run_in_child
from dashboard.target.spec import TargetDatabase
from tests.helpers import DatabaseFactory, execute, project_for, table_names


def render(url) -> str:
    return url.render_as_string(hide_password=False)


def upgrade(project, name: str, target: str = "heads", operation: str = "upgrade"):
    result = run_in_child(project.database(project.get(name)), operation=operation, target=target)
    assert result.succeeded, "\n".join(result.lines)
    return result


def status_of(project, name: str, timeout: float = 3.0):
    graph = alembic_adapter.load_graph(project.script_location)
    return read_status(project=project, environment=project.get(name), graph=graph, timeout=timeout)


# --- the revision graph ---------------------------------------------------------------------


def test_graph_marks_branch_points_merges_and_heads(script_tree):
    script_tree.add_table("a1", None, "customer")
    script_tree.add_table("b2", "a1", "product")
    script_tree.add_table("c3", "b2", "orders")
    script_tree.add_table("d4", "b2", "address")
    script_tree.add("e5", ("c3", "d4"), "merge orders and address")
    script_tree.add_table("f6", "e5", "payment")

    graph = alembic_adapter.load_graph(script_tree.path)

    assert graph.heads == ("f6",)
    assert [revision.id for revision in graph.revisions][0] == "f6"
    assert graph.get("b2").is_branch_point and not graph.get("c3").is_branch_point
    assert graph.get("e5").is_merge_point and graph.get("e5").down_revisions == ("c3", "d4")
    assert graph.get("a1").is_base and graph.get("f6").is_head
    assert graph.get("b2").next_revisions == ("c3", "d4")
    assert graph.get("e5").message == "merge orders and address"
    assert graph.get("a1").created == "2026-01-01 00:00:00.000000"
    # Oldest first, and every revision after all of its parents.
    pending = graph.pending(["a1"])
    assert pending[0] == "b2" and pending[-2:] == ["e5", "f6"]
    assert set(pending) == {"b2", "c3", "d4", "e5", "f6"}


def test_graph_reloads_when_a_script_changes(script_tree):
    script_tree.linear(2)
    first = alembic_adapter.load_graph(script_tree.path)
    assert alembic_adapter.load_graph(script_tree.path) is first
    script_tree.add_table("r02", "r01", "extra")
    second = alembic_adapter.load_graph(script_tree.path)
    assert second is not first
    assert second.heads == ("r02",)


def test_planning_reads_each_revision_file_once_until_one_changes(tmp_path, script_tree):
    # Each script notes every time it is loaded (Alembic runs a revision file to read it).
    loads = tmp_path / "loads.log"
    ids = script_tree.linear(3)
    for path in sorted((script_tree.path / "versions").glob("*.py")):
        path.write_text(
            path.read_text()
            + f"\nwith open({str(loads)!r}, 'a') as log:\n    log.write(revision + '\\n')\n"
        )
    project = project_for(tmp_path, script_tree, {"dev": f"sqlite:///{tmp_path / 'dev.db'}"})
    database = project.database(project.get("dev"))

    def plan_all() -> None:
        assert alembic_adapter.load_graph(script_tree.path).heads == (ids[-1],)
        steps = alembic_adapter.resolve_steps(
            database, current=(ids[0],), direction="upgrade", target="head"
        )
        assert steps.revision_ids == tuple(ids[1:])
        assert alembic_adapter.resolve_revisions(database, ids[1][:3]) == (ids[1],)

    plan_all()
    plan_all()
    assert sorted(loads.read_text().split()) == sorted(ids)

    script_tree.add_table("r03", ids[-1], "extra")  # a new script: all are read again
    loads.write_text("")
    assert alembic_adapter.load_graph(script_tree.path).heads == ("r03",)
    steps = alembic_adapter.resolve_steps(database, current=(), direction="upgrade", target="head")
    assert steps.revision_ids == (*ids, "r03")
    assert sorted(loads.read_text().split()) == sorted(ids)


def test_graph_with_a_broken_script_raises_a_clear_error(script_tree):
    script_tree.linear(1)
    (script_tree.path / "versions" / "broken_rev.py").write_text(
        "revision = 'x'\nthis is not python\n"
    )
    with pytest.raises(ScriptDirectoryError, match="cannot read the migration scripts"):
        alembic_adapter.load_graph(script_tree.path)


# --- statuses on every backend --------------------------------------------------------------


@pytest.mark.backends
def test_up_to_date_behind_and_base(tmp_path, script_tree, databases):
    script_tree.linear(4)
    urls = {name: databases.create() for name in ("dev", "staging", "fresh")}
    project = project_for(tmp_path, script_tree, {name: render(url) for name, url in urls.items()})
    upgrade(project, "dev")
    upgrade(project, "staging", "r01")

    dev, staging, fresh = (status_of(project, name) for name in ("dev", "staging", "fresh"))

    assert (dev.status, dev.behind, dev.current, dev.pending) == (Status.UP_TO_DATE, 0, ["r03"], [])
    assert (staging.status, staging.behind, staging.current, staging.pending) == (
        Status.BEHIND,
        2,
        ["r01"],
        ["r02", "r03"],
    )
    assert (fresh.status, fresh.current) == (Status.BEHIND, [])
    assert fresh.pending == ["r00", "r01", "r02", "r03"]
    assert {"t0", "t1", "t2", "t3", "alembic_version"} <= table_names(urls["dev"])
    assert "t2" not in table_names(urls["staging"])


@pytest.mark.backends
def test_several_current_revisions_below_the_head_are_simply_behind(
    tmp_path, script_tree, database_url
):
    script_tree.add_table("a1", None, "customer")
    script_tree.add_table("b2", "a1", "product")
    script_tree.add_table("c3", "a1", "address")
    script_tree.add("d4", ("b2", "c3"), "merge")
    project = project_for(tmp_path, script_tree, {"dev": render(database_url)})
    upgrade(project, "dev", "b2")
    upgrade(project, "dev", "c3")

    status = status_of(project, "dev")

    assert sorted(status.current) == ["b2", "c3"]
    assert (status.status, status.behind, status.pending) == (Status.BEHIND, 1, ["d4"])


@pytest.mark.backends
def test_revision_unknown_to_the_script_directory_is_ahead_unknown(
    tmp_path, script_tree, database_url
):
    script_tree.linear(2)
    project = project_for(tmp_path, script_tree, {"prod": render(database_url)})
    upgrade(project, "prod")
    execute(database_url, "UPDATE alembic_version SET version_num = 'feedfacecafe'")

    status = status_of(project, "prod")

    assert status.status == Status.AHEAD_UNKNOWN
    assert status.current == ["feedfacecafe"]
    assert "feedfacecafe" in status.error


@pytest.mark.backends
def test_script_directory_with_two_heads_is_multiple_heads(tmp_path, script_tree, database_url):
    script_tree.add_table("a1", None, "customer")
    script_tree.add_table("b2", "a1", "product")
    script_tree.add_table("c3", "a1", "address")
    project = project_for(tmp_path, script_tree, {"dev": render(database_url)})
    upgrade(project, "dev", "a1")

    status = status_of(project, "dev")

    assert status.status == Status.MULTIPLE_HEADS
    assert sorted(status.pending) == ["b2", "c3"]
    assert "2 heads" in status.error


@pytest.mark.backends
def test_custom_version_table(tmp_path, script_tree, database_url):
    script_tree.linear(3)
    project = project_for(
        tmp_path, script_tree, {"dev": render(database_url)}, extra="version_table: shop_version"
    )
    upgrade(project, "dev", "r01")

    assert "shop_version" in table_names(database_url)
    assert "alembic_version" not in table_names(database_url)
    status = status_of(project, "dev")
    assert (status.status, status.current, status.behind) == (Status.BEHIND, ["r01"], 1)


@pytest.mark.backends
@pytest.mark.parametrize("style", ["flask", "plain"])
def test_both_env_py_styles_upgrade_and_downgrade_any_url(
    tmp_path, style, script_tree, plain_script_tree, database_url
):
    tree = script_tree if style == "flask" else plain_script_tree
    tree.linear(3)
    env_py = (tree.path / "env.py").read_text()
    assert ("current_app" in env_py) == (style == "flask")
    project = project_for(tmp_path, tree, {"dev": render(database_url)})

    result = upgrade(project, "dev")
    assert any("Running upgrade r01 -> r02" in line for line in result.lines)
    assert status_of(project, "dev").status == Status.UP_TO_DATE
    assert {"t0", "t1", "t2"} <= table_names(database_url)

    upgrade(project, "dev", "r00", operation="downgrade")
    assert status_of(project, "dev").current == ["r00"]
    assert "t1" not in table_names(database_url)


@pytest.mark.backends
def test_a_failing_migration_reports_the_error_and_keeps_the_revision(
    tmp_path, script_tree, database_url
):
    script_tree.linear(1)
    script_tree.add("r01", "r00", "broken", upgrade="op.execute('SELECT * FROM no_such_table')")
    project = project_for(tmp_path, script_tree, {"dev": render(database_url)})

    result = run_in_child(project.database(project.get("dev")), operation="upgrade", target="heads")

    assert not result.succeeded
    assert any("no_such_table" in line for line in result.lines)
    assert status_of(project, "dev").status == Status.BEHIND


# --- unreachable and not configured ---------------------------------------------------------


@pytest.mark.parametrize(
    "template",
    [
        "postgresql+psycopg://app:hunter2-secret@127.0.0.1:{port}/shop",
        "mysql+pymysql://app:hunter2-secret@127.0.0.1:{port}/shop",
    ],
)
def test_closed_port_is_unreachable_without_the_password(
    tmp_path, script_tree, closed_port, template
):
    script_tree.linear(1)
    project = project_for(tmp_path, script_tree, {"prod": template.format(port=closed_port)})

    status = status_of(project, "prod")

    assert status.status == Status.UNREACHABLE
    assert status.error
    assert "hunter2-secret" not in status.error
    assert "hunter2-secret" not in str(status.as_dict())


@pytest.mark.parametrize(
    "template",
    [
        "postgresql+psycopg://app:pw@127.0.0.1:{port}/shop",
        "mysql+pymysql://app:pw@127.0.0.1:{port}/shop",
    ],
)
def test_port_that_never_answers_is_bounded_by_the_timeout(
    tmp_path, script_tree, silent_port, template
):
    script_tree.linear(1)
    project = project_for(
        tmp_path,
        script_tree,
        {"prod": template.format(port=silent_port), "dev": "sqlite:///dev.db"},
    )
    upgrade(project, "dev")
    graph = alembic_adapter.load_graph(project.script_location)

    started = time.monotonic()
    statuses = read_all(project=project, graph=graph, timeout=1.0)
    elapsed = time.monotonic() - started

    by_name = {status.name: status for status in statuses}
    assert by_name["prod"].status == Status.UNREACHABLE
    assert by_name["dev"].status == Status.UP_TO_DATE
    # connect timeout (whole seconds for libpq) plus the hard deadline's margin
    assert elapsed < 5.0


def test_missing_variable_is_not_configured_while_others_are_read(tmp_path, script_tree):
    script_tree.linear(1)
    project = project_for(
        tmp_path,
        script_tree,
        {"dev": "sqlite:///dev.db", "prod": "${PRODUCTION_DATABASE_URL}"},
    )
    upgrade(project, "dev")
    graph = alembic_adapter.load_graph(project.script_location)

    statuses = {s.name: s for s in read_all(project=project, graph=graph, timeout=1)}

    assert statuses["prod"].status == Status.NOT_CONFIGURED
    assert "PRODUCTION_DATABASE_URL" in statuses["prod"].error
    assert statuses["dev"].status == Status.UP_TO_DATE


def test_missing_sqlite_file_is_unreachable_and_not_created(tmp_path, script_tree):
    script_tree.linear(1)
    project = project_for(tmp_path, script_tree, {"dev": "sqlite:///nowhere/dev.db"})

    status = status_of(project, "dev")

    assert status.status == Status.UNREACHABLE
    assert "does not exist" in status.error
    assert not (tmp_path / "nowhere").exists()


def test_read_current_revisions_raises_our_error(closed_port):
    url = make_url(f"postgresql+psycopg://u:pw@127.0.0.1:{closed_port}/x")
    with pytest.raises(EnvironmentUnreachable):
        database = TargetDatabase(name="x", url=url, script_location=Path("migrations"))
        alembic_adapter.read_current_revisions(database, timeout=1)


def test_percent_in_password_survives_alembic_config_and_is_never_echoed(
    tmp_path, plain_script_tree
):
    """Alembic's ConfigParser interpolates '%': an unescaped URL fails and echoes the password."""
    databases = DatabaseFactory("postgresql", tmp_path)
    database_url = databases.create()
    plain_script_tree.linear(1)
    role = f"pct_{uuid.uuid4().hex[:8]}"
    execute(
        database_url,
        f"CREATE ROLE {role} LOGIN PASSWORD 'p%40ss%w0rd'",
        f"GRANT ALL ON SCHEMA public TO {role}",
    )
    try:
        # The password is p%40ss%w0rd; in a URL '%' itself is written %25.
        url = database_url.set(username=role, password="p%40ss%w0rd")
        project = project_for(tmp_path, plain_script_tree, {"dev": render(url)})
        assert "%25" in render(url)

        result = upgrade(project, "dev")

        assert status_of(project, "dev").status == Status.UP_TO_DATE
        assert all("w0rd" not in line for line in result.lines)
    finally:
        execute(database_url, f"DROP OWNED BY {role}")
        databases.drop_all()
        execute(database_url.set(database="postgres"), f"DROP ROLE IF EXISTS {role}")
