"""First paint after a start (issue 14): pages answer from what is known at once, say "reading…"
(with since when) for what is still being read, and fill in as they poll."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.helpers import Auth, app_for_tree, make_app, signed_in_client

HX = {"HX-Request": "true"}
WAIT = 30.0  # the most a wait below may take before the test fails (never a timing assert)
SINCE = re.compile(r"reading… since <time datetime=\"[^\"]+\">\d\d:\d\d:\d\d</time> UTC")


def status_of(page: str) -> dict[str, str]:
    return dict(re.findall(r'data-env="([^"]+)" data-status="([^"]+)"', page))


def test_a_first_overview_answers_with_reading_for_a_silent_database_and_the_others_fill_in(
    demo_folder: Path, demo_passwords: dict[str, str], silent_port: int
):
    with (demo_folder / "environments.yaml").open("a") as environments:
        environments.write(
            f"  - name: slow\n    url: postgresql+psycopg://u:p@127.0.0.1:{silent_port}/db\n"
        )
    # The silent server holds its read for 10 s (12 s with the deadline); a page waits 1 s.
    app = make_app(demo_folder, STATUS_CONNECT_TIMEOUT=10, FIRST_PAINT_SECONDS=1)
    client = app.test_client()
    Auth(client).login("viewer", demo_passwords["viewer"])

    first = client.get("/").get_data(as_text=True)

    assert status_of(first)["slow"] == "reading"
    slow_row = first[first.index('data-env="slow"') :].split("</tr>")[0]
    assert "reading…" in slow_row and SINCE.search(slow_row)
    assert 'hx-trigger="every 2s"' in first  # the table looks again soon while one is read
    deadline = time.monotonic() + WAIT
    while True:
        polled = status_of(client.get("/", headers=HX).get_data(as_text=True))
        if "reading" not in [polled[name] for name in ("dev", "staging", "production")]:
            break
        assert time.monotonic() < deadline, f"the others never filled in: {polled}"
        time.sleep(0.2)
    assert polled == {
        "dev": "up_to_date",
        "staging": "behind",
        "production": "behind",
        "slow": "reading",
    }
    detail = client.get("/environments/slow").get_data(as_text=True)
    assert SINCE.search(detail) and "Reading the database…" in detail
    assert 'hx-trigger="every 2s"' in detail


SLOW_TO_LOAD = '''"""slow to load

Revision ID: r03
Revises: r02
"""
import time

time.sleep(3)  # as a script directory of thousands of revisions takes seconds to parse

revision = "r03"
down_revision = "r02"
branch_labels = None
depends_on = None


def upgrade():
    pass


def downgrade():
    pass
'''


@pytest.mark.slow
def test_history_after_a_start_says_it_reads_the_script_directory_then_shows_it(
    tmp_path: Path, script_tree
):
    script_tree.linear(3)
    (script_tree.path / "versions" / "r03_slow_to_load.py").write_text(SLOW_TO_LOAD)
    app = app_for_tree(
        tmp_path / "site", script_tree, {"dev": "sqlite:///dev.db"}, FIRST_PAINT_SECONDS=0.5
    )
    client = signed_in_client(app)

    first = client.get("/history")

    assert first.status_code == 200
    page = first.get_data(as_text=True)
    assert "Reading the script directory… since" in page
    assert '<meta http-equiv="refresh" content="2">' in page  # looks again, with or without JS
    assert 'data-revision="' not in page
    deadline = time.monotonic() + WAIT
    while 'data-revision="' not in (page := client.get("/history").get_data(as_text=True)):
        assert time.monotonic() < deadline, "the history never filled in"
        time.sleep(0.2)
    assert re.findall(r'data-revision="([^"]+)"', page) == ["r03", "r02", "r01", "r00"]
    assert "Reading the script directory" not in page and 'http-equiv="refresh"' not in page
