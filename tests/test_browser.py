"""The pages in headless Chromium, with htmx served from the npm copy in place of the CDN."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from dashboard.htmx import HTMX_CDN_URL, HTMX_SRI, HTMX_VERSION
from tests.helpers import DOCS, HTMX_COPY, IN_CI, REPO, open_tab, sign_in


def test_npm_copy_is_the_pinned_version_with_the_pinned_hash():
    import base64
    import hashlib

    if not HTMX_COPY.exists() and not IN_CI:
        pytest.skip("node_modules is not installed (scripts/test installs it)")
    lock = json.loads((REPO / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/htmx.org"]["version"] == HTMX_VERSION
    assert json.loads((REPO / "package.json").read_text())["devDependencies"]["htmx.org"] == (
        HTMX_VERSION
    )
    digest = base64.b64encode(hashlib.sha384(HTMX_COPY.read_bytes()).digest()).decode()
    assert HTMX_SRI == f"sha384-{digest}"


def test_overview_refresh_and_click_through(page, live_server, demo_folder, demo_passwords):
    sign_in(page, live_server, "viewer", demo_passwords["viewer"])
    page.wait_for_function("window.htmx !== undefined")
    rows = page.locator("tr.env-row")
    assert rows.count() == 3
    assert rows.nth(0).locator(".badge.status").inner_text() == "Up to date"
    assert rows.nth(1).locator(".badge.status").inner_text() == "2 behind"
    assert rows.nth(2).locator(".badge.status").inner_text() == "5 behind"
    page.screenshot(path=str(DOCS / "overview.png"), full_page=True)

    # Move dev away behind the dashboard's back; Refresh re-reads in place (no navigation).
    (demo_folder / "demo" / "dev.db").unlink()
    url_before = page.url
    with page.expect_response(lambda response: "refresh=1" in response.url):
        page.get_by_role("button", name="Refresh").click()
    page.locator('tr[data-env="dev"][data-status="unreachable"]').wait_for()
    assert page.url == url_before
    assert "does not exist" in page.locator('tr[data-env="dev"]').inner_text()

    page.get_by_role("link", name="production").click()
    page.wait_for_url("**/environments/production")
    assert page.locator("h1").first.inner_text().startswith("production")
    assert page.locator("ol.revlist li").count() == 5
    page.screenshot(path=str(DOCS / "environment.png"), full_page=True)

    page.locator("ol.revlist a.rev").nth(1).click()
    page.wait_for_url("**/revisions/8f60afaad46c")
    assert page.locator("h1").inner_text() == "backfill customer display_name"
    assert page.locator(".source .k").count() > 0
    page.screenshot(path=str(DOCS / "revision.png"), full_page=True)
    assert page.console_errors == []


def test_history_draws_the_graph(page, live_server, demo_passwords):
    sign_in(page, live_server, "viewer", demo_passwords["viewer"])
    page.goto(live_server + "/history")
    page.wait_for_function("window.htmx !== undefined")
    assert page.locator("tr.rev-row").count() == 13
    assert page.locator("svg.graph circle.merge").count() == 1
    # The merge's row draws a line into a second lane.
    widths = page.locator("svg.graph").evaluate_all("svgs => svgs.map(s => s.width.baseVal.value)")
    assert max(widths) > min(widths)
    page.screenshot(path=str(DOCS / "history.png"), full_page=True)
    assert page.console_errors == []


def test_overview_on_a_phone(browser, live_server, demo_passwords):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    context.route(HTMX_CDN_URL, lambda route: route.abort())
    try:
        tab = context.new_page()
        sign_in(tab, live_server, "viewer", demo_passwords["viewer"])
        # Without htmx the page still renders every environment.
        assert tab.locator("tr.env-row").count() == 3
        scroll_width = tab.evaluate("document.documentElement.scrollWidth")
        assert scroll_width <= 390
        tab.screenshot(path=str(DOCS / "overview-phone.png"))
    finally:
        context.close()


def test_viewer_sees_no_admin_or_change_controls(page, live_server, demo_passwords):
    sign_in(page, live_server, "viewer", demo_passwords["viewer"])
    page.goto(live_server + "/environments/staging")
    assert page.get_by_role("link", name="Users").count() == 0
    assert page.locator("main form[method=post]").count() == 0
    assert page.get_by_role("button", name=re.compile("upgrade|downgrade|run", re.I)).count() == 0
    page.goto(live_server + "/users")
    assert "You may not do that" in page.locator("main").inner_text()
    page.screenshot(path=str(DOCS / "viewer-forbidden.png"))


def test_admin_creates_a_user_who_can_then_sign_in(page, browser, live_server, demo_passwords):
    sign_in(page, live_server, "admin", demo_passwords["admin"])
    page.get_by_role("link", name="Users").click()
    page.wait_for_url("**/users")
    page.get_by_label("Username").fill("dana")
    page.locator("form.form select[name=role]").select_option("operator")
    page.get_by_role("button", name="Add user").click()
    password = page.locator("code.secret").inner_text()
    assert page.locator('tr[data-user="dana"]').count() == 1
    # Screenshots never show a password: reload, which no longer shows it.
    page.goto(live_server + "/users")
    assert page.locator("code.secret").count() == 0
    page.screenshot(path=str(DOCS / "users.png"), full_page=True)
    page.get_by_role("link", name="Audit").click()
    page.wait_for_url("**/audit")
    assert "user.created" in page.locator("main").inner_text()
    page.screenshot(path=str(DOCS / "audit-user-created.png"), full_page=True)

    other = browser.new_context()
    try:
        tab = other.new_page()
        sign_in(tab, live_server, "dana", password)
        assert "dana" in tab.locator(".who").inner_text()
    finally:
        other.close()


def test_operator_upgrades_staging_and_watches_the_log(page, live_server, demo_passwords):
    sign_in(page, live_server, "operator", demo_passwords["operator"])
    page.get_by_role("link", name="staging").click()
    page.wait_for_url("**/environments/staging")
    # The plan (loaded by htmx) lists the two pending steps before the button.
    page.locator("#plan li.step").first.wait_for()
    assert page.locator("#plan li.step").count() == 2
    page.screenshot(path=str(DOCS / "plan.png"), full_page=True)

    page.on("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Run upgrade to head").click()
    page.wait_for_url("**/jobs/*")
    page.locator('#job-live[data-state="succeeded"]').wait_for(timeout=30_000)
    log = page.locator("#job-log").inner_text()
    assert "Running upgrade 7ca9ba531bc0 -> a86d1732ddb4" in log
    assert "ALTER TABLE orders ADD COLUMN status" in log or "orders" in log
    page.screenshot(path=str(DOCS / "job.png"), full_page=True)

    page.get_by_role("link", name="Overview").click()
    page.get_by_role("button", name="Refresh").click()
    page.locator('tr[data-env="staging"][data-status="up_to_date"]').wait_for()

    page.get_by_role("link", name="Audit").click()
    text = page.locator("main").inner_text()
    for action in ("job.requested", "job.started", "job.succeeded"):
        assert action in text
    assert page.console_errors == []


def test_production_diff_shows_warning_schema_diff_and_downloads_sql(
    page, live_server, demo_passwords
):
    # Scratch databases: an operator's work (issue 13).
    sign_in(page, live_server, "operator", demo_passwords["operator"])
    page.get_by_role("link", name="production").click()
    page.wait_for_url("**/environments/production")
    page.get_by_role("link", name="Full diff: schema changes, rehearsal, SQL file").click()
    page.wait_for_url("**/environments/production/diff?**")

    warning = page.locator("#warnings .warning", has_text="drops column customer.legacy_username")
    assert warning.count() == 1
    # The schema diff loads by itself (htmx) from scratch databases at both ends.
    dropped = page.locator('#schema-diff tr.change.dropped[data-name="legacy_username"]')
    dropped.wait_for(timeout=30_000)
    assert page.locator('#schema-diff tr.change.added[data-name="status"]').count() == 1

    page.get_by_role("button", name="Rehearse on a scratch database").click()
    page.locator('#rehearsal-result [data-outcome="succeeded"]').first.wait_for(timeout=60_000)
    batch = page.locator('#rehearsal-result li[data-revision="7ca9ba531bc0"] pre.statements')
    assert "_alembic_tmp_customer" in batch.inner_text()
    page.screenshot(path=str(DOCS / "diff.png"), full_page=True)

    with page.expect_download() as download_info:
        page.get_by_role("link", name="Download SQL").click()
    download = download_info.value
    assert download.suggested_filename.endswith(".sql")
    sql = Path(download.path()).read_text()
    assert "ALTER TABLE customer ADD COLUMN display_name" in sql
    assert "-- warning: " in sql
    assert page.console_errors == []


def test_production_rollout_with_two_approvals_end_to_end(
    browser, live_server, demo_app, demo_passwords
):
    from dashboard.users import service as users
    from tests.helpers import TEST_PASSWORD, upgrade_with_a_job

    upgrade_with_a_job(demo_app, "staging")  # promotion order: staging first
    with demo_app.app_context():
        users.create_user(username="bea", password=TEST_PASSWORD, role="approver", actor=None)
    tabs = {}
    contexts = []
    try:
        for name, password in (
            ("operator", demo_passwords["operator"]),
            ("approver", demo_passwords["approver"]),
            ("bea", TEST_PASSWORD),
        ):
            context, tab = open_tab(browser)
            contexts.append(context)
            sign_in(tab, live_server, name, password)
            tabs[name] = tab

        operator = tabs["operator"]
        operator.get_by_role("link", name="production").click()
        operator.get_by_role("link", name="Request a rollout to head").click()
        operator.wait_for_url("**/environments/production/rollouts/new?**")
        assert operator.locator("#gate").count() == 0  # staging already has head
        operator.get_by_label("Why (shown to the approvers)").fill("Ship order status (SHOP-42)")
        operator.get_by_label("Ticket link (optional)").fill("https://tickets.example/SHOP-42")
        operator.get_by_role("button", name="Request rollout").click()
        operator.wait_for_url(re.compile(r".*/rollouts/\d+$"))
        rollout_url = operator.url
        assert operator.locator('#rollout[data-state="pending"]').count() == 1
        assert "You requested this rollout" in operator.locator("#votes").inner_text()
        operator.locator('#schema-diff tr.change[data-name="legacy_username"]').wait_for()
        operator.screenshot(path=str(DOCS / "rollout-requested.png"), full_page=True)

        for name, comment in (("approver", "Diff reviewed"), ("bea", "Rehearsal is green")):
            tab = tabs[name]
            tab.get_by_role("link", name="Rollouts").click()
            tab.locator("tr.rollout-row a").first.click()
            tab.wait_for_url(rollout_url)
            tab.get_by_label("Comment (optional)").fill(comment)
            tab.get_by_role("button", name="Approve").click()
            tab.wait_for_url(rollout_url)
            assert comment in tab.locator("#votes").inner_text()
        bea = tabs["bea"]
        assert bea.locator('#rollout[data-state="approved"]').count() == 1
        bea.screenshot(path=str(DOCS / "rollout-approved.png"), full_page=True)

        operator.goto(rollout_url)
        operator.once("dialog", lambda dialog: dialog.accept())
        operator.get_by_role("button", name="Execute").click()
        operator.wait_for_url("**/jobs/*")
        operator.locator('#job-live[data-state="succeeded"]').wait_for(timeout=60_000)
        operator.screenshot(path=str(DOCS / "rollout-job.png"), full_page=True)

        operator.goto(rollout_url)
        assert operator.locator('#rollout[data-state="executed"]').count() == 1
        timeline = operator.locator("#timeline").inner_text()
        for action in ("rollout.requested", "rollout.approved", "rollout.executed"):
            assert action in timeline
        operator.screenshot(path=str(DOCS / "rollout-executed.png"), full_page=True)

        operator.get_by_role("link", name="Overview").click()
        operator.get_by_role("button", name="Refresh").click()
        operator.locator('tr[data-env="production"][data-status="up_to_date"]').wait_for()
        operator.screenshot(path=str(DOCS / "rollout-overview.png"), full_page=True)

        operator.get_by_role("link", name="Audit").click()
        audit_text = operator.locator("main").inner_text()
        for action in (
            "rollout.requested",
            "rollout.approved",
            "rollout.executed",
            "job.succeeded",
        ):
            assert action in audit_text
        operator.screenshot(path=str(DOCS / "rollout-audit.png"), full_page=True)
        for tab in tabs.values():
            assert tab.console_errors == []
    finally:
        for context in contexts:
            context.close()

    verified = demo_app.test_cli_runner().invoke(args=["dashboard", "audit", "verify"])
    assert verified.exit_code == 0, verified.output


def test_drift_check_finds_a_hand_made_column_and_compares_environments(
    page, live_server, demo_folder, demo_passwords
):
    from tests.helpers import execute

    execute(
        f"sqlite:///{demo_folder / 'demo' / 'staging.db'}",
        "ALTER TABLE customer ADD COLUMN nickname VARCHAR(40)",
    )
    # Scratch databases: an operator's work (issue 13).
    sign_in(page, live_server, "operator", demo_passwords["operator"])
    page.get_by_role("link", name="Drift", exact=True).click()
    page.wait_for_url("**/drift")
    assert page.locator('tr[data-drift="not_checked"]').count() == 3
    page.get_by_role("button", name="Check all").click()
    # The table fills in environment by environment while the task runs; then its progress goes.
    page.locator("#drift .task-progress").wait_for(timeout=30_000)
    page.locator("#drift .task-progress").wait_for(state="detached", timeout=90_000)
    assert page.locator('tr[data-env="staging"][data-drift="drift"]').count() == 1
    assert page.locator('tr[data-drift="none"]').count() == 2
    detail = page.locator('tr.drift-detail[data-env="staging"]').inner_text()
    assert "nickname" in detail
    page.screenshot(path=str(DOCS / "drift.png"), full_page=True)

    page.get_by_role("button", name="Compare live schemas").click()
    page.wait_for_url("**/drift/compare?**")
    assert page.locator("#comparison tr.change").count() > 0
    page.get_by_role("link", name="Overview").click()
    assert "drift: 1 difference" in page.locator('tr[data-env="staging"]').inner_text()
    page.screenshot(path=str(DOCS / "overview-drift.png"), full_page=True)
    assert page.console_errors == []


def test_a_replayed_run_form_shows_why_it_was_refused(browser, live_server, demo_passwords):
    """Two tabs show the same plan; the second click, after the first ran, is refused in words."""
    first_context, first = open_tab(browser)
    second_context, second = open_tab(browser)
    try:
        for tab in (first, second):
            sign_in(tab, live_server, "operator", demo_passwords["operator"])
            tab.goto(live_server + "/environments/staging")
            tab.locator("#plan li.step").first.wait_for()
            tab.on("dialog", lambda dialog: dialog.accept())
        first.get_by_role("button", name="Run upgrade to head").click()
        first.wait_for_url("**/jobs/*")
        first.locator('#job-live[data-state="succeeded"]').wait_for(timeout=30_000)

        second.get_by_role("button", name="Run upgrade to head").click()
        refusal = second.locator('main [role="alert"][data-status="409"]')
        refusal.wait_for()
        assert "plan changed since it was shown" in refusal.inner_text()
        assert second.url.endswith("/environments/staging")
    finally:
        first_context.close()
        second_context.close()
