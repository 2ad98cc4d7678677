"""Schemas on real databases: revision diffs, drift, scratch databases that never stay behind."""

from __future__ import annotations

import json
import tempfile
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

from dashboard.environments.loader import Environment, Project, load_project
from dashboard.errors import MigrationFailed, ScratchUnavailable
from dashboard.schema import compare, diff_revisions, drift, materialize, reflect_schema, scratch
from dashboard.schema.scratch import SCRATCH_PREFIX, scratch_database
from dashboard.schema.service import compare_live, normalise_default
from tests.helpers import (
    DEMO_SCRIPTS,
    SERVERS,
    execute,
    table_names,
    upgrade_in_child,
    write_environments,
)


def project_for(
    folder: Path, migrations: Path, url: URL, shadow_url: URL | None = None
) -> tuple[Project, Environment]:
    """An environments.yaml with one environment `target` on `url`; return it loaded."""
    lines = [
        f"migrations: {migrations}",
        "environments:",
        "  - name: target",
        f"    url: {json.dumps(url.render_as_string(hide_password=False))}",
    ]
    if shadow_url is not None:
        lines.append(
            f"    shadow_url: {json.dumps(shadow_url.render_as_string(hide_password=False))}"
        )
    folder.mkdir(parents=True, exist_ok=True)
    project = load_project(write_environments(folder, "\n".join(lines) + "\n"))
    environment = project.get("target")
    assert environment is not None
    return project, environment


@pytest.fixture
def scratch_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point tempfile at a private folder, so SQLite scratch files can be counted, and give
    this test's scratch databases a prefix of their own, so that the scratch databases other
    tests (other pytest-xdist workers) make on the same server at the same time never count."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    monkeypatch.setattr(scratch, "SCRATCH_PREFIX", f"{SCRATCH_PREFIX}{uuid.uuid4().hex[:8]}_")
    return folder


