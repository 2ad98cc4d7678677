"""The image's parts for a deployment with separate workers (issue 16), run for real here: the
entry script's `worker` argument and settings, the HEALTHCHECK script on /readyz, and the compose
file of docs/deploy.md. Docker cannot run here, so docker/ is started directly, as
tests/test_entrypoint.py does."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import drop_redis_keys, require_redis
from tests.servers import REPO, START_TIMEOUT, free_port, stop_group
from tests.test_entrypoint import ENTRYPOINT, entrypoint_env, get_health, wait_until_answering

# Each test starts the image's web or worker container processes (gunicorn, RQ).
pytestmark = pytest.mark.slow

HEALTHCHECK = REPO / "docker" / "healthcheck.py"
COMPOSE = REPO / "docs" / "deploy" / "compose.yaml"


def start(tmp_path: Path, *args: str, **settings: str) -> tuple[subprocess.Popen, Path, dict]:
    """Start docker/entrypoint.sh with the image's settings plus `settings`."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = entrypoint_env(tmp_path / "store.db", free_port(), home)
    env["DASHBOARD_ROLE_FILE"] = str(tmp_path / "role")
    env.update(settings)
    log = tmp_path / "entrypoint.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [str(ENTRYPOINT), *args],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return process, log, env


def healthcheck(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_worker_argument_upgrades_the_store_and_runs_an_rq_worker(tmp_path: Path):
    redis_url = require_redis()
    prefix = f"test-deploy-{secrets.token_hex(6)}"
    process, log, env = start(
        tmp_path,
        "worker",
        "--burst",
        JOB_EXECUTOR="rq",
        REDIS_URL=redis_url,
        DASHBOARD_RQ_QUEUE_PREFIX=prefix,
    )
    try:
        returncode = process.wait(timeout=START_TIMEOUT)
    finally:
        stop_group(process)
        drop_redis_keys(redis_url, prefix)

    output = log.read_text(errors="replace")
    assert returncode == 0, output
    assert "upgrading the dashboard's own store" in output
    assert f"Listening on {prefix}-jobs, {prefix}-tasks" in output
    assert (tmp_path / "role").read_text().strip() == "worker"
    assert (tmp_path / "store.db").is_file()


def test_with_upgrade_store_0_the_entry_script_leaves_the_store_alone(tmp_path: Path):
    process, log, _ = start(tmp_path, "python", "-c", "print('ran')", DASHBOARD_UPGRADE_STORE="0")
    try:
        returncode = process.wait(timeout=START_TIMEOUT)
    finally:
        stop_group(process)

    assert returncode == 0 and "ran" in log.read_text()
    assert not (tmp_path / "store.db").exists()


def test_a_web_container_is_healthy_when_ready_and_logs_json_with_request_ids(tmp_path: Path):
    process, log, env = start(tmp_path, DASHBOARD_LOG_FORMAT="json")
    url = f"http://127.0.0.1:{env['PORT']}"
    try:
        wait_until_answering(process, f"{url}/healthz", lambda: log.read_text(), START_TIMEOUT)
        checked = healthcheck(env)
        status, body = get_health(f"{url}/readyz")
    finally:
        stop_group(process)

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert json.loads(checked.stdout)["store"] == "ok"
    assert (status, body["status"]) == (200, "ok")
    assert (tmp_path / "role").read_text().strip() == "web"
    requests = [
        json.loads(line)
        for line in log.read_text().splitlines()
        if line.startswith("{") and '"dashboard.requests"' in line
    ]
    assert any(entry["path"] == "/readyz" and entry["request_id"] for entry in requests)
    # gunicorn's own access log (text) is off: the app's JSON line says the same.
    assert '"GET /readyz HTTP/1.1"' not in log.read_text()


def test_a_web_container_whose_server_does_not_answer_is_unhealthy(tmp_path: Path):
    env = entrypoint_env(tmp_path / "store.db", free_port(), tmp_path)
    env["DASHBOARD_ROLE_FILE"] = str(tmp_path / "role")

    checked = healthcheck(env)

    assert checked.returncode == 1
    assert "/readyz" in checked.stdout and "refused" in checked.stdout.lower()


@pytest.mark.parametrize("reachable", [True, False], ids=["redis-up", "redis-down"])
def test_a_worker_container_is_healthy_only_while_store_and_redis_answer(
    tmp_path: Path, closed_port: int, reachable: bool
):
    redis_url = require_redis() if reachable else f"redis://127.0.0.1:{closed_port}/0"
    process, log, env = start(tmp_path, "python", "-c", "print('store upgraded')")
    assert process.wait(timeout=START_TIMEOUT) == 0, log.read_text()
    (tmp_path / "role").write_text("worker\n")
    env.update(JOB_EXECUTOR="rq", REDIS_URL=redis_url)

    checked = healthcheck(env)

    said = json.loads(checked.stdout.strip().splitlines()[-1])
    if reachable:
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert said["redis"] == "ok" and said["store"] == "ok"
    else:
        assert checked.returncode == 1
        assert str(closed_port) in said["redis"] and "store" not in said


def test_the_compose_file_runs_postgresql_redis_two_web_servers_and_two_workers():
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]

    assert services["postgres"]["image"].startswith("postgres:")
    assert services["redis"]["image"].startswith("redis:")
    web = [name for name, service in services.items() if name.startswith("web")]
    workers = [name for name, service in services.items() if name.startswith("worker")]
    assert len(web) == 2 and len(workers) == 2
    for name in web + workers:
        environment = services[name]["environment"]
        assert environment["JOB_EXECUTOR"] == "rq"
        assert environment["REDIS_URL"].startswith("redis://redis:6379/")
        assert environment["DASHBOARD_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert environment["DASHBOARD_UPGRADE_STORE"] == "0"  # the `migrate` service does it
        assert services[name]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully"
        )
    for name in workers:
        assert services[name]["command"][0] == "worker"
    assert services["migrate"]["command"] == ["flask", "db", "upgrade"]
    # Every replica signs the same sessions and audit checkpoints.
    secrets_used = {services[name]["environment"]["SECRET_KEY"] for name in web + workers}
    assert len(secrets_used) == 1
