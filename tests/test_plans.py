"""Plans: resolving targets, per-step offline SQL for each dialect, fingerprints and caching."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from dashboard.environments import load_project
from dashboard.errors import EnvironmentNotConfigured, EnvironmentUnreachable, PlanError
from dashboard.plans import Plan, build_plan, clear_plan_cache
from tests.helpers import DEMO_SCRIPTS, ScriptTree, write_environments

SECRET = "hunter2-secret"


def project_for(tmp_path: Path, scripts: Path, urls: dict[str, str | URL], extra: str = ""):
    """Write an environments.yaml for `scripts` with one environment per URL and load it."""
    lines = [f"migrations: {scripts}", extra, "environments:"]
    for name, url in urls.items():
        text = url.render_as_string(hide_password=False) if isinstance(url, URL) else url
        lines += [f"  - name: {name}", f"    url: {text}"]
    return load_project(write_environments(tmp_path, "\n".join(lines) + "\n"), environ={})


def plan_for(
    tmp_path: Path,
    tree: ScriptTree,
    target: str,
    *,
    direction: str = "upgrade",
    current: tuple[str, ...] | None = (),
    url: str | URL = "sqlite:///dev.db",
) -> Plan:
    project = project_for(tmp_path, tree.path, {"dev": url})
    return build_plan(
        project=project,
        environment=project.get("dev"),
        direction=direction,
        target=target,
        current=current,
    )


@pytest.fixture(autouse=True)
def fresh_plan_cache():
    """Every test plans from scratch unless it means to exercise the cache."""
    clear_plan_cache()
    yield
    clear_plan_cache()


# --- resolving a target ---------------------------------------------------------------------


def test_upgrade_to_head_runs_every_pending_revision_oldest_first(tmp_path, script_tree):
    script_tree.linear(3)

    plan = plan_for(tmp_path, script_tree, "head", current=("r00",))

    assert plan.revision_ids == ["r01", "r02"]
    assert plan.alembic_target == "r02"
    assert (plan.direction, plan.requested_target, plan.from_revisions) == (
        "upgrade",
        "head",
        ("r00",),
    )
    assert [step.message for step in plan.steps] == ["create t1", "create t2"]
    assert plan.steps[0].down_revisions == ("r00",)
    assert plan.steps[0].path == script_tree.path / "versions" / "r01_rev.py"
    assert plan.warnings == ()


def test_upgrade_to_a_named_revision_stops_there(tmp_path, script_tree):
    script_tree.linear(4)

    plan = plan_for(tmp_path, script_tree, "r02")

    assert plan.revision_ids == ["r00", "r01", "r02"]
    assert plan.alembic_target == "r02"


def test_a_unique_prefix_resolves_to_the_full_id(tmp_path, script_tree):
    script_tree.add_table("abcd1111", None, "t1")
    script_tree.add_table("abcd2222", "abcd1111", "t2")

    plan = plan_for(tmp_path, script_tree, "abcd2", current=("abcd1111",))

    assert plan.alembic_target == "abcd2222"
    assert plan.revision_ids == ["abcd2222"]
    assert plan.requested_target == "abcd2"


def test_an_ambiguous_prefix_is_refused_naming_the_matches(tmp_path, script_tree):
    script_tree.add_table("abcd1111", None, "t1")
    script_tree.add_table("abcd2222", "abcd1111", "t2")

    with pytest.raises(PlanError, match="ambiguous") as refused:
        plan_for(tmp_path, script_tree, "abcd")

    assert "abcd1111" in str(refused.value) and "abcd2222" in str(refused.value)


def test_an_unknown_revision_is_refused(tmp_path, script_tree):
    script_tree.linear(2)

    with pytest.raises(PlanError, match="unknown revision 'feedface'"):
        plan_for(tmp_path, script_tree, "feedface")


@pytest.mark.parametrize(
    ("target", "steps", "alembic_target"),
    [
        ("-1", ["r03"], "r02"),
        ("-2", ["r03", "r02"], "r01"),
        ("r01", ["r03", "r02"], "r01"),
        ("base", ["r03", "r02", "r01", "r00"], "base"),
    ],
)
def test_downgrade_targets_run_newest_first(tmp_path, script_tree, target, steps, alembic_target):
    script_tree.linear(4)

    plan = plan_for(tmp_path, script_tree, target, direction="downgrade", current=("r03",))

    assert plan.revision_ids == steps
    assert plan.alembic_target == alembic_target
    assert all("DROP TABLE" in step.sql for step in plan.steps)


def test_relative_downgrade_below_base_is_refused(tmp_path, script_tree):
    script_tree.linear(2)

    with pytest.raises(PlanError, match="goes below base: only 2 revision"):
        plan_for(tmp_path, script_tree, "-3", direction="downgrade", current=("r01",))


def test_upgrade_to_a_revision_below_the_current_one_is_refused(tmp_path, script_tree):
    script_tree.linear(3)

    with pytest.raises(PlanError, match="r00 is below the current revision \\(r02\\)"):
        plan_for(tmp_path, script_tree, "r00", current=("r02",))


@pytest.mark.parametrize("target", ["r02", "r01", "head"])
def test_downgrade_to_a_revision_not_below_the_current_one_is_refused(
    tmp_path, script_tree, target
):
    script_tree.linear(3)

    with pytest.raises(PlanError, match="is not below the current revision \\(r01\\)"):
        plan_for(tmp_path, script_tree, target, direction="downgrade", current=("r01",))


def test_downgrade_from_base_is_refused(tmp_path, script_tree):
    script_tree.linear(1)

    with pytest.raises(PlanError, match="at base already"):
        plan_for(tmp_path, script_tree, "base", direction="downgrade", current=())


def test_upgrade_to_the_current_revision_is_an_empty_plan(tmp_path, script_tree):
    script_tree.linear(2)

    plan = plan_for(tmp_path, script_tree, "head", current=("r01",))

    assert plan.is_empty
    assert plan.revision_ids == []
    assert plan.sql == ""
    assert plan.alembic_target == "r01"


def test_relative_downgrade_across_a_merge_is_refused_listing_the_candidates(
    tmp_path, merge_script_tree
):
    with pytest.raises(PlanError, match="crosses the merge m4") as refused:
        plan_for(tmp_path, merge_script_tree, "-3", direction="downgrade", current=("d5",))

    assert "candidates: b2, c3" in str(refused.value)


def test_relative_downgrade_that_undoes_a_merge_leaves_both_parents(tmp_path, merge_script_tree):
    """Undoing the merge itself is unambiguous: the database is then at both its parents."""
    plan = plan_for(tmp_path, merge_script_tree, "-2", direction="downgrade", current=("d5",))

    assert plan.revision_ids == ["d5", "m4"]
    assert plan.alembic_target == "b2"  # the merge's first parent; either undoes exactly m4
    # One parent's row replaces m4's, the other's is inserted (Alembic picks which).
    merge_sql = plan.steps[1].sql
    assert "WHERE alembic_version.version_num = 'm4'" in merge_sql
    assert re.search(r"INSERT INTO alembic_version \(version_num\) VALUES \('(b2|c3)'\)", merge_sql)
    assert "'b2'" in merge_sql and "'c3'" in merge_sql


def test_relative_upgrade_into_a_merge_is_refused_listing_the_candidates(
    tmp_path, merge_script_tree
):
    with pytest.raises(PlanError, match="crosses the merge m4, which also needs c3") as refused:
        plan_for(tmp_path, merge_script_tree, "+1", current=("b2",))

    assert "candidates: m4, c3" in str(refused.value)


def test_relative_upgrade_at_a_branch_point_is_refused_listing_the_branches(
    tmp_path, merge_script_tree
):
    with pytest.raises(PlanError, match="candidates: b2, c3"):
        plan_for(tmp_path, merge_script_tree, "+1", current=("a1",))


def test_relative_step_from_several_current_revisions_is_refused(tmp_path, merge_script_tree):
    with pytest.raises(PlanError, match="several revisions \\(b2, c3\\)"):
        plan_for(tmp_path, merge_script_tree, "-1", direction="downgrade", current=("b2", "c3"))


def test_relative_upgrade_in_a_straight_line(tmp_path, script_tree):
    script_tree.linear(4)

    plan = plan_for(tmp_path, script_tree, "+2", current=("r00",))

    assert plan.revision_ids == ["r01", "r02"]
    assert plan.alembic_target == "r02"


@pytest.mark.parametrize(("direction", "target"), [("upgrade", "-1"), ("downgrade", "+1")])
def test_a_relative_step_in_the_wrong_direction_is_refused(
    tmp_path, script_tree, direction, target
):
    script_tree.linear(2)

    with pytest.raises(PlanError, match=f"is not a {direction} step"):
        plan_for(tmp_path, script_tree, target, direction=direction, current=("r00",))


def test_head_with_several_heads_is_refused_and_a_named_head_works(tmp_path, script_tree):
    script_tree.add_table("a1", None, "ta")
    script_tree.add_table("b2", "a1", "tb")
    script_tree.add_table("c3", "a1", "tc")

    with pytest.raises(PlanError, match="multiple heads: name one \\(b2, c3\\)"):
        plan_for(tmp_path, script_tree, "head", current=("a1",))

    plan = plan_for(tmp_path, script_tree, "c3", current=("a1",))
    assert plan.revision_ids == ["c3"]


def test_a_database_at_an_unknown_revision_cannot_be_planned(tmp_path, script_tree):
    script_tree.linear(2)

    with pytest.raises(PlanError, match="feedfacecafe, which the script directory does not"):
        plan_for(tmp_path, script_tree, "head", current=("feedfacecafe",))


def test_an_environment_that_is_not_configured_is_refused(tmp_path, script_tree):
    script_tree.linear(1)
    project = project_for(tmp_path, script_tree.path, {"prod": "${PRODUCTION_DATABASE_URL}"})

    with pytest.raises(EnvironmentNotConfigured, match="PRODUCTION_DATABASE_URL"):
        build_plan(
            project=project, environment=project.get("prod"), direction="upgrade", target="head"
        )


# --- merges and branches render the version-table statements a real run emits ---------------


def test_each_step_renders_from_the_revisions_before_it(tmp_path, merge_script_tree):
    plan = plan_for(tmp_path, merge_script_tree, "head", current=("b2",))

    assert plan.revision_ids == ["c3", "m4", "d5"]
    by_id = {step.revision_id: step.sql for step in plan.steps}
    # c3 opens a second branch beside b2; the merge then folds the two rows into one.
    assert "CREATE TABLE tc" in by_id["c3"]
    assert "INSERT INTO alembic_version (version_num) VALUES ('c3')" in by_id["c3"]
    assert re.search(r"DELETE FROM alembic_version WHERE .* = '(b2|c3)'", by_id["m4"])
    assert "UPDATE alembic_version SET version_num='m4' WHERE" in by_id["m4"]
    assert "CREATE TABLE tb" not in plan.sql


# --- SQL per dialect, equal to what `flask db upgrade --sql` prints ---------------------------

CLI_APP = """
import os

