"""The Job page's log in Chromium: new lines are appended while the page stays open, the log
follows its newest line unless the reader scrolled up, and without JavaScript the page still
shows the tail and the state, reloading itself until the job ends."""

from __future__ import annotations

import re
from pathlib import Path

from tests.helpers import open_tab, sign_in
from tests.test_job_log import add_job, append_lines, finish

LINE = re.compile(r"line (\d{5})")
# How far (in pixels) the log is scrolled from its newest line.
FROM_BOTTOM = "(log => log.scrollHeight - log.scrollTop - log.clientHeight)"


def shown_numbers(page) -> list[int]:
    """The numbers of the lines the log shows, in order."""
    return [int(number) for number in LINE.findall(page.locator("#job-log").inner_text())]


def scroll_log(page, to: str) -> None:
    """Scroll the log to its "top" or "bottom", and return once the page has seen the scroll."""
    page.evaluate(
        """to => new Promise(seen => {
            const log = document.getElementById("job-log");
            log.addEventListener("scroll", () => seen(), {once: true});
            log.scrollTop = to === "top" ? 0 : log.scrollHeight;
        })""",
        to,
    )


def wait_for_line(page, number: int, timeout: float = 15_000) -> None:
    page.locator("#job-log", has_text=f"line {number:05d}").wait_for(timeout=timeout)


def test_new_lines_are_appended_to_the_open_page_which_follows_them_unless_scrolled_up(
    page, live_server, demo_app, demo_passwords
):
    job_id = add_job(demo_app, state="running", lines=800)
    sign_in(page, live_server, "viewer", demo_passwords["viewer"])
    page.goto(f"{live_server}/jobs/{job_id}")
    log = page.locator("#job-log")

    assert page.locator("#job-log-earlier").inner_text().startswith("300 earlier lines")
    assert shown_numbers(page) == list(range(301, 801))
    page.evaluate("window.sameDocument = true")  # gone if the page were loaded again
    page.wait_for_function(f"{FROM_BOTTOM}(document.getElementById('job-log')) <= 1")

    append_lines(demo_app, job_id, 801, 850)
    wait_for_line(page, 850)
    assert page.evaluate("window.sameDocument") is True
    assert log.evaluate(FROM_BOTTOM) <= 1  # it followed the new lines
    assert shown_numbers(page) == list(range(301, 851))  # each line once, in order

    # The reader scrolls up to read: new lines no longer move the log.
    scroll_log(page, to="top")
    append_lines(demo_app, job_id, 851, 870)
    wait_for_line(page, 870)
    assert log.evaluate("log => log.scrollTop") == 0

    # Back at the bottom, it follows again.
    scroll_log(page, to="bottom")
    assert log.evaluate(FROM_BOTTOM) <= 1
    append_lines(demo_app, job_id, 871, 880)
    wait_for_line(page, 880)
    assert log.evaluate(FROM_BOTTOM) <= 1

    # The job ends: the state changes on the page, and the log stops asking for lines.
    finish(demo_app, job_id)
    page.locator('#job-live[data-state="succeeded"]').wait_for(timeout=15_000)
    page.locator("#job-log-poll:not([hx-get])").wait_for(state="attached")
    assert "live — updates every second" not in page.locator("#job-live").inner_text()
    assert shown_numbers(page) == list(range(301, 881))
    assert page.evaluate("window.sameDocument") is True
    assert page.console_errors == []


def test_the_first_lines_replace_the_waiting_note(page, live_server, demo_app, demo_passwords):
    job_id = add_job(demo_app, state="running")
    sign_in(page, live_server, "viewer", demo_passwords["viewer"])
    page.goto(f"{live_server}/jobs/{job_id}")
    assert page.locator("#job-log").inner_text() == "Waiting for the runner…"

    append_lines(demo_app, job_id, 1, 3)
    wait_for_line(page, 3)

    assert page.locator("#job-log").inner_text().splitlines() == [
        "log line 00001",
        "log line 00002",
        "log line 00003",
    ]
    assert page.console_errors == []


def test_the_download_link_gives_the_whole_log(page, live_server, demo_app, demo_passwords):
    job_id = add_job(demo_app, lines=800)
    sign_in(page, live_server, "viewer", demo_passwords["viewer"])
    page.goto(f"{live_server}/jobs/{job_id}")

    with page.expect_download() as started:
        page.locator("#job-log-earlier a").click()
    download = started.value

    assert download.suggested_filename == f"job-{job_id}-log.txt"
    text = Path(download.path()).read_text(encoding="utf-8")
    assert [int(number) for number in LINE.findall(text)] == list(range(1, 801))


def test_without_javascript_the_page_shows_the_tail_and_state_and_reloads_itself(
    browser, live_server, demo_app, demo_passwords
):
    job_id = add_job(demo_app, state="running", lines=800)
    context, tab = open_tab(browser, java_script_enabled=False)
    try:
        sign_in(tab, live_server, "viewer", demo_passwords["viewer"])
        tab.goto(f"{live_server}/jobs/{job_id}")
        assert shown_numbers(tab) == list(range(301, 801))
        assert tab.locator("#job-log-earlier").inner_text().startswith("300 earlier lines")
        assert tab.locator('#job-live[data-state="running"]').count() == 1

        append_lines(demo_app, job_id, 801, 805)
        wait_for_line(tab, 805)  # the page reloaded itself
        finish(demo_app, job_id)
        tab.locator('#job-live[data-state="succeeded"]').wait_for(timeout=15_000)

        assert shown_numbers(tab) == list(range(306, 806))
    finally:
        context.close()
