"""Plan warnings come from the scripts' Alembic operations, not from rendered SQL."""

from __future__ import annotations

import json
import pickle

import pytest

from dashboard.plans.lint import at_least
from dashboard.plans.service import build_plan
from dashboard.plans.warnings import script_warnings, sql_warnings, statement_warnings
from tests.helpers import DEMO_SCRIPTS, project_for

DROP_COLUMN = "7ca9ba531bc0"
ADD_COLUMN = "a86d1732ddb4"
ADD_INDEX = "b3c7cfcc6bed"


def demo_script(revision_id: str):
    return next((DEMO_SCRIPTS / "versions").glob(f"{revision_id}_*.py"))


def test_the_demo_drop_column_is_destructive_and_an_add_column_is_not():
    dropped = script_warnings(path=demo_script(DROP_COLUMN), direction="upgrade", dialect="sqlite")
    assert dropped == ["destructive: drops column customer.legacy_username and its data"]
    assert (
        script_warnings(path=demo_script(ADD_COLUMN), direction="upgrade", dialect="sqlite") == []
    )


def test_downgrade_of_a_create_table_drops_it():
    first = next((DEMO_SCRIPTS / "versions").glob("faa3b8d2425d_*.py"))
    assert script_warnings(path=first, direction="downgrade", dialect="postgresql") == [
        "destructive: drops table customer"
    ]


def test_index_builds_lock_the_table_on_server_databases():
    script = demo_script(ADD_INDEX)
    assert script_warnings(path=script, direction="upgrade", dialect="sqlite") == []
    assert script_warnings(path=script, direction="upgrade", dialect="postgresql") == [
        "locks table product while the index is built"
    ]


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        ("DELETE FROM customer", ["deletes every row of a table (DELETE without WHERE)"]),
        ("DELETE FROM customer WHERE id = 1", []),
        ("TRUNCATE TABLE orders", ["truncates a table"]),
        ("UPDATE customer SET name = 'x'", []),
    ],
)
def test_raw_sql_is_parsed_not_pattern_matched(statement, expected):
    assert sql_warnings(statement) == expected


def test_type_change_and_raw_delete_in_a_script(script_tree):
    script_tree.add(
        "a1",
        None,
        "risky",
        upgrade="""
        op.alter_column('customer', 'email', type_=sa.String(20))
        op.execute("DELETE FROM audit_trail")
        """,
    )
    found = script_warnings(
        path=script_tree.path / "versions" / "a1_rev.py", direction="upgrade", dialect="mariadb"
    )
    assert found == [
        "destructive: changes the type of customer.email, which can lose data",
        "destructive: deletes every row of a table (DELETE without WHERE)",
    ]


@pytest.mark.backends
def test_the_demo_plan_warns_on_every_backend(tmp_path, database_url, backend):
    project = project_for(tmp_path, DEMO_SCRIPTS, {"target": database_url})
    plan = build_plan(
        project=project,
        environment=project.get("target"),
        direction="upgrade",
        target="head",
        current=("8f60afaad46c",),
    )
    dropped = [warning for warning in plan.warnings if warning.step == DROP_COLUMN]
    assert [(warning.rule, warning.severity) for warning in dropped] == [("drop-column", "error")]
    assert dropped[0] == (
        f"{DROP_COLUMN}: destructive: drops column customer.legacy_username and its data "
        "[error: drop-column] — fix: stop reading the column in the app first, then drop it in a "
        "later release"
    )
    # squawk (PostgreSQL only) may add a note on the new column; nothing above a note.
    assert not any(
        warning.startswith(ADD_COLUMN) and warning.severity != "info" for warning in plan.warnings
    )
    half_applied = any("not transactional" in warning for warning in plan.warnings)
    assert half_applied == (backend == "mariadb")


def test_an_index_on_a_table_created_in_the_same_step_locks_nothing(script_tree):
    script_tree.add(
        "a1",
        None,
        "tags",
        upgrade="""
        op.create_table('tag', sa.Column('id', sa.Integer, primary_key=True))
        op.create_index('ix_tag_id', 'tag', ['id'])
        op.create_index('ix_customer_email', 'customer', ['email'])
        """,
    )
    found = script_warnings(
        path=script_tree.path / "versions" / "a1_rev.py", direction="upgrade", dialect="postgresql"
    )
    assert found == ["locks table customer while the index is built"]
    assert (found[0].rule, found[0].severity) == ("index-locks-table", "warning")
    assert "CREATE INDEX CONCURRENTLY" in found[0].fix


def test_rehearsed_statements_skip_the_index_of_a_table_they_created():
    statements = [
        "CREATE TABLE tag (id INTEGER NOT NULL, PRIMARY KEY (id))",
        "CREATE INDEX ix_tag_id ON tag (id)",
        "CREATE INDEX ix_customer_email ON customer (email)",
    ]
    assert statement_warnings(statements, "postgresql") == [
        "locks table customer while the index is built"
    ]


def test_own_findings_carry_rule_severity_and_fix():
    (truncate,) = sql_warnings("TRUNCATE TABLE orders")
    assert (truncate.rule, truncate.severity, truncate.source) == ("truncate", "error", "dashboard")
    assert truncate.for_step("abcdef1234567890") == (
        "abcdef123456: truncates a table [error: truncate] — fix: back the rows up first, "
        "or delete only the rows meant (DELETE … WHERE)"
    )
    assert truncate.for_step("abcdef1234567890").headline == "abcdef123456: truncates a table"


def test_findings_survive_pickling_and_stay_text_in_json():
    finding = sql_warnings("DELETE FROM customer")[0].for_step("r1")
    copy = pickle.loads(pickle.dumps(finding))
    assert (copy, copy.rule, copy.severity, copy.step) == (
        finding,
        "delete-without-where",
        "error",
        "r1",
    )
    assert json.loads(json.dumps([finding])) == [str(finding)]
    assert at_least([finding, "plain text"], "error") == [finding]
