"""Background tasks (issue 14): schema diffs, rehearsals, drift checks and the SQL of long plans
start with a POST, show their progress at once, and swap in their result when done; a second
request for the same work, from any process, joins the task under way."""

from __future__ import annotations

import html
import os
import re
import secrets
import select
import subprocess
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from dashboard.clock import utcnow
from dashboard.environments import environment_named
from dashboard.extensions import db
from dashboard.tasks.flows import task_key
from dashboard.tasks.models import Task
from dashboard.tasks.service import active_key, task_keeper
from tests.helpers import (
    TEST_PASSWORD,
    Auth,
    DatabaseFactory,
    add_user,
    app_for_tree,
    execute,
    make_app,
    shut_down,
    signed_in_client,
    upgrade_store,
    versions,
    wait_for_job,
)
from tests.servers import REPO, VENV_BIN, HttpSession, clean_environ, server_environ

HX = {"HX-Request": "true"}
TASK = re.compile(r'data-task="(\d+)"')
WAIT_SECONDS = 180.0  # a bound, not a speed target: a stuck task fails instead of hanging


def text_of(response) -> str:
    return html.unescape(response.get_data(as_text=True))


def sql_of(page: str) -> str:
    """The page's text without its markup (SQL is highlighted token by token)."""
    return html.unescape(re.sub(r"<[^>]+>", "", page))


def task_id_in(page: str) -> int:
    found = TASK.search(page)
    assert found, f"no task on the page:\n{page[:1500]}"
    return int(found.group(1))


def wait_for_task(client, task_id: int) -> str:
    """Poll a task as the page does (htmx) until the answer stops the polling (286)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        response = client.get(f"/tasks/{task_id}", headers=HX)
        if response.status_code == 286:
            return text_of(response)
        assert response.status_code == 200, text_of(response)[:1500]
        assert time.monotonic() < deadline, f"task {task_id} did not end:\n{text_of(response)}"
        time.sleep(0.2)


def wait_for_drift_checks(client) -> str:
    """Reload the Drift page (as its refresh does without JavaScript) until no check runs."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        page = text_of(client.get("/drift"))
        if 'class="task-progress"' not in page:
            return page
        assert time.monotonic() < deadline, f"drift checks did not end:\n{page}"
        time.sleep(0.2)


def start_and_wait(client, path: str, form: dict | None = None) -> str:
    """Start a task as the page's htmx form does and return its result once it has ended."""
    task_id, _ = start(client, path, form)
    return wait_for_task(client, task_id)


def start(client, path: str, form: dict | None = None) -> tuple[int, str]:
    """POST a start as the page's htmx form does; return the task and the first answer."""
    response = Auth(client).post(path, form or {}, headers=HX)
    page = text_of(response)
    assert response.status_code == 200, page[:1500]
    return task_id_in(page), page


def tasks_in(app, kind: str | None = None) -> list[Task]:
    with app.app_context():
        query = sa.select(Task).order_by(Task.id)
        if kind:
            query = query.where(Task.kind == kind)
        found = list(db.session.scalars(query))
        for task in found:
            db.session.expunge(task)
        return found


# --- schema diffs and rehearsals ----------------------------------------------------------------


def test_a_schema_diff_started_by_post_shows_progress_then_the_changes(clients, demo_app):
    task_id, first = start(clients["operator"], "/environments/production/diff/schema")

    assert "<html" not in first
    assert 'class="task-progress"' in first and f'hx-get="/tasks/{task_id}"' in first
    assert re.search(r'data-task-state="(queued|running)"', first)
    assert re.search(r"(Waiting for a worker|elapsed)", first)
    done = wait_for_task(clients["operator"], task_id)
    assert 'data-task-state="succeeded"' in done and "hx-get" not in done
    changes = set(re.findall(r'class="change (\w+)" data-kind="(\w+)" data-table="(\w+)"', done))
    assert ("dropped", "column", "customer") in changes
    assert ("added", "column", "orders") in changes
    assert "Computed at" in done and "Run again" in done


