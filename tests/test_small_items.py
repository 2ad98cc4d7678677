"""The smaller findings of issue 15: the jobs list names the revision a job reached, a refusal
links the job it names, `history` prints branch labels, a job log shows its lock queries with
their values filled in, and background job events name the person they ran for."""

from __future__ import annotations

import json
import re

import pytest

from dashboard.audit.models import AuditEvent
from dashboard.extensions import db
from dashboard.jobs import service as jobs
from dashboard.target.runner import describe_statement
from tests.helpers import (
    Auth,
    DatabaseFactory,
    alice_upgrades_staging,
    app_for_tree,
    fingerprint_of,
    queue_job,
    run_job_to_the_end,
    upgrade_with_a_job,
)

DEMO_HEAD = "8d3907739fa1"


# --- a job's log: statements with their parameters filled in ---------------------------------


@pytest.mark.parametrize(
    ("statement", "parameters", "paramstyle", "shown"),
    [
        (
            "SELECT pg_try_advisory_lock(hashtext(%(table)s))",
            {"table": "alembic_version"},
            "pyformat",
            "SELECT pg_try_advisory_lock(hashtext('alembic_version'))",
        ),
        (
            "SELECT GET_LOCK(CONCAT(DATABASE(), ':', %(table)s), 0)",
            {"table": "it's"},
            "pyformat",
            "SELECT GET_LOCK(CONCAT(DATABASE(), ':', 'it''s'), 0)",
        ),
        ("SELECT %s LIKE 'a%%'", ("x",), "format", "SELECT 'x' LIKE 'a%'"),
        (
            "UPDATE t SET a = ?, b = ? WHERE c = 'why?'",
            (1, None),
            "qmark",
            "UPDATE t SET a = 1, b = NULL WHERE c = 'why?'",
        ),
        ("SELECT :a::text, :b", {"a": 2, "b": b"\x01"}, "named", "SELECT 2::text, X'01'"),
        ("  SELECT 1  ", {}, "pyformat", "SELECT 1"),
    ],
)
def test_a_logged_statement_has_its_parameters_filled_in(statement, parameters, paramstyle, shown):
    assert describe_statement(statement, parameters, paramstyle) == shown


@pytest.mark.parametrize(
    ("statement", "parameters", "paramstyle"),
    [
        ("INSERT INTO t VALUES (?)", [(1,), (2,)], ""),  # executemany: listed, not filled
        ("UPDATE t SET a = ?", (1, 2), "qmark"),  # more values than placeholders
        ("UPDATE t SET a = %(a)s", {"b": 1}, "pyformat"),  # a name without a value
    ],
)
def test_a_statement_whose_parameters_cannot_be_filled_in_lists_them(
    statement, parameters, paramstyle
):
    assert describe_statement(statement, parameters, paramstyle) == (
        f"{statement} -- parameters: {parameters!r}"
    )


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
def test_a_job_log_shows_the_lock_query_with_its_table_filled_in(backend, tmp_path, script_tree):
    databases = DatabaseFactory(backend, tmp_path)
    try:
        url = databases.create()
        script_tree.add_table("r00", None, "t0")
        app = app_for_tree(tmp_path / "site", script_tree, {"dev": url})
        job = run_job_to_the_end(app)
        assert job.state == "succeeded", job.error
        with app.app_context():
            log = [line.text for line in jobs.log_lines(job_id=job.id)]
        lock = "pg_try_advisory_lock" if backend == "postgresql" else "GET_LOCK"
        locking = [line for line in log if lock in line]
        assert locking, "\n".join(log)
        assert all("'alembic_version'" in line for line in locking), locking
        assert not any("%(" in line or "-- parameters:" in line for line in log), log
    finally:
        databases.drop_all()


# --- the jobs list and refusals ----------------------------------------------------------------


def test_the_jobs_list_names_the_revision_a_job_reached(demo_app, clients):
    upgrade_with_a_job(demo_app, "staging")
    html = clients["viewer"].get("/jobs").get_data(as_text=True)
    (row,) = re.findall(r'<tr class="job-row".*?</tr>', html, re.S)
    what = re.search(r'<td class="job-what">(.*?)</td>', row, re.S).group(1)
    assert re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", what)).strip() == (
        f"upgrade to {DEMO_HEAD} (head)"
    )
    assert f'href="/revisions/{DEMO_HEAD}' in what


