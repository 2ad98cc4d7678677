"""Rehearsals run a plan for real on a scratch database; statement warnings read what ran."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from dashboard.environments.loader import Environment, Project
from dashboard.plans import Plan, build_plan, clear_plan_cache
from dashboard.plans.rehearsal import is_introspection, rehearse
from dashboard.plans.warnings import statement_warnings
from dashboard.target import adapter as alembic_adapter
from dashboard.target.spec import TargetDatabase
from tests.helpers import DEMO_SCRIPTS, ScriptTree, project_for, table_names, upgrade_in_child
from tests.test_schema import restricted_url, scratch_leftovers, scratch_tmp

__all__ = ["restricted_url", "scratch_tmp"]  # fixtures shared with test_schema

DROP_COLUMN = "7ca9ba531bc0"
BATCH_ADD_COLUMN = "5cb588266835"


@pytest.fixture(autouse=True)
def fresh_plan_cache():
    clear_plan_cache()
    yield
    clear_plan_cache()


def environment_on(
    folder: Path, scripts: ScriptTree | Path, url: URL
) -> tuple[Project, Environment]:
    folder.mkdir(parents=True, exist_ok=True)
    project = project_for(folder, scripts, {"target": url})
    environment = project.get("target")
    assert environment is not None
    return project, environment



def current(environment: Environment) -> tuple[str, ...]:
    assert environment.url is not None
    database = TargetDatabase(
        name=environment.name,
        url=environment.url,
        script_location=Path("migrations"),  # reading the version table needs no scripts
        version_table=environment.version_table,
    )
    return alembic_adapter.read_current_revisions(database)


def plan(project: Project, environment: Environment, target: str, direction="upgrade") -> Plan:
    return build_plan(project=project, environment=environment, direction=direction, target=target)


def by_id(rehearsal):
    return {step.revision_id: step for step in rehearsal.steps}


# --- a data migration -----------------------------------------------------------------------


def build_data_migration_tree(tree: ScriptTree) -> None:
    tree.add(
        "items",
        None,
        "create item with two rows",
        upgrade="""
        item = op.create_table(
            'item',
            sa.Column('id', sa.Integer, primary_key=True),
            sa.Column('name', sa.String(50), nullable=False),
            sa.Column('label', sa.String(60), nullable=True),
        )
        op.bulk_insert(item, [{'id': 1, 'name': 'apple'}, {'id': 2, 'name': 'pear'}])
        """,
    )
    tree.add(
        "labels",
        "items",
        "label every item (data migration)",
        upgrade="""
        rows = op.get_bind().execute(sa.text('SELECT id, name FROM item ORDER BY id')).all()
        for row in rows:
            op.execute(f"UPDATE item SET label = 'x-{row.name}' WHERE id = {row.id}")
        """,
    )
    tree.add(
        "stock",
        "labels",
        "add stock",
        upgrade="op.add_column('item', sa.Column('stock', sa.Integer, nullable=True))",
    )


def test_a_data_migration_is_flagged_offline_and_rehearses_to_its_real_statements(
    script_tree, database_url, tmp_path, backend
):
    build_data_migration_tree(script_tree)
    project, environment = environment_on(tmp_path / "cfg", script_tree, database_url)
    upgrade_in_child(environment=environment, project=project, target="items")

    the_plan = plan(project, environment, "head")
    offline = {step.revision_id: step for step in the_plan.steps}
    assert offline["labels"].sql is None
    assert "op.get_bind()" in offline["labels"].unrenderable_reason
    assert offline["stock"].sql is not None and "stock" in offline["stock"].sql

    rehearsal = rehearse(project=project, environment=environment, plan=the_plan)

    assert rehearsal.status == "succeeded", rehearsal.as_dict()
    labels = by_id(rehearsal)["labels"]
    assert "SELECT id, name FROM item ORDER BY id" in labels.statements
    assert "UPDATE item SET label = 'x-apple' WHERE id = 1" in labels.statements
    assert "UPDATE item SET label = 'x-pear' WHERE id = 2" in labels.statements
    assert any("ADD COLUMN stock" in s for s in by_id(rehearsal)["stock"].statements)
    assert rehearsal.warnings == ()
    # the environment itself was only planned, never migrated
    assert current(environment) == ("items",)


# --- the demo: SQLite batch mode and a dropped column -----------------------------------------


def test_the_demo_drop_column_rehearses_to_the_real_statements(
    database_url, tmp_path, backend, scratch_tmp
):
    project, environment = environment_on(tmp_path / "cfg", DEMO_SCRIPTS, database_url)
    before = scratch_leftovers(backend, scratch_tmp)

    rehearsal = rehearse(
        project=project, environment=environment, plan=plan(project, environment, "head")
    )

    assert rehearsal.status == "succeeded", rehearsal.as_dict()
    assert rehearsal.from_revisions == () and len(rehearsal.steps) == 13
    dropped = by_id(rehearsal)[DROP_COLUMN]
    if backend == "sqlite":
        rebuild = [s for s in dropped.statements if "customer" in s.split("(")[0]]
        assert rebuild[0].startswith("CREATE TABLE _alembic_tmp_customer")
        assert rebuild[1].startswith("INSERT INTO _alembic_tmp_customer")
        assert rebuild[2:4] == [
            "DROP TABLE customer",
            "ALTER TABLE _alembic_tmp_customer RENAME TO customer",
        ]
        assert "legacy_username" not in rebuild[0]
        assert any(s.startswith("PRAGMA") for s in dropped.introspection)
    else:
        assert "ALTER TABLE customer DROP COLUMN legacy_username" in dropped.statements
    assert dropped.statements[-1].startswith(
        "UPDATE alembic_version SET version_num='7ca9ba531bc0'"
    )
    assert not any(s.startswith("PRAGMA") for step in rehearsal.steps for s in step.statements)
    assert dropped.warnings == ("destructive: drops column customer.legacy_username and its data",)
    assert not any("drops table" in warning for warning in rehearsal.warnings)
    assert by_id(rehearsal)[BATCH_ADD_COLUMN].warnings == ()
    assert f"{DROP_COLUMN}: destructive: drops column customer.legacy_username and its data" in (
        rehearsal.warnings
    )
    assert table_names(database_url) == set()  # the environment is still empty
    assert scratch_leftovers(backend, scratch_tmp) <= before


# --- steps, durations, downgrades -------------------------------------------------------------


def test_each_step_runs_on_its_own_with_its_statements_and_duration(
    script_tree, database_url, tmp_path, backend
):
    script_tree.linear(3)
    project, environment = environment_on(tmp_path / "cfg", script_tree, database_url)

    rehearsal = rehearse(
        project=project, environment=environment, plan=plan(project, environment, "head")
    )

    assert [step.revision_id for step in rehearsal.steps] == ["r00", "r01", "r02"]
    for index, step in enumerate(rehearsal.steps):
        assert step.status == "succeeded" and step.error is None
        assert step.duration_seconds > 0
        creates = [s for s in step.statements if s.startswith("CREATE TABLE t")]
        assert len(creates) == 1 and creates[0].startswith(f"CREATE TABLE t{index} ")
    assert rehearsal.steps[0].statements[0].startswith("CREATE TABLE alembic_version")
    if backend == "sqlite":
        assert rehearsal.scratch == "a temporary SQLite file, removed afterwards"
    else:
        assert "dashboard_scratch_" in rehearsal.scratch and "dropped afterwards" in (
            rehearsal.scratch
        )


def test_a_downgrade_through_a_merge_rehearses_one_step_at_a_time(
    merge_script_tree, database_url, tmp_path, backend
):
    project, environment = environment_on(tmp_path / "cfg", merge_script_tree, database_url)
    upgrade_in_child(environment=environment, project=project, target="d5")

    the_plan = plan(project, environment, "a1", direction="downgrade")
    rehearsal = rehearse(project=project, environment=environment, plan=the_plan)

    assert rehearsal.status == "succeeded", rehearsal.as_dict()
    steps = by_id(rehearsal)
    assert list(steps) == the_plan.revision_ids and set(steps) == {"d5", "m4", "b2", "c3"}
    for revision, table in (("d5", "td"), ("b2", "tb"), ("c3", "tc")):
        drops = [s for s in steps[revision].statements if s.startswith("DROP TABLE")]
        assert drops == [f"DROP TABLE {table}"], steps[revision].statements
        assert steps[revision].warnings == (f"destructive: drops table {table}",)
    assert not any(s.startswith("DROP TABLE") for s in steps["m4"].statements)
    assert all(step.duration_seconds > 0 for step in rehearsal.steps)
    assert current(environment) == ("d5",)
    assert table_names(database_url) >= {"ta", "tb", "tc", "td"}


# --- a failing script -------------------------------------------------------------------------


def test_a_failing_script_stops_the_rehearsal_before_the_environment_is_touched(
    script_tree, database_url, tmp_path, backend, scratch_tmp
):
    script_tree.add_table("r1", None, "t1")
    script_tree.add("r2", "r1", "broken", upgrade="op.execute('THIS IS NOT SQL')")
    script_tree.add_table("r3", "r2", "t3")
    project, environment = environment_on(tmp_path / "cfg", script_tree, database_url)
    upgrade_in_child(environment=environment, project=project, target="r1")
    before = scratch_leftovers(backend, scratch_tmp)

    rehearsal = rehearse(
        project=project, environment=environment, plan=plan(project, environment, "head")
    )

    assert rehearsal.status == "failed" and not rehearsal.succeeded
    broken, later = rehearsal.steps
    assert broken.status == "failed"
    assert "syntax" in broken.error and "THIS" in broken.error  # the database's own words
    assert "THIS IS NOT SQL" in broken.statements
    assert rehearsal.error == f"r2: {broken.error}"
    assert later.status == "not_run" and later.statements == () and later.error is None
    assert current(environment) == ("r1",)
    assert "t3" not in table_names(database_url)
    assert scratch_leftovers(backend, scratch_tmp) <= before


# --- no scratch database ----------------------------------------------------------------------


# SQLite scratch databases are temporary files: always available.
@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
def test_without_create_database_the_rehearsal_is_unavailable(
    script_tree, database_url, tmp_path, backend, scratch_tmp, request
):
    script_tree.linear(2)
    admin_project, admin_env = environment_on(tmp_path / "admin", script_tree, database_url)
    upgrade_in_child(environment=admin_env, project=admin_project, target="r00")
    url = request.getfixturevalue("restricted_url")
    project, environment = environment_on(tmp_path / "cfg", script_tree, url)
    before = scratch_leftovers(backend, scratch_tmp)

    rehearsal = rehearse(
        project=project, environment=environment, plan=plan(project, environment, "head")
    )

    assert rehearsal.status == "unavailable" and not rehearsal.succeeded
    assert "cannot create a scratch database" in rehearsal.unavailable
    assert url.password not in json.dumps(rehearsal.as_dict())
    assert rehearsal.steps == ()
    assert scratch_leftovers(backend, scratch_tmp) <= before


def test_an_environment_that_is_not_configured_cannot_be_rehearsed(script_tree, tmp_path):
    script_tree.linear(1)
    (tmp_path / "dev.db").touch()
    project, environment = environment_on(
        tmp_path, script_tree, URL.create("sqlite", database=str(tmp_path / "dev.db"))
    )
    the_plan = plan(project, environment, "head")
    missing = dataclasses.replace(environment, url=None, not_configured_reason="${DEV_URL} unset")

    rehearsal = rehearse(project=project, environment=missing, plan=the_plan)

    assert rehearsal.status == "unavailable"
    assert "${DEV_URL} unset" in rehearsal.unavailable


# --- what is set apart ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        ('PRAGMA main.table_info("customer")', True),
        ("DESCRIBE `shop`.`alembic_version`", True),
        ("SELECT sql FROM (SELECT * FROM sqlite_master) WHERE name = ?", True),
        ("SELECT pg_catalog.pg_class.relname FROM pg_catalog.pg_class", True),
        ("SELECT alembic_version.version_num FROM alembic_version", True),
        ("SELECT RELEASE_LOCK(CONCAT('mdash:', DATABASE()))", True),
        ("SELECT customer.id FROM customer WHERE customer.display_name IS NULL", False),
        (
            "UPDATE alembic_version SET version_num='b' WHERE alembic_version.version_num = 'a'",
            False,
        ),
        ("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)", False),
    ],
)
def test_only_metadata_version_and_lock_reads_are_set_apart(statement, expected):
    assert is_introspection(statement) is expected


# --- statement warnings -----------------------------------------------------------------------

BATCH_DROP = [
    "CREATE TABLE _alembic_tmp_customer (\n\tid INTEGER NOT NULL, \n\temail VARCHAR(255) NOT NULL, "
    "\n\tCONSTRAINT pk_customer PRIMARY KEY (id)\n)",
    "INSERT INTO _alembic_tmp_customer (id, email) "
    "SELECT customer.id, customer.email FROM customer",
    "DROP TABLE customer",
    "ALTER TABLE _alembic_tmp_customer RENAME TO customer",
]
CUSTOMER = {"customer": {"id": "INTEGER", "email": "VARCHAR(255)", "legacy": "VARCHAR(64)"}}


def test_a_batch_rebuild_is_not_a_table_drop_but_its_lost_column_is():
    assert statement_warnings(BATCH_DROP, "sqlite", tables=CUSTOMER) == [
        "destructive: drops column customer.legacy and its data"
    ]


def test_a_batch_rebuild_of_an_unknown_table_says_nothing_rather_than_guess():
    assert statement_warnings(BATCH_DROP, "sqlite") == []


def test_a_batch_rebuild_learns_the_table_from_an_earlier_create_table():
    create = "CREATE TABLE customer (id INTEGER NOT NULL, email VARCHAR(255), legacy VARCHAR(64))"
    assert statement_warnings([create, *BATCH_DROP], "sqlite") == [
        "destructive: drops column customer.legacy and its data"
    ]


def test_a_batch_rebuild_that_adds_a_column_is_quiet_and_one_that_casts_warns():
    added = [
        "CREATE TABLE _alembic_tmp_customer (id INTEGER NOT NULL, email VARCHAR(255), "
        "legacy VARCHAR(64), sku VARCHAR(10))",
        "INSERT INTO _alembic_tmp_customer (id, email, legacy) "
        "SELECT customer.id, customer.email, customer.legacy FROM customer",
        *BATCH_DROP[2:],
    ]
    assert statement_warnings(added, "sqlite", tables=CUSTOMER) == []
    cast = [
        "CREATE TABLE _alembic_tmp_customer (id INTEGER NOT NULL, email VARCHAR(40), "
        "legacy VARCHAR(64))",
        "INSERT INTO _alembic_tmp_customer (id, email, legacy) SELECT customer.id, "
        "CAST(customer.email AS VARCHAR(40)) AS anon_1, customer.legacy FROM customer",
        *BATCH_DROP[2:],
    ]
    assert statement_warnings(cast, "sqlite", tables=CUSTOMER) == [
        "destructive: changes the type of customer.email, which can lose data"
    ]


def test_a_real_drop_table_warns():
    assert statement_warnings(["DROP TABLE customer"], "sqlite") == [
        "destructive: drops table customer"
    ]
    # a DROP TABLE followed by something else than the batch rename is a real drop
    assert statement_warnings(["DROP TABLE customer", "CREATE TABLE x (id INT)"], "sqlite") == [
        "destructive: drops table customer"
    ]


@pytest.mark.parametrize("dialect", ["postgresql", "mysql", "mariadb"])
def test_alter_table_drop_column_warns(dialect):
    statements = ["ALTER TABLE public.customer DROP COLUMN legacy -- parameters: {}"]
    assert statement_warnings(statements, dialect) == [
        "destructive: drops column customer.legacy and its data"
    ]


def test_delete_without_where_and_truncate_warn_but_delete_with_where_does_not():
    assert statement_warnings(["DELETE FROM orders WHERE id = 3"], "postgresql") == []
    assert statement_warnings(["DELETE FROM alembic_version"], "postgresql") == []
    assert statement_warnings(["DELETE FROM orders", "TRUNCATE TABLE audit"], "postgresql") == [
        "destructive: deletes every row of orders (DELETE without WHERE)",
        "destructive: truncates table audit",
    ]


def test_an_index_build_locks_the_table_on_postgresql_unless_concurrently():
    create = "CREATE INDEX ix_product_name ON product (name)"
    assert statement_warnings([create], "postgresql") == [
        "locks table product while the index is built"
    ]
    concurrent = "CREATE INDEX CONCURRENTLY ix_product_name ON product (name)"
    assert statement_warnings([concurrent], "postgresql") == []
    assert statement_warnings([create], "sqlite") == []


def test_type_changes_warn_and_a_mysql_modify_of_nullability_only_does_not():
    retype = "ALTER TABLE customer ALTER COLUMN email TYPE VARCHAR(40)"
    assert statement_warnings([retype], "postgresql") == [
        "destructive: changes the type of customer.email, which can lose data"
    ]
    modify = "ALTER TABLE customer MODIFY email VARCHAR(255) NOT NULL"
    assert statement_warnings([modify], "mariadb", tables=CUSTOMER) == []
    narrower = "ALTER TABLE customer MODIFY email VARCHAR(40) NULL"
    assert statement_warnings([narrower], "mariadb", tables=CUSTOMER) == [
        "destructive: changes the type of customer.email, which can lose data"
    ]
    # the type before is unknown: it may have changed, so say so
    assert statement_warnings([modify], "mariadb") == [
        "destructive: changes the type of customer.email, which can lose data"
    ]


def test_plain_additions_do_not_warn():
    statements = [
        "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)",
        "CREATE TABLE item (id INTEGER NOT NULL, name VARCHAR(50))",
        "ALTER TABLE item ADD COLUMN stock INTEGER",
        "INSERT INTO alembic_version (version_num) VALUES ('a1')",
        "UPDATE alembic_version SET version_num='b2' WHERE alembic_version.version_num = 'a1'",
    ]
    assert statement_warnings(statements, "postgresql") == []


def test_squawk_reads_what_a_postgresql_data_migration_really_ran(
    script_tree, pg_databases, tmp_path
):
    """A step that cannot render offline is linted from its rehearsed statements."""
    script_tree.add_table("items", None, "item")
    script_tree.add(
        "indexed",
        "items",
        "index items if any (data-dependent)",
        upgrade="""
        if op.get_bind().execute(sa.text('SELECT count(*) FROM item')).scalar() == 0:
            op.execute('CREATE INDEX ix_item_id ON item (id)')
        """,
    )
    project, environment = environment_on(tmp_path / "cfg", script_tree, pg_databases.create())
    upgrade_in_child(environment=environment, project=project, target="items")

    the_plan = plan(project, environment, "head")
    assert the_plan.steps[0].sql is None  # it reads the database: no offline SQL

    rehearsal = rehearse(project=project, environment=environment, plan=the_plan)

    assert rehearsal.status == "succeeded", rehearsal.as_dict()
    indexed = by_id(rehearsal)["indexed"]
    assert "CREATE INDEX ix_item_id ON item (id)" in indexed.statements
    # Ours names the lock (squawk's twin rule is left out); squawk adds what only it says.
    assert "locks table item while the index is built" in indexed.warnings
    assert any("set lock_timeout" in text for text in indexed.warnings), indexed.warnings