from flask import Flask
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy

app = Flask(__name__)
app.config["SQLALCHEMY_DATABASE_URI"] = os.environ["PLAN_TEST_DATABASE_URL"]
db = SQLAlchemy(app)
Migrate(app, db)
"""

DDL_MARKS = {
    "sqlite": "id INTEGER NOT NULL",
    "postgresql": "id SERIAL NOT NULL",
    "mariadb": "id INTEGER NOT NULL AUTO_INCREMENT",
}


def cli_sql(tmp_path: Path, tree: ScriptTree, url: URL, *args: str) -> str:
    """What the real CLI prints on stdout for `db upgrade/downgrade … --sql` on `tree`."""
    env = {**os.environ, "PLAN_TEST_DATABASE_URL": url.render_as_string(hide_password=False)}
    if tree.style == "flask":
        app_file = tmp_path / "cli_app.py"
        app_file.write_text(CLI_APP)
        command = [sys.executable, "-m", "flask", "--app", str(app_file), "db"]
        command += [args[0], "--directory", str(tree.path), "--sql", *args[1:]]
    else:
        ini = tmp_path / "cli_alembic.ini"
        text = (tree.path.parent / "alembic.ini").read_text()
        rendered = url.render_as_string(hide_password=False).replace("%", "%%")
        ini.write_text(re.sub(r"(?m)^sqlalchemy\.url = .*$", f"sqlalchemy.url = {rendered}", text))
        command = [sys.executable, "-m", "alembic", "-c", str(ini), args[0], "--sql", *args[1:]]
    finished = subprocess.run(
        command, env=env, cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert finished.returncode == 0, finished.stderr
    return finished.stdout


def statements(sql: str) -> list[str]:
    """SQL statements without comments, whitespace collapsed (BEGIN and COMMIT included)."""
    lines = [line for line in sql.splitlines() if not line.lstrip().startswith("--")]
    found = [" ".join(part.split()) for part in "\n".join(lines).split(";")]
    return [text for text in found if text]


def one_step_of(cli_output: str) -> str:
    """The CLI's SQL for one step without the BEGIN;/COMMIT; it puts first and last on PostgreSQL.

    A plan's step carries no transaction of its own: the plan brackets the whole run instead.
    """
    return cli_output.removeprefix("BEGIN;\n\n").removesuffix("COMMIT;\n\n")


@pytest.mark.backends
@pytest.mark.parametrize("style", ["flask", "plain"])
def test_plan_sql_is_the_dialects_ddl_and_equals_the_cli_sql(
    tmp_path, style, script_tree, plain_script_tree, backend, database_url
):
    tree = script_tree if style == "flask" else plain_script_tree
    tree.linear(3)
    project = project_for(tmp_path, tree.path, {"dev": database_url})

    # current=None: the (empty) database is read, so the plan starts at base.
    plan = build_plan(
        project=project, environment=project.get("dev"), direction="upgrade", target="head"
    )

    assert plan.from_revisions == ()
    assert plan.revision_ids == ["r00", "r01", "r02"]
    for index, step in enumerate(plan.steps):
        assert f"CREATE TABLE t{index}" in step.sql
        assert DDL_MARKS[backend] in step.sql
        start = plan.steps[index - 1].revision_id if index else "base"
        # One step is what the CLI prints for the same one-step range, less its BEGIN/COMMIT.
        assert "BEGIN" not in step.sql and "COMMIT" not in step.sql
        assert step.sql == one_step_of(
            cli_sql(tmp_path, tree, database_url, "upgrade", f"{start}:{step.revision_id}")
        )
    # The whole range: the same statements, in the same one transaction (PostgreSQL) or none.
    whole = cli_sql(tmp_path, tree, database_url, "upgrade", "head")
    assert statements(plan.sql) == statements(whole)


@pytest.mark.backends
def test_downgrade_sql_equals_the_cli_sql(tmp_path, script_tree, backend, database_url):
    script_tree.linear(3)

    plan = plan_for(
        tmp_path, script_tree, "r00", direction="downgrade", current=("r02",), url=database_url
    )

    assert plan.revision_ids == ["r02", "r01"]
    for step, down_to in zip(plan.steps, ["r01", "r00"], strict=True):
        assert "DROP TABLE" in step.sql
        expected = cli_sql(
            tmp_path, script_tree, database_url, "downgrade", f"{step.revision_id}:{down_to}"
        )
        assert step.sql == one_step_of(expected)


# --- the demo's history: batch operations and a data migration ------------------------------


def demo_plan(tmp_path: Path, url: str) -> Plan:
    project = project_for(tmp_path, DEMO_SCRIPTS, {"dev": url})
    return build_plan(
        project=project,
        environment=project.get("dev"),
        direction="upgrade",
        target="head",
        current=(),
    )


def test_demo_on_sqlite_flags_batch_steps_and_the_data_migration(tmp_path):
    plan = demo_plan(tmp_path, "sqlite:///dev.db")

    reasons = {s.revision_id: s.unrenderable_reason for s in plan.steps if s.sql is None}
    assert set(reasons) == {"5cb588266835", "7ca9ba531bc0", "8f60afaad46c"}
    assert reasons["5cb588266835"].startswith("SQLite batch operation needs a live database")
    assert "table recreate of product" in reasons["5cb588266835"]
    assert "table recreate of customer" in reasons["7ca9ba531bc0"]
    assert "queries the database through op.get_bind()" in reasons["8f60afaad46c"]
    rendered = [step for step in plan.steps if step.sql is not None]
    assert len(rendered) == len(plan.steps) - 3
    assert all(step.unrenderable_reason is None for step in rendered)
    assert "CREATE TABLE customer" in plan.sql
    assert "ALTER TABLE customer ADD COLUMN display_name" in plan.sql
    assert f"-- cannot render offline: {reasons['8f60afaad46c']}" in plan.sql


def test_demo_on_postgresql_renders_every_step_but_the_data_migration(tmp_path):
    # Offline mode never connects: nothing listens here, and the password is never needed.
    plan = demo_plan(tmp_path, f"postgresql+psycopg://shop:{SECRET}@127.0.0.1:9/shop")

    unrendered = [step.revision_id for step in plan.steps if step.sql is None]
    assert unrendered == ["8f60afaad46c"]
    assert (
        "op.get_bind()" in plan.steps[plan.revision_ids.index("8f60afaad46c")].unrenderable_reason
    )
    assert "ALTER TABLE product ADD CONSTRAINT uq_product_sku UNIQUE (sku)" in plan.sql
    assert "ALTER TABLE customer DROP COLUMN legacy_username" in plan.sql


# --- the fingerprint and the cache ----------------------------------------------------------


def test_fingerprint_is_stable_for_the_same_inputs(tmp_path, script_tree):
    script_tree.linear(3)
    first = plan_for(tmp_path, script_tree, "r02")
    clear_plan_cache()

    second = plan_for(tmp_path, script_tree, "r02")

    assert second is not first
    assert re.fullmatch(r"[0-9a-f]{64}", first.fingerprint)
    assert second.fingerprint == first.fingerprint


def test_fingerprint_of_a_plan_through_a_merge_is_stable(tmp_path, merge_script_tree):
    """Which parent's version row Alembic updates is set order; the render must not vary."""
    fingerprints = set()
    for _ in range(3):
        clear_plan_cache()
        plan = plan_for(tmp_path, merge_script_tree, "base", direction="downgrade", current=("d5",))
        fingerprints.add(plan.fingerprint)

    assert plan.revision_ids[:2] == ["d5", "m4"]
    assert len(fingerprints) == 1