def test_a_queued_job_in_the_list_still_says_what_was_asked(demo_app, clients):
    with demo_app.app_context():
        queue_job("staging")
    html = clients["viewer"].get("/jobs").get_data(as_text=True)
    what = re.search(r'<td class="job-what">(.*?)</td>', html, re.S).group(1)
    assert re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", what)).strip() == "upgrade to head"


def test_a_refusal_naming_a_running_job_links_to_it(demo_app, demo_passwords):
    with demo_app.app_context():
        job_id = queue_job("staging").id
        fingerprint = fingerprint_of("staging")
    operator = demo_app.test_client()
    auth = Auth(operator)
    auth.login("operator", demo_passwords["operator"])
    response = auth.post(
        "/environments/staging/jobs",
        {"operation": "upgrade", "target": "head", "fingerprint": fingerprint},
    )
    assert response.status_code == 409
    html = response.get_data(as_text=True)
    assert f'already has <a href="/jobs/{job_id}">job #{job_id}</a>' in html
    # Also when htmx asks, into the page it came from.
    fragment = auth.post(
        "/environments/staging/jobs",
        {"operation": "upgrade", "target": "head", "fingerprint": fingerprint},
        headers={"HX-Request": "true"},
    ).get_data(as_text=True)
    assert f'<a href="/jobs/{job_id}">job #{job_id}</a>' in fragment


def test_a_refusal_escapes_the_message_it_links(demo_app):
    from dashboard.templating import link_jobs

    with demo_app.test_request_context():
        shown = str(link_jobs("<b>job #7</b> & Job #12; jobs #x"))
    assert shown == (
        '&lt;b&gt;<a href="/jobs/7">job #7</a>&lt;/b&gt; &amp; '
        '<a href="/jobs/12">Job #12</a>; jobs #x'
    )


# --- `flask dashboard history` ------------------------------------------------------------------


def test_history_prints_branch_labels(tmp_path, script_tree):
    script_tree.add_table("a1", None, "ta")
    script_tree.add("b2", "a1", "start the expand branch", branch_labels=("expand",))
    script_tree.add_table("c3", "a1", "tc")
    app = app_for_tree(tmp_path / "site", script_tree, {"dev": "sqlite:///dev.db"})
    runner = app.test_cli_runner()

    text = runner.invoke(args=["dashboard", "history"])
    assert text.exit_code == 0, text.output
    line = next(line for line in text.output.splitlines() if " -> b2" in line)
    assert line == "a1 -> b2 (expand) (head), start the expand branch"
    plain = next(line for line in text.output.splitlines() if " -> c3" in line)
    assert "(expand)" not in plain

    entries = json.loads(runner.invoke(args=["dashboard", "history", "--json"]).output)
    labels = {entry["id"]: entry["branch_labels"] for entry in entries}
    assert labels == {"a1": [], "b2": ["expand"], "c3": []}


# --- the audit log: background job events name whom they ran for --------------------------------


def test_background_job_events_name_the_person_they_ran_for(demo_app, clients):
    with demo_app.app_context():
        alice, job_id = alice_upgrades_staging(demo_app)
        stored = {
            event.action: event
            for event in db.session.scalars(
                db.select(AuditEvent).where(AuditEvent.action.like("job.%"))
            )
        }
        assert stored["job.requested"].actor_id == alice.id
        assert "on_behalf_of" not in stored["job.requested"].details  # alice acted herself
        for action in ("job.started", "job.succeeded"):
            assert stored[action].actor_id is None
            assert stored[action].details["on_behalf_of"] == "alice"
            assert stored[action].details["job"] == job_id

    html = clients["viewer"].get("/audit?action=job.started").get_data(as_text=True)
    actor = re.search(r'<td class="audit-actor">(.*?)</td>', html, re.S).group(1)
    assert f'<a href="/jobs/{job_id}">job #{job_id}</a>' in actor
    assert re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", actor)).strip() == (
        f"job #{job_id} for alice"
    )
    assert "not signed in" not in actor
    # Filtering by the person still finds what ran for her.
    by_alice = clients["viewer"].get("/audit?actor=alice").get_data(as_text=True)
    assert 'data-action="job.started"' in by_alice and 'data-action="job.succeeded"' in by_alice
