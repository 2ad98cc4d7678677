"""The Audit and History pages in headless Chromium, on a desktop and on a phone (issue 15):
nothing cut off or scrolled out of sight, details expand, fingerprints are shortened with a copy
button, background job events name the person they ran for, and the lane graph stays whole."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from dashboard.extensions import db
from dashboard.rollouts import service as rollouts
from dashboard.users import service as users
from tests.helpers import (
    DOCS,
    alice_upgrades_staging,
    open_tab,
    sign_in,
)

PHONE = {"width": 390, "height": 844}
# A reviewer's comment with a long unbroken run, as pasted links are.
COMMENT = (
    "Checked the rehearsal and the schema diff against "
    "https://wiki.example/runbooks/shop/production/2026-12/order-status-rollout-checklist-"
    "with-rollback-steps-and-owner-sign-offs before approving"
)
REASON = "Ship order status to production (SHOP-42): " + "the checkout team needs it today. " * 4


@pytest.fixture
def audit_history(demo_app):
    """Alice (an operator) upgrades staging with a job and requests a production rollout with a
    long reason; the approver approves it with a long comment. Returns ids and the fingerprint."""
    with demo_app.app_context():
        alice, job_id = alice_upgrades_staging(demo_app)
        rollout = rollouts.request_rollout(
            environment_name="production",
            target="head",
            reason=REASON,
            actor=db.session.merge(alice),
            ticket_url="https://tickets.example/SHOP-42",
        )
        rollout_id, fingerprint = rollout.id, rollout.fingerprint
        rollouts.approve_rollout(
            rollout_id=rollout_id, actor=users.get_user(username="approver"), comment=COMMENT
        )
    return {"job": job_id, "rollout": rollout_id, "fingerprint": fingerprint}


def _horizontal_overflow(tab) -> int:
    """How many pixels the page is wider than its viewport (0 when nothing scrolls sideways)."""
    return tab.evaluate("document.documentElement.scrollWidth - window.innerWidth")


def _boxes_outside(tab, selector: str, container: str) -> list[str]:
    """The visible elements matching `selector` that stick out of their `container` ancestor or
    of the viewport, or whose text is clipped inside them; as readable descriptions."""
    return tab.evaluate(
        """([selector, container]) => {
            const problems = [];
            const width = document.documentElement.clientWidth;
            for (const element of document.querySelectorAll(selector)) {
                const box = element.getBoundingClientRect();
                if (box.width === 0 && box.height === 0) continue;  // not shown
                const outer = element.closest(container).getBoundingClientRect();
                const name = element.textContent.trim().slice(0, 40);
                if (box.left < outer.left - 0.5 || box.right > outer.right + 0.5)
                    problems.push(`${name}: outside its ${container}`);
                if (box.left < -0.5 || box.right > width + 0.5)
                    problems.push(`${name}: outside the viewport`);
            }
            return problems;
        }""",
        [selector, container],
    )


def _row(tab, action: str):
    return tab.locator(f'tr.audit-row[data-action="{action}"]').first


def test_audit_page_on_a_desktop_wraps_expands_and_copies(
    browser, live_server, demo_passwords, audit_history
):
    context, tab = open_tab(browser)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_server)
    try:
        sign_in(tab, live_server, "viewer", demo_passwords["viewer"])
        tab.goto(live_server + "/audit")
        tab.wait_for_function("window.htmx !== undefined")
        assert _horizontal_overflow(tab) <= 0
        card = tab.locator("#audit-events")
        assert card.evaluate("card => card.scrollWidth <= card.clientWidth")  # no hidden part
        assert _boxes_outside(tab, "td.audit-details .chip", "td") == []

        # The job ran for alice, in the background: the row says so and links to the job.
        job = audit_history["job"]
        started = _row(tab, "job.started").locator("td.audit-actor")
        assert re.sub(r"\s+", " ", started.inner_text()).strip() == f"job #{job} for alice"
        assert started.get_by_role("link", name=f"job #{job}").get_attribute("href") == (
            f"/jobs/{job}"
        )
        assert "not signed in" not in _row(tab, "job.succeeded").inner_text()
        assert "for alice" in _row(tab, "job.succeeded").locator("td.audit-actor").inner_text()
        assert _row(tab, "job.requested").locator("td.audit-actor").inner_text().strip() == (
            "alice"
        )

        # The fingerprint shows its first 12 characters; the copy button copies all 64.
        fingerprint = audit_history["fingerprint"]
        requested = _row(tab, "rollout.requested")
        chip = requested.locator(".chip.digest")
        assert chip.inner_text() == f"fingerprint: {fingerprint[:12]}…"
        assert chip.get_attribute("title") == f"fingerprint: {fingerprint}"
        copy = requested.get_by_role("button", name="Copy the full fingerprint")
        assert copy.is_visible()
        copy.click()
        expect(copy).to_have_text("Copied")
        assert tab.evaluate("navigator.clipboard.readText()") == fingerprint

        # A long comment is cut short in its chip and shown whole, wrapped, when expanded.
        approved = _row(tab, "rollout.approved")
        comment = approved.locator("dl.facts dd").nth(
            approved.locator("dl.facts dt").all_text_contents().index("comment")
        )
        assert not comment.is_visible()
        approved.locator("summary", has_text="All details").click()
        assert comment.is_visible()
        assert comment.inner_text() == COMMENT
        box, viewport = comment.bounding_box(), tab.viewport_size
        assert box["x"] >= 0 and box["x"] + box["width"] <= viewport["width"]
        assert box["height"] > 2 * 14  # wrapped onto several lines, not cut off
        assert _boxes_outside(tab, "td.audit-details dd", "td") == []
        assert _horizontal_overflow(tab) <= 0
        approved.scroll_into_view_if_needed()
        tab.screenshot(path=str(DOCS / "audit.png"), full_page=True)
        assert tab.console_errors == []
    finally:
        context.close()


def test_audit_page_on_a_phone_without_javascript(
    browser, live_server, demo_passwords, audit_history
):
    context = browser.new_context(viewport=PHONE, is_mobile=True, java_script_enabled=False)
    try:
        tab = context.new_page()
        sign_in(tab, live_server, "viewer", demo_passwords["viewer"])
        tab.goto(live_server + "/audit?environment=production")
        assert tab.locator("tr.audit-row").count() >= 2
        assert _horizontal_overflow(tab) <= 0
        assert _boxes_outside(tab, "tr.audit-row td", "tr") == []
        assert _boxes_outside(tab, "td.audit-details .chip", "td") == []

        # No script, no copy button: the full fingerprint is in the title and, expanded, shown
        # whole and selectable.
        fingerprint = audit_history["fingerprint"]
        requested = _row(tab, "rollout.requested")
        assert requested.locator("button.copy").is_hidden()
        assert requested.locator(".chip.digest").get_attribute("title").endswith(fingerprint)
        requested.locator("summary", has_text="All details").click()
        full = requested.locator("code.digest-full").first
        assert full.is_visible() and full.inner_text() == fingerprint
        reason = requested.locator("dl.facts dd").nth(
            requested.locator("dl.facts dt").all_text_contents().index("reason")
        )
        assert reason.inner_text() == REASON.strip()
        assert _boxes_outside(tab, "td.audit-details dd", "tr") == []
        assert _horizontal_overflow(tab) <= 0

        # The job that ran for alice names her on a phone too.
        job = audit_history["job"]
        assert tab.goto(live_server + "/audit?action=job.started").ok
        actor = _row(tab, "job.started").locator("td.audit-actor")
        assert re.sub(r"\s+", " ", actor.inner_text()).strip() == f"job #{job} for alice"
        tab.goto(live_server + "/audit?environment=production")
        _row(tab, "rollout.requested").locator("summary").click()
        tab.screenshot(path=str(DOCS / "audit-phone.png"), full_page=True)
    finally:
        context.close()


def _graph_problems(tab) -> list[str]:
    """Where the lane graph breaks: a row's lines that do not span the row, lines that do not
    meet the next row's, or a node off the middle of its lines."""
    return tab.evaluate(
        """() => {
            const problems = [];
            const rows = [...document.querySelectorAll('tr.rev-row')];
            let previous = null;
            for (const row of rows) {
                const id = row.dataset.revision.slice(0, 12);
                const r = row.getBoundingClientRect();
                const lines = row.querySelector('svg.graph-lines').getBoundingClientRect();
                const node = row.querySelector('svg.graph-node circle').getBoundingClientRect();
                if (Math.abs(lines.top - r.top) > 1 || Math.abs(lines.bottom - r.bottom) > 1)
                    problems.push(`${id}: lines ${lines.top}-${lines.bottom}, row ${r.top}`);
                const middle = (lines.top + lines.bottom) / 2;
                if (Math.abs((node.top + node.bottom) / 2 - middle) > 1)
                    problems.push(`${id}: node off the middle of its lines`);
                if (node.width < 9 || Math.abs(node.width - node.height) > 0.5)
                    problems.push(`${id}: node drawn ${node.width}x${node.height}`);
                if (previous !== null && Math.abs(previous.bottom - lines.top) > 1)
                    problems.push(`${id}: a gap of ${lines.top - previous.bottom}px above`);
                previous = lines;
            }
            return problems;
        }"""
    )


