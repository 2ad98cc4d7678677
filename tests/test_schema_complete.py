"""A complete schema diff (issue 15, item 3): added and dropped tables with their columns,
primary, foreign and unique keys, indexes and check constraints, and what a changed table gains
and loses of those — on SQLite, PostgreSQL and MariaDB, on the page and in the CLI."""

from __future__ import annotations

import re

from flask import render_template

from dashboard.schema import SchemaDiff, diff_revisions
from dashboard.schema.service import Change
from dashboard.tasks.flows import schema_diff_from
from tests.helpers import app_for_tree, project_for, upgrade_with_a_job


def build_complete_tree(tree) -> None:
    """r1: customer and legacy; r2: orders (everything a table can have), legacy dropped,
    customer loses a unique key and a check and gains a check and an index."""
    tree.add(
        "r1",
        None,
        "customer and legacy",
        upgrade="""
        op.create_table(
            'customer',
            sa.Column('id', sa.Integer, primary_key=True),
            sa.Column('email', sa.String(100), nullable=False),
            sa.Column('name', sa.String(50), nullable=True),
            sa.UniqueConstraint('email', name='uq_customer_email'),
            sa.CheckConstraint('length(email) > 0', name='ck_customer_email_set'),
        )
        op.create_table(
            'legacy',
            sa.Column('id', sa.Integer, primary_key=True),
            sa.Column('code', sa.String(10), nullable=False),
            sa.Column('weight', sa.Integer, nullable=True),
            sa.UniqueConstraint('code', name='uq_legacy_code'),
            sa.CheckConstraint('weight < 100', name='ck_legacy_weight'),
        )
        op.create_index('ix_legacy_weight', 'legacy', ['weight'])
        """,
    )
    tree.add(
        "r2",
        "r1",
        "orders; drop legacy; customer checks",
        upgrade="""
        op.create_table(
            'orders',
            sa.Column('id', sa.Integer, primary_key=True),
            sa.Column('customer_id', sa.Integer, nullable=False),
            sa.Column('code', sa.String(20), nullable=False),
            sa.Column('qty', sa.Integer, nullable=False),
            sa.ForeignKeyConstraint(
                ['customer_id'], ['customer.id'], name='fk_orders_customer', ondelete='CASCADE'
            ),
            sa.UniqueConstraint('code', name='uq_orders_code'),
            sa.CheckConstraint('qty > 0', name='ck_orders_qty_positive'),
        )
        op.create_index('ix_orders_customer', 'orders', ['customer_id'])
        op.drop_index('ix_legacy_weight', table_name='legacy')
        op.drop_table('legacy')
        with op.batch_alter_table('customer') as batch_op:
            batch_op.drop_constraint('uq_customer_email', type_='unique')
            batch_op.drop_constraint('ck_customer_email_set', type_='check')
            batch_op.create_check_constraint('ck_customer_email_long', 'length(email) > 3')
        op.create_index('ix_customer_name', 'customer', ['name'])
        """,
    )


def parts_of(change: Change) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for kind, text in change.parts:
        found.setdefault(kind, []).append(text)
    return found


