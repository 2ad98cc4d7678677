"""Scratch work needs a role (issue 13): schema diffs, rehearsals, drift checks and live
comparisons build scratch databases or run the managed app's scripts, so a viewer gets a 403
page and no button, and nothing runs; an operator can; a viewer still sees stored results."""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest
import sqlalchemy as sa

from dashboard.audit.models import AuditEvent
from dashboard.drift.models import DriftCheck
from dashboard.extensions import db
from tests.helpers import Auth, ScriptTree, add_user, app_for_tree, upgrade_with_a_job
from tests.test_tasks import start_and_wait

HX = {"HX-Request": "true"}

# Each revision notes every database it really runs on (not an offline SQL render) in a file,
# so a test can tell whether a request ran the managed app's scripts anywhere.
NOTE_THE_DATABASE = """
if not op.get_context().as_sql:
    with open({marker!r}, "a") as notes:
        notes.write(str(op.get_bind().engine.url) + "\\n")
op.create_table({table!r}, sa.Column("id", sa.Integer, primary_key=True))
"""


class Site:
    """A dashboard on a two-revision tree: `dev` at r00 (unprotected), `prod` at base
    (protected, one approval), a viewer and an operator signed in, and the scripts' notes."""

    def __init__(self, tmp_path: Path, tree: ScriptTree) -> None:
        self.marker = tmp_path / "scripts-ran-on.txt"
        for index, down in enumerate((None, "r00")):
            tree.add(
                f"r{index:02d}",
                down,
                upgrade=NOTE_THE_DATABASE.format(marker=str(self.marker), table=f"t{index}"),
                downgrade=f"op.drop_table('t{index}')",
            )
        self.app = app_for_tree(
            tmp_path / "site",
            tree,
            {"dev": "sqlite:///db/dev.db", "prod": "sqlite:///db/prod.db"},
            ENV_EXTRA={"prod": {"protected": True, "approvals": 1}},
        )
        upgrade_with_a_job(self.app, "dev", "r00")
        self.marker.unlink()  # that run was on dev itself; from here on, only scratch runs
        add_user(self.app, "vic", "viewer")
        add_user(self.app, "opal", "operator")
        self.viewer, self.operator = self.app.test_client(), self.app.test_client()
        Auth(self.viewer).login("vic")
        Auth(self.operator).login("opal")
        requested = Auth(self.operator).post(
            "/environments/prod/rollouts", {"target": "head", "reason": "ship t1"}
        )
        assert requested.status_code == 303, requested.get_data(as_text=True)[:800]
        self.rollout_id = int(requested.headers["Location"].rsplit("/", 1)[1])
        assert not self.marker.exists()

    def scripts_ran(self) -> list[str]:
        """The databases the scripts ran on since the site was built."""
        return self.marker.read_text().splitlines() if self.marker.exists() else []

    def drift_checks(self) -> int:
        with self.app.app_context():
            return db.session.scalar(sa.select(sa.func.count()).select_from(DriftCheck))

    def newest_event(self) -> AuditEvent:
        with self.app.app_context():
            event = db.session.scalar(sa.select(AuditEvent).order_by(AuditEvent.seq.desc()))
            db.session.expunge(event)
            return event


@pytest.fixture
def site(tmp_path: Path, script_tree: ScriptTree) -> Site:
    built = Site(tmp_path, script_tree)
    yield built
    built.app.extensions["dashboard.status_board"].stop()


def text_of(response) -> str:
    return html.unescape(response.get_data(as_text=True))


# (method, path, why): schema diffs and rehearsals start with a POST (issue 14).
SCRATCH_ROUTES = {
    "schema diff": (
        "POST",
        "/environments/dev/diff/schema",
        "A schema diff builds two scratch databases",
    ),
    "rehearsal": (
        "POST",
        "/environments/dev/diff/rehearsal",
        "A rehearsal builds a scratch database",
    ),
    "rollout schema diff": (
        "GET",
        "/rollouts/{rollout_id}/schema",
        "A schema diff builds two scratch",
    ),
}


def ask(site, route: str, headers: dict | None = None):
    """Ask for a scratch route as the viewer, the way its page does (GET, or a POST with CSRF)."""
    method, path, _ = SCRATCH_ROUTES[route]
    path = path.format(rollout_id=site.rollout_id)
    if method == "POST":
        return Auth(site.viewer).post(path, headers=headers or {})
    return site.viewer.get(path, headers=headers or {})


