"""Scratch databases are built in chunks of revisions (issue 14): at most CHUNK_STEPS steps per
upgrade command, in an order that keeps every command valid across branches and merges, so a
long history builds on a stock PostgreSQL server whose lock table a single transaction would
exhaust. Progress is told as the build goes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

from dashboard.diffs.service import plan_schema_diff
from dashboard.environments.loader import Environment, Project, load_project
from dashboard.errors import MigrationFailed
from dashboard.plans.rehearsal import rehearse
from dashboard.plans.service import build_plan
from dashboard.schema import diff_revisions, materialize
from dashboard.target import adapter as alembic_adapter
from tests.helpers import (
    ScriptTree,
    table_names,
    upgrade_in_child,
    versions,
    write_environments,
)

CHUNK = 7


def branchy_history(tree: ScriptTree) -> list[str]:
    """40 revisions: r00-r09 in a line, then branches a00-a09 and b00-b11 from r09, their
    merge m, and s00-s06 on top. Every revision but the merge creates one table."""
    ids = tree.linear(10, prefix="r")
    for prefix, count in (("a", 10), ("b", 12)):
        down = "r09"
        for index in range(count):
            down = tree.add_table(f"{prefix}{index:02d}", down, f"t_{prefix}{index}")
            ids.append(down)
    ids.append(tree.add("m", ("a09", "b11"), "merge a and b"))
    down = "m"
    for index in range(7):
        down = tree.add_table(f"s{index:02d}", down, f"t_s{index}")
        ids.append(down)
    return ids


def tables_of(tree: ScriptTree, revision_ids: list[str]) -> set[str]:
    """The tables these revisions create (the merge creates none)."""
    names = set()
    for revision_id in revision_ids:
        text = (tree.path / "versions" / f"{revision_id}_rev.py").read_text()
        if "op.create_table(" in text:
            names.add(text.split("op.create_table('", 1)[1].split("'", 1)[0])
    return names


def project_on(folder: Path, tree: ScriptTree, url: URL) -> tuple[Project, Environment]:
    folder.mkdir(parents=True, exist_ok=True)
    rendered = json.dumps(url.render_as_string(hide_password=False))
    text = f"migrations: {tree.path}\nenvironments:\n  - name: target\n    url: {rendered}\n"
    project = load_project(write_environments(folder, text))
    environment = project.get("target")
    assert environment is not None
    return project, environment


class Recorder:
    """A progress callable that keeps every report."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, str]] = []

    def __call__(self, done: int, total: int, text: str) -> None:
        self.calls.append((done, total, text))

    @property
    def done(self) -> list[int]:
        return [done for done, _, _ in self.calls]