def test_fingerprint_changes_when_a_script_in_the_plan_changes(tmp_path, script_tree):
    script_tree.linear(3)
    before = plan_for(tmp_path, script_tree, "r02")

    script_tree.add_table("r01", "r00", "renamed_t1")
    after = plan_for(tmp_path, script_tree, "r02")

    assert after.fingerprint != before.fingerprint
    # The cached plan was not reused: the new script's SQL is there.
    assert "CREATE TABLE renamed_t1" in after.sql


def test_fingerprint_changes_when_env_py_changes(tmp_path, script_tree):
    script_tree.linear(2)
    before = plan_for(tmp_path, script_tree, "r01")

    with (script_tree.path / "env.py").open("a") as env_py:
        env_py.write("\n# reviewed\n")
    after = plan_for(tmp_path, script_tree, "r01")

    assert after.fingerprint != before.fingerprint


def test_fingerprint_changes_when_the_current_revision_changes(tmp_path, merge_script_tree):
    from_b2 = plan_for(tmp_path, merge_script_tree, "m4", current=("b2",))
    from_both = plan_for(tmp_path, merge_script_tree, "m4", current=("b2", "c3"))
    from_both_reordered = plan_for(tmp_path, merge_script_tree, "m4", current=("c3", "b2"))

    assert from_b2.fingerprint != from_both.fingerprint
    assert from_both.fingerprint == from_both_reordered.fingerprint