def scratch_leftovers(backend: str, scratch_tmp: Path) -> set[str]:
    """The scratch databases (or SQLite scratch folders) of this test that exist right now."""
    if backend == "sqlite":
        names = {path.name for path in scratch_tmp.iterdir()}
    else:
        engine = sa.create_engine(SERVERS[backend], poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as connection:
                query = (
                    "SELECT datname FROM pg_database"
                    if backend == "postgresql"
                    else "SHOW DATABASES"
                )
                names = set(connection.execute(sa.text(query)).scalars())
        finally:
            engine.dispose()
    return {name for name in names if name.startswith(scratch.SCRATCH_PREFIX)}



def keys(diff) -> set[tuple[str, str, str, str]]:
    return {(c.kind, c.action, c.table, c.name) for c in diff.changes}


def build_customer_tree(tree) -> None:
    tree.add(
        "r1",
        None,
        "create customer",
        upgrade="""
        op.create_table(
            'customer',
            sa.Column('id', sa.Integer, primary_key=True),
            sa.Column('email', sa.String(100), nullable=False),
            sa.Column('legacy', sa.String(20), nullable=True),
        )
        """,
    )
    tree.add(
        "r2",
        "r1",
        "orders, display_name, an index; drop legacy",
        upgrade="""
        op.create_table(
            'orders',
            sa.Column('id', sa.Integer, primary_key=True),
            sa.Column('customer_id', sa.Integer, sa.ForeignKey('customer.id'), nullable=False),
        )
        with op.batch_alter_table('customer') as batch_op:
            batch_op.drop_column('legacy')
        op.add_column('customer', sa.Column('display_name', sa.String(64), nullable=True))
        op.create_index('ix_customer_email', 'customer', ['email'])
        """,
    )


# --- diffs between revisions ----------------------------------------------------------------


def test_a_diff_between_two_revisions_lists_exactly_the_changes(
    script_tree, database_url, tmp_path, backend
):
    build_customer_tree(script_tree)
    project, environment = project_for(tmp_path / "cfg", script_tree.path, database_url)

    diff = diff_revisions(
        project=project, environment=environment, from_revision="r1", to_revision="r2"
    )

    assert keys(diff) == {
        ("table", "added", "orders", "orders"),
        ("column", "added", "customer", "display_name"),
        ("column", "dropped", "customer", "legacy"),
        ("index", "added", "customer", "ix_customer_email"),
    }
    by_name = {change.name: change for change in diff.changes}
    assert by_name["display_name"].detail == "VARCHAR(64) NULL"
    assert by_name["legacy"].detail == "VARCHAR(20) NULL"
    assert by_name["ix_customer_email"].detail == "(email)"
    assert "customer_id" in by_name["orders"].detail
    assert not diff.is_empty
    assert diff.as_dict()["changes"][0]["table"] == "customer"
    # the environment's own database was never touched
    assert table_names(database_url) == set()


def test_the_same_revision_compares_equal_and_base_is_empty(
    script_tree, database_url, tmp_path, backend
):
    build_customer_tree(script_tree)
    project, environment = project_for(tmp_path / "cfg", script_tree.path, database_url)

    assert diff_revisions(
        project=project, environment=environment, from_revision="r2", to_revision="r2"
    ).is_empty
    from_base = diff_revisions(
        project=project, environment=environment, from_revision="base", to_revision="r1"
    )
    assert keys(from_base) == {("table", "added", "customer", "customer")}


def test_the_demo_diff_reports_the_dropped_legacy_username(database_url, tmp_path, backend):
    project, environment = project_for(tmp_path / "cfg", DEMO_SCRIPTS, database_url)

    diff = diff_revisions(
        project=project,
        environment=environment,
        from_revision="8f60afaad46c",
        to_revision="7ca9ba531bc0",
    )

    assert keys(diff) == {("column", "dropped", "customer", "legacy_username")}
    assert diff.changes[0].detail.startswith("VARCHAR(64)")


def test_materialize_builds_several_branch_heads(merge_script_tree, database_url, tmp_path):
    project, environment = project_for(tmp_path / "cfg", merge_script_tree.path, database_url)
    with materialize(environment=environment, project=project, revision=("b2", "c3")) as url:
        assert table_names(url) == {"alembic_version", "ta", "tb", "tc"}
        assert set(reflect_schema(url=url).tables) == {"ta", "tb", "tc"}


def test_a_failing_migration_says_so_and_leaves_no_scratch_database(
    script_tree, database_url, tmp_path, backend, scratch_tmp
):
    script_tree.add("bad", None, "broken", upgrade="op.execute('THIS IS NOT SQL')")
    project, environment = project_for(tmp_path / "cfg", script_tree.path, database_url)
    before = scratch_leftovers(backend, scratch_tmp)
    with pytest.raises(MigrationFailed, match="bad"):
        diff_revisions(
            project=project, environment=environment, from_revision="base", to_revision="bad"
        )
    assert scratch_leftovers(backend, scratch_tmp) <= before


# --- drift ----------------------------------------------------------------------------------


def test_drift_none_then_a_hand_made_column_and_index_are_reported(
    script_tree, database_url, tmp_path, backend, scratch_tmp
):
    build_customer_tree(script_tree)
    project, environment = project_for(tmp_path / "cfg", script_tree.path, database_url)
    upgrade_in_child(environment=environment, project=project, target="r2")
    before = scratch_leftovers(backend, scratch_tmp)

    clean = drift(project=project, environment=environment)
    assert clean.status == "none", clean.as_dict()
    assert clean.differences is not None and clean.differences.is_empty
    assert clean.revisions == ("r2",) and clean.reason is None

    execute(
        database_url,
        "ALTER TABLE customer ADD COLUMN nickname VARCHAR(30)",
        "CREATE INDEX ix_hand_made ON orders (customer_id, id)",
    )
    drifted = drift(project=project, environment=environment)

    assert drifted.status == "drift"
    assert drifted.differences is not None
    assert keys(drifted.differences) == {
        ("column", "added", "customer", "nickname"),
        ("index", "added", "orders", "ix_hand_made"),
    }
    nickname = next(c for c in drifted.differences.changes if c.name == "nickname")
    assert nickname.detail == "VARCHAR(30) NULL"
    assert drifted.as_dict()["status"] == "drift"
    assert scratch_leftovers(backend, scratch_tmp) <= before


def test_drift_at_base_compares_with_an_empty_schema(database_url, script_tree, tmp_path):
    script_tree.linear(1)
    project, environment = project_for(tmp_path / "cfg", script_tree.path, database_url)
    execute(database_url, "CREATE TABLE stray (id INTEGER PRIMARY KEY)")
    report = drift(project=project, environment=environment)
    assert report.status == "drift" and report.revisions == ()
    assert keys(report.differences) == {("table", "added", "stray", "stray")}


def test_drift_on_a_revision_the_scripts_do_not_know_is_unavailable(
    database_url, script_tree, tmp_path
):
    script_tree.linear(1)
    project, environment = project_for(tmp_path / "cfg", script_tree.path, database_url)
    execute(
        database_url,
        "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)",
        "INSERT INTO alembic_version VALUES ('feedfacecafe')",
    )
    report = drift(project=project, environment=environment)
    assert report.status == "unavailable" and report.differences is None
    assert "feedfacecafe" in report.reason


def test_compare_live_between_two_environments(script_tree, databases, tmp_path):
    build_customer_tree(script_tree)
    first, second = databases.create(), databases.create()
    project_a, env_a = project_for(tmp_path / "a", script_tree.path, first)
    project_b, env_b = project_for(tmp_path / "b", script_tree.path, second)
    upgrade_in_child(environment=env_a, project=project_a, target="r2")
    upgrade_in_child(environment=env_b, project=project_b, target="r1")
    diff = compare_live(env_a=env_b, env_b=env_a)
    assert ("table", "added", "orders", "orders") in keys(diff)
    assert compare_live(env_a=env_a, env_b=env_a).is_empty


# --- scratch databases ----------------------------------------------------------------------


def test_a_scratch_database_is_empty_and_dropped_even_on_error(
    database_url, script_tree, tmp_path, backend, scratch_tmp
):
    _, environment = project_for(tmp_path / "cfg", script_tree.path, database_url)
    before = scratch_leftovers(backend, scratch_tmp)
    with pytest.raises(RuntimeError), scratch_database(environment=environment) as url:
        assert url.get_backend_name() == database_url.get_backend_name()
        assert url != database_url and table_names(url) == set()
        execute(url, "CREATE TABLE t (id INTEGER PRIMARY KEY)")
        assert scratch_leftovers(backend, scratch_tmp) - before
        raise RuntimeError("boom")
    assert scratch_leftovers(backend, scratch_tmp) <= before


@pytest.fixture
def restricted_url(backend: str, database_url: URL):
    """database_url for a new login that may read the database but not create databases."""
    role = f"dash_ro_{uuid.uuid4().hex[:8]}"
    password = f"Pw{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(
        SERVERS[backend], isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool
    )
    if backend == "postgresql":
        with admin.connect() as connection:
            connection.execute(
                sa.text(f"CREATE ROLE {role} LOGIN NOCREATEDB PASSWORD '{password}'")
            )
        execute(database_url, f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
    else:
        with admin.connect() as connection:
            connection.execute(sa.text(f"CREATE USER '{role}'@'%' IDENTIFIED BY '{password}'"))
            connection.execute(
                sa.text(f"GRANT SELECT ON `{database_url.database}`.* TO '{role}'@'%'")
            )
    try:
        yield database_url.set(username=role, password=password)
    finally:
        if backend == "postgresql":
            execute(database_url, f"DROP OWNED BY {role}")
            with admin.connect() as connection:
                connection.execute(sa.text(f"DROP ROLE IF EXISTS {role}"))
        else:
            with admin.connect() as connection:
                connection.execute(sa.text(f"DROP USER IF EXISTS '{role}'@'%'"))
        admin.dispose()


# SQLite scratch databases are temporary files: always available.
@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
def test_without_create_database_and_without_shadow_url_drift_is_unavailable(
    script_tree, database_url, tmp_path, backend, scratch_tmp, request
):
    build_customer_tree(script_tree)
    admin_project, admin_env = project_for(tmp_path / "admin", script_tree.path, database_url)
    upgrade_in_child(environment=admin_env, project=admin_project, target="r2")
    url = request.getfixturevalue("restricted_url")
    project, environment = project_for(tmp_path / "cfg", script_tree.path, url)
    before = scratch_leftovers(backend, scratch_tmp)

    with pytest.raises(ScratchUnavailable, match="shadow_url"):
        with scratch_database(environment=environment):
            pass  # pragma: no cover
    report = drift(project=project, environment=environment)

    assert report.status == "unavailable" and report.differences is None
    assert report.revisions == ("r2",)
    assert "cannot create a scratch database" in report.reason
    assert url.password not in report.reason
    assert scratch_leftovers(backend, scratch_tmp) <= before

    # A shadow server that may create databases makes drift available again.
    shadow = make_url(SERVERS[backend])
    _, shadowed = project_for(tmp_path / "shadow", script_tree.path, url, shadow_url=shadow)
    assert drift(project=project, environment=shadowed).status == "none"
    assert scratch_leftovers(backend, scratch_tmp) <= before


# --- normalisation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, None),
        ("NULL", None),
        ("'active'::character varying", "active"),
        ("'active'", "active"),
        ("(0)", "0"),
        ("now()", "NOW"),
        ("current_timestamp()", "CURRENT_TIMESTAMP"),
        ("CURRENT_TIMESTAMP", "CURRENT_TIMESTAMP"),
        ("nextval('t_id_seq'::regclass)", "nextval('t_id_seq')"),
    ],
)
def test_defaults_are_normalised(raw, expected):
    assert normalise_default(raw) == expected


def test_compare_reports_altered_columns():
    from dashboard.schema.service import Column, Schema, Table

    def schema(column: Column) -> Schema:
        table = Table("t", {column.name: column}, (), frozenset(), (), {})
        return Schema("sqlite", {"t": table})

    diff = compare(
        schema(Column("a", "INTEGER", True, None)), schema(Column("a", "BIGINT", False, "0"))
    )
    assert [(c.kind, c.action, c.name) for c in diff.changes] == [("column", "altered", "a")]
    assert diff.changes[0].detail == "type INTEGER → BIGINT; NULL → NOT NULL; default none → 0"
