"""Every target form Alembic accepts is planned, and run, exactly as Alembic runs it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from dashboard.environments import environment_named, get_project
from dashboard.errors import JobRefused, PlanError, RolloutRefused
from dashboard.extensions import db
from dashboard.jobs import service as jobs
from dashboard.jobs.models import Job
from dashboard.plans import Plan, build_plan, clear_plan_cache
from dashboard.rollouts import service as rollouts
from dashboard.target import adapter as alembic_adapter
from dashboard.target.spec import TargetDatabase
from dashboard.users import service as users
from dashboard.users.models import User
from tests.helpers import (
    Auth,
    ScriptTree,
    app_for_tree,
    execute,
    project_for,
    run_job_to_the_end,
    signed_in_client,
    table_names,
    versions,
    wait_for_job,
)

# Two independent branches, each with its own base and label: two heads, as Alembic's docs
# build them. Every revision creates a table named after it.
TWO_BRANCHES = {
    "ex1111": (None, ("expand",)),
    "ex2222": ("ex1111", None),
    "ex3333": ("ex2222", None),
    "co1111": (None, ("contract",)),
    "co2222": ("co1111", None),
}
# The same branches forking from one shared base revision instead.
SHARED_BASE = {
    "ba1111": (None, None),
    "ex1111": ("ba1111", ("expand",)),
    "ex2222": ("ex1111", None),
    "ex3333": ("ex2222", None),
    "co1111": ("ba1111", ("contract",)),
    "co2222": ("co1111", None),
}
BOTH_HEADS = ("co2222", "ex3333")
CREATE = "op.create_table('t_{revision}', sa.Column('id', sa.Integer, primary_key=True))"


def build(tree: ScriptTree, history: dict[str, tuple[str | None, tuple[str, ...] | None]]):
    """Write `history` (revision: (down revision, branch labels)) into `tree`."""
    for revision, (down, labels) in history.items():
        tree.add(
            revision,
            down,
            f"create t_{revision}",
            upgrade=CREATE.format(revision=revision),
            downgrade=f"op.drop_table('t_{revision}')",
            branch_labels=labels,
        )
    return tree


@pytest.fixture
def two_branches(script_tree: ScriptTree) -> ScriptTree:
    """ex1111 (expand) → ex2222 → ex3333 and co1111 (contract) → co2222, two bases."""
    return build(script_tree, TWO_BRANCHES)


@pytest.fixture
def shared_base(script_tree: ScriptTree) -> ScriptTree:
    """ba1111 → ex1111 (expand) → ex2222 → ex3333 and ba1111 → co1111 (contract) → co2222."""
    return build(script_tree, SHARED_BASE)


@pytest.fixture(autouse=True)
def fresh_plan_cache():
    """Every test plans from scratch."""
    clear_plan_cache()
    yield
    clear_plan_cache()


def applied(history: dict, revisions: tuple[str, ...]) -> list[str]:
    """The revisions below and at `revisions`, oldest first."""
    found: list[str] = []
    stack = list(revisions)
    while stack:
        revision = stack.pop()
        if revision not in found:
            found.append(revision)
            down = history[revision][0]
            stack.extend([down] if down else [])
    return [revision for revision in history if revision in found]


def put_at(url: URL | str, history: dict, revisions: tuple[str, ...]) -> None:
    """Make a database look migrated to `revisions`: their tables and version rows."""
    if not revisions:
        return
    execute(
        url,
        *(
            f"CREATE TABLE t_{revision} (id INTEGER NOT NULL PRIMARY KEY)"
            for revision in applied(history, revisions)
        ),
        "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)",
        *(f"INSERT INTO alembic_version (version_num) VALUES ('{rev}')" for rev in revisions),
    )


def migration_tables(url: URL | str) -> set[str]:
    """The tables the test revisions created."""
    return {name for name in table_names(url) if name.startswith("t_")}


def plan_now(direction: str, target: str) -> Plan:
    """The plan for dev as a person reviews it (reads the database; call in an app context)."""
    return build_plan(
        project=get_project(),
        environment=environment_named("dev"),
        direction=direction,
        target=target,
    )


# Each form, from a database state Alembic accepts it in: the steps `alembic upgrade/downgrade
# <target>` runs there (in its order), the target a job hands Alembic, and the version table
# after it. Columns: from, target, steps, alembic_target, after ("-" is none: base).
UPGRADES = """
-              heads        ex1111,ex2222,ex3333,co1111,co2222  heads   co2222,ex3333
ex3333         heads        co1111,co2222                       co2222  co2222,ex3333
-              ex2222       ex1111,ex2222                       ex2222  ex2222
ex1111         ex22         ex2222                              ex2222  ex2222
co2222         expand@head  ex1111,ex2222,ex3333                ex3333  co2222,ex3333
co1111,ex1111  expand@+1    ex2222                              ex2222  co1111,ex2222
ex3333         contract@+1  co1111                              co1111  co1111,ex3333
ex1111         +2           ex2222,ex3333                       ex3333  ex3333
"""
DOWNGRADES = """
co2222,ex3333  expand@-1    ex3333                              ex2222       co2222,ex2222
co2222,ex3333  expand@base  ex3333,ex2222,ex1111                expand@base  co2222
co2222,ex3333  ex1111       ex3333,ex2222                       ex1111       co2222,ex1111
ex3333         -2           ex3333,ex2222                       ex1111       ex1111
co2222,ex3333  base         co2222,co1111,ex3333,ex2222,ex1111  base         -
"""


def _revisions(cell: str) -> list[str]:
    return [] if cell == "-" else cell.split(",")


FORMS = [
    pytest.param(
        direction,
        tuple(_revisions(start)),
        target,
        _revisions(steps),
        alembic_target,
        _revisions(after),
        id=f"{direction}-{target}-from-{start}",
    )
    for direction, table in (("upgrade", UPGRADES), ("downgrade", DOWNGRADES))
    for start, target, steps, alembic_target, after in (
        line.split() for line in table.strip().splitlines()
    )
]
FORM_FIELDS = ("direction", "start", "target", "steps", "alembic_target", "after")


@pytest.mark.backends
@pytest.mark.parametrize(FORM_FIELDS, FORMS)
def test_each_target_form_plans_and_runs_what_alembic_runs(
    tmp_path, two_branches, database_url, direction, start, target, steps, alembic_target, after
):
    put_at(database_url, TWO_BRANCHES, start)
    app = app_for_tree(tmp_path / "site", two_branches, {"dev": database_url})

    with app.app_context():
        plan = plan_now(direction, target)
        assert plan.from_revisions == tuple(sorted(start))
        assert plan.revision_ids == steps
        assert plan.alembic_target == alembic_target
    finished = run_job_to_the_end(app, "dev", direction, target, fingerprint=plan.fingerprint)
    assert finished.state == "succeeded", finished.error
    assert (finished.requested_target, finished.alembic_target) == (target, alembic_target)
    assert finished.planned_revisions == steps

    assert versions(database_url) == after
    assert migration_tables(database_url) == {
        f"t_{revision}" for revision in applied(TWO_BRANCHES, tuple(after))
    }


@pytest.mark.backends
def test_head_with_two_heads_is_refused_and_nothing_runs(tmp_path, two_branches, database_url):
    put_at(database_url, TWO_BRANCHES, ("ex1111",))
    app = app_for_tree(tmp_path / "site", two_branches, {"dev": database_url})

    with app.app_context():
        with pytest.raises(PlanError, match=r"multiple heads: name one \(co2222, ex3333\)"):
            plan_now("upgrade", "head")
        with pytest.raises(PlanError, match="'head' is ambiguous; 'heads' upgrades them all"):
            jobs.request_job(
                environment_name="dev",
                operation="upgrade",
                target="head",
                actor=None,
                actor_name="test",
                submit=False,
            )
        db.session.rollback()
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Job)) == 0

    assert versions(database_url) == ["ex1111"]


# --- the same steps as Alembic's own command line -------------------------------------------

CLI_APP = """
import os

