"""The Job page's log: the tail at first, then only the lines after the last one shown, polling
until the job has ended, and the whole log as a download read from the store in batches."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import sqlalchemy as sa
from markupsafe import escape

from dashboard.clock import utcnow
from dashboard.extensions import db
from dashboard.jobs import service as jobs
from dashboard.jobs.models import Job, JobLogLine
from tests.helpers import signed_in_client

HTMX = {"HX-Request": "true"}
LINE = re.compile(r"line (\d{5})")
TAIL = jobs.LOG_TAIL_LINES
BATCH = jobs.LOG_BATCH_LINES


# --- test data: jobs and log lines written straight into the store --------------------------


def line_text(number: int) -> str:
    """What line `number` says; every seventh line is a statement the job ran."""
    return f"SELECT 'line {number:05d}'" if number % 7 == 0 else f"log line {number:05d}"


def append_lines(app, job_id: int, first: int, last: int) -> None:
    """Store lines first..last of a job's log, as its runner would, and beat its heart."""
    rows = [
        {
            "job_id": job_id,
            "number": number,
            "kind": "sql" if number % 7 == 0 else "log",
            "text": line_text(number),
            "at": utcnow(),
        }
        for number in range(first, last + 1)
    ]
    with app.app_context():
        if rows:
            db.session.execute(sa.insert(JobLogLine), rows)
        db.session.execute(sa.update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow()))
        db.session.commit()


def add_job(app, *, state: str = "succeeded", lines: int = 0) -> int:
    """A job on dev in `state` whose log has `lines` lines; return its id."""
    now = utcnow()
    with app.app_context():
        job = Job(
            environment="dev",
            operation="upgrade",
            requested_target="head",
            alembic_target="head",
            requested_by="operator",
            state=state,
            started_at=now,
            heartbeat_at=now,
            finished_at=None if state == "running" else now,
        )
        db.session.add(job)
        db.session.commit()
        job_id = job.id
    append_lines(app, job_id, 1, lines)
    return job_id


def finish(app, job_id: int, state: str = "succeeded") -> None:
    """End a running job, as its supervisor does once the last lines are stored."""
    with app.app_context():
        job = db.session.get(Job, job_id)
        job.state, job.finished_at = state, utcnow()
        db.session.commit()


def numbers_in(html: str) -> list[int]:
    """The numbers of the log lines in a page or a poll's answer, in order."""
    return [int(number) for number in LINE.findall(html)]


def lines_of_poll(html: str) -> list[int]:
    """The numbers of the lines a poll answered (before the job's state, sent out of band)."""
    return numbers_in(html.split('<section id="job-live"')[0])


@contextmanager
def statements(app) -> Iterator[list[str]]:
    """Collect the SQL statements the app sends to its store in the block."""
    with app.app_context():
        engine = db.engine
    seen: list[str] = []

    def record(connection, cursor, statement, parameters, context, executemany) -> None:
        seen.append(" ".join(statement.split()))

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


@pytest.fixture
def viewer(audit_app):
    """A viewer's client of the dashboard on a store of each backend."""
    return signed_in_client(audit_app, "viewer")


# --- the page: the tail --------------------------------------------------------------------


def test_the_page_of_a_long_log_shows_its_tail_and_how_many_lines_came_before(audit_app, viewer):
    job_id = add_job(audit_app, lines=5000)

    page = viewer.get(f"/jobs/{job_id}")

    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert numbers_in(html) == list(range(5000 - TAIL + 1, 5001))
    assert f"{5000 - TAIL:,} earlier lines — " in html
    assert f'href="/jobs/{job_id}/log.txt" download>download the whole log</a>' in html
    assert 'data-state="succeeded"' in html
    assert "hx-get" not in html  # the job has ended: nothing to poll


def test_the_page_of_a_short_log_shows_all_of_it_without_the_note(audit_app, viewer):
    job_id = add_job(audit_app, state="running", lines=12)

    html = viewer.get(f"/jobs/{job_id}").get_data(as_text=True)

    assert numbers_in(html) == list(range(1, 13))
    assert "earlier line" not in html
    assert f'hx-get="/jobs/{job_id}/live?after=12"' in html
    assert 'hx-trigger="every 1s"' in html


def test_a_running_page_reloads_itself_without_javascript_until_the_job_ends(audit_app, viewer):
    job_id = add_job(audit_app, state="running", lines=3)
    refresh = '<noscript><meta http-equiv="refresh"'

    assert refresh in viewer.get(f"/jobs/{job_id}").get_data(as_text=True)
    finish(audit_app, job_id)
    assert refresh not in viewer.get(f"/jobs/{job_id}").get_data(as_text=True)


# --- the poll: the lines after n ------------------------------------------------------------


