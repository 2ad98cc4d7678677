"""`flask dashboard audit verify` and `export`."""

from __future__ import annotations

import csv
import io
import json

import sqlalchemy as sa

from dashboard.audit import service as audit
from dashboard.audit.models import AuditEvent
from dashboard.extensions import db


def record(app, *actions: str) -> None:
    with app.app_context():
        for action in actions:
            audit.record(action=action, actor_name="operator", details={"action": action})
            db.session.commit()


def run(app, *args: str):
    return app.test_cli_runner().invoke(args=["dashboard", "audit", *args])


def test_verify_exits_0_on_an_intact_log(audit_app):
    record(audit_app, "login", "job.started", "job.finished")
    result = run(audit_app, "verify")
    assert result.exit_code == 0, result.output
    assert "audit log intact: 3 events" in result.output


def test_verify_exits_1_naming_the_edited_event(audit_app):
    record(audit_app, "login", "job.started", "job.finished")
    engine = sa.create_engine(audit_app.config["SQLALCHEMY_DATABASE_URI"])
    with engine.begin() as connection:
        connection.execute(
            sa.update(AuditEvent.__table__)
            .where(AuditEvent.__table__.c.seq == 2)
            .values(actor_name="someone else")
        )
    engine.dispose()

    result = run(audit_app, "verify")
    assert result.exit_code == 1
    assert "event seq 2 (id 2) was altered" in result.output


def test_verify_checks_a_head_noted_elsewhere(audit_app):
    record(audit_app, "login", "logout")
    head = run(audit_app, "verify").output.splitlines()[-1].removeprefix("head ")
    assert run(audit_app, "verify", "--expect-head", head).exit_code == 0

    wrong = run(audit_app, "verify", "--expect-head", "3:" + "a" * 64)
    assert wrong.exit_code == 1 and "event seq 3 (the expected head) is missing" in wrong.output
    unreadable = run(audit_app, "verify", "--expect-head", "yesterday")
    assert unreadable.exit_code == 2 and "is not SEQ:HASH" in unreadable.output


def test_export_csv_holds_exactly_the_matching_rows(audit_app):
    record(audit_app, "login", "job.started", "login", "logout")
    result = run(audit_app, "export", "--format", "csv", "--action", "login")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert [(row["seq"], row["action"]) for row in rows] == [("1", "login"), ("3", "login")]
    assert json.loads(rows[0]["details"]) == {"action": "login"}


def test_export_json_to_a_file_holds_exactly_the_matching_rows(audit_app, tmp_path):
    record(audit_app, "login", "job.started", "login", "logout")
    target = tmp_path / "audit.json"
    result = run(
        audit_app, "export", "--format", "json", "--action", "job.started", "--output", str(target)
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(target.read_text())
    assert [(row["seq"], row["action"]) for row in rows] == [(2, "job.started")]
    assert rows[0]["hash"] and rows[0]["prev_hash"]


def test_export_filters_by_time(audit_app):
    record(audit_app, "login")
    future = run(audit_app, "export", "--format", "json", "--since", "2999-01-01")
    past = run(audit_app, "export", "--format", "json", "--until", "2000-01-01")
    everything = run(audit_app, "export", "--format", "json", "--since", "2000-01-01")
    assert json.loads(future.output) == [] == json.loads(past.output)
    assert len(json.loads(everything.output)) == 1


def test_export_refuses_a_time_it_cannot_read(audit_app):
    result = run(audit_app, "export", "--format", "csv", "--since", "last tuesday")
    assert result.exit_code == 2 and "is not a date or time" in result.output