def test_a_rehearsal_started_by_post_shows_progress_then_what_ran(clients, demo_app):
    task_id, first = start(clients["operator"], "/environments/production/diff/rehearsal")
    assert 'class="task-progress"' in first

    done = wait_for_task(clients["operator"], task_id)
    assert 'data-outcome="succeeded"' in done
    assert 'data-revision="7ca9ba531bc0"' in done and "_alembic_tmp_customer" in done
    (task,) = tasks_in(demo_app, "rehearsal")
    assert task.state == "succeeded" and task.requested_by == "operator"
    assert task.progress_total > 0 and task.progress_text


def test_asking_again_joins_the_running_task_then_reuses_its_fresh_result(clients, demo_app):
    operator = clients["operator"]
    first, _ = start(operator, "/environments/production/diff/rehearsal")
    second, _ = start(operator, "/environments/production/diff/rehearsal")
    assert second == first  # joined while it runs
    wait_for_task(operator, first)

    reused, page = start(operator, "/environments/production/diff/rehearsal")
    assert reused == first and "Computed at" in page and 'data-outcome="succeeded"' in page
    diff_page = text_of(operator.get("/environments/production/diff"))
    assert f'data-task="{first}"' in diff_page  # the page shows the stored result at once

    again, page = start(operator, "/environments/production/diff/rehearsal", {"again": "1"})
    assert again != first and 'class="task-progress"' in page
    wait_for_task(operator, again)
    assert len(tasks_in(demo_app, "rehearsal")) == 2


def test_without_javascript_a_start_redirects_to_a_page_that_refreshes_until_done(clients):
    operator = clients["operator"]
    response = Auth(operator).post("/environments/production/diff/schema")
    assert response.status_code == 303
    location = response.headers["Location"]
    assert re.search(r"/tasks/\d+$", location)
    page = text_of(operator.get(location))
    if 'http-equiv="refresh"' not in page:  # it may have ended already: then no refresh
        assert 'data-task-state="succeeded"' in page
    wait_for_task(operator, int(location.rsplit("/", 1)[1]))
    finished = text_of(operator.get(location))
    assert 'http-equiv="refresh"' not in finished and 'class="change' in finished
    assert "Back to the diff" in finished


def test_a_viewer_cannot_start_a_task_but_reads_a_finished_one(clients, demo_app):
    viewer = clients["viewer"]
    for path in ("/environments/production/diff/rehearsal", "/environments/production/diff/schema"):
        refused = Auth(viewer).post(path)
        assert refused.status_code == 403
        assert "this needs the operator role or higher" in text_of(refused)
    assert tasks_in(demo_app) == []

    task_id, _ = start(clients["operator"], "/environments/production/diff/rehearsal")
    wait_for_task(clients["operator"], task_id)

    read = viewer.get(f"/tasks/{task_id}", headers=HX)
    assert read.status_code == 286 and 'data-outcome="succeeded"' in text_of(read)
    assert "Run again" not in text_of(read)
    page = text_of(viewer.get(f"/tasks/{task_id}"))
    assert 'data-outcome="succeeded"' in page and "Run again" not in page
    diff_page = text_of(viewer.get("/environments/production/diff"))
    assert f'data-task="{task_id}"' in diff_page and 'data-outcome="succeeded"' in diff_page


def broken_tree_app(tmp_path: Path, script_tree):
    """dev at r00; r01 raises when it runs; r02 is fine."""
    script_tree.add_table("r00", None, "t0")
    script_tree.add("r01", "r00", "break", upgrade="raise RuntimeError('boom in r01')")
    script_tree.add_table("r02", "r01", "t2")
    app = app_for_tree(tmp_path / "site", script_tree, {"dev": "sqlite:///db/dev.db"})
    execute(
        f"sqlite:///{tmp_path / 'site' / 'db' / 'dev.db'}",
        "CREATE TABLE t0 (id INTEGER PRIMARY KEY)",
        "CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)",
        "INSERT INTO alembic_version VALUES ('r00')",
    )
    return app


def test_a_failing_rehearsal_shows_the_failing_step_and_its_error(tmp_path, script_tree):
    app = broken_tree_app(tmp_path, script_tree)
    operator = signed_in_client(app, "operator")

    task_id, _ = start(operator, "/environments/dev/diff/rehearsal")
    done = wait_for_task(operator, task_id)
    assert 'data-outcome="failed"' in done
    assert "Rehearsal failed: r01" in done and "boom in r01" in done
    assert re.search(r'data-revision="r02" data-outcome="not_run"', done)


