"""Background tasks in headless Chromium: the progress line shows at once, then the result is
swapped in without a reload (issue 14)."""

from __future__ import annotations

from tests.helpers import DOCS, sign_in


def test_the_schema_diff_and_a_rehearsal_show_progress_then_their_result(
    page, live_server, demo_passwords
):
    sign_in(page, live_server, "operator", demo_passwords["operator"])
    page.goto(live_server + "/environments/production/diff")

    # The schema diff starts by itself (a POST): its progress line first, then the changes.
    page.locator("#schema-diff .task-progress .task-line").wait_for(timeout=30_000)
    page.locator('#schema-diff tr.change.dropped[data-name="legacy_username"]').wait_for(
        timeout=60_000
    )
    assert page.locator("#schema-diff .task-progress").count() == 0
    assert "Computed at" in page.locator("#schema-diff .task-meta").inner_text()

    page.get_by_role("button", name="Rehearse on a scratch database").click()
    line = page.locator("#rehearsal-result .task-progress .task-line")
    line.wait_for(timeout=30_000)
    assert "Waiting for a worker" in line.inner_text() or "elapsed" in line.inner_text()
    page.screenshot(path=str(DOCS / "task-progress.png"), full_page=True)
    page.locator('#rehearsal-result [data-outcome="succeeded"]').first.wait_for(timeout=90_000)
    assert page.locator("#rehearsal-result .task-progress").count() == 0
    batch = page.locator('#rehearsal-result li[data-revision="7ca9ba531bc0"] pre.statements')
    assert "_alembic_tmp_customer" in batch.inner_text()
    assert page.get_by_role("button", name="Run again").count() == 2
    assert page.console_errors == []


def test_check_all_shows_each_environment_then_the_reports(page, live_server, demo_passwords):
    sign_in(page, live_server, "operator", demo_passwords["operator"])
    page.goto(live_server + "/drift")
    page.get_by_role("button", name="Check all").click()
    page.locator("#drift .task-progress").wait_for(timeout=30_000)
    page.locator('tr[data-env="production"][data-drift="none"]').wait_for(timeout=90_000)
    page.locator("#drift .task-progress").wait_for(state="detached", timeout=30_000)
    assert page.locator('tr[data-drift="none"]').count() == 3
    assert page.console_errors == []
