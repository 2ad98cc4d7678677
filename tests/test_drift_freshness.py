"""Drift freshness (issue 15, item 4): a drift result whose environment moved since the check
shows as outdated — never green — on the Drift page, the Overview and the environment page until
it is checked again; `drift_check_minutes` schedules checks, run by the lease-holding refresher."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from dashboard.drift.models import DriftCheck
from dashboard.drift.service import with_freshness
from dashboard.environments import EnvironmentStatus, Status, get_board, load_project
from dashboard.errors import ConfigurationError
from dashboard.extensions import db
from dashboard.scheduler.drift_schedule import SCHEDULER, start_due_checks
from dashboard.schema import DriftReport, SchemaDiff
from tests.helpers import (
    Auth,
    add_user,
    app_for_tree,
    upgrade_with_a_job,
    write_environments,
)
from tests.test_tasks import HX, WAIT_SECONDS, start_and_wait, tasks_in, text_of


def row_of(page: str, attribute: str, name: str) -> str:
    found = re.search(rf'<tr class="[\w-]+" {attribute}="{name}".*?</tr>', page, re.S)
    assert found, f"no row for {name}:\n{page[:2000]}"
    return found.group(0)


def drift_badge(row: str) -> tuple[str, str]:
    """The tone and the words of the drift badge in a row: ("ok", "no drift")."""
    found = re.search(r'<span class="badge (\w+) drift-badge[^"]*"[^>]*>([^<]+)</span>', row)
    assert found, row
    return found.group(1), found.group(2)


def refreshed_overview(client) -> str:
    """Ask for every status to be read now (the Overview's Refresh) and return the table."""
    response = Auth(client).post("/?refresh=1", headers=HX)
    assert response.status_code == 200
    return text_of(response)


# --- outdated until checked again -----------------------------------------------------------


@pytest.mark.stores
def test_a_check_of_an_environment_that_moved_shows_outdated_until_checked_again(demo_app, clients):
    operator, viewer = clients["operator"], clients["viewer"]
    start_and_wait(operator, "/drift/check", {"environment": "staging"})
    before = refreshed_overview(viewer)
    assert drift_badge(row_of(before, "data-env", "staging")) == ("ok", "no drift")
    revisions_then = re.findall(r'/revisions/([0-9a-f]+)"', row_of(before, "data-env", "staging"))

    upgrade_with_a_job(demo_app, "staging")  # staging moves to head
    overview = refreshed_overview(viewer)

    staging = row_of(overview, "data-env", "staging")
    assert 'data-status="up_to_date"' in staging
    assert drift_badge(staging) == ("warn", "drift outdated")
    assert drift_badge(row_of(overview, "data-env", "dev"))[1] == "drift not checked"
    drift_page = text_of(viewer.get("/drift"))
    drift_row = row_of(drift_page, "data-env", "staging")
    assert 'data-drift="none" data-outdated="true"' in drift_row
    assert drift_badge(drift_row) == ("warn", "drift outdated")
    note = re.sub(r"<[^>]+>", "", re.search(r'outdated-note">(.*?)</div>', drift_row).group(1))
    now_at = re.findall(r'/revisions/([0-9a-f]+)"', staging)
    assert note.startswith(f"Outdated: checked at {' '.join(r[:12] for r in revisions_then)}")
    assert f"staging is at {' '.join(r[:12] for r in now_at)} now. Check again." in note
    environment_page = text_of(viewer.get("/environments/staging"))
    heading = re.search(r"<h1>.*?</h1>", environment_page, re.S).group(0)
    assert drift_badge(heading) == ("warn", "drift outdated")

    start_and_wait(operator, "/drift/check", {"environment": "staging"})

    again = text_of(viewer.get("/"))
    assert drift_badge(row_of(again, "data-env", "staging")) == ("ok", "no drift")
    assert "data-outdated" not in row_of(text_of(viewer.get("/drift")), "data-env", "staging")
    heading = re.search(r"<h1>.*?</h1>", text_of(viewer.get("/environments/staging")), re.S)
    assert drift_badge(heading.group(0)) == ("ok", "no drift")


CHECKED = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def report(revisions: tuple[str, ...] = ("aaa",)) -> DriftReport:
    return DriftReport("dev", "none", SchemaDiff(), None, CHECKED, revisions)


def status(current: list[str], *, read: datetime, state: Status = Status.BEHIND):
    return EnvironmentStatus(name="dev", status=state, current=current, checked_at=read)


@pytest.mark.parametrize(
    ("read_status", "outdated"),
    [
        (status(["bbb"], read=CHECKED + timedelta(seconds=5)), True),  # moved after the check
        (status([], read=CHECKED + timedelta(seconds=5)), True),  # downgraded to base
        (status(["aaa"], read=CHECKED + timedelta(seconds=5)), False),  # still there
        (status(["bbb"], read=CHECKED - timedelta(seconds=5)), False),  # read before the check
        (
            status([], read=CHECKED + timedelta(seconds=5), state=Status.UNREACHABLE),
            False,
        ),  # unknown
        (None, False),  # never read
    ],
)
def test_a_report_is_outdated_only_when_a_later_read_found_other_revisions(read_status, outdated):
    shown = with_freshness(report(), read_status)
    assert shown.outdated is outdated
    if outdated:
        assert shown.moved_to == tuple(read_status.current)
        assert shown.as_dict()["outdated"] is True


# --- drift_check_minutes --------------------------------------------------------------------


def load_with(tmp_path: Path, script_tree, extra: str):
    script_tree.add_table("r00", None, "t0")
    text = (
        f"migrations: {script_tree.path}\n"
        "environments:\n"
        "  - name: dev\n"
        "    url: sqlite:///dev.db\n"
        f"{extra}"
    )
    return load_project(write_environments(tmp_path, text), environ={})


def test_drift_check_minutes_is_read_per_environment(tmp_path, script_tree):
    project = load_with(tmp_path, script_tree, "    drift_check_minutes: 15\n")
    assert project.get("dev").drift_check_minutes == 15


@pytest.mark.parametrize("value", ["0", "-5", "1.5", "ten", "true", "'15'"])
def test_a_bad_drift_check_minutes_names_the_file_line_and_key(tmp_path, script_tree, value):
    with pytest.raises(ConfigurationError) as raised:
        load_with(tmp_path, script_tree, f"    drift_check_minutes: {value}\n")
    message = str(raised.value)
    assert "environments.yaml, line 5, key 'environments[0] (dev).drift_check_minutes'" in message
    assert "a whole number of minutes (at least 1)" in message


def wait_for_drift_tasks(app) -> list:
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        found = tasks_in(app, "drift_check")
        if all(task.state not in ("queued", "running") for task in found):
            return found
        assert time.monotonic() < deadline, [task.state for task in found]
        time.sleep(0.2)


def stored_checks(app) -> dict[str, DriftCheck]:
    with app.app_context():
        rows = list(db.session.scalars(sa.select(DriftCheck)))
        for row in rows:
            db.session.expunge(row)
        return {row.environment: row for row in rows}


@pytest.mark.stores
def test_the_refresher_checks_each_scheduled_environment_when_its_minutes_are_up(
    tmp_path, script_tree, store_database
):
    script_tree.add_table("r00", None, "t0")
    app = app_for_tree(
        tmp_path,
        script_tree,
        {"dev": "sqlite:///db/dev.db", "staging": "sqlite:///db/staging.db"},
        store=store_database,
        ENV_EXTRA={"dev": {"drift_check_minutes": 30}},
    )

    with app.app_context():
        get_board().run_chores()  # what the lease holder's refresher runs after each read
    (task,) = wait_for_drift_tasks(app)
    assert task.requested_by == SCHEDULER and task.params["environments"] == ["dev"]
    assert task.state == "succeeded"
    checks = stored_checks(app)
    assert set(checks) == {"dev"}  # staging has no schedule
    assert checks["dev"].checked_by == SCHEDULER and checks["dev"].status == "none"

    with app.app_context():
        get_board().run_chores()  # checked a moment ago: not due
    assert len(wait_for_drift_tasks(app)) == 1

    # 31 minutes later (the stored check made older), whichever process holds the lease then
    # checks again.
    with app.app_context():
        row = db.session.get(DriftCheck, "dev")
        row.checked_at = row.checked_at - timedelta(minutes=31)
        db.session.commit()
        assert start_due_checks(started={}) == ["dev"]
    assert len(wait_for_drift_tasks(app)) == 2
    assert stored_checks(app)["dev"].checked_at.replace(tzinfo=None) > datetime.now(UTC).replace(
        tzinfo=None
    ) - timedelta(minutes=5)

    client = app.test_client()
    add_user(app, "vera", "viewer")
    Auth(client).login("vera")
    drift_page = text_of(client.get("/drift"))
    assert "every 30 min" in row_of(drift_page, "data-env", "dev")
    assert "every 30 min" not in row_of(drift_page, "data-env", "staging")