def test_fingerprint_ignores_a_revision_added_outside_the_plan(tmp_path, script_tree):
    script_tree.linear(3)
    before = plan_for(tmp_path, script_tree, "r01")

    script_tree.add_table("r03", "r02", "t3")
    after = plan_for(tmp_path, script_tree, "r01")

    assert after is not before  # the script directory changed, so it was planned again
    assert after.fingerprint == before.fingerprint


def test_a_plan_is_cached_until_a_script_changes(tmp_path, script_tree):
    script_tree.linear(2)
    first = plan_for(tmp_path, script_tree, "head")

    assert plan_for(tmp_path, script_tree, "head") is first
    assert plan_for(tmp_path, script_tree, "head", current=("r00",)) is not first

    script_tree.add("r01", "r00", "rewritten", upgrade="op.execute('SELECT 1')")
    assert plan_for(tmp_path, script_tree, "head") is not first


# --- the web process stays as it was --------------------------------------------------------


def test_rendering_leaves_the_web_process_logging_and_stdout_alone(tmp_path, capfd):
    root = logging.getLogger()
    handler = logging.NullHandler()
    root.addHandler(handler)
    logging.getLogger("dashboard.plans.test").info("a logger that exists before planning")
    before = {
        "root": (list(root.handlers), root.level),
        "loggers": {
            name: (logger.disabled, list(logger.handlers), logger.level)
            for name, logger in logging.Logger.manager.loggerDict.items()
            if isinstance(logger, logging.Logger)
        },
    }
    try:
        # The demo's stock Flask-Migrate env.py calls logging.config.fileConfig().
        plan = demo_plan(tmp_path, "sqlite:///dev.db")

        assert handler in root.handlers
        after_loggers = {
            name: (logger.disabled, list(logger.handlers), logger.level)
            for name, logger in logging.Logger.manager.loggerDict.items()
            if isinstance(logger, logging.Logger) and name in before["loggers"]
        }
        assert (list(root.handlers), root.level) == before["root"]
        assert after_loggers == before["loggers"]
    finally:
        root.removeHandler(handler)
    captured = capfd.readouterr()
    assert "CREATE TABLE" in plan.sql
    assert "CREATE TABLE" not in captured.out + captured.err


