"""The container's entry script, run for real on this machine, and the Dockerfile around it.

Docker cannot run here, so docker/entrypoint.sh is started directly with the venv's `flask` and
`gunicorn` first on PATH and the settings the image would give it.
"""

from __future__ import annotations

import json
import secrets
import signal
import sqlite3
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers import (
    REPO,
    START_TIMEOUT,
    STOP_TIMEOUT,
    clean_environ,
    free_port,
    group_is_gone,
    stop_group,
    wait_until_answering,
)

# Each test starts the image's entry script: the store's upgrade, then gunicorn.
pytestmark = pytest.mark.slow

ENTRYPOINT = REPO / "docker" / "entrypoint.sh"
DOCKERFILE = REPO / "Dockerfile"


@dataclass
class Entrypoint:
    """One run of docker/entrypoint.sh: where it listens, its store, and its output so far."""

    process: subprocess.Popen[bytes]
    port: int
    store: Path
    log: Path
    home: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/healthz"

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def entrypoint_env(store: Path, port: int, home: Path) -> dict[str, str]:
    """The production settings the image gives the script, and nothing inherited that could leak."""
    return clean_environ(
        HOME=str(home),
        FLASK_APP="dashboard",
        DASHBOARD_CONFIG="production",
        SECRET_KEY=secrets.token_hex(32),
        DASHBOARD_DATABASE_URL=f"sqlite:///{store}",
        ENVIRONMENTS_FILE=str(REPO / "environments.yaml"),
        PORT=str(port),
        BIND_HOST="127.0.0.1",
    )


def run_entrypoint(tmp_path: Path, *args: str, log_name: str = "entrypoint.log") -> Entrypoint:
    store = tmp_path / "store.db"
    port = free_port()
    log = tmp_path / log_name
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    with log.open("wb") as sink:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            [str(ENTRYPOINT), *args],
            cwd=REPO,
            env=entrypoint_env(store, port, home),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Entrypoint(process=process, port=port, store=store, log=log, home=home)


def get_health(url: str) -> tuple[int, dict]:
    with urllib.request.urlopen(url, timeout=2) as response:
        return response.status, json.loads(response.read())


def wait_until_serving(entrypoint: Entrypoint) -> None:
    wait_until_answering(entrypoint.process, entrypoint.url, entrypoint.output, START_TIMEOUT)


@pytest.fixture
def serving(tmp_path: Path) -> Iterator[Entrypoint]:
    entrypoint = run_entrypoint(tmp_path)
    try:
        wait_until_serving(entrypoint)
        yield entrypoint
    finally:
        stop_group(entrypoint.process)


# --- the entry script ------------------------------------------------------------------------


def test_entrypoint_serves_healthz_ok_through_gunicorn(serving):
    status, body = get_health(serving.url)

    assert status == 200
    assert body["status"] == "ok"
    assert "gunicorn" in serving.output().lower()


def test_entrypoint_upgrades_the_dashboard_store_before_serving(serving):
    assert serving.store.is_file()
    with closing(sqlite3.connect(serving.store)) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
        versions = connection.execute("SELECT version_num FROM alembic_version").fetchall()

    assert "alembic_version" in tables
    assert len(versions) == 1


def test_entrypoint_gives_gunicorn_a_fixed_mmap_threshold(serving):
    # Freed argon2 buffers (19 MiB per sign-in) then go back to the system instead of staying
    # in each thread's malloc arena; the benchmark measures the memory (bench/scale.py).
    environ = Path(f"/proc/{serving.process.pid}/environ").read_bytes().split(b"\0")

    assert b"MALLOC_MMAP_THRESHOLD_=131072" in environ


def test_entrypoint_writes_nothing_under_home(serving):
    # gunicorn >= 25.1 would open a control socket in $HOME/.gunicorn; the image's user has none.
    assert list(serving.home.iterdir()) == []


def test_entrypoint_exits_cleanly_when_gunicorn_gets_sigterm(serving):
    # `docker stop` signals PID 1 only: the script must have exec'd gunicorn for this to work.
    serving.process.send_signal(signal.SIGTERM)
    returncode = serving.process.wait(timeout=STOP_TIMEOUT)

    assert returncode == 0, serving.output()
    deadline = time.monotonic() + STOP_TIMEOUT
    while not group_is_gone(serving.process.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert group_is_gone(serving.process.pid), "gunicorn workers outlived the master"


def test_entrypoint_runs_given_command_after_upgrading_the_store(tmp_path):
    code = "import os; print('command ran with', os.environ['DASHBOARD_CONFIG'])"
    entrypoint = run_entrypoint(tmp_path, "python", "-c", code)
    try:
        returncode = entrypoint.process.wait(timeout=START_TIMEOUT)
    finally:
        stop_group(entrypoint.process)

    assert returncode == 0, entrypoint.output()
    assert "command ran with production" in entrypoint.output()
    with closing(sqlite3.connect(entrypoint.store)) as connection:
        assert connection.execute("SELECT count(*) FROM alembic_version").fetchone() == (1,)


# --- the Dockerfile (text only: Docker cannot run here) ---------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def dockerfile_values(keyword: str) -> list[str]:
    return [arguments for name, arguments in dockerfile_instructions() if name == keyword]


def test_dockerfile_runs_the_entry_script_as_a_non_root_user_on_python_311_slim():
    assert dockerfile_values("FROM") == ["python:3.11-slim"]
    users = dockerfile_values("USER")
    assert users, "the image must declare a USER"
    assert users[-1].split(":")[0] not in ("root", "0")
    assert json.loads(dockerfile_values("ENTRYPOINT")[-1]) == ["/app/docker/entrypoint.sh"]
    assert any(value.startswith("docker/") for value in dockerfile_values("COPY"))


def test_dockerfile_exposes_and_health_checks_port_8000():
    assert "8000" in dockerfile_values("EXPOSE")[-1].split()
    assert any("PORT=8000" in value.split() for value in dockerfile_values("ENV"))
    healthcheck = dockerfile_values("HEALTHCHECK")[-1]
    assert "docker/healthcheck.py" in healthcheck  # which asks /readyz (tests/test_deploy.py)
