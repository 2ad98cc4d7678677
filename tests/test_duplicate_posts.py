"""Identical Run posts over two gunicorn servers sharing a PostgreSQL store (issue 11): the plan
runs once; every duplicate is refused or ends `stale`, never a second `succeeded`."""

from __future__ import annotations

import re
import secrets
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask
from sqlalchemy.engine import URL

from dashboard.extensions import db
from dashboard.jobs.models import ActiveJob, Job
from tests.helpers import (
    TEST_PASSWORD,
    Auth,
    DatabaseFactory,
    ScriptTree,
    add_user,
    app_for_tree,
    make_app,
    upgrade_store,
    versions,
    write_environments,
)
from tests.servers import HttpSession, Reply, Server, server_environ

OPERATOR = "olga"
PLAN = ["r00", "r01", "r02"]
HEAD = PLAN[-1]
POSTS = 40
# The posts leave over this many seconds, so some reach the servers after job #1 has ended.
SPREAD_SECONDS = 4.0
JOBS_END_TIMEOUT = 60.0
RUN_FORM = "/environments/dev/jobs"
# Rendering the plan offline sleeps, as a long plan on a busy host does: a post that read the
# database's revision before job #1 committed reaches the one-job guard after #1 has ended.
# Running it sleeps in the database, so that job #1 overlaps the posts.
SLOW_REVISION = """
import time
if op.get_context().as_sql:
    time.sleep(1.5)
op.execute("SELECT pg_sleep(1.5)")
"""


@dataclass
class Site:
    """Two dashboards on one PostgreSQL store, managing one PostgreSQL database `dev`."""

    servers: list[Server]
    store: URL
    target: URL
    store_app: Flask


@pytest.fixture
def site(
    tmp_path: Path,
    pg_store: URL,
    pg_databases: DatabaseFactory,
    script_tree: ScriptTree,
    gunicorn,
) -> Iterator[Site]:
    target = pg_databases.create()
    script_tree.add_table("r00", None, "t0")
    script_tree.add("r01", "r00", "slow", upgrade=SLOW_REVISION)
    script_tree.add_table("r02", "r01", "t2")
    folder = tmp_path / "site"
    folder.mkdir()
    environments = write_environments(
        folder,
        f"""
        project: duplicate-posts
        migrations: {script_tree.path}
        environments:
          - name: dev
            url: {target.render_as_string(hide_password=False)}
        """,
    )
    store = pg_store.render_as_string(hide_password=False)
    secret_key = secrets.token_hex(32)  # shared: sessions and audit checkpoints
    store_app = make_app(folder, SQLALCHEMY_DATABASE_URI=store, SECRET_KEY=secret_key)
    upgrade_store(store_app)
    add_user(store_app, OPERATOR, "operator")
    env = server_environ(
        tmp_path,
        store=store,
        environments=environments,
        secret_key=secret_key,
        DASHBOARD_CONFIG="production",
    )
    servers = [gunicorn(env, workers=2, threads=4) for _ in range(2)]
    yield Site(servers=servers, store=pg_store, target=target, store_app=store_app)
    with store_app.app_context():
        db.engine.dispose()


def post_many(session: HttpSession, servers: list[Server], form: dict[str, str]) -> list[Reply]:
    """Post `form` POSTS times, alternating servers, the starts spread over SPREAD_SECONDS."""

    def post(index: int) -> Reply:
        time.sleep(index * SPREAD_SECONDS / POSTS)
        return session.post(servers[index % len(servers)].url(RUN_FORM), form)

    with ThreadPoolExecutor(max_workers=POSTS) as pool:
        return list(pool.map(post, range(POSTS)))


def jobs_once_all_ended(store: URL, timeout: float = JOBS_END_TIMEOUT) -> list[sa.Row]:
    """Every job in the store, once none is queued or running (read straight from the store)."""
    columns = (Job.id, Job.state, Job.from_revisions, Job.planned_revisions, Job.to_revisions)
    engine = sa.create_engine(store, poolclass=sa.pool.NullPool)
    try:
        deadline = time.monotonic() + timeout
        while True:
            with engine.connect() as connection:
                jobs = connection.execute(sa.select(*columns, Job.error).order_by(Job.id)).all()
                guards = connection.scalar(sa.select(sa.func.count()).select_from(ActiveJob))
            if not guards and all(job.state not in ("queued", "running") for job in jobs):
                return jobs
            if time.monotonic() > deadline:
                pytest.fail(f"jobs still active after {timeout}s:\n{describe(jobs)}")
            time.sleep(0.2)
    finally:
        engine.dispose()