def transactions_per_table(url: URL) -> dict[int, set[str]]:
    """PostgreSQL: the tables of the public schema grouped by the transaction that made them."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                sa.text(
                    "SELECT xmin::text::bigint, relname FROM pg_class "
                    "WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace "
                    "AND relname <> 'alembic_version'"
                )
            ).all()
    finally:
        engine.dispose()
    groups: dict[int, set[str]] = {}
    for xid, name in rows:
        groups.setdefault(xid, set()).add(name)
    return groups


@pytest.fixture
def sqlite_url(tmp_path: Path) -> URL:
    """An empty SQLite database (for what does not depend on the backend)."""
    path = tmp_path / "target.db"
    path.touch()
    return make_url(f"sqlite:///{path}")


# --- the chunks themselves ------------------------------------------------------------------


def test_chunks_cover_every_revision_once_and_each_holds_at_most_the_chunk_size(script_tree):
    ids = branchy_history(script_tree)
    graph = alembic_adapter.load_graph(script_tree.path)

    chunks = alembic_adapter.upgrade_chunks(graph, current=(), targets=("s06",), size=CHUNK)

    applied: set[str] = set()
    for chunk in chunks:
        runs = graph.ancestors([chunk.target]) - applied
        assert len(runs) == chunk.steps
        assert 1 <= chunk.steps <= CHUNK
        applied |= runs
    assert applied == set(ids)
    assert sum(chunk.steps for chunk in chunks) == len(ids)


def test_chunks_start_from_what_is_applied_and_reach_every_target(script_tree):
    branchy_history(script_tree)
    graph = alembic_adapter.load_graph(script_tree.path)

    chunks = alembic_adapter.upgrade_chunks(
        graph, current=("a03",), targets=("a09", "b11"), size=CHUNK
    )

    expected = graph.ancestors(["a09", "b11"]) - graph.ancestors(["a03"])
    assert sum(chunk.steps for chunk in chunks) == len(expected) == 6 + 12
    reached: set[str] = set()
    for chunk in chunks:
        reached |= graph.ancestors([chunk.target])
    assert {"a09", "b11"} <= reached


# --- building on every backend --------------------------------------------------------------


def test_a_branchy_history_builds_in_chunks_to_its_head(
    script_tree, database_url, tmp_path, backend
):
    ids = branchy_history(script_tree)
    project, environment = project_on(tmp_path / "cfg", script_tree, database_url)
    progress = Recorder()

    with materialize(
        environment=environment,
        project=project,
        revision="s06",
        chunk_steps=CHUNK,
        progress=progress,
    ) as url:
        assert table_names(url) == tables_of(script_tree, ids) | {"alembic_version"}
        assert versions(url) == ["s06"]
        if backend == "postgresql":
            # A stock Flask-Migrate env.py runs each upgrade command in one transaction.
            groups = transactions_per_table(url)
            assert max(len(tables) for tables in groups.values()) <= CHUNK
            assert len(groups) >= len(ids) // CHUNK

    assert progress.done == sorted(set(progress.done)), "done only ever grows"
    assert progress.calls[0][:2] == (0, 40)
    assert progress.calls[-1][:2] == (40, 40)
    assert "building the scratch database: step 1 of 40" in progress.calls[0][2]
    assert "step 40 of 40" in progress.calls[-2][2]
    assert table_names(database_url) == set()  # the environment's own database is untouched


def test_several_branch_heads_build_in_chunks(script_tree, database_url, tmp_path, backend):
    branchy_history(script_tree)
    project, environment = project_on(tmp_path / "cfg", script_tree, database_url)

    with materialize(
        environment=environment, project=project, revision=("a09", "b05"), chunk_steps=CHUNK
    ) as url:
        assert versions(url) == ["a09", "b05"]
        assert {"t_a9", "t_b5", "t9"} <= table_names(url)
        assert "t_b6" not in table_names(url)


# --- diffs and rehearsals -------------------------------------------------------------------


def test_a_diff_builds_one_scratch_database_to_both_ends(
    script_tree, database_url, tmp_path, backend
):
    branchy_history(script_tree)
    project, environment = project_on(tmp_path / "cfg", script_tree, database_url)
    progress = Recorder()

    diff = diff_revisions(
        project=project,
        environment=environment,
        from_revision="b11",
        to_revision="s06",
        chunk_steps=CHUNK,
        progress=progress,
    )

    added = {change.table for change in diff.changes if change.action == "added"}
    assert added == {f"t_a{index}" for index in range(10)} | {f"t_s{index}" for index in range(7)}
    assert {change.action for change in diff.changes} == {"added"}
    # One database: built to b11 (22 steps), read, then on to s06 (40 steps in all).
    assert {total for _, total, _ in progress.calls} == {40}
    assert progress.done == sorted(set(progress.done))
    assert progress.calls[-1][:2] == (40, 40)


def test_a_downgrade_diff_also_builds_one_database_and_reports_drops(
    script_tree, sqlite_url, tmp_path
):
    branchy_history(script_tree)
    project, environment = project_on(tmp_path / "cfg", script_tree, sqlite_url)
    progress = Recorder()

    diff = diff_revisions(
        project=project,
        environment=environment,
        from_revision="s06",
        to_revision="s02",
        chunk_steps=CHUNK,
        progress=progress,
    )

    assert {(change.action, change.table) for change in diff.changes} == {
        ("dropped", f"t_s{index}") for index in (3, 4, 5, 6)
    }
    assert {total for _, total, _ in progress.calls} == {40}


def test_a_plan_schema_diff_reports_its_progress(script_tree, sqlite_url, tmp_path):
    branchy_history(script_tree)
    project, environment = project_on(tmp_path / "cfg", script_tree, sqlite_url)
    upgrade_in_child(environment=environment, project=project, target="s04")
    plan = build_plan(project=project, environment=environment, direction="upgrade", target="s06")
    progress = Recorder()

    diff = plan_schema_diff(project=project, environment=environment, plan=plan, progress=progress)

    assert {change.table for change in diff.changes} == {"t_s5", "t_s6"}
    assert progress.calls[-1][:2] == (40, 40)


def test_a_rehearsal_builds_in_chunks_then_reports_each_rehearsed_step(
    script_tree, sqlite_url, tmp_path
):
    branchy_history(script_tree)
    project, environment = project_on(tmp_path / "cfg", script_tree, sqlite_url)
    upgrade_in_child(environment=environment, project=project, target="s04")
    plan = build_plan(project=project, environment=environment, direction="upgrade", target="s06")
    progress = Recorder()

    rehearsal = rehearse(
        project=project, environment=environment, plan=plan, chunk_steps=CHUNK, progress=progress
    )

    assert rehearsal.status == "succeeded", rehearsal.as_dict()
    assert [step.revision_id for step in rehearsal.steps] == ["s05", "s06"]
    texts = [text for _, _, text in progress.calls]
    assert "building the scratch database: step 1 of 38" in texts
    assert "rehearsing step 1 of 2: s05 create t_s5" in texts
    assert "rehearsing step 2 of 2: s06 create t_s6" in texts
    assert {total for _, total, _ in progress.calls} == {40}
    assert progress.done == sorted(set(progress.done))
    assert progress.calls[-1][:2] == (40, 40)


def test_a_failing_revision_in_a_later_chunk_is_named(script_tree, sqlite_url, tmp_path):
    branchy_history(script_tree)
    script_tree.add("bad", "s06", "broken", upgrade="op.execute('THIS IS NOT SQL')")
    project, environment = project_on(tmp_path / "cfg", script_tree, sqlite_url)

    with (
        pytest.raises(
            MigrationFailed, match="building the scratch database failed at revision bad"
        ),
        materialize(environment=environment, project=project, revision="bad", chunk_steps=CHUNK),
    ):
        pass


# --- a long history on a stock PostgreSQL server --------------------------------------------

LOCK_HUNGRY_TABLES = 400
UNIQUE_COLUMNS = 20


def lock_hungry_history(tree: ScriptTree, count: int) -> None:
    """`count` revisions in a line, each creating a table with UNIQUE_COLUMNS unique columns:
    a lock-table entry for the table, its sequence and each index until commit — more than a
    stock server holds for 400 of them in one transaction."""
    columns = "".join(
        f"            sa.Column('c{column}', sa.Integer, unique=True),\n"
        for column in range(UNIQUE_COLUMNS)
    )
    down = None
    for index in range(count):
        revision = f"h{index:04d}"
        tree.add(
            revision,
            down,
            f"create h{index}",
            upgrade=f"""
            op.create_table(
                'h{index}',
                sa.Column('id', sa.Integer, primary_key=True),
{columns}            )
            """,
        )
        down = revision


@pytest.mark.slow
def test_a_long_history_exhausts_the_lock_table_in_one_go_and_builds_in_chunks(
    script_tree, tmp_path, private_pg_database
):
    # On a server of its own: exhausting the shared server's lock table would fail every other
    # test that touches PostgreSQL meanwhile ("out of shared memory").
    lock_hungry_history(script_tree, LOCK_HUNGRY_TABLES)
    project, environment = project_on(tmp_path / "cfg", script_tree, private_pg_database)
    head = f"h{LOCK_HUNGRY_TABLES - 1:04d}"

    with (
        pytest.raises(MigrationFailed, match="max_locks_per_transaction"),
        materialize(environment=environment, project=project, revision=head, chunk_steps=10_000),
    ):
        pass

    with materialize(environment=environment, project=project, revision=head) as url:
        assert versions(url) == [head]
        assert len(table_names(url)) == LOCK_HUNGRY_TABLES + 1
