"""squawk lints PostgreSQL plans (the installed binary, no stand-in); block_on refuses plans."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from dashboard.audit.models import AuditEvent
from dashboard.environments import load_project
from dashboard.errors import ConfigurationError, JobRefused, RolloutRefused
from dashboard.extensions import db
from dashboard.jobs import service as jobs
from dashboard.jobs.models import Job
from dashboard.plans.lint import ERROR, INFO, WARNING, lint_steps, squawk_binary
from dashboard.plans.service import build_plan, clear_plan_cache
from dashboard.plans.warnings import statement_findings, statement_warnings
from dashboard.rollouts import service as rollouts
from dashboard.users.models import User
from tests.helpers import (
    Auth,
    add_user,
    app_for_tree,
    fingerprint_of,
    make_app,
    signed_in_client,
    write_environments,
)

EXISTING_TABLE_INDEX = "CREATE INDEX ix_orders_placed ON orders (placed_at);\n"
NEW_TABLE_INDEX = (
    "CREATE TABLE tag (id BIGINT PRIMARY KEY, label TEXT NOT NULL);\n"
    "CREATE INDEX ix_tag_label ON tag (label);\n"
)


@pytest.fixture(autouse=True)
def fresh_plans():
    clear_plan_cache()
    yield
    clear_plan_cache()


def rules(findings) -> list[str]:
    return [finding.rule for finding in findings]


def test_the_installed_squawk_is_found_beside_this_python():
    assert squawk_binary() == str(Path(sys.executable).with_name("squawk"))


def test_squawk_asks_for_concurrently_on_an_existing_table_only():
    found = lint_steps(
        [("a1", EXISTING_TABLE_INDEX), ("b2", NEW_TABLE_INDEX)],
        in_transaction=True,
        exclude=["require-lock-timeout", "require-statement-timeout"],
    )
    index = [f for f in found if f.rule == "require-concurrent-index-creation"]
    assert [(f.step, f.severity, f.source) for f in index] == [("a1", WARNING, "squawk")]
    assert "CREATE INDEX CONCURRENTLY" in index[0].fix
    # A table created in the same step: nobody else can be waiting on it.
    assert not any(f.step == "b2" and f.severity != INFO for f in found)


def test_squawk_findings_say_rule_severity_and_fix_in_their_text():
    (dropped,) = [
        f
        for f in lint_steps([("c3", "ALTER TABLE t DROP COLUMN legacy;\n")], in_transaction=True)
        if f.rule == "ban-drop-column"
    ]
    text = dropped.for_step("c3")
    assert dropped.severity == ERROR
    assert text.startswith("c3: Dropping a column")
    assert "[error: ban-drop-column] — fix: stop reading the column" in text


def test_statements_on_the_version_table_are_not_linted():
    bookkeeping = (
        "CREATE TABLE alembic_version (\n    version_num VARCHAR(32) NOT NULL,\n"
        "    CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)\n);\n"
        "INSERT INTO alembic_version (version_num) VALUES ('a1');\n"
    )
    assert lint_steps([("a1", bookkeeping)], in_transaction=True) == []


def test_a_missing_squawk_is_a_notice_not_a_crash(tmp_path, demo_environments, monkeypatch):
    app = make_app(tmp_path, SQUAWK_BIN=str(tmp_path / "no-squawk-here"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with app.app_context():
        (notice,) = lint_steps([("a1", EXISTING_TABLE_INDEX)], in_transaction=True)
    assert (notice.rule, notice.severity) == ("squawk-missing", INFO)
    assert "not linted with squawk" in notice and "squawk-cli" in notice.fix


def pg_project(tmp_path, url, extra: str = ""):
    rendered = url.render_as_string(hide_password=False)
    text = f"migrations: {tmp_path / 'app' / 'migrations'}\nenvironments:\n"
    text += f"  - name: target\n    url: {rendered}\n{extra}"
    return load_project(write_environments(tmp_path, text), environ={})


def test_a_postgresql_plan_merges_squawk_with_our_rules(tmp_path, script_tree, pg_databases):
    script_tree.add(
        "r1",
        None,
        "tags and their index",
        upgrade="""
        op.create_table('tag', sa.Column('id', sa.BigInteger, primary_key=True),
                        sa.Column('label', sa.Text))
        op.create_index('ix_tag_label', 'tag', ['label'])
        """,
    )
    script_tree.add("r2", "r1", "index", upgrade="op.create_index('ix_tag_id', 'tag', ['id'])")
    script_tree.add(
        "r3", "r2", "retype", upgrade="op.execute('ALTER TABLE tag ALTER COLUMN label TYPE bytea')"
    )
    script_tree.add(
        "r4",
        "r3",
        "data",
        upgrade="""
        bind = op.get_bind()
        for (tag_id,) in bind.execute(sa.text('SELECT id FROM tag')).all():
            bind.execute(sa.text('DELETE FROM tag WHERE id = :id'), {'id': tag_id})
        """,
    )
    project = pg_project(tmp_path, pg_databases.create())
    plan = build_plan(
        project=project, environment=project.get("target"), direction="upgrade", target="head"
    )
    by_step = {
        step: [w for w in plan.warnings if w.step == step]
        for step in ("r1", "r2", "r3", "r4", None)
    }
    assert plan.steps[3].sql is None  # a data migration: squawk cannot read it beforehand
    assert [(w.rule, w.severity) for w in by_step["r4"]] == [("not-linted", INFO)]
    # The same step's new table: neither we nor squawk warn about its index (issue 15, item 8).
    assert [w for w in by_step["r1"] if w.severity != INFO] == []
    # Ours names the table; squawk's twin of it is left out.
    assert rules(by_step["r2"]) == ["index-locks-table"]
    assert "locks table tag while the index is built [warning: index-locks-table]" in str(
        by_step["r2"][0]
    )
    # Raw SQL that only squawk reads.
    assert ("changing-column-type", ERROR) in [(w.rule, w.severity) for w in by_step["r3"]]
    lock = [w for w in by_step[None] if w.rule == "require-lock-timeout"]
    assert len(lock) == 1 and "(3 steps: r1, r2, r3)" in lock[0]
    assert "squawk-missing" not in rules(plan.warnings)


def test_an_environment_lock_timeout_silences_the_timeout_rule(tmp_path, script_tree, pg_databases):
    script_tree.add("r1", None, "index", upgrade="op.create_index('ix_a', 'a', ['id'])")
    extra = "    lock_timeout: 5\n    statement_timeout: 60\n"
    project = pg_project(tmp_path, pg_databases.create(), extra)
    plan = build_plan(
        project=project,
        environment=project.get("target"),
        direction="upgrade",
        target="head",
        current=(),
    )
    assert not any(w.rule.startswith("require-") and "timeout" in w.rule for w in plan.warnings)
    assert "index-locks-table" in rules(plan.warnings)


# --- block_on --------------------------------------------------------------------------------


def test_a_bad_block_on_is_named_with_the_values_it_takes(tmp_path, script_tree):
    path = write_environments(
        tmp_path,
        f"migrations: {script_tree.path}\nenvironments:\n  - name: dev\n    url: sqlite:///d.db\n"
        "    block_on: errors\n",
    )
    with pytest.raises(
        ConfigurationError,
        match=r"line 5, key 'environments\[0\] \(dev\)\.block_on': expected error or warning",
    ):
        load_project(path, environ={})


@pytest.fixture
def blocked_app(tmp_path, script_tree):
    script_tree.add(
        "r1", None, "customer", upgrade="op.create_table('c', sa.Column('x', sa.Integer))"
    )
    script_tree.add("r2", "r1", "drop x", upgrade="op.drop_column('c', 'x')")
    return app_for_tree(
        tmp_path / "site",
        script_tree,
        {"dev": "sqlite:///dev.db", "production": "sqlite:///production.db"},
        ENV_EXTRA={
            "dev": {"block_on": "error"},
            "production": {"block_on": "error", "protected": True},
        },
    )


def request(app, username: str, justification: str | None = None):
    with app.app_context():
        return jobs.request_job(
            environment_name="dev",
            operation="upgrade",
            target="head",
            actor=db.session.scalar(sa.select(User).filter_by(username=username)),
            expected_fingerprint=fingerprint_of("dev"),
            submit=False,
            override_justification=justification,
        ).id


def test_block_on_refuses_a_plan_with_an_error_unless_an_admin_justifies_it(blocked_app):
    add_user(blocked_app, "olga", "operator")
    add_user(blocked_app, "ada", "admin")
    with pytest.raises(JobRefused, match=r"dev refuses plans with error findings.*drops column"):
        request(blocked_app, "olga")
    with pytest.raises(JobRefused, match="Only an admin may override it"):
        request(blocked_app, "olga", "I know")
    with pytest.raises(JobRefused, match="An admin may override it with a written justification"):
        request(blocked_app, "ada", "   ")
    job_id = request(blocked_app, "ada", "column unused since v2, backed up in TICKET-9")
    with blocked_app.app_context():
        event = db.session.scalars(
            sa.select(AuditEvent).filter_by(action="plan.block_overridden")
        ).one()
        assert event.actor_name == "ada"
        assert event.details["justification"] == "column unused since v2, backed up in TICKET-9"
        assert any("drops column c.x" in finding for finding in event.details["findings"])
        assert jobs.get_job(job_id=job_id).requested_by == "ada"


def test_block_on_refuses_the_cli_upgrade_too_which_plans_steps_only(blocked_app):
    # The CLI binds to a steps-only plan, whose findings come from the scripts on first use.
    result = blocked_app.test_cli_runner().invoke(args=["dashboard", "upgrade", "dev"])

    assert result.exit_code == 1, result.output
    assert "dev refuses plans with error findings" in result.output
    assert "drops column c.x" in result.output
    with blocked_app.app_context():
        assert db.session.scalars(sa.select(Job)).all() == []  # refused before it was queued


def test_the_plan_page_shows_severity_fix_and_the_admin_override(blocked_app):
    add_user(blocked_app, "ada", "admin")
    client = blocked_app.test_client()
    auth = Auth(client)
    auth.login("ada")
    html = client.get("/environments/dev/plan?operation=upgrade&target=head").get_data(True)
    assert re.search(r'data-severity="error" data-rule="drop-column"[^>]*>r2: destructive', html)
    assert "Fix: stop reading the column in the app first" in html
    assert 'name="override_justification"' in html and 'id="blocked"' in html
    with blocked_app.app_context():
        fingerprint = fingerprint_of("dev")
    form = {"operation": "upgrade", "target": "head", "fingerprint": fingerprint}
    refused = auth.post("/environments/dev/jobs", data=form)
    assert refused.status_code == 409
    assert "refuses plans with error findings" in refused.get_data(True)
    started = auth.post(
        "/environments/dev/jobs", data={**form, "override_justification": "approved in CAB-7"}
    )
    assert started.status_code == 303
    # The rollout request form of a protected environment offers the same written override.
    new = client.get("/environments/production/rollouts/new?target=head").get_data(True)
    assert new.count('name="override_justification"') == 1 and 'id="blocked"' in new
    created = auth.post(
        "/environments/production/rollouts",
        data={"target": "head", "reason": "ship", "override_justification": "CAB-8"},
    )
    assert created.status_code in (302, 303)
    page = client.get(created.headers["Location"]).get_data(True)
    assert re.search(r'class="flash bad warning">r2: destructive: drops column c\.x', page)
    assert "[error: drop-column] — fix: stop reading the column" in page


def test_a_blocked_rollout_request_needs_an_admin_justification(blocked_app):
    add_user(blocked_app, "olga", "operator")
    add_user(blocked_app, "ada", "admin")
    with blocked_app.app_context():

        def as_user(name: str) -> User:
            return db.session.scalar(sa.select(User).filter_by(username=name))

        request = {"environment_name": "production", "target": "head", "reason": "ship it"}
        with pytest.raises(RolloutRefused, match="production refuses plans with error findings"):
            rollouts.request_rollout(actor=as_user("olga"), **request)
        rollout = rollouts.request_rollout(
            actor=as_user("ada"), override_justification="backed up, see CAB-7", **request
        )
        assert rollout.state == "pending"
        (event,) = db.session.scalars(
            sa.select(AuditEvent).filter_by(action="plan.block_overridden")
        )
        assert event.environment == "production"
        assert event.details["justification"] == "backed up, see CAB-7"
        # What the approvers see, frozen: each finding with its severity, rule and fix.
        assert any(
            "drops column c.x and its data [error: drop-column] — fix:" in warning
            for warning in rollout.plan["warnings"]
        )


def test_rehearsed_statements_of_a_data_migration_are_linted_too():
    statements = [
        "UPDATE customer SET email = lower(email) WHERE id > 0",
        "ALTER TABLE customer ALTER COLUMN email TYPE VARCHAR(40)",
        "CREATE INDEX ix_customer_email ON customer (email)",
        "UPDATE alembic_version SET version_num='r2' WHERE alembic_version.version_num = 'r1'",
    ]
    plain = statement_findings(statements, "postgresql")
    assert plain == statement_warnings(statements, "postgresql")
    linted = statement_findings(statements, "postgresql", lint=True)
    assert linted[: len(plain)] == plain
    # Ours name the table; squawk adds what ours do not say, with rule and fix in the text.
    assert [w.rule for w in plain] == ["change-column-type", "index-locks-table"]
    added = [w.rule for w in linted[len(plain) :]]
    assert "require-lock-timeout" in added
    assert "changing-column-type" not in added and "require-concurrent-index-creation" not in added
    assert any("[warning: require-lock-timeout] — fix: set lock_timeout" in w for w in linted)
    assert statement_findings(statements, "mariadb", lint=True) == statement_warnings(
        statements, "mariadb"
    )


def test_past_twenty_findings_the_plan_page_shows_one_line_per_rule(tmp_path, script_tree):
    columns = ", ".join(f"sa.Column('c{index}', sa.Integer)" for index in range(25))
    script_tree.add("r00", None, "wide", upgrade=f"op.create_table('w', {columns})")
    for index in range(25):
        script_tree.add(
            f"r{index + 1:02d}", f"r{index:02d}", f"drop c{index}",
            upgrade=f"op.drop_column('w', 'c{index}')",
        )  # fmt: skip
    app = app_for_tree(tmp_path / "site", script_tree, {"dev": "sqlite:///dev.db"})
    viewer = signed_in_client(app, "viewer")

    html = viewer.get("/environments/dev/plan").get_data(True)
    lines = re.findall(r'data-rule="drop-column"([^>]*)>([^<]*)', html)
    assert len(lines) == 1, lines
    more, text = lines[0]
    assert 'data-more="24"' in more
    assert text.startswith("r01: destructive: drops column w.c0")
    assert "and the same on 24 more steps (r02, r03, r04, r05, r06, …)" in text
    short = viewer.get("/environments/dev/plan?target=r05").get_data(True)
    assert short.count('data-rule="drop-column"') == 5  # a short plan lists each one
