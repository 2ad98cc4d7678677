"""DASHBOARD_LOG_FORMAT=json: one JSON object per log line, each with the id of the request it
was written for; every answer carries that id in X-Request-ID (issue 16)."""

from __future__ import annotations

import json
import logging
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from dashboard.errors import ConfigurationError
from dashboard.logs import JsonFormatter, RequestIdFilter, _JsonHandler, bind_request_id
from tests.helpers import Auth, add_user, make_app, upgrade_store
from tests.servers import REPO, clean_environ


@pytest.fixture
def json_lines(demo_folder: Path):
    """The JSON app, and the lines its logs wrote (read from a handler on the root logger)."""
    level = logging.getLogger().level
    app = make_app(demo_folder, LOG_FORMAT="json")
    captured: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            captured.append(self.format(record))

    handler = Capture()
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield app, captured
    finally:
        # The app put a JSON handler on this process's root logger: take it off again.
        for installed in list(root.handlers):
            if installed is handler or isinstance(installed, _JsonHandler):
                root.removeHandler(installed)
        root.setLevel(level)


def entries(lines: list[str]) -> list[dict]:
    return [json.loads(line) for line in lines]


def test_every_answer_carries_a_new_request_id(demo_folder: Path):
    client = make_app(demo_folder).test_client()

    first, second = client.get("/healthz"), client.get("/login")

    ids = [first.headers["X-Request-ID"], second.headers["X-Request-ID"]]
    assert all(len(request_id) == 32 for request_id in ids) and ids[0] != ids[1]


def test_a_sane_request_id_from_the_load_balancer_is_kept_and_a_strange_one_replaced(
    demo_folder: Path,
):
    client = make_app(demo_folder).test_client()

    kept = client.get("/healthz", headers={"X-Request-ID": "lb-7f3a.42:1"})
    replaced = client.get("/healthz", headers={"X-Request-ID": "<script>" + "x" * 300})

    assert kept.headers["X-Request-ID"] == "lb-7f3a.42:1"
    assert replaced.headers["X-Request-ID"] != "<script>" + "x" * 300
    assert len(replaced.headers["X-Request-ID"]) == 32


def test_json_logs_write_one_line_per_request_with_its_id(json_lines):
    app, lines = json_lines

    response = app.test_client().get("/healthz", headers={"X-Request-ID": "abc-123"})

    request_lines = [e for e in entries(lines) if e["logger"] == "dashboard.requests"]
    assert len(request_lines) == 1
    line = request_lines[0]
    assert line["request_id"] == "abc-123" == response.headers["X-Request-ID"]
    assert line["method"] == "GET" and line["path"] == "/healthz" and line["status"] == 200
    assert line["level"] == "info" and line["message"] == "GET /healthz 200"
    assert isinstance(line["duration_ms"], float) and line["time"].endswith("+00:00")


def test_what_a_service_logs_during_a_request_carries_the_request_id(json_lines):
    app, lines = json_lines
    upgrade_store(app)
    add_user(app, "olga", "operator")
    client = app.test_client()

    # A failed sign-in is logged by the auth service (and audited).
    Auth(client).login("olga", "wrong password", expect=401)

    by_request = {}
    for entry in entries(lines):
        by_request.setdefault(entry["request_id"], []).append(entry["logger"])
    post_ids = [
        e["request_id"]
        for e in entries(lines)
        if e["logger"] == "dashboard.requests" and e["method"] == "POST"
    ]
    assert len(post_ids) == 1 and post_ids[0]
    # The request's own line and at least one line another module wrote while serving it.
    assert len(by_request[post_ids[0]]) >= 2, by_request[post_ids[0]]


def test_an_exception_is_one_json_line_with_its_traceback(json_lines):
    _, lines = json_lines
    token = bind_request_id("job-request-9")
    try:
        try:
            raise RuntimeError("the runner vanished")
        except RuntimeError:
            logging.getLogger("dashboard.jobs.executor").exception("job 9: the supervisor failed")
    finally:
        bind_request_id(None)
        del token

    (entry,) = [e for e in entries(lines) if e["message"] == "job 9: the supervisor failed"]
    assert entry["level"] == "error" and entry["request_id"] == "job-request-9"
    assert "RuntimeError: the runner vanished" in entry["error"]


def test_a_bad_log_format_stops_start_up_naming_the_setting(demo_folder: Path):
    with pytest.raises(ConfigurationError, match="DASHBOARD_LOG_FORMAT must be one of text, json"):
        make_app(demo_folder, LOG_FORMAT="xml")


def test_a_flask_command_with_json_logs_writes_only_json_on_stderr(demo_folder: Path):
    """A real process: what the app factory sets up is what a container's log collector gets."""
    env = clean_environ(
        FLASK_APP="dashboard",
        DASHBOARD_CONFIG="testing",
        DASHBOARD_LOG_FORMAT="json",
        DASHBOARD_DATABASE_URL=f"sqlite:///{demo_folder / 'store.db'}",
        ENVIRONMENTS_FILE=str(demo_folder / "environments.yaml"),
        SECRET_KEY=secrets.token_hex(32),
    )
    script = (
        "import logging; from dashboard import create_app; app = create_app(); "
        "app.test_client().get('/healthz', headers={'X-Request-ID': 'from-a-proxy'}); "
        "logging.getLogger('dashboard.test').warning('plain %s', 'words')"
    )

    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines()]  # every line is JSON
    assert {"logger": "dashboard.test", "message": "plain words"}.items() <= lines[-1].items()
    request = next(line for line in lines if line["logger"] == "dashboard.requests")
    assert request["request_id"] == "from-a-proxy" and request["status"] == 200
