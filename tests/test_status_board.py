"""The status board: concurrent reads into a cache that pages and commands read without waiting."""

from __future__ import annotations

import time

from dashboard.environments import StatusBoard, load_project
from dashboard.environments.status import Status
from dashboard.target.runner import run_in_child
from tests.helpers import write_environments


def make_project(tmp_path, tree, silent_port=None):
    lines = [
        f"migrations: {tree.path}",
        "environments:",
        "  - name: dev",
        "    url: sqlite:///dev.db",
    ]
    if silent_port is not None:
        lines += ["  - name: slow", f"    url: postgresql+psycopg://u:p@127.0.0.1:{silent_port}/db"]
    return load_project(write_environments(tmp_path, "\n".join(lines) + "\n"), environ={})


def upgrade(project, target="heads"):
    result = run_in_child(project.database(project.get("dev")), operation="upgrade", target=target)
    assert result.succeeded, result.lines


def test_snapshot_before_any_read_says_unknown_and_does_not_wait(tmp_path, script_tree):
    script_tree.linear(2)
    project = make_project(tmp_path, script_tree)
    upgrade(project)
    board = StatusBoard(project=project, timeout=1, period=60)

    first = board.snapshot()
    assert [status.status for status in first] in ([Status.UNKNOWN], [Status.UP_TO_DATE])
    assert [status.status for status in board.snapshot(wait=5)] == [Status.UP_TO_DATE]


def test_snapshot_is_served_from_the_cache_while_a_slow_database_is_read(
    tmp_path, script_tree, silent_port
):
    script_tree.linear(1)
    project = make_project(tmp_path, script_tree, silent_port)
    upgrade(project)
    board = StatusBoard(project=project, timeout=1, period=60)
    board.refresh()

    board.request_refresh()  # the background read now waits on the silent server
    time.sleep(0.2)
    started = time.monotonic()
    statuses = {status.name: status for status in board.snapshot()}
    assert time.monotonic() - started < 0.5
    assert statuses["dev"].status == Status.UP_TO_DATE
    assert statuses["slow"].status == Status.UNREACHABLE
    assert statuses["slow"].checked_at is not None


def test_forced_refresh_sees_a_change_at_once(tmp_path, script_tree):
    script_tree.linear(3)
    project = make_project(tmp_path, script_tree)
    upgrade(project, "r00")
    board = StatusBoard(project=project, timeout=1, period=3600)
    # Start the refresher and wait for its first read, which it makes at once: with an hour's
    # period it reads nothing more. (A first snapshot after the upgrade would race that read.)
    before = board.snapshot(wait=5)[0]
    assert (before.status, before.behind) == (Status.BEHIND, 2)

    upgrade(project)
    assert board.snapshot(wait=5)[0].behind == 2  # cached until refreshed
    after = board.refresh()[0]
    assert after.status == Status.UP_TO_DATE
    assert after.checked_at > before.checked_at


def test_background_refresh_picks_up_a_new_script(tmp_path, script_tree):
    script_tree.linear(2)
    project = make_project(tmp_path, script_tree)
    upgrade(project)
    board = StatusBoard(project=project, timeout=1, period=0.1)
    assert board.snapshot(wait=5)[0].status == Status.UP_TO_DATE

    script_tree.add_table("r02", "r01", "late")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        status = board.snapshot()[0]
        if status.status == Status.BEHIND:
            break
        time.sleep(0.05)
    assert (status.status, status.pending) == (Status.BEHIND, ["r02"])