# --- passwords ------------------------------------------------------------------------------


def test_the_renderer_never_sees_the_password(tmp_path, script_tree):
    """A script that writes the URL it was given into the SQL shows the child had none."""
    script_tree.add(
        "r00",
        None,
        "show the url",
        upgrade='op.execute("SELECT \'" + op.get_context().config.get_main_option('
        "'sqlalchemy.url') + \"'\")",
    )

    plan = plan_for(tmp_path, script_tree, "head", url=f"postgresql+psycopg://app:{SECRET}@db/shop")

    assert "SELECT 'postgresql+psycopg://app@db/shop'" in plan.sql
    assert SECRET not in repr(plan)
    assert "***" not in plan.sql  # nothing had to be masked: the child never had it


def test_no_password_in_a_step_reason_or_an_error(tmp_path, script_tree, closed_port):
    url = f"postgresql+psycopg://app:{SECRET}@127.0.0.1:{closed_port}/shop"
    script_tree.add(
        "r00",
        None,
        "fails with the url",
        upgrade=textwrap.dedent(
            """
            url = op.get_context().config.get_main_option('sqlalchemy.url')
            raise RuntimeError('cannot migrate ' + url)
            """
        ),
    )

    plan = plan_for(tmp_path, script_tree, "head", url=url)
    assert plan.steps[0].sql is None
    assert "RuntimeError: cannot migrate" in plan.steps[0].unrenderable_reason
    assert SECRET not in repr(plan)

    with pytest.raises(EnvironmentUnreachable) as unreachable:
        plan_for(tmp_path, script_tree, "head", url=url, current=None)
    assert SECRET not in str(unreachable.value)
    with pytest.raises(PlanError) as refused:
        plan_for(tmp_path, script_tree, "nowhere", url=url)
    assert SECRET not in str(refused.value)
