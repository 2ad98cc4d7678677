"""A plan's steps render in one env.py run, split per step, byte for byte as each step alone.

The reference is today's per-step rendering (`render_offline_sql` once per step, one shared
session), run in a process of its own with the zygote's hash seed; the one-pass rendering is the
real renderer child (`render_in_child`). env.py counts its runs into a file, so a plan that
silently fell back to one run per step fails the test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from dashboard.target import adapter
from dashboard.target.renderer import render_in_child
from dashboard.target.spec import TargetDatabase
from tests.helpers import ScriptTree

# Offline rendering never connects: these name servers only for their dialect and driver.
URLS = {
    "sqlite": "sqlite:///{folder}/offline.db",
    "postgresql": "postgresql+psycopg://postgres@127.0.0.1:5432/never_created",
    "mysql": "mysql+pymysql://root@127.0.0.1:3306/never_created",
}
RUNS_VARIABLE = "RENDER_TEST_ENV_PY_RUNS"
COUNT_RUNS = f"""

import os as _os

if _os.environ.get("{RUNS_VARIABLE}"):
    with open(_os.environ["{RUNS_VARIABLE}"], "a") as _runs:
        _runs.write("run\\n")
"""

# Today's rendering, one step at a time, in a fresh interpreter (stdin: a list of plans).
PER_STEP = """
import contextlib, json, sys
from sqlalchemy.engine import make_url
from dashboard.errors import OfflineRenderError
from dashboard.target import adapter
from dashboard.target.spec import TargetDatabase

answers = []
with contextlib.redirect_stdout(sys.stderr):
    for plan in json.load(sys.stdin):
        database = TargetDatabase.from_spec(plan["database"], make_url(plan["url"]))
        session, steps = {}, []
        for revision, before in plan["steps"]:
            try:
                sql = adapter.render_offline_sql(
                    database, direction=plan["direction"], from_revisions=tuple(before),
                    revision_id=revision, session=session,
                )
            except OfflineRenderError as error:
                steps.append([revision, None, str(error)])
            else:
                steps.append([revision, sql, None])
        answers.append(steps)