def test_a_poll_answers_exactly_the_lines_after_the_number_it_gives(audit_app, viewer):
    job_id = add_job(audit_app, state="running", lines=5000)

    near_the_end = viewer.get(f"/jobs/{job_id}/live?after=4990", headers=HTMX)
    caught_up = viewer.get(f"/jobs/{job_id}/live?after=5000", headers=HTMX)

    assert near_the_end.status_code == 200
    assert lines_of_poll(near_the_end.get_data(as_text=True)) == list(range(4991, 5001))
    # Nothing else joins the log: only the lines are outside the out-of-band parts.
    assert near_the_end.get_data(as_text=True).split("<section")[0] == "".join(
        f'<span class="sql">{escape(line_text(n))}</span>\n' if n % 7 == 0 else f"{line_text(n)}\n"
        for n in range(4991, 5001)
    )
    for answer in (near_the_end, caught_up):
        html = answer.get_data(as_text=True)
        assert f'hx-get="/jobs/{job_id}/live?after=5000" hx-trigger="every 1s"' in html
        assert 'id="job-live" class="stack" data-state="running" hx-swap-oob="true"' in html
    assert lines_of_poll(caught_up.get_data(as_text=True)) == []
    assert caught_up.status_code == 200


def test_a_poll_far_behind_gets_one_batch_and_asks_for_the_next_at_once(audit_app, viewer):
    job_id = add_job(audit_app, state="running", lines=5000)

    html = viewer.get(f"/jobs/{job_id}/live?after=1000", headers=HTMX).get_data(as_text=True)

    assert lines_of_poll(html) == list(range(1001, 1001 + BATCH))
    assert f'hx-get="/jobs/{job_id}/live?after={1000 + BATCH}" hx-trigger="load"' in html


def test_the_poll_after_the_job_ended_brings_the_last_lines_then_stops_polling(audit_app, viewer):
    job_id = add_job(audit_app, state="running", lines=4990)
    append_lines(audit_app, job_id, 4991, 5000)
    finish(audit_app, job_id, "failed")

    last = viewer.get(f"/jobs/{job_id}/live?after=4990", headers=HTMX)

    html = last.get_data(as_text=True)
    assert last.status_code == 286
    assert lines_of_poll(html) == list(range(4991, 5001))
    assert 'data-state="failed"' in html
    assert "hx-get" not in html and "hx-trigger" not in html


def test_a_reader_behind_an_ended_job_keeps_polling_until_caught_up(audit_app, viewer):
    job_id = add_job(audit_app, lines=2000)

    behind = viewer.get(f"/jobs/{job_id}/live?after=100", headers=HTMX)

    assert behind.status_code == 200
    assert lines_of_poll(behind.get_data(as_text=True)) == list(range(101, 101 + BATCH))
    assert 'hx-trigger="load"' in behind.get_data(as_text=True)


def test_the_first_lines_of_a_job_replace_the_waiting_note(audit_app, viewer):
    job_id = add_job(audit_app, state="running")
    page = viewer.get(f"/jobs/{job_id}").get_data(as_text=True)
    waiting = viewer.get(f"/jobs/{job_id}/live?after=0", headers=HTMX).get_data(as_text=True)
    append_lines(audit_app, job_id, 1, 2)

    first = viewer.get(f"/jobs/{job_id}/live?after=0", headers=HTMX).get_data(as_text=True)

    assert 'id="job-log-empty">Waiting for the runner…</span>' in page
    assert "job-log-empty" not in waiting and lines_of_poll(waiting) == []
    assert lines_of_poll(first) == [1, 2]
    assert '<span id="job-log-empty" hx-swap-oob="delete"></span>' in first


def test_a_job_that_ended_without_output_says_so(audit_app, viewer):
    job_id = add_job(audit_app, state="running")
    finish(audit_app, job_id, "stale")

    last = viewer.get(f"/jobs/{job_id}/live?after=0", headers=HTMX)

    assert last.status_code == 286
    assert 'id="job-log-empty" hx-swap-oob="true">No output.</span>' in last.get_data(as_text=True)
    assert 'id="job-log-empty">No output.</span>' in viewer.get(f"/jobs/{job_id}").text


@pytest.mark.parametrize("after", ["abc", "-1", "1.5", "9999999999", ""])
def test_a_poll_with_a_bad_line_number_is_refused_in_words(demo_app, clients, after):
    job_id = add_job(demo_app, lines=3)

    refused = clients["viewer"].get(f"/jobs/{job_id}/live?after={after}", headers=HTMX)

    assert refused.status_code == 400
    assert "“after” must be a line number: a whole number, 0 or more." in refused.text


# --- the download ---------------------------------------------------------------------------


