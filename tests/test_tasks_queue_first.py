"""A diff page's task POST answers at once (issue 14): the planning (reading the environment's
revision, parsing the script directory) happens inside the task, whose progress line says
"planning…" first; a second request for the same plan joins it; a plan other than the one the
page showed is refused by the task, which says the plan changed."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

from dashboard.extensions import db
from dashboard.tasks.models import Task
from tests.helpers import Auth, app_for_tree, execute, signed_in_client
from tests.test_tasks import HX, start, tasks_in, text_of, wait_for_task

BOUND_SECONDS = 60.0  # a bound against hanging, not a speed target
# A revision file held at its gate outwaits any bound of the test (the test opens it at the end).
GATE_SECONDS = 5 * BOUND_SECONDS
FORM_URL = re.compile(r'hx-post="(/environments/dev/diff/rehearsal\?[^"]+)"')

# Module-level code of a revision file: parsing the script directory imports it, so planning
# stops here until the test opens the gate (and says, by a file, that it got this far).
GATED_IMPORT = """
import pathlib as _pathlib
import time as _time

_pathlib.Path({reached!r}).touch()
_until = _time.monotonic() + {bound}
while not _pathlib.Path({gate!r}).exists() and _time.monotonic() < _until:
    _time.sleep(0.05)
"""


def gated_tree(script_tree, tmp_path: Path) -> tuple[Path, Path]:
    """Three revisions whose parsing waits for a gate file; return (gate, reached) paths."""
    gate, reached = tmp_path / "gate", tmp_path / "planning-reached"
    script_tree.linear(3)
    last = script_tree.path / "versions" / "r02_rev.py"
    code = GATED_IMPORT.format(reached=str(reached), gate=str(gate), bound=GATE_SECONDS)
    last.write_text(last.read_text() + code)
    return gate, reached


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + BOUND_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.05)


def post_in_thread(client, path: str, form: dict) -> list:
    """POST as htmx from a thread (so a request that plans cannot hang the test); joined with a
    bound. Returns [response] once answered, [] if it did not answer within the bound."""
    answered: list = []
    thread = threading.Thread(
        target=lambda: answered.append(client.post(path, data=form, headers=HX)), daemon=True
    )
    thread.start()
    thread.join(timeout=BOUND_SECONDS)
    return answered


def test_a_rehearsal_post_answers_with_its_progress_before_any_planning(tmp_path, script_tree):
    gate, reached = gated_tree(script_tree, tmp_path)
    app = app_for_tree(tmp_path / "site", script_tree, {"dev": "sqlite:///db/dev.db"})
    operator = signed_in_client(app, "operator")
    token = Auth(operator).csrf_token("/account")
    try:
        answered = post_in_thread(
            operator, "/environments/dev/diff/rehearsal", {"csrf_token": token}
        )
        # The answer came while the script directory could not be parsed: nothing was planned,
        # so nothing was rendered or built on a scratch database inside the request.
        assert answered, "the POST did not answer while planning was held up"
        assert not gate.exists()
        page = text_of(answered[0])
        assert answered[0].status_code == 200, page[:1500]
        assert 'class="task-progress"' in page and "hx-get=" in page  # it polls
        state = re.search(r'data-task-state="(\w+)"', page).group(1)
        assert state in ("queued", "running")
        task_id = int(re.search(r'data-task="(\d+)"', page).group(1))

        # The task itself plans, and says so first.
        wait_until(reached.exists, "the task starts planning")
        wait_until(
            lambda: "planning…" in text_of(operator.get(f"/tasks/{task_id}", headers=HX)),
            "the progress line says planning…",
        )
        (task,) = tasks_in(app, "rehearsal")
        assert (task.state, task.progress_text, task.result) == ("running", "planning…", None)

        # A second request for the same thing, still unplanned, joins the running one.
        again = post_in_thread(operator, "/environments/dev/diff/rehearsal", {"csrf_token": token})
        assert again and f'data-task="{task_id}"' in text_of(again[0])
    finally:
        gate.touch()

    done = wait_for_task(operator, task_id)
    assert 'data-outcome="succeeded"' in done
    assert re.findall(r'data-revision="(\w+)" data-outcome="succeeded"', done) == [
        "r00",
        "r01",
        "r02",
    ]
    assert len(tasks_in(app, "rehearsal")) == 1


def test_a_task_whose_plan_is_not_the_one_the_page_showed_says_the_plan_changed(
    tmp_path, script_tree
):
    script_tree.linear(3)
    site = tmp_path / "site"
    app = app_for_tree(site, script_tree, {"dev": "sqlite:///db/dev.db"})
    operator = signed_in_client(app, "operator")
    page = text_of(operator.get("/environments/dev/diff"))
    shown = FORM_URL.search(page).group(1)
    assert re.search(r"fingerprint=[0-9a-f]{64}", shown)

    # Someone upgrades dev to r00 after the page was drawn: the plan is no longer the same.
    dev = f"sqlite:///{site / 'db' / 'dev.db'}"
    execute(
        dev,
        "CREATE TABLE t0 (id INTEGER PRIMARY KEY)",
        "CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)",
        "INSERT INTO alembic_version VALUES ('r00')",
    )
    task_id, _ = start(operator, shown)
    done = wait_for_task(operator, task_id)
    assert 'data-task-state="failed"' in done
    assert "The plan changed since this was asked for" in done
    assert "data-outcome=" not in done  # nothing was rehearsed

    # Reloaded, the page shows today's plan and no longer the refused task; its form starts
    # a task for today's plan, which runs.
    reloaded = text_of(operator.get("/environments/dev/diff"))
    assert f'data-task="{task_id}"' not in reloaded
    current = FORM_URL.search(reloaded).group(1)
    assert current != shown
    new_id, _ = start(operator, current)
    assert new_id != task_id
    rehearsed = wait_for_task(operator, new_id)
    assert re.findall(r'data-revision="(\w+)" data-outcome="succeeded"', rehearsed) == [
        "r01",
        "r02",
    ]
    assert f'data-task="{new_id}"' in text_of(operator.get("/environments/dev/diff"))


def test_a_fresh_result_is_reused_only_for_the_plan_the_page_showed(tmp_path, script_tree):
    script_tree.linear(2)
    site = tmp_path / "site"
    app = app_for_tree(site, script_tree, {"dev": "sqlite:///db/dev.db"})
    operator = signed_in_client(app, "operator")
    shown = FORM_URL.search(text_of(operator.get("/environments/dev/diff"))).group(1)
    first, _ = start(operator, shown)
    wait_for_task(operator, first)
    reused, _ = start(operator, shown)
    assert reused == first

    execute(
        f"sqlite:///{site / 'db' / 'dev.db'}",
        "CREATE TABLE t0 (id INTEGER PRIMARY KEY)",
        "CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)",
        "INSERT INTO alembic_version VALUES ('r00')",
    )
    current = FORM_URL.search(text_of(operator.get("/environments/dev/diff"))).group(1)
    fresh, _ = start(operator, current)
    assert fresh != first
    done = wait_for_task(operator, fresh)
    assert re.findall(r'data-revision="(\w+)" data-outcome="succeeded"', done) == ["r01"]


def test_a_malformed_fingerprint_is_refused_naming_it(tmp_path, script_tree):
    script_tree.linear(1)
    app = app_for_tree(tmp_path / "site", script_tree, {"dev": "sqlite:///db/dev.db"})
    operator = signed_in_client(app, "operator")
    response = Auth(operator).post(
        "/environments/dev/diff/schema?fingerprint=not-a-fingerprint", {}, headers=HX
    )
    assert response.status_code == 400
    assert "The fingerprint must be the 64 hex digits" in text_of(response)
    assert "not-a-fingerprint" in text_of(response)
    with app.app_context():
        assert db.session.query(Task).count() == 0