json.dump(answers, sys.__stdout__)
"""

PERCENT_UP = (
    """op.execute("UPDATE t0 SET note = '100%' WHERE note LIKE '%é%' OR note = '%%(x)s'")"""
)
PERCENT_DOWN = """op.execute("UPDATE t0 SET note = '%' WHERE note LIKE '100%'")"""
QUERIES = """
count = op.get_bind().execute(sa.text("SELECT count(*) FROM t0")).scalar()
op.execute(f"UPDATE t0 SET note = '{count}'")
"""


def count_runs(tree: ScriptTree) -> None:
    env_py = tree.path / "env.py"
    env_py.write_text(COUNT_RUNS.lstrip() + env_py.read_text())  # first: counts failed runs too


def history(tree: ScriptTree) -> None:
    """r0 → r1 (raw SQL with %) → a branch point (c1, c2) → their merge m → r4, then two heads
    under branch labels: x1 (left) → x2 and y1 (right) → y2."""
    tree.add(
        "r0",
        None,
        "create t0",
        upgrade="op.create_table('t0', sa.Column('id', sa.Integer, primary_key=True), "
        "sa.Column('note', sa.String(40)))",
        downgrade="op.drop_table('t0')",
    )
    tree.add("r1", "r0", "percent signs", upgrade=PERCENT_UP, downgrade=PERCENT_DOWN)
    tree.add_table("c1", "r1", "t_c1")
    tree.add_table("c2", "r1", "t_c2")
    tree.add("m", ("c1", "c2"), "merge c1 and c2")
    tree.add(
        "r4",
        "m",
        "add a column",
        upgrade="op.add_column('t0', sa.Column('extra', sa.Integer))",
        downgrade="op.drop_column('t0', 'extra')",
    )
    tree.add(
        "x1",
        "r4",
        "left",
        upgrade="op.create_index('ix_note', 't0', ['note'])",
        downgrade="op.drop_index('ix_note', 't0')",
        branch_labels=("left",),
    )
    tree.add_table("x2", "x1", "t_x2")
    tree.add(
        "y1",
        "r4",
        "right",
        upgrade="op.create_table('t_y1', sa.Column('id', sa.Integer))",
        downgrade="op.drop_table('t_y1')",
        branch_labels=("right",),
    )
    tree.add_table("y2", "y1", "t_y2")


def database_for(tree: ScriptTree, dialect: str, folder: Path, **options) -> TargetDatabase:
    url = make_url(URLS[dialect].format(folder=folder))
    return TargetDatabase(name=dialect, url=url, script_location=tree.path, **options)


def plan_steps(
    database: TargetDatabase, current: tuple[str, ...], direction: str, target: str
) -> list[tuple[str, tuple[str, ...]]]:
    resolved = adapter.resolve_steps(database, current=current, direction=direction, target=target)
    return list(zip(resolved.revision_ids, resolved.heads_before, strict=True))


def per_step(plans: list[tuple[TargetDatabase, str, list]]) -> list[list[list]]:
    """Each plan's steps rendered one by one, in a process of its own."""
    payload = [
        {
            "database": database.to_spec(),
            "url": database.url.render_as_string(hide_password=False),
            "direction": direction,
            "steps": [[revision, list(before)] for revision, before in steps],
        }
        for database, direction, steps in plans
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0"}  # as the zygote: merge steps pick by set order
    env.pop(RUNS_VARIABLE, None)
    done = subprocess.run(
        [sys.executable, "-c", PER_STEP],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parent.parent,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def one_pass(
    database: TargetDatabase, direction: str, steps: list, runs: Path
) -> tuple[list[list], int]:
    """The plan rendered by the renderer child, and how many times env.py ran for it."""
    runs.write_text("")
    rendered = render_in_child(database, direction=direction, steps=steps)
    answer = [[step.revision_id, step.sql, step.unrenderable_reason] for step in rendered]
    return answer, len(runs.read_text().splitlines())


@pytest.fixture
def runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "env_py_runs.txt"
    monkeypatch.setenv(RUNS_VARIABLE, str(path))
    return path


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql", "mysql"])
def test_one_pass_matches_per_step_rendering(dialect: str, tmp_path: Path, runs: Path) -> None:
    tree = ScriptTree(tmp_path)
    history(tree)
    count_runs(tree)
    database = database_for(tree, dialect, tmp_path)
    plans = [
        (database, "upgrade", plan_steps(database, (), "upgrade", "heads")),
        (database, "upgrade", plan_steps(database, ("x1",), "upgrade", "right@head")),
        (database, "upgrade", plan_steps(database, ("c1",), "upgrade", "r4")),
        (database, "downgrade", plan_steps(database, ("x2", "y2"), "downgrade", "base")),
        (database, "downgrade", plan_steps(database, ("r4",), "downgrade", "r1")),
    ]
    # The plans cover what the version table makes special: a CREATE at base, an INSERT for a
    # new branch, a merge (DELETE + UPDATE), an unmerge, the last row's DELETE.
    assert [len(steps) for _, _, steps in plans] == [10, 2, 3, 10, 4]
    assert ("m", ("c1", "c2")) in plans[0][2]
    assert ("y1", ("x1",)) in plans[1][2]
    expected = per_step(plans)
    for (_, direction, steps), reference in zip(plans, expected, strict=True):
        rendered, env_py_runs = one_pass(database, direction, steps, runs)
        assert rendered == reference
        assert env_py_runs == 1
        assert all(sql for _, sql, _ in rendered)
    upgrade_all = dict((revision, sql) for revision, sql, _ in expected[0])
    assert "CREATE TABLE alembic_version" in upgrade_all["r0"]
    assert "100%" in upgrade_all["r1"] and "%%(x)s" in upgrade_all["r1"]
    assert "'%é%'" in upgrade_all["r1"]
    assert "-- Running upgrade c1, c2 -> m" in upgrade_all["m"]
    assert "DELETE FROM alembic_version" in upgrade_all["m"]
    assert "BEGIN" not in upgrade_all["r0"] and "COMMIT" not in upgrade_all["y2"]
    downgrade_all = dict((revision, sql) for revision, sql, _ in expected[3])
    assert "INSERT INTO alembic_version" in downgrade_all["m"]  # the unmerge
    assert "DELETE FROM alembic_version" in downgrade_all["r0"]


def test_transaction_per_migration_matches(tmp_path: Path, runs: Path) -> None:
    tree = ScriptTree(tmp_path)
    history(tree)
    count_runs(tree)
    database = database_for(
        tree, "postgresql", tmp_path, configure_args=(("transaction_per_migration", True),)
    )
    steps = plan_steps(database, (), "upgrade", "heads")
    (reference,) = per_step([(database, "upgrade", steps)])
    rendered, env_py_runs = one_pass(database, "upgrade", steps, runs)
    assert rendered == reference
    assert env_py_runs == 1
    assert all(not sql.startswith("BEGIN") for _, sql, _ in rendered)


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_a_step_that_queries_says_why_and_the_others_render(
    dialect: str, tmp_path: Path, runs: Path
) -> None:
    tree = ScriptTree(tmp_path)
    tree.add(
        "r0",
        None,
        "create t0",
        upgrade="op.create_table('t0', sa.Column('id', sa.Integer, primary_key=True), "
        "sa.Column('note', sa.String(40)))",
        downgrade="op.drop_table('t0')",
    )
    tree.add_table("r1", "r0", "t1")
    tree.add("r2", "r1", "count the rows", upgrade=QUERIES)
    tree.add_table("r3", "r2", "t3")
    tree.add_table("r4", "r3", "t4")
    count_runs(tree)
    database = database_for(tree, dialect, tmp_path)
    steps = plan_steps(database, (), "upgrade", "head")
    (reference,) = per_step([(database, "upgrade", steps)])
    rendered, env_py_runs = one_pass(database, "upgrade", steps, runs)
    assert rendered == reference
    by_revision = {revision: (sql, reason) for revision, sql, reason in rendered}
    assert by_revision["r2"][0] is None
    assert "op.get_bind()" in by_revision["r2"][1]
    assert all(by_revision[revision][0] for revision in ("r0", "r1", "r3", "r4"))
    assert "CREATE TABLE t4" in by_revision["r4"][0]
    # r0 and r1 in one run (r2's output dropped), r2 alone for its reason, r3 and r4 in one run.
    assert env_py_runs == 3


def test_a_plan_whose_rows_before_a_step_differ_starts_a_new_run(
    tmp_path: Path, runs: Path
) -> None:
    """Steps not chained by their version rows (here: the same step twice) still render as
    each alone would: the run stops where the rows before a step are not the plan's."""
    tree = ScriptTree(tmp_path)
    tree.linear(3)
    count_runs(tree)
    database = database_for(tree, "sqlite", tmp_path)
    steps = [("r00", ()), ("r01", ("r00",)), ("r01", ("r00",)), ("r02", ("r01",))]
    (reference,) = per_step([(database, "upgrade", steps)])
    rendered, env_py_runs = one_pass(database, "upgrade", steps, runs)
    assert rendered == reference
    assert rendered[1] == rendered[2]
    assert env_py_runs == 2


def test_an_unknown_revision_says_so_and_the_others_render(tmp_path: Path, runs: Path) -> None:
    tree = ScriptTree(tmp_path)
    tree.linear(2)
    count_runs(tree)
    database = database_for(tree, "sqlite", tmp_path)
    steps = [("r00", ()), ("nope", ("r00",)), ("r01", ("r00",))]
    rendered, _ = one_pass(database, "upgrade", steps, runs)
    assert rendered[1][1] is None and "unknown revision nope" in rendered[1][2]
    assert "CREATE TABLE t0" in rendered[0][1] and "CREATE TABLE t1" in rendered[2][1]


def test_env_py_failing_outside_the_steps_fails_every_step(tmp_path: Path, runs: Path) -> None:
    tree = ScriptTree(tmp_path)
    tree.linear(2)
    env_py = tree.path / "env.py"
    env_py.write_text(env_py.read_text() + "\nraise RuntimeError('env.py is broken here')\n")
    database = database_for(tree, "sqlite", tmp_path)
    steps = plan_steps(database, (), "upgrade", "head")
    rendered, _ = one_pass(database, "upgrade", steps, runs)
    assert [sql for _, sql, _ in rendered] == [None, None]
    assert all("env.py is broken here" in reason for _, _, reason in rendered)