def test_a_task_that_fails_keeps_and_shows_its_error(tmp_path, script_tree):
    app = broken_tree_app(tmp_path, script_tree)
    # dev now says r01: building the schema before the plan runs r01, which fails.
    execute(
        f"sqlite:///{tmp_path / 'site' / 'db' / 'dev.db'}",
        "UPDATE alembic_version SET version_num = 'r01'",
    )
    operator = signed_in_client(app, "operator")

    task_id, _ = start(operator, "/environments/dev/diff/schema")
    done = wait_for_task(operator, task_id)
    assert 'data-task-state="failed"' in done
    assert "Schema diff unavailable:" in done and "boom in r01" in done
    (task,) = tasks_in(app, "schema_diff")
    assert task.state == "failed" and "boom in r01" in task.error and task.active_key is None


def test_a_task_whose_process_died_shows_interrupted_and_the_next_start_replaces_it(
    clients, demo_app
):
    an_hour_ago = utcnow() - timedelta(hours=1)
    with demo_app.app_context():
        args = {"operation": "upgrade", "target": "head"}
        key = task_key(environment=environment_named("production"), args=args)
        dead = Task(
            kind="rehearsal",
            environment="production",
            key=key,
            params={"args": args},
            state="running",
            active_key=active_key(kind="rehearsal", environment="production", key=key),
            requested_by="operator",
            created_at=an_hour_ago,
            started_at=an_hour_ago,
            heartbeat_at=an_hour_ago,
            progress_done=1,
            progress_total=5,
            progress_text="step 2 of 5",
        )
        db.session.add(dead)
        db.session.commit()
        dead_id = dead.id

    shown = clients["viewer"].get(f"/tasks/{dead_id}", headers=HX)
    assert shown.status_code == 286
    assert 'data-task-state="interrupted"' in text_of(shown)
    assert "heartbeat went stale" in text_of(shown)
    assert [task.state for task in tasks_in(demo_app)] == ["running"]  # a GET wrote nothing

    new_id, _ = start(clients["operator"], "/environments/production/diff/rehearsal")
    assert new_id != dead_id
    wait_for_task(clients["operator"], new_id)
    states = {task.id: (task.state, task.active_key) for task in tasks_in(demo_app)}
    assert states[dead_id] == ("interrupted", None)
    assert states[new_id] == ("succeeded", None)


# --- two web processes ----------------------------------------------------------------------