def _line_ends(tab) -> list[tuple[set[float], set[float]]]:
    """Per row, the x (in pixels) where its lines leave the top edge and the bottom edge."""
    return tab.evaluate(
        """() => [...document.querySelectorAll('tr.rev-row svg.graph-lines')].map(svg => {
            const left = svg.getBoundingClientRect().left;
            const height = svg.viewBox.baseVal.height;
            const ends = (y, attribute) => [...svg.querySelectorAll('line')]
                .filter(line => Number(line.getAttribute(y)) === (y === 'y1' ? 0 : height))
                .map(line => Math.round(left + Number(line.getAttribute(attribute))));
            return [ends('y1', 'x1'), ends('y2', 'x2')];
        })"""
    )


def test_history_on_a_phone_keeps_chips_and_lanes_whole(browser, live_server, demo_passwords):
    context, tab = open_tab(browser, is_mobile=True)
    try:
        tab.set_viewport_size(PHONE)
        sign_in(tab, live_server, "viewer", demo_passwords["viewer"])
        tab.goto(live_server + "/history")
        tab.wait_for_function("window.htmx !== undefined")
        assert tab.locator("tr.rev-row").count() == 13
        assert _horizontal_overflow(tab) <= 0
        # Every chip whole, inside its row, its card and the screen.
        chips = tab.locator("tr.rev-row .chip")
        assert chips.count() >= 13  # dev has every revision
        assert _boxes_outside(tab, "tr.rev-row .chip", "tr") == []
        assert _boxes_outside(tab, "tr.rev-row .chip", "section.card") == []
        assert _boxes_outside(tab, "tr.rev-row td", "section.card") == []
        for index in range(chips.count()):
            assert chips.nth(index).evaluate("chip => chip.scrollWidth <= chip.clientWidth")

        # Rows wrap onto two lines here, and the lanes still join from row to row.
        heights = tab.locator("tr.rev-row").evaluate_all(
            "rows => rows.map(row => row.getBoundingClientRect().height)"
        )
        assert max(heights) > 36 * 1.3
        assert _graph_problems(tab) == []
        ends = _line_ends(tab)
        for (_, bottom), (top, _) in zip(ends, ends[1:], strict=False):
            assert set(bottom) == set(top)
        assert tab.locator("svg.graph circle.merge").count() == 1
        tab.screenshot(path=str(DOCS / "history-phone.png"), full_page=True)
        assert tab.console_errors == []
    finally:
        context.close()


def test_history_on_a_desktop_keeps_lanes_whole_when_a_message_wraps(
    browser, live_server, demo_passwords
):
    context, tab = open_tab(browser)
    try:
        tab.set_viewport_size({"width": 700, "height": 800})
        sign_in(tab, live_server, "viewer", demo_passwords["viewer"])
        tab.goto(live_server + "/history")
        heights = tab.locator("tr.rev-row").evaluate_all(
            "rows => rows.map(row => row.getBoundingClientRect().height)"
        )
        assert max(heights) > 40  # some message wraps at this width
        assert _graph_problems(tab) == []
        assert _horizontal_overflow(tab) <= 0
    finally:
        context.close()