def test_the_download_has_every_line_in_order(audit_app, viewer):
    job_id = add_job(audit_app, state="running", lines=5003)

    download = viewer.get(f"/jobs/{job_id}/log.txt")

    assert download.status_code == 200
    assert download.mimetype == "text/plain"
    assert download.headers["Content-Disposition"] == (
        f'attachment; filename="job-{job_id}-log.txt"'
    )
    expected = [
        f"SQL: {line_text(number)}" if number % 7 == 0 else line_text(number)
        for number in range(1, 5004)
    ]
    assert download.get_data(as_text=True).split("\n") == [*expected, ""]


def test_the_download_of_an_empty_log_is_empty(audit_app, viewer):
    job_id = add_job(audit_app)

    download = viewer.get(f"/jobs/{job_id}/log.txt")

    assert (download.status_code, download.get_data(as_text=True)) == (200, "")


# --- bounded reads: a batch at a time, through the (job_id, number) index -------------------


def test_page_poll_and_download_read_the_log_a_bounded_batch_at_a_time(audit_app, viewer):
    job_id = add_job(audit_app, state="running", lines=5000)

    with statements(audit_app) as page_reads:
        viewer.get(f"/jobs/{job_id}")
    with statements(audit_app) as poll_reads:
        viewer.get(f"/jobs/{job_id}/live?after=4000", headers=HTMX)
    with statements(audit_app) as download_reads:
        viewer.get(f"/jobs/{job_id}/log.txt").get_data()

    for reads in (page_reads, poll_reads, download_reads):
        log_reads = [statement for statement in reads if "FROM job_log_line" in statement]
        assert log_reads, reads
        for statement in log_reads:
            assert "job_log_line.job_id = " in statement and " LIMIT " in statement, statement
    download_log_reads = [s for s in download_reads if "FROM job_log_line" in s]
    assert len(download_log_reads) == 5000 // BATCH + 1  # the last one finds no more


def test_the_service_reads_the_tail_and_the_lines_after_a_number(audit_app):
    job_id = add_job(audit_app, lines=1200)
    other = add_job(audit_app, lines=30)  # another job's lines never show

    with audit_app.app_context():
        tail = jobs.log_tail(job_id=job_id, limit=100)
        chunk = jobs.log_after(job_id=job_id, after=1150, limit=100)
        last = jobs.log_after(job_id=job_id, after=1200, limit=100)
        full = jobs.log_after(job_id=job_id, after=0, limit=100)
        others = jobs.log_tail(job_id=other, limit=100)

    assert [line.number for line in tail.lines] == list(range(1101, 1201))
    assert (tail.earlier, tail.last_number) == (1100, 1200)
    assert tail.lines[5] == jobs.LogLine(1106, "sql", "SELECT 'line 01106'")
    assert tail.lines[6] == jobs.LogLine(1107, "log", "log line 01107")
    assert [line.number for line in chunk.lines] == list(range(1151, 1201))
    assert (chunk.more, chunk.last_number) == (False, 1200)
    assert (last.lines, last.more, last.last_number) == ([], False, 1200)
    assert [line.number for line in full.lines] == list(range(1, 101)) and full.more
    assert [line.number for line in others.lines] == list(range(1, 31)) and others.earlier == 0


# --- who may read, and what does not exist ----------------------------------------------------


def test_a_viewer_reads_the_page_the_poll_and_the_download(demo_app, clients):
    job_id = add_job(demo_app, state="running", lines=40)

    page = clients["viewer"].get(f"/jobs/{job_id}")
    poll = clients["viewer"].get(f"/jobs/{job_id}/live?after=30", headers=HTMX)
    download = clients["viewer"].get(f"/jobs/{job_id}/log.txt")

    assert page.status_code == poll.status_code == download.status_code == 200
    assert numbers_in(page.text) == list(range(1, 41))
    assert lines_of_poll(poll.text) == list(range(31, 41))
    assert len(download.text.splitlines()) == 40


def test_someone_not_signed_in_reads_no_log(demo_app, clients):
    job_id = add_job(demo_app, lines=40)

    for path in (f"/jobs/{job_id}", f"/jobs/{job_id}/live?after=0", f"/jobs/{job_id}/log.txt"):
        answer = clients["anonymous"].get(path)
        assert answer.status_code == 302 and "/login" in answer.headers["Location"], path
        assert "line 000" not in answer.text


@pytest.mark.parametrize(
    "path", ["/jobs/999999", "/jobs/999999/live?after=0", "/jobs/999999/log.txt"]
)
def test_a_job_that_does_not_exist_is_a_404_in_words(demo_app, clients, path):
    answer = clients["viewer"].get(path)

    assert answer.status_code == 404
    assert "There is no job #999999." in answer.text