def at_once(browser: HttpSession, urls: list[str], token: str) -> list:
    """POST (as htmx) to every URL at the same moment, one thread each; return the replies."""
    barrier = threading.Barrier(len(urls))
    replies: list = [None] * len(urls)

    def post(index: int) -> None:
        barrier.wait()
        replies[index] = browser.request("POST", urls[index], {"csrf_token": token}, headers=HX)

    threads = [threading.Thread(target=post, args=(index,)) for index in range(len(urls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return replies


@pytest.fixture(params=["postgresql", "mariadb"])
def server_store(request, tmp_path: Path):
    """An empty store database on a server both gunicorns share."""
    factory = DatabaseFactory(request.param, tmp_path)
    yield factory.create()
    factory.drop_all()


def test_two_servers_asked_for_the_same_rehearsal_at_once_make_one_task(
    tmp_path: Path, demo_folder: Path, server_store, gunicorn
):
    store = server_store.render_as_string(hide_password=False)
    app = make_app(demo_folder, SQLALCHEMY_DATABASE_URI=store)
    upgrade_store(app)
    add_user(app, "olga", "operator")
    env = server_environ(
        tmp_path,
        store=store,
        environments=demo_folder / "environments.yaml",
        secret_key=secrets.token_hex(32),
    )
    servers = [gunicorn(env, workers=1, threads=4) for _ in range(2)]
    browser = HttpSession()
    browser.login(servers[0], "olga", TEST_PASSWORD)
    token = browser.get(servers[0].url("/account")).hidden_input("csrf_token")

    for step in range(1, 6):  # five different plans: +1 … +5 steps
        path = f"/environments/production/diff/rehearsal?target=%2B{step}"
        replies = at_once(browser, [server.url(path) for server in servers], token)
        assert [reply.status for reply in replies] == [200, 200], replies[0].text[:1500]
        ids = {task_id_in(reply.text) for reply in replies}
        assert len(ids) == 1, f"plan +{step}: two tasks {ids}"

    with app.app_context():
        rows = db.session.execute(
            sa.select(Task.key, sa.func.count()).where(Task.kind == "rehearsal").group_by(Task.key)
        ).all()
        db.session.remove()
        db.engine.dispose()  # no pooled connection outlives the test's database
    assert len(rows) == 5 and all(count == 1 for _, count in rows)


# --- long plans: paged, their SQL rendered as a task ------------------------------------------


def test_a_long_plan_is_paged_and_renders_all_its_sql_as_a_task(tmp_path, script_tree):
    script_tree.linear(12)
    app = app_for_tree(
        tmp_path / "site", script_tree, {"dev": "sqlite:///db/dev.db"}, DIFF_PAGE_STEPS=5
    )
    viewer = signed_in_client(app, "viewer")

    page = text_of(viewer.get("/environments/dev/diff"))
    assert re.findall(r'class="step" data-revision="(\w+)"', page) == [
        f"r{index:02d}" for index in range(5)
    ]
    assert "CREATE TABLE t4 " in sql_of(page) and "CREATE TABLE t5 " not in sql_of(page)
    assert "Steps 1–5 of 12" in page and "Render SQL for all 12 steps" in page
    second = sql_of(text_of(viewer.get("/environments/dev/diff?page=2")))
    assert "CREATE TABLE t5 " in second and "CREATE TABLE t9 " in second
    assert "CREATE TABLE t4 " not in second
    assert viewer.get("/environments/dev/diff?page=two").status_code == 400

    task_id, _ = start(viewer, "/environments/dev/diff/render")  # a viewer may: it is SQL
    done = wait_for_task(viewer, task_id)
    assert "SQL rendered for all 12 steps" in done
    last = text_of(viewer.get("/environments/dev/diff?page=3"))
    assert "CREATE TABLE t11 " in sql_of(last) and f'data-task="{task_id}"' in last
    assert "Plan fingerprint" in last
    sql = viewer.get("/environments/dev/diff.sql").get_data(as_text=True)
    assert all(f"CREATE TABLE t{index} " in sql for index in range(12))
    (task,) = tasks_in(app, "plan")
    assert (task.progress_done, task.progress_total) == (12, 12)


def test_a_long_plan_preview_shows_a_page_of_steps_and_runs_them_all(tmp_path, script_tree):
    script_tree.linear(12)
    app = app_for_tree(
        tmp_path / "site", script_tree, {"dev": "sqlite:///db/dev.db"}, DIFF_PAGE_STEPS=5
    )
    operator = signed_in_client(app, "operator")

    fragment = text_of(operator.get("/environments/dev/plan?page=2", headers=HX))
    assert re.findall(r'class="step" data-revision="(\w+)"', fragment) == [
        f"r{index:02d}" for index in range(5, 10)
    ]
    assert "Steps 6–10 of 12" in fragment and "12 steps, in the order they run" in fragment
    assert 'hx-target="#plan"' in fragment  # the pager swaps the plan card in place
    assert "CREATE TABLE t5 " in fragment and "CREATE TABLE t4 " not in fragment
    assert operator.get("/environments/dev/plan?page=0").status_code == 400

    fingerprint = re.search(r'name="fingerprint" value="(\w+)"', fragment).group(1)
    posted = Auth(operator).post(
        "/environments/dev/jobs",
        {"operation": "upgrade", "target": "head", "fingerprint": fingerprint},
    )
    assert posted.status_code == 303, posted.get_data(as_text=True)[:500]
    job = wait_for_job(app, int(posted.headers["Location"].rstrip("/").rsplit("/", 1)[1]))
    assert job.state == "succeeded", job.error
    assert versions(f"sqlite:///{tmp_path / 'site' / 'db' / 'dev.db'}") == ["r11"]


def test_a_short_plan_shows_every_step_with_its_sql_as_before(demo_client):
    page = text_of(demo_client.get("/environments/production/diff"))
    assert page.count('class="step" data-revision=') == 5
    assert "Render SQL for all" not in page and "Plan fingerprint" in page


# --- drift checks -----------------------------------------------------------------------------


def test_a_drift_check_shows_its_progress_in_the_table_then_the_reports(clients, demo_app):
    operator = clients["operator"]
    response = Auth(operator).post("/drift/check", {}, headers=HX)
    first = text_of(response)
    assert response.status_code == 200 and '<section id="drift"' in first
    task_id = task_id_in(first)
    assert f'hx-get="/tasks/{task_id}"' in first and 'class="task-progress"' in first

    done = wait_for_task(operator, task_id)
    assert re.findall(r'data-env="(\w+)" data-drift="(\w+)"', done) == [
        ("dev", "none"),
        ("staging", "none"),
        ("production", "none"),
    ]
    (task,) = tasks_in(demo_app, "drift_check")
    assert task.state == "succeeded" and task.progress_text == "checked 3 environments"


# --- the CLI ----------------------------------------------------------------------------------


def test_the_cli_diff_piped_prints_no_progress_bar(demo_app):
    result = demo_app.test_cli_runner().invoke(args=["dashboard", "diff", "production"])
    assert result.exit_code == 0, result.output
    assert "production: upgrade to head, 5 step(s)" in result.output
    assert "\x1b[" not in result.output and "━" not in result.output
    assert "building the scratch database" not in result.output


def test_the_cli_drift_on_a_terminal_draws_a_progress_bar(demo_folder):
    main, child = os.openpty()
    environ = clean_environ(
        ENVIRONMENTS_FILE=str(demo_folder / "environments.yaml"),
        DASHBOARD_DATABASE_URL=f"sqlite:///{demo_folder / 'store.db'}",
        TERM="xterm",
        COLUMNS="120",
    )
    process = subprocess.Popen(
        [str(VENV_BIN / "flask"), "--app", "dashboard:create_app", "dashboard", "drift"],
        cwd=REPO,
        env=environ,
        stdin=subprocess.DEVNULL,
        stdout=child,
        stderr=child,
    )
    os.close(child)
    shown = b""
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(main, 65536)
            except OSError:
                break  # the terminal closed: the command ended
            if not chunk:
                break
            shown += chunk
        elif process.poll() is not None:
            break
    os.close(main)
    assert process.wait(timeout=30) == 0, shown.decode(errors="replace")
    text = shown.decode(errors="replace")
    assert "environment 1 of 3: dev" in text and "━" in text
    assert "dev: none" in text and "production: none" in text


@pytest.mark.stores
def test_checking_forty_environments_stores_one_task_whatever_their_names_add_up_to(
    tmp_path: Path, script_tree, store_database
):
    # Their names joined run past the task key's column (a 500 on PostgreSQL before).
    script_tree.add_table("r00", None, "t0")
    names = [f"customer-region-{number:02d}-replica" for number in range(40)]
    app = app_for_tree(
        tmp_path,
        script_tree,
        {name: f"sqlite:///{tmp_path / name}.db" for name in names},
        store=store_database,
    )
    add_user(app, "olga", "operator")
    operator = app.test_client()
    Auth(operator).login("olga")
    response = Auth(operator).post("/drift/check", {}, headers=HX)
    assert response.status_code == 200, text_of(response)[:500]
    done = wait_for_task(operator, task_id_in(text_of(response)))
    checked = dict(re.findall(r'data-env="([\w-]+)" data-drift="(\w+)"', done))
    assert sorted(checked) == names and "not_checked" not in checked.values(), checked
    (task,) = tasks_in(app, "drift_check")
    assert task.state == "succeeded" and task.key.startswith("sha256:")


@pytest.mark.stores
def test_a_shut_down_app_beats_the_tasks_it_held_no_more(app):
    # A test's shut-down (or an app going away) must not leave a heartbeat thread on its store.
    keeper = task_keeper(app)
    keeper.hold_queued(1)
    thread = keeper.thread
    assert thread is not None and thread.is_alive()

    shut_down(app)

    assert not thread.is_alive()
    assert keeper.thread is None
