"""A requested rollout is rehearsed in the background; in Chromium its page shows the progress,
then swaps in what each step really ran, without a reload (issue 15, item 1)."""

from __future__ import annotations

import re

import pytest

from tests.helpers import DOCS, open_tab, sign_in, upgrade_with_a_job

BATCH_STEP, DATA_STEP = "7ca9ba531bc0", "8f60afaad46c"


@pytest.fixture
def rehearsing_server(demo_app, live_server):
    """The demo served with rollouts rehearsed on request, staging at head (the gate)."""
    demo_app.config["ROLLOUT_REHEARSALS"] = True
    upgrade_with_a_job(demo_app, "staging")
    return live_server


def test_the_approver_sees_the_rehearsed_statements_of_every_step_on_the_rollout_page(
    browser, page, rehearsing_server, demo_passwords
):
    base = rehearsing_server
    sign_in(page, base, "operator", demo_passwords["operator"])
    page.goto(base + "/environments/production/rollouts/new?target=head")
    page.get_by_label("Why (shown to the approvers)").fill("ship the order status column")
    page.get_by_role("button", name="Request rollout").click()
    page.wait_for_url(re.compile(r".*/rollouts/\d+$"))
    rollout_url = page.url

    # At once: the progress line; then the outcome is swapped in by htmx, with no reload.
    assert page.locator('#rehearsal[data-rehearsal="running"] .task-line').count() == 1
    page.evaluate("window.notReloaded = true")
    page.locator('#rehearsal[data-rehearsal="succeeded"]').wait_for(timeout=90_000)
    assert page.evaluate("window.notReloaded") is True
    batch = page.locator(f'#plan-steps li[data-revision="{BATCH_STEP}"]')
    assert batch.get_attribute("data-rehearsal") == "succeeded"
    assert "DROP TABLE customer" in batch.locator("pre.statements").inner_text()
    assert page.console_errors == []

    context, approver = open_tab(browser)
    try:
        sign_in(approver, base, "approver", demo_passwords["approver"])
        approver.goto(rollout_url)
        notice = approver.locator("#rehearsal-notice")
        assert "Rehearsed: every step ran on a scratch database" in notice.inner_text()
        # Steps that cannot render offline show the statements they ran, open, on the page.
        batch = approver.locator(f'#plan-steps li[data-revision="{BATCH_STEP}"]')
        assert batch.locator("pre.statements").is_visible()
        assert "CREATE TABLE _alembic_tmp_customer" in batch.locator("pre.statements").inner_text()
        assert "destructive: drops column" in batch.locator(".rehearsal-warning").inner_text()
        data = approver.locator(f'#plan-steps li[data-revision="{DATA_STEP}"]')
        assert data.locator(".data-migration").is_visible()
        assert approver.get_by_role("button", name="Approve").is_visible()
        approver.screenshot(path=str(DOCS / "rollout-rehearsed.png"), full_page=True)

        approver.set_viewport_size({"width": 390, "height": 844})
        approver.reload()
        batch.locator("pre.statements").wait_for()
        width = approver.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the page is {width} px wide on a 390 px phone"
        approver.screenshot(path=str(DOCS / "rollout-rehearsed-phone.png"), full_page=True)
        assert approver.console_errors == []
    finally:
        context.close()