@pytest.mark.parametrize("route", sorted(SCRATCH_ROUTES))
def test_a_viewer_gets_a_403_page_and_no_script_runs(site, route):
    reason = SCRATCH_ROUTES[route][2]
    response = ask(site, route)
    text = text_of(response)

    assert response.status_code == 403
    assert "<html" in text and "You may not do that" in text
    assert reason in text and "this needs the operator role or higher" in text
    assert site.scripts_ran() == []


@pytest.mark.parametrize("route", sorted(SCRATCH_ROUTES))
def test_a_viewers_htmx_request_gets_a_403_fragment(site, route):
    reason = SCRATCH_ROUTES[route][2]
    response = ask(site, route, headers=HX)
    assert response.status_code == 403
    assert "<html" not in text_of(response) and reason in text_of(response)
    assert site.scripts_ran() == []


def test_an_operator_gets_the_schema_diff_built_on_scratch_databases(site):
    text = start_and_wait(site.operator, "/environments/dev/diff/schema")
    assert re.search(r'class="change added" data-kind="table" data-table="t1"', text)
    ran = site.scripts_ran()
    assert ran and not any(url.endswith("/dev.db") for url in ran)


def test_an_operator_rehearses_on_a_scratch_database(site):
    text = start_and_wait(site.operator, "/environments/dev/diff/rehearsal")
    assert 'data-outcome="succeeded"' in text
    ran = site.scripts_ran()
    assert ran and not any(url.endswith("/dev.db") for url in ran)


def test_an_operator_sees_the_rollouts_schema_diff(site):
    response = site.operator.get(f"/rollouts/{site.rollout_id}/schema")
    assert response.status_code == 200
    assert 'data-table="t0"' in text_of(response) and 'data-table="t1"' in text_of(response)
    assert site.scripts_ran()


def test_a_viewer_cannot_check_drift_and_the_refusal_is_audited(site):
    for form in ({"environment": "dev"}, {}):
        response = Auth(site.viewer).post("/drift/check", form)
        assert response.status_code == 403
        assert "A drift check builds a scratch database" in text_of(response)
    assert site.drift_checks() == 0
    assert site.scripts_ran() == []
    event = site.newest_event()
    assert (event.action, event.actor_name) == ("access.denied", "vic")
    assert event.details["path"] == "/drift/check"


def test_an_operator_checks_drift_and_the_viewer_sees_the_stored_report(site):
    text = start_and_wait(site.operator, "/drift/check", {"environment": "dev"})
    assert 'data-env="dev" data-drift="none"' in text
    assert site.drift_checks() == 1 and site.scripts_ran()

    page = text_of(site.viewer.get("/drift"))
    assert 'data-env="dev" data-drift="none"' in page
    assert 'action="/drift/check"' not in page
    assert "Checking needs the operator role" in page
    assert "Comparing needs the operator role" in page


def test_a_viewer_cannot_compare_live_schemas_an_operator_can(site):
    refused = site.viewer.get("/drift/compare?a=dev&b=prod")
    assert refused.status_code == 403
    assert "A comparison connects to both environments" in text_of(refused)

    compared = site.operator.get("/drift/compare?a=dev&b=prod")
    assert compared.status_code == 200
    # dev is at r00, prod at base: t0 is only in dev.
    assert 'data-table="t0"' in text_of(compared)


def test_the_viewer_sees_the_diff_page_without_the_scratch_work(site):
    page = text_of(site.viewer.get("/environments/dev/diff"))
    assert 'data-revision="r01"' in page  # the steps and their SQL are there
    assert "/diff/schema" not in page and "/diff/rehearsal" not in page
    assert "The schema diff needs the operator role" in page
    assert "Rehearsing needs the operator role." in page
    assert site.scripts_ran() == []

    operator_page = text_of(site.operator.get("/environments/dev/diff"))
    assert 'hx-post="/environments/dev/diff/schema' in operator_page
    assert 'hx-post="/environments/dev/diff/rehearsal' in operator_page


def test_the_viewer_sees_the_rollout_without_loading_its_schema_diff(site):
    page = text_of(site.viewer.get(f"/rollouts/{site.rollout_id}"))
    assert 'data-revision="r01"' in page and "ship t1" in page
    assert f"/rollouts/{site.rollout_id}/schema" not in page
    assert "The schema diff needs the operator role" in page
    operator_page = text_of(site.operator.get(f"/rollouts/{site.rollout_id}"))
    assert f'hx-get="/rollouts/{site.rollout_id}/schema"' in operator_page
