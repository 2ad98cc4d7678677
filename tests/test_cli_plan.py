"""The CLI's plan: steps without SQL, and a fingerprint that never passes for a reviewed one."""

from __future__ import annotations

import re

import sqlalchemy as sa

from dashboard.environments import environment_named, get_project
from dashboard.extensions import db
from dashboard.jobs.models import Job
from dashboard.plans.service import build_plan
from tests.helpers import Auth, add_user, app_for_tree, versions

# Offline mode (what renders a plan's SQL) fails; the real run works. The CLI renders nothing,
# so it runs; the page still shows why the SQL cannot be rendered.
NO_OFFLINE = (
    "if op.get_context().as_sql:\n"
    "    raise RuntimeError('this step cannot render offline')\n"
    "op.create_table('t9', sa.Column('id', sa.Integer, primary_key=True))"
)


def test_the_cli_runs_the_steps_it_printed_and_binds_them(tmp_path, script_tree):
    script_tree.linear(2)
    script_tree.add("r02", down="r01", upgrade=NO_OFFLINE)
    app = app_for_tree(tmp_path / "site", script_tree, {"dev": "sqlite:///dev.db"})

    result = app.test_cli_runner().invoke(args=["dashboard", "upgrade", "dev"])

    assert result.exit_code == 0, result.output
    assert "through r00, r01, r02" in result.output
    printed = re.search(r"fingerprint ([0-9a-f]{64})", result.output).group(1)
    assert "cannot render offline" not in result.output
    assert versions(sa.make_url(f"sqlite:///{tmp_path / 'site' / 'dev.db'}")) == ["r02"]
    with app.app_context():
        job = db.session.get(Job, 1)
        assert (job.state, job.fingerprint, job.planned_revisions) == (
            "succeeded",
            printed,
            ["r00", "r01", "r02"],
        )


def test_a_steps_only_fingerprint_is_refused_where_a_reviewed_plan_is_needed(
    tmp_path, script_tree
):
    script_tree.linear(2)
    app = app_for_tree(tmp_path / "site", script_tree, {"dev": "sqlite:///dev.db"})
    with app.app_context():
        arguments = dict(
            project=get_project(), environment=environment_named("dev"), direction="upgrade"
        )
        steps_only = build_plan(**arguments, target="head", render=False)
        reviewed = build_plan(**arguments, target="head")
    assert steps_only.revision_ids == reviewed.revision_ids == ["r00", "r01"]
    assert steps_only.fingerprint != reviewed.fingerprint
    assert not steps_only.rendered and reviewed.rendered

    add_user(app, "olga", "operator")
    client = app.test_client()
    auth = Auth(client)
    auth.login("olga")
    form = {"operation": "upgrade", "target": "head", "fingerprint": steps_only.fingerprint}
    refused = auth.post("/environments/dev/jobs", data=form)

    assert refused.status_code == 409
    assert "The plan changed since it was shown" in refused.get_data(as_text=True)
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Job)) == 0