def started_job(reply: Reply) -> int:
    """The id of the job a Run post was sent on to."""
    match = re.search(r"/jobs/(\d+)$", reply.location or "")
    assert match, f"a 303 to {reply.location!r}"
    return int(match[1])


def describe(jobs: Sequence[sa.Row], replies: Sequence[Reply] = ()) -> str:
    """One line per job, then how many posts got each answer."""
    lines = [
        f"  #{job.id} {job.state}: from {job.from_revisions} planned {job.planned_revisions} "
        f"to {job.to_revisions}" + (f" — {job.error}" if job.error else "")
        for job in jobs
    ]
    answers = Counter(
        f"{reply.status} {reply.refusal() or reply.location or ''}"[:120] for reply in replies
    )
    lines += [f"  {count} × {answer}" for answer, count in sorted(answers.items())]
    return "\n".join(lines)


def test_identical_run_posts_over_two_servers_run_the_plan_once(site):
    session = HttpSession()
    session.login(site.servers[0], OPERATOR, TEST_PASSWORD)
    plan = session.get(site.servers[0].url("/environments/dev/plan?operation=upgrade&target=head"))
    assert plan.status == 200, plan.text[:2000]
    form = {
        "operation": "upgrade",
        "target": "head",
        "fingerprint": plan.hidden_input("fingerprint"),
        "csrf_token": plan.hidden_input("csrf_token"),
    }

    replies = post_many(session, site.servers, form)
    jobs = jobs_once_all_ended(site.store)

    server_errors = [(reply.status, reply.text[:500]) for reply in replies if reply.status >= 500]
    assert server_errors == []
    refusals = [reply for reply in replies if reply.status != 303]
    assert {reply.status for reply in refusals} <= {400, 409}
    assert all(reply.refusal() for reply in refusals), [r.text[:500] for r in refusals]
    started = {started_job(reply) for reply in replies if reply.status == 303}
    assert started == {job.id for job in jobs}

    succeeded = [job for job in jobs if job.state == "succeeded"]
    assert len(succeeded) == 1, f"{len(succeeded)} jobs succeeded:\n{describe(jobs, replies)}"
    (first,) = succeeded
    assert (first.from_revisions, first.planned_revisions, first.to_revisions) == ([], PLAN, [HEAD])
    duplicates = [job for job in jobs if job.id != first.id]
    assert all(job.state == "stale" for job in duplicates), describe(jobs, replies)
    # A stale job names the revision the database had moved to.
    assert all(HEAD in (job.error or "") for job in duplicates), describe(jobs, replies)
    # Every other post was refused (why: a job runs, or the plan moved) or started a job that
    # ended stale: none went unaccounted for, none was a no-op success.
    assert len(refusals) + len(duplicates) == POSTS - 1, describe(jobs, replies)
    job_ids = {job.id for job in jobs}
    for reply in refusals:
        reason = reply.refusal() or ""
        running = re.search(r"dev already has .*job #(\d+)", reason)
        assert (running and int(running[1]) in job_ids) or reason.startswith(
            "The plan changed since it was shown"
        ), reason
    assert versions(site.target) == [HEAD]
    verified = site.store_app.test_cli_runner().invoke(args=["dashboard", "audit", "verify"])
    assert verified.exit_code == 0, verified.output


@pytest.mark.parametrize("fingerprint", [None, ""], ids=["missing", "empty"])
def test_a_run_post_without_the_plan_fingerprint_is_refused_and_creates_no_job(
    tmp_path, pg_store, script_tree, fingerprint
):
    script_tree.linear(2)
    store = pg_store.render_as_string(hide_password=False)
    app = app_for_tree(
        tmp_path / "site", script_tree, {"dev": "sqlite:///dev.db"}, SQLALCHEMY_DATABASE_URI=store
    )
    add_user(app, OPERATOR, "operator")
    auth = Auth(app.test_client())
    auth.login(OPERATOR)
    form = {"operation": "upgrade", "target": "head"}
    if fingerprint is not None:
        form["fingerprint"] = fingerprint

    refused = auth.post(RUN_FORM, data=form)

    assert refused.status_code == 400
    assert "This form has no plan fingerprint" in refused.get_data(as_text=True)
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Job)) == 0
    with app.app_context():
        db.engine.dispose()
    assert versions(f"sqlite:///{tmp_path / 'site' / 'dev.db'}") == []
