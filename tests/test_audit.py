"""The audit log: one hash chain under concurrent writers, tampering detected, the Audit page."""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from dashboard.audit import service as audit
from dashboard.audit.models import AuditCheckpoint, AuditEvent
from dashboard.extensions import db
from dashboard.users.models import User
from tests.helpers import AUDIT_HMAC_KEY, REPO, Auth, signed_in_client

HX = {"HX-Request": "true"}
events_table = AuditEvent.__table__
checkpoints_table = AuditCheckpoint.__table__


def record_events(app, count: int, **fields) -> None:
    """Record `count` events, each in its own committed transaction."""
    with app.app_context():
        for index in range(count):
            audit.record(
                action=fields.get("action", "test.event"),
                actor_name=fields.get("actor_name", "tester"),
                environment=fields.get("environment"),
                details={"index": index, **fields.get("details", {})},
            )
            db.session.commit()


def verify(app, **kwargs) -> audit.VerifyResult:
    with app.app_context():
        return audit.verify(**kwargs)


def tamper(app, *statements) -> None:
    """Change the store behind the dashboard's back, as someone with database access could."""
    engine = sa.create_engine(app.config["SQLALCHEMY_DATABASE_URI"], poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as connection:
            for statement in statements:
                connection.execute(statement)
    finally:
        engine.dispose()


def stored_events(app) -> list[sa.Row]:
    with app.app_context():
        return db.session.execute(sa.select(events_table).order_by(events_table.c.seq)).all()


def backend_of(app) -> str:
    return sa.engine.make_url(app.config["SQLALCHEMY_DATABASE_URI"]).get_backend_name()


# --- one chain, whoever writes ----------------------------------------------------------------


def test_events_from_eight_threads_form_one_intact_chain(audit_app):
    errors: list[BaseException] = []

    def write() -> None:
        try:
            record_events(audit_app, 25, action="test.thread")
        except BaseException as error:  # reported below; a thread cannot fail the test itself
            errors.append(error)

    threads = [threading.Thread(target=write) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert [row.seq for row in stored_events(audit_app)] == list(range(1, 201))
    result = verify(audit_app)
    assert (result.ok, result.checked, result.problem) == (True, 200, None)


WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from dashboard import create_app
    from dashboard.audit import service as audit
    from dashboard.extensions import db

    url, environments, key, go, name = sys.argv[1:]
    app = create_app(
        "testing",
        {"SQLALCHEMY_DATABASE_URI": url, "ENVIRONMENTS_FILE": environments, "AUDIT_HMAC_KEY": key},
    )
    Path(go).with_name(f"ready-{name}").touch()
    while not Path(go).exists():
        time.sleep(0.01)
    with app.app_context():
        for index in range(60):
            audit.record(action="test.process", actor_name=name, details={"index": index})
            db.session.commit()
    """
)


def test_events_from_two_processes_form_one_intact_chain(audit_app, tmp_path):
    go = tmp_path / "go"
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WRITER,
                audit_app.config["SQLALCHEMY_DATABASE_URI"],
                audit_app.config["ENVIRONMENTS_FILE"],
                AUDIT_HMAC_KEY,
                str(go),
                f"process-{number}",
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for number in range(2)
    ]
    # Release both writers together once both have started (a loaded machine takes seconds).
    ready = [tmp_path / f"ready-process-{number}" for number in range(2)]
    deadline = time.monotonic() + 60
    while not all(path.exists() for path in ready) and time.monotonic() < deadline:
        time.sleep(0.02)
    go.touch()
    record_events(audit_app, 30, action="test.parent")
    outputs = [process.communicate(timeout=120)[0] for process in processes]

    assert [process.returncode for process in processes] == [0, 0], outputs
    rows = stored_events(audit_app)
    assert [row.seq for row in rows] == list(range(1, 151))
    names = [row.actor_name for row in rows]
    assert names.count("process-0") == names.count("process-1") == 60
    if backend_of(audit_app) == "postgresql":
        # Really interleaved. (SQLite's busy handler sleeps, so there one writer tends to run
        # through while the other waits: still one chain, but no proof of interleaving.)
        first_of_1 = names.index("process-1")
        assert first_of_1 < max(i for i, name in enumerate(names) if name == "process-0")
    result = verify(audit_app)
    assert (result.ok, result.checked) == (True, 150), result.problem


def test_hash_survives_jsonb_key_order_and_number_formats(audit_app):
    details = {"zeta": 1, "alpha": {"b": 2, "a": 1}, "a much longer key": [3, 1], "n": 1.5}
    details |= {"big": 1e20, "text": "ünïcödé ✓", "none": None}
    with audit_app.app_context():
        audit.record(action="rollout.decided", details=details)
        db.session.commit()
        stored = db.session.scalar(sa.select(AuditEvent.details))

    assert verify(audit_app).ok
    if backend_of(audit_app) == "postgresql":
        # JSONB really did reorder the keys and rewrite 1e20 as a whole number.
        assert list(stored) != list(details)
        assert stored["big"] == 10**20 and isinstance(stored["big"], int)
    assert stored["alpha"] == {"a": 1, "b": 2} and stored["text"] == "ünïcödé ✓"


def test_event_records_time_actor_request_and_chain(audit_app):
    with audit_app.app_context():
        user = User(username="alice", password_hash="x", role="operator")
        db.session.add(user)
        db.session.flush()
        with audit_app.test_request_context(
            "/", environ_base={"REMOTE_ADDR": "203.0.113.5"}, headers={"User-Agent": "b" * 300}
        ):
            first = audit.record(action="job.started", actor=user, environment="staging")
            second = audit.record(action="job.finished", actor=user, details={"outcome": "ok"})
        recorded = [(event.seq, event.occurred_at) for event in (first, second)]
        db.session.commit()
        user_id = user.id
        rows = db.session.execute(sa.select(events_table).order_by(events_table.c.seq)).all()

    assert [seq for seq, _ in recorded] == [1, 2]
    assert rows[0].prev_hash == "0" * 64 and rows[1].prev_hash == rows[0].hash
    assert (rows[0].actor_id, rows[0].actor_name, rows[0].environment) == (
        user_id,
        "alice",
        "staging",
    )
    assert rows[0].remote_addr == "203.0.113.5" and rows[0].user_agent == "b" * 256
    # Stored to the microsecond, and read back as the same instant (SQLite drops the zone).
    assert recorded[0][1].tzinfo is UTC
    assert audit.as_utc(rows[0].occurred_at) == recorded[0][1]


# --- transactions -------------------------------------------------------------------------------


def test_record_is_rolled_back_with_the_change_it_records(audit_app):
    with audit_app.app_context():
        db.session.add(User(username="bob", password_hash="x"))
        audit.record(action="user.created", details={"user": "bob"})
        db.session.rollback()
        assert db.session.scalar(sa.select(sa.func.count()).select_from(AuditEvent)) == 0
        assert db.session.scalar(sa.select(sa.func.count()).select_from(User)) == 0
        assert audit.record(action="user.created").seq == 1  # the number was not used up
        db.session.commit()
    assert verify(audit_app).ok


def test_record_alone_survives_the_callers_rollback(audit_app):
    with audit_app.app_context():
        # The caller has read (on SQLite its transaction holds the store's lock from here on).
        db.session.scalar(sa.select(sa.func.count()).select_from(User))
        audit.record_alone(action="access.denied", actor_name="mallory")
        db.session.rollback()
        actions = db.session.scalars(sa.select(AuditEvent.action)).all()
    assert actions == ["access.denied"]
    assert verify(audit_app).ok


def test_record_alone_keeps_its_event_when_the_callers_change_is_rolled_back(audit_app):
    if backend_of(audit_app) != "postgresql":
        pytest.skip("SQLite has one writer at a time: see the next test")
    with audit_app.app_context():
        db.session.add(User(username="carol", password_hash="x"))
        db.session.flush()
        audit.record_alone(action="login.throttled", actor_name="carol")
        db.session.rollback()
        assert db.session.scalars(sa.select(AuditEvent.action)).all() == ["login.throttled"]
        assert db.session.scalar(sa.select(sa.func.count()).select_from(User)) == 0


def test_record_alone_after_an_uncommitted_change_on_sqlite_refuses_at_once(audit_app):
    if backend_of(audit_app) != "sqlite":
        pytest.skip("only SQLite makes the caller's change hold the one write lock")
    with audit_app.app_context():
        db.session.add(User(username="dave", password_hash="x"))
        db.session.flush()
        started = time.monotonic()
        with pytest.raises(audit.AuditError, match="record refused acts before changing"):
            audit.record_alone(action="access.denied", actor_name="dave")
        assert time.monotonic() - started < 1  # no wait for a lock it holds itself
        # The caller's work is still there to commit.
        db.session.commit()
        assert db.session.scalar(sa.select(User.username)) == "dave"


def test_record_alone_after_record_in_the_same_transaction_refuses(audit_app):
    with audit_app.app_context():
        audit.record(action="job.started")
        with pytest.raises(audit.AuditError, match="after record in the same transaction"):
            audit.record_alone(action="access.denied")
        db.session.commit()
    assert verify(audit_app).ok


def test_checkpoint_head_is_logged_once_committed(audit_app, caplog):
    caplog.set_level(logging.INFO, logger="dashboard.audit")
    with audit_app.app_context():
        audit.record(action="rolled.back")
        db.session.rollback()
        assert caplog.records == []
        head_hash = audit.record(action="kept").hash
        db.session.commit()
    assert [record.getMessage() for record in caplog.records] == [
        f"audit head 1:{head_hash} (signed checkpoint)"
    ]


# --- tampering ----------------------------------------------------------------------------------


@pytest.fixture
def five_events(audit_app):
    """The audit app with five events in its log."""
    record_events(audit_app, 5)
    assert verify(audit_app).ok
    return audit_app


def test_intact_log_verifies(five_events):
    result = verify(five_events)
    rows = stored_events(five_events)
    assert result == audit.VerifyResult(True, 5, head=(5, rows[-1].hash))


def test_edited_event_is_named(five_events):
    tamper(
        five_events,
        sa.update(events_table).where(events_table.c.seq == 3).values(details={"index": 99}),
    )
    result = verify(five_events)
    assert not result.ok and result.bad_seq == 3
    assert result.problem == "event seq 3 (id 3) was altered: its contents do not match its hash"


def test_edited_time_is_named(five_events):
    later = datetime.now(UTC) + timedelta(hours=1)
    tamper(
        five_events,
        sa.update(events_table).where(events_table.c.seq == 2).values(occurred_at=later),
    )
    assert verify(five_events).bad_seq == 2


def test_deleted_middle_event_is_named(five_events):
    tamper(five_events, sa.delete(events_table).where(events_table.c.seq == 3))
    result = verify(five_events)
    assert not result.ok and result.bad_seq == 3
    assert result.problem.startswith("event seq 3 is missing")
    assert "event seq 4 (id 4)" in result.problem


def test_swapped_sequence_numbers_are_named(five_events):
    seq = events_table.c.seq
    tamper(
        five_events,
        sa.update(events_table).where(seq == 3).values(seq=-3),
        sa.update(events_table).where(seq == 4).values(seq=3),
        sa.update(events_table).where(seq == -3).values(seq=4),
    )
    result = verify(five_events)
    assert not result.ok and result.bad_seq == 3
    assert "event seq 3 (id 4)" in result.problem


def test_rows_swapped_between_ids_are_out_of_order(five_events):
    third, fourth = stored_events(five_events)[2:4]
    columns = [column.name for column in events_table.c if column.name != "id"]
    by_id = events_table.c.id
    tamper(
        five_events,
        sa.update(events_table).where(by_id == third.id).values(seq=-1, hash="x" * 64),
        sa.update(events_table)
        .where(by_id == fourth.id)
        .values({name: getattr(third, name) for name in columns}),
        sa.update(events_table)
        .where(by_id == third.id)
        .values({name: getattr(fourth, name) for name in columns}),
    )
    result = verify(five_events)
    assert not result.ok and result.bad_seq == 4
    assert result.problem.startswith(f"event seq 4 (id {third.id}) is out of order")


def test_deleted_newest_event_is_caught_by_its_checkpoint(five_events):
    tamper(five_events, sa.delete(events_table).where(events_table.c.seq == 5))
    result = verify(five_events)
    assert not result.ok and result.bad_seq == 5
    assert result.problem.startswith("checkpoint at seq 5 names an event that is missing")


def test_deleted_newest_event_and_checkpoint_are_caught_by_the_logged_head(audit_app, caplog):
    caplog.set_level(logging.INFO, logger="dashboard.audit")
    record_events(audit_app, 5)
    logged_head = audit.parse_head(re.search(r"audit head (\S+)", caplog.messages[-1]).group(1))
    tamper(
        audit_app,
        sa.delete(events_table).where(events_table.c.seq == 5),
        sa.delete(checkpoints_table).where(checkpoints_table.c.seq == 5),
    )
    # The store alone now looks like a log of four events; the copy outside it does not.
    assert verify(audit_app).ok
    result = verify(audit_app, expect_head=logged_head)
    assert not result.ok and result.bad_seq == 5
    assert result.problem == "event seq 5 (the expected head) is missing: the log ends at seq 4"


def test_event_appended_without_the_dashboard_is_named(five_events):
    with five_events.app_context():
        head = stored_events(five_events)[-1]
        forged = AuditEvent(
            seq=6,
            occurred_at=datetime.now(UTC).replace(microsecond=0),  # as MariaDB would keep it
            actor_name="intruder",
            action="user.role_changed",
            details={"to": "admin"},
            prev_hash=head.hash,
        )
        forged.hash = audit.event_hash(forged)  # the algorithm is no secret
    values = {name: getattr(forged, name) for name in events_table.c.keys() if name != "id"}
    tamper(five_events, sa.insert(events_table).values(values))
    result = verify(five_events)
    assert not result.ok and result.bad_seq == 6
    assert result.problem.startswith("event seq 6 (id 6) and later have no signed checkpoint")


def test_forged_checkpoint_is_named(five_events):
    head = stored_events(five_events)[-1]
    tamper(
        five_events,
        sa.insert(checkpoints_table).values(
            seq=5, hash=head.hash, created_at=datetime.now(UTC), signature="0" * 64
        ),
    )
    result = verify(five_events)
    assert not result.ok and result.bad_seq == 5
    assert "at seq 5 has a bad signature" in result.problem


def test_checkpoints_need_the_key_they_were_signed_with(five_events):
    five_events.config["AUDIT_HMAC_KEY"] = "another-key"
    assert "bad signature" in verify(five_events).problem


# --- querying -----------------------------------------------------------------------------------


def test_query_filters_by_actor_action_environment_and_time(audit_app):
    record_events(audit_app, 2, action="login", actor_name="alice")
    record_events(audit_app, 1, action="job.started", actor_name="bob", environment="dev")
    middle = datetime.now(UTC)
    time.sleep(1.1 if backend_of(audit_app) == "mysql" else 0.01)  # MariaDB keeps whole seconds
    record_events(audit_app, 1, action="job.started", actor_name="alice", environment="staging")

    def seqs(**filters) -> list[int]:
        with audit_app.app_context():
            return [event.seq for event in db.session.scalars(audit.query_events(**filters))]

    assert seqs() == [4, 3, 2, 1]
    assert seqs(actor="alice") == [4, 2, 1]
    assert seqs(action="job.started") == [4, 3]
    assert seqs(environment="dev") == [3]
    assert seqs(since=middle) == [4]
    assert seqs(until=middle) == [3, 2, 1]
    assert seqs(since=middle.astimezone(timezone(timedelta(hours=2))), actor="alice") == [4]


def test_filter_texts_are_parsed_as_utc_and_a_date_includes_its_day():
    filters = audit.parse_filters(actor=" alice ", since="2026-01-31", until="2026-01-31")
    assert filters["actor"] == "alice" and filters["action"] is None
    assert filters["since"] == datetime(2026, 1, 31, tzinfo=UTC)
    assert filters["until"] == datetime(2026, 2, 1, tzinfo=UTC)
    with pytest.raises(audit.InvalidAuditFilter, match="not a date or time"):
        audit.parse_filters(since="yesterday")


def test_exports_share_one_column_list_and_defuse_formulas(audit_app):
    record_events(audit_app, 1, action="login.failed", actor_name="=HYPERLINK(1)")
    with audit_app.app_context():
        rows = list(audit.export_rows())
    as_csv = list(csv.DictReader(io.StringIO("".join(audit.to_csv(rows)))))
    as_json = json.loads("".join(audit.to_json(rows)))

    assert list(as_csv[0]) == list(audit.EXPORT_COLUMNS) == list(as_json[0])
    assert as_csv[0]["actor_name"] == "'=HYPERLINK(1)"
    assert as_json[0]["actor_name"] == "=HYPERLINK(1)"
    assert json.loads(as_csv[0]["details"]) == as_json[0]["details"] == {"index": 0}
    assert as_json[0]["occurred_at"].endswith("Z")
    assert json.loads("".join(audit.to_json([]))) == []


# --- the Audit page -----------------------------------------------------------------------------


def seqs_on(html: str) -> list[int]:
    return [int(seq) for seq in re.findall(r'data-seq="(\d+)"', html)]


def test_audit_page_lists_events_newest_first(demo_app, demo_client):
    response = demo_client.get("/audit")
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "<h1>Audit log</h1>" in html
    seqs = seqs_on(html)
    assert seqs == sorted(seqs, reverse=True) and len(seqs) >= 5
    assert re.findall(r'data-action="([^"]+)"', html)[0] == "login"  # the viewer signing in
    assert 'href="/audit" aria-current="page">Audit</a>' in html


def test_audit_page_filters_and_its_downloads_keep_the_filters(demo_app, demo_client):
    html = demo_client.get("/audit?action=user.created").get_data(as_text=True)
    assert set(re.findall(r'data-action="([^"]+)"', html)) == {"user.created"}
    assert len(seqs_on(html)) == 4  # the demo's four users
    assert 'href="/audit/export.csv?action=user.created"' in html
    assert 'href="/audit/export.json?action=user.created"' in html

    exported = demo_client.get("/audit/export.csv?action=user.created")
    rows = list(csv.DictReader(io.StringIO(exported.get_data(as_text=True))))
    assert exported.mimetype == "text/csv"
    assert "attachment" in exported.headers["Content-Disposition"]
    assert sorted(int(row["seq"]) for row in rows) == sorted(seqs_on(html))

    as_json = demo_client.get("/audit/export.json?action=user.created").get_json()
    assert [row["seq"] for row in as_json] == [int(row["seq"]) for row in rows]


def test_audit_page_paginates_fifty_a_page(demo_app, demo_client):
    record_events(demo_app, 60, action="test.page")
    first = demo_client.get("/audit?action=test.page").get_data(as_text=True)
    second = demo_client.get("/audit?action=test.page&page=2").get_data(as_text=True)

    assert len(seqs_on(first)) == 50 and len(seqs_on(second)) == 10
    assert max(seqs_on(second)) < min(seqs_on(first))
    assert "Page 1 of 2" in first
    assert 'href="/audit?page=2&amp;action=test.page" rel="next"' in first


def test_audit_page_for_htmx_is_just_the_table(demo_client):
    html = demo_client.get("/audit?actor=viewer", headers=HX).get_data(as_text=True)
    assert html.lstrip().startswith('<section id="audit-events"')
    assert "<html" not in html and seqs_on(html)


def test_audit_page_refuses_a_time_it_cannot_read(demo_client):
    response = demo_client.get("/audit?since=last+tuesday")
    assert response.status_code == 400
    assert "is not a date or time" in response.get_data(as_text=True)
    assert demo_client.get("/audit/export.json?until=soon").status_code == 400


def test_refused_sign_in_shows_on_the_audit_page_as_refused(demo_app, demo_client):
    Auth(demo_app.test_client()).login("viewer", "wrong-password", expect=401)
    html = demo_client.get("/audit?action=login.failed").get_data(as_text=True)
    assert '<span class="badge bad">refused</span>' in html
    assert "not signed in" in html


def test_audit_page_works_on_postgresql(audit_app):
    if backend_of(audit_app) != "postgresql":
        pytest.skip("the page on SQLite is tested on the demo")
    client = signed_in_client(audit_app, "viewer")
    response = client.get("/audit?action=user.created")
    assert response.status_code == 200 and len(seqs_on(response.get_data(as_text=True))) == 1
    assert verify(audit_app).ok