def test_added_dropped_and_changed_tables_list_keys_indexes_and_checks(
    script_tree, database_url, tmp_path, backend
):
    build_complete_tree(script_tree)
    project = project_for(tmp_path, script_tree, {"target": database_url})
    environment = project.get("target")

    diff = diff_revisions(
        project=project, environment=environment, from_revision="r1", to_revision="r2"
    )

    by_key = {(c.kind, c.action, c.table, c.name): c for c in diff.changes}
    assert set(by_key) == {
        ("table", "added", "orders", "orders"),
        ("table", "dropped", "legacy", "legacy"),
        ("unique", "dropped", "customer", "email"),
        ("check", "dropped", "customer", "ck_customer_email_set"),
        ("check", "added", "customer", "ck_customer_email_long"),
        ("index", "added", "customer", "ix_customer_name"),
    }, diff.as_dict()

    orders = parts_of(by_key["table", "added", "orders", "orders"])
    assert set(orders) == {"column", "primary key", "foreign key", "unique", "index", "check"}
    assert [text.split()[0] for text in orders["column"]] == ["id", "customer_id", "code", "qty"]
    assert orders["primary key"] == ["(id)"]
    assert orders["foreign key"] == ["(customer_id) REFERENCES customer (id) ON DELETE CASCADE"]
    assert orders["unique"] == ["(code)"]
    assert orders["index"] == ["ix_orders_customer (customer_id)"]
    assert len(orders["check"]) == 1
    assert re.fullmatch(r"ck_orders_qty_positive: CHECK \(`?qty`? > 0\)", orders["check"][0])

    legacy = parts_of(by_key["table", "dropped", "legacy", "legacy"])
    assert legacy["unique"] == ["(code)"] and legacy["index"] == ["ix_legacy_weight (weight)"]
    assert len(legacy["check"]) == 1 and "weight" in legacy["check"][0]
    assert legacy["check"][0].startswith("ck_legacy_weight: CHECK (")
    # The one-line detail (JSON, old readers) says the same.
    assert "REFERENCES customer (id)" in by_key["table", "added", "orders", "orders"].detail
    assert "length(" in by_key["check", "added", "customer", "ck_customer_email_long"].detail


def test_a_stored_diff_keeps_the_parts_of_a_table(app):
    change = Change("table", "added", "t", "t", "column id", (("column", "id INTEGER"),))
    stored = SchemaDiff((change,)).as_dict()  # as a task's result keeps it (JSON lists)
    restored = schema_diff_from(
        {"changes": [dict(c, parts=[list(p) for p in c["parts"]]) for c in stored["changes"]]}
    )
    assert restored.changes == (change,)
    # A result stored before parts existed still reads.
    old = {k: v for k, v in stored["changes"][0].items() if k != "parts"}
    assert schema_diff_from({"changes": [old]}).changes[0].parts == ()


def test_the_page_lists_an_added_tables_parts(app):
    diff = SchemaDiff(
        (
            Change(
                "table",
                "added",
                "orders",
                "orders",
                "…",
                (("column", "id INTEGER NOT NULL"), ("check", "ck_qty: CHECK (qty > 0)")),
            ),
            Change("check", "added", "customer", "", "CHECK (id > 0)"),
        )
    )
    with app.test_request_context():
        html = render_template("diffs/_schema.html", changes=diff, error=None)
    row = re.search(r'<tr class="change added" data-kind="table".*?</tr>', html, re.S).group(0)
    assert re.findall(r'<li data-part="(\w+)">', row) == ["column", "check"]
    assert "ck_qty: CHECK (qty &gt; 0)" in row
    assert "CHECK (id &gt; 0)" in html


def test_the_cli_prints_each_table_once_with_its_parts(script_tree, tmp_path):
    build_complete_tree(script_tree)
    app = app_for_tree(tmp_path / "site", script_tree, {"dev": "sqlite:///dev.db"})
    upgrade_with_a_job(app, "dev", "r1")

    result = app.test_cli_runner().invoke(args=["dashboard", "diff", "dev"])

    assert result.exit_code == 0, result.output
    schema = result.output.split("schema diff:")[1]
    assert "orders.orders" not in schema and "legacy.legacy" not in schema
    assert re.search(r"^  added    table\s+orders$", schema, re.M), schema
    assert re.search(r"^  dropped  table\s+legacy$", schema, re.M), schema
    assert re.search(
        r"^      foreign key\s+\(customer_id\) REFERENCES customer \(id\)", schema, re.M
    )
    assert re.search(r"^      check\s+ck_orders_qty_positive: CHECK \(qty > 0\)$", schema, re.M)
    assert re.search(r"^  added    check\s+customer\.ck_customer_email_long", schema, re.M)
    assert re.search(r"^  dropped  unique\s+customer\.email", schema, re.M)