from flask import Flask
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy

app = Flask(__name__)
app.config["SQLALCHEMY_DATABASE_URI"] = os.environ["TARGETS_TEST_DATABASE_URL"]
Migrate(app, SQLAlchemy(app))
"""
_RUNNING = re.compile(r"Running (upgrade|downgrade) (.*?) -> (.*?), ")


def flask_db_steps(tmp_path: Path, tree: ScriptTree, url: str, direction: str, target: str):
    """Run `flask db upgrade/downgrade <target>` on `url`; return the revisions it ran, in order."""
    app_file = tmp_path / "cli_app.py"
    app_file.write_text(CLI_APP)
    finished = subprocess.run(
        [sys.executable, "-m", "flask", "--app", str(app_file), "db", direction]
        + ["--directory", str(tree.path), "--", target],
        env={**os.environ, "TARGETS_TEST_DATABASE_URL": url},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr
    return [
        after if kind == "upgrade" else before
        for kind, before, after in _RUNNING.findall(finished.stderr)
    ]


def plan_and_flask_db(tmp_path, tree, history, direction, start, target):
    """The plan from `start`, and what `flask db` runs from `start` on a twin database."""
    ours, theirs = tmp_path / "ours.db", tmp_path / "theirs.db"
    for path in (ours, theirs):
        path.touch()
        put_at(f"sqlite:///{path}", history, start)
    project = project_for(tmp_path, tree, {"dev": f"sqlite:///{ours}"})
    plan = build_plan(
        project=project, environment=project.get("dev"), direction=direction, target=target
    )
    ran = flask_db_steps(tmp_path, tree, f"sqlite:///{theirs}", direction, target)
    return plan, ran, versions(f"sqlite:///{theirs}")


@pytest.mark.parametrize(FORM_FIELDS, FORMS)
def test_the_plan_is_what_flask_db_runs_from_the_same_revisions(
    tmp_path, two_branches, direction, start, target, steps, alembic_target, after
):
    plan, ran, left_at = plan_and_flask_db(
        tmp_path, two_branches, TWO_BRANCHES, direction, start, target
    )

    assert plan.revision_ids == ran == steps
    assert left_at == after


@pytest.mark.parametrize(
    ("direction", "start", "target", "alembic_target"),
    [
        ("upgrade", (), "heads", "heads"),
        ("upgrade", ("ba1111",), "expand@head", "ex3333"),
        ("upgrade", ("co1111",), "expand@+1", "ex1111"),
        ("downgrade", BOTH_HEADS, "expand@-1", "ex2222"),
        ("downgrade", BOTH_HEADS, "expand@-3", "expand@-3"),
        # Alembic reads expand@base as the base of the whole tree when the branches share it.
        ("downgrade", BOTH_HEADS, "expand@base", "base"),
    ],
)
def test_on_a_shared_base_the_plan_is_what_flask_db_runs(
    tmp_path, shared_base, direction, start, target, alembic_target
):
    plan, ran, _ = plan_and_flask_db(tmp_path, shared_base, SHARED_BASE, direction, start, target)

    assert plan.revision_ids == ran and ran
    assert plan.alembic_target == alembic_target


# --- refused with a reason ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("direction", "start", "target", "reason"),
    [
        ("downgrade", BOTH_HEADS, "heads", "'heads' names several revisions"),
        ("downgrade", ("co2222",), "expand@-1", "nothing on branch expand is applied"),
        ("downgrade", BOTH_HEADS, "expand@+1", "expand@+1 is not a downgrade step: use expand@-N"),
        ("upgrade", ("ex1111",), "expand@-1", "expand@-1 is not an upgrade step: use expand@+N"),
        ("upgrade", (), "nosuch@head", "unknown branch 'nosuch'"),
        ("downgrade", ("co2222",), "expand@base", "expand@base is not below the current"),
        ("upgrade", ("ex3333",), "expand@+1", "cannot upgrade to expand@+1: Relative revision"),
    ],
)
def test_a_form_alembic_would_refuse_is_refused_with_a_reason(
    tmp_path, two_branches, direction, start, target, reason
):
    project = project_for(tmp_path, two_branches, {"dev": "sqlite:///dev.db"})

    with pytest.raises(PlanError, match=re.escape(reason)):
        build_plan(
            project=project,
            environment=project.get("dev"),
            direction=direction,
            target=target,
            current=start,
        )


def test_an_upgrade_to_a_branch_base_runs_nothing(tmp_path, two_branches):
    project = project_for(tmp_path, two_branches, {"dev": "sqlite:///dev.db"})

    plan = build_plan(
        project=project,
        environment=project.get("dev"),
        direction="upgrade",
        target="expand@base",
        current=("ex1111",),
    )

    assert plan.is_empty


# --- the command line and the web form pass every form through ------------------------------


def test_cli_upgrades_to_heads_and_downgrades_a_branch_to_its_base(tmp_path, two_branches):
    app = app_for_tree(tmp_path / "site", two_branches, {"dev": "sqlite:///dev.db"})
    url = f"sqlite:///{tmp_path / 'site' / 'dev.db'}"
    runner = app.test_cli_runner()

    upgraded = runner.invoke(args=["dashboard", "upgrade", "dev", "--target", "heads"])

    assert upgraded.exit_code == 0, upgraded.output
    assert "through ex1111, ex2222, ex3333, co1111, co2222" in upgraded.output
    assert versions(url) == list(BOTH_HEADS)

    downgraded = runner.invoke(args=["dashboard", "downgrade", "dev", "--target", "expand@base"])

    assert downgraded.exit_code == 0, downgraded.output
    assert versions(url) == ["co2222"]
    assert migration_tables(url) == {"t_co1111", "t_co2222"}

    refused = runner.invoke(args=["dashboard", "upgrade", "dev", "--target", "head"])
    assert refused.exit_code != 0
    assert "multiple heads: name one (co2222, ex3333)" in refused.output
    assert versions(url) == ["co2222"]


@pytest.mark.parametrize(
    ("operation", "start", "target", "after"),
    [
        ("upgrade", (), "heads", list(BOTH_HEADS)),
        ("downgrade", BOTH_HEADS, "expand@-1", ["co2222", "ex2222"]),
    ],
)
def test_the_run_form_runs_the_reviewed_plan_for_the_form(
    tmp_path, two_branches, operation, start, target, after
):
    app = app_for_tree(tmp_path / "site", two_branches, {"dev": "sqlite:///dev.db"})
    url = f"sqlite:///{tmp_path / 'site' / 'dev.db'}"
    put_at(url, TWO_BRANCHES, start)
    client = signed_in_client(app, "operator")

    page = client.get(f"/environments/dev/plan?operation={operation}&target={target}")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert f'name="target" value="{target}"' in html  # passed on as typed, never rewritten
    fingerprint = html.split('name="fingerprint" value="')[1].split('"')[0]
    posted = Auth(client).post(
        "/environments/dev/jobs",
        data={"operation": operation, "target": target, "fingerprint": fingerprint},
    )

    assert posted.status_code == 303, posted.get_data(as_text=True)[:500]
    job_id = int(posted.headers["Location"].rstrip("/").rsplit("/", 1)[1])
    job = wait_for_job(app, job_id)
    assert job.state == "succeeded", job.error
    assert job.requested_target == target
    assert versions(url) == after


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("heads", BOTH_HEADS),
        ("expand@head", ("ex3333",)),
        ("contract@heads", ("co2222",)),
        ("expand@base", ()),
        ("expand@ex22", ("ex2222",)),
        ("expand", ("ex1111",)),
    ],
)
def test_the_diff_pages_resolve_the_same_forms_to_revisions(two_branches, text, named):
    database = TargetDatabase(
        name="dev", url=sa.make_url("sqlite://"), script_location=two_branches.path
    )
    assert alembic_adapter.resolve_revisions(database, text) == named


@pytest.mark.parametrize(
    ("target", "recorded"),
    [
        ("ex22", ["ex2222"]),
        ("expand@head", ["ex3333"]),
        ("heads", ["co2222", "ex3333"]),
        ("base", []),
    ],
)
def test_a_stamp_takes_the_forms_alembic_stamps(tmp_path, two_branches, target, recorded):
    url = f"sqlite:///{tmp_path / 'site' / 'dev.db'}"
    app = app_for_tree(tmp_path / "site", two_branches, {"dev": "sqlite:///dev.db"})
    put_at(url, TWO_BRANCHES, ("ex1111",))

    finished = run_job_to_the_end(app, "dev", "stamp", target)

    assert finished.state == "succeeded", finished.error
    assert versions(url) == recorded
    assert migration_tables(url) == {"t_ex1111"}  # a stamp runs no script


def test_a_stamp_to_an_unknown_revision_is_refused_with_the_reason(tmp_path, two_branches):
    app = app_for_tree(tmp_path / "site", two_branches, {"dev": "sqlite:///dev.db"})

    with app.app_context(), pytest.raises(JobRefused, match=r"Cannot stamp zz99: unknown revision"):
        jobs.request_job(
            environment_name="dev", operation="stamp", target="zz99", actor=None, submit=False
        )


def test_the_promotion_gate_of_a_rollout_to_heads_checks_every_head_it_reaches(
    tmp_path, two_branches
):
    site = tmp_path / "site"
    app = app_for_tree(
        site,
        two_branches,
        {"staging": "sqlite:///staging.db", "production": "sqlite:///production.db"},
        ENV_EXTRA={"production": {"after": "staging", "protected": True, "approvals": 1}},
    )
    put_at(f"sqlite:///{site / 'staging.db'}", TWO_BRANCHES, ("ex3333",))
    with app.app_context():
        users.create_user(username="olga", password="x" * 16, role="operator", actor=None)
        olga = db.session.scalar(sa.select(User).where(User.username == "olga"))

        with pytest.raises(RolloutRefused, match="co2222"):
            rollouts.request_rollout(
                environment_name="production", target="heads", reason="both", actor=olga
            )
        execute(
            f"sqlite:///{site / 'staging.db'}",
            "CREATE TABLE t_co1111 (id INTEGER)",
            "CREATE TABLE t_co2222 (id INTEGER)",
            "INSERT INTO alembic_version (version_num) VALUES ('co2222')",
        )
        requested = rollouts.request_rollout(
            environment_name="production", target="heads", reason="both", actor=olga
        )
        assert requested.state == "pending"
