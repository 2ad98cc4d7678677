"""Tail-proof audit: every committed head is anchored outside the store, and verify checks it."""

from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa

from dashboard import create_app
from dashboard.audit import service as audit
from dashboard.audit.models import AuditCheckpoint, AuditEvent
from dashboard.extensions import db
from tests.helpers import AUDIT_HMAC_KEY, REPO, upgrade_store

events_table = AuditEvent.__table__
checkpoints_table = AuditCheckpoint.__table__


@pytest.fixture
def anchored_app(audit_store, demo_environments, tmp_path):
    """The dashboard on a throwaway store (each backend) with its own anchor file."""
    app = create_app(
        "testing",
        {
            "ENVIRONMENTS_FILE": str(demo_environments),
            "SQLALCHEMY_DATABASE_URI": audit_store.render_as_string(hide_password=False),
            "AUDIT_HMAC_KEY": AUDIT_HMAC_KEY,
            "AUDIT_ANCHOR_FILE": str(tmp_path / "anchors" / "audit-anchors.log"),
        },
    )
    upgrade_store(app)
    yield app
    with app.app_context():
        db.engine.dispose()


def record(app, count: int) -> None:
    with app.app_context():
        for index in range(count):
            audit.record(action="test.event", actor_name="tester", details={"index": index})
            db.session.commit()


def stored_heads(app) -> dict[int, str]:
    with app.app_context():
        rows = db.session.execute(sa.select(events_table.c.seq, events_table.c.hash)).all()
    return {row.seq: row.hash for row in rows}


def delete_newest(app, keep: int) -> None:
    """Delete the newest events and their checkpoints, as the store's owner could."""
    engine = sa.create_engine(app.config["SQLALCHEMY_DATABASE_URI"], poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as connection:
            connection.execute(sa.delete(checkpoints_table).where(checkpoints_table.c.seq > keep))
            connection.execute(sa.delete(events_table).where(events_table.c.seq > keep))
    finally:
        engine.dispose()


def test_each_committed_head_is_appended_to_the_anchor_file(anchored_app):
    record(anchored_app, 4)
    with anchored_app.app_context():
        audit.record(action="test.rolled_back", actor_name="tester", details={})
        db.session.rollback()  # never committed: never anchored

    path = Path(anchored_app.config["AUDIT_ANCHOR_FILE"])
    lines = path.read_text().splitlines()
    anchored = dict(audit.parse_head(line.split()[0]) for line in lines)
    assert anchored == stored_heads(anchored_app)
    assert sorted(anchored) == [1, 2, 3, 4]

    result = anchored_app.test_cli_runner().invoke(args=["dashboard", "audit", "verify"])
    assert result.exit_code == 0, result.output
    assert f"checked against 4 anchored heads in {path} (newest seq 4)" in result.output


def test_deleting_the_newest_events_with_their_checkpoints_fails_verify(anchored_app):
    record(anchored_app, 6)
    delete_newest(anchored_app, keep=3)
    runner = anchored_app.test_cli_runner()

    # The chain and its checkpoints alone still agree: only the anchors show the cut.
    assert runner.invoke(args=["dashboard", "audit", "verify", "--no-anchors"]).exit_code == 0
    result = runner.invoke(args=["dashboard", "audit", "verify"])

    assert result.exit_code == 1
    path = anchored_app.config["AUDIT_ANCHOR_FILE"]
    assert (
        f"audit log damaged: seq 6 was anchored in {path}, but the log ends at seq 3: "
        "its newest events were deleted" in result.output
    )
    assert "Traceback" not in result.output


def test_a_rewritten_event_differs_from_its_anchor(anchored_app):
    record(anchored_app, 3)
    heads = stored_heads(anchored_app)
    path = Path(anchored_app.config["AUDIT_ANCHOR_FILE"])
    # Someone who can also write the anchor file's host would have to rewrite it too.
    other = "f" * 64
    path.write_text(path.read_text().replace(heads[2], other))

    result = anchored_app.test_cli_runner().invoke(args=["dashboard", "audit", "verify"])

    assert result.exit_code == 1
    assert "event seq 2 (id" in result.output and f"differs from its anchor in {path}" in (
        result.output
    )


def test_a_broken_anchor_file_is_named_with_its_line(anchored_app, tmp_path):
    record(anchored_app, 2)
    broken = tmp_path / "broken.log"
    broken.write_text(Path(anchored_app.config["AUDIT_ANCHOR_FILE"]).read_text() + "not-a-head\n")

    result = anchored_app.test_cli_runner().invoke(
        args=["dashboard", "audit", "verify", "--anchors", str(broken)]
    )

    assert result.exit_code == 1
    assert f"{broken}, line 3:" in result.output
    assert "Traceback" not in result.output


@pytest.mark.slow  # the image's entry script and gunicorn
def test_the_image_logs_and_anchors_every_head(tmp_path):
    """The production settings the image runs with: heads on stderr and in the anchor file."""
    store = tmp_path / "store.db"
    anchors = tmp_path / "volume" / "audit-anchors.log"
    environ = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("FLASK_", "DASHBOARD_", "SQLALCHEMY_"))
    }
    environ.update(
        PATH=f"{REPO / '.venv' / 'bin'}{os.pathsep}{environ.get('PATH', '')}",
        HOME=str(tmp_path),
        DASHBOARD_CONFIG="production",
        SECRET_KEY=secrets.token_hex(32),
        DASHBOARD_DATABASE_URL=f"sqlite:///{store}",
        DASHBOARD_AUDIT_ANCHOR_FILE=str(anchors),
        ENVIRONMENTS_FILE=str(REPO / "environments.yaml"),
    )
    done = subprocess.run(
        [
            str(REPO / "docker" / "entrypoint.sh"),
            "flask",
            "dashboard",
            "create-user",
            "ann",
            "--role",
            "admin",
            "--password-stdin",
        ],
        input="a-long-enough-password\n",
        env=environ,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    head = anchors.read_text().split()[0]
    seq, head_hash = audit.parse_head(head)
    assert seq == 1
    assert f"dashboard.audit INFO audit head 1:{head_hash} (signed checkpoint)" in done.stderr
