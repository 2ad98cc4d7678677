"""One status refresher per deployment (issue 14): the process holding a lease row in the store
reads the target databases, runs the housekeeping and writes the statuses every process's pages
show; when it dies, another takes over. Real gunicorn servers, a real store, real SIGKILL."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from dashboard.clock import utcnow
from dashboard.environments.models import StoredStatus
from dashboard.extensions import db
from dashboard.jobs.models import ActiveJob, Job
from dashboard.rollouts.models import Rollout
from dashboard.scheduler import STATUS_LEASE
from dashboard.scheduler.models import Lease
from tests.helpers import TEST_PASSWORD, add_user, make_app, upgrade_store
from tests.servers import REPO, HttpSession, Server, server_environ

pytestmark = pytest.mark.slow

# Short periods, so that a test sees several refreshes and a take-over in seconds.
FAST = {
    "DASHBOARD_REFRESH_SECONDS": "1",
    "DASHBOARD_STATUS_LEASE_SECONDS": "3",
    "DASHBOARD_CONNECT_TIMEOUT": "1",
}
WAIT = 45.0  # the most any wait below may take before the test fails (never a timing assert)


def statuses_on(page: str) -> list[str]:
    return re.findall(r'data-status="([^"]+)"', page)


def wait_until(what: str, check: Callable[[], object], timeout: float = WAIT) -> object:
    """Poll `check` until it returns something true; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    pytest.fail(f"never happened: {what}")


# --- who connects: a port that names the process on the other end ---------------------------


def _client_socket_inode(client_port: int, server_port: int) -> str | None:
    """The inode of the loopback socket whose local port is `client_port` (talking to us)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1].split(":"), fields[2].split(":")
        if int(local[1], 16) == client_port and int(remote[1], 16) == server_port:
            return fields[9]
    return None


def _descendants(pid: int) -> list[int]:
    found = [pid]
    for child in _children(pid):
        found += _descendants(child)
    return found


def _children(pid: int) -> list[int]:
    try:
        return [
            int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        ]
    except OSError:
        return []


def _owner(inode: str, candidates: list[int]) -> int | None:
    for pid in candidates:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                if os.readlink(fd) == f"socket:[{inode}]":
                    return pid
        except OSError:
            continue
    return None


class ConnectionRecorder:
    """A loopback port for an environment's URL that notes which process connects, then hangs
    up (the read fails at once: that environment is simply unreachable)."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.servers: list[Server] = []
        self.connections: list[int | None] = []  # the pid of each, None if it could not be told
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, (_, client_port) = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with connection:  # the client waits for a greeting: its socket is still open here
                inode = _client_socket_inode(client_port, self.port)
                candidates = [
                    pid for server in self.servers for pid in _descendants(server.process.pid)
                ]
                self.connections.append(_owner(inode, candidates) if inode else None)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.listener.close()


@pytest.fixture
def recorder() -> Iterator[ConnectionRecorder]:
    found = ConnectionRecorder()
    yield found
    found.close()


# --- a deployment: two servers on one PostgreSQL store ---------------------------------------


class Deployment:
    """The demo's three environments plus `probe` (the recorder's port), a PostgreSQL store,
    and gunicorn servers started on demand (one worker each: a server is one process)."""

    def __init__(
        self, tmp_path: Path, store: URL, demo_folder: Path, gunicorn, recorder: ConnectionRecorder
    ):
        with (demo_folder / "environments.yaml").open("a") as environments:
            environments.write(
                f"  - name: probe\n    url: postgresql+psycopg://u:p@127.0.0.1:{recorder.port}/db\n"
            )
        self.folder = demo_folder
        self.store = store.render_as_string(hide_password=False)
        self.app = make_app(demo_folder, SQLALCHEMY_DATABASE_URI=self.store)
        add_user(self.app, "vera")
        with self.app.app_context():
            db.engine.dispose()
        self.env = server_environ(
            tmp_path,
            store=self.store,
            environments=demo_folder / "environments.yaml",
            secret_key=secrets.token_hex(32),
            **FAST,
        )
        self._gunicorn = gunicorn
        self.browser = HttpSession()
        self.servers: list[Server] = []
        recorder.servers = self.servers  # the recorder names the processes of these servers

    def start(self, count: int) -> list[Server]:
        started = [self._gunicorn(self.env, workers=1, threads=4) for _ in range(count)]
        self.servers += started
        if len(self.servers) == count:
            self.browser.login(started[0], "vera", TEST_PASSWORD)
        for server in started:  # a process takes part from its first page with statuses
            assert self.browser.get(server.url("/")).status == 200
        return started

    def lease(self) -> Lease | None:
        with self.app.app_context():
            lease = db.session.get(Lease, STATUS_LEASE)
            if lease is not None:
                db.session.expunge(lease)
            db.session.rollback()
            return lease

    def holder_pid(self) -> int:
        lease = self.lease()
        assert lease is not None
        return int(lease.holder.split(":")[1])

    def rows(self) -> dict[str, StoredStatus]:
        with self.app.app_context():
            rows = {row.name: row for row in db.session.scalars(sa.select(StoredStatus))}
            db.session.expunge_all()
            db.session.rollback()
            return rows

    def server_of(self, pid: int) -> Server:
        (server,) = [s for s in self.servers if pid in _descendants(s.process.pid)]
        return server

    def close(self) -> None:
        with self.app.app_context():
            db.engine.dispose()


@pytest.fixture
def deployment(tmp_path, pg_store, demo_folder, gunicorn, recorder) -> Iterator[Deployment]:
    found = Deployment(tmp_path, pg_store, demo_folder, gunicorn, recorder)
    yield found
    found.close()


def read_everything(deployment: Deployment) -> dict[str, StoredStatus]:
    """Wait until every environment has been read once; return the rows."""
    names = {"dev", "staging", "production", "probe"}

    def all_read() -> dict[str, StoredStatus] | None:
        rows = deployment.rows()
        done = set(rows) == names and all(row.checked_at for row in rows.values())
        return rows if done else None

    return wait_until("every environment read once", all_read)  # type: ignore[return-value]


# --- the tests ------------------------------------------------------------------------------


def test_of_two_servers_exactly_one_reads_the_targets_and_both_show_its_statuses(
    deployment, recorder
):
    servers = deployment.start(2)
    rows = read_everything(deployment)
    wait_until("the probe connected to five times", lambda: len(recorder.connections) >= 5)

    holder = deployment.lease().holder
    pid = deployment.holder_pid()
    assert {row.read_by for row in deployment.rows().values()} == {holder}
    # Every connection to a target came from the holder's process, none from the other server.
    assert set(recorder.connections) == {pid}
    assert pid in [p for s in servers for p in _descendants(s.process.pid)]
    assert rows["dev"].status == "up_to_date" and rows["probe"].status == "unreachable"

    pages = [deployment.browser.get(server.url("/")).text for server in servers]
    assert statuses_on(pages[0]) == statuses_on(pages[1])
    assert statuses_on(pages[0]) == ["up_to_date", "behind", "behind", "unreachable"]
    assert "reading…" not in pages[0] and "reading…" not in pages[1]


def test_when_the_holder_is_killed_the_other_server_takes_over_and_statuses_keep_updating(
    deployment, recorder
):
    servers = deployment.start(2)
    read_everything(deployment)
    old_holder = deployment.lease().holder
    dead = deployment.server_of(deployment.holder_pid())
    survivor = next(server for server in servers if server is not dead)

    os.killpg(dead.process.pid, signal.SIGKILL)
    killed_at = utcnow()
    dead.process.wait(timeout=10)

    def new_holder() -> str | None:
        lease = deployment.lease()
        return lease.holder if lease is not None and lease.holder != old_holder else None

    holder = wait_until("another process took the lease", new_holder)
    pid = deployment.holder_pid()
    assert pid in _descendants(survivor.process.pid)

    def read_again_by_the_new_holder() -> bool:
        rows = deployment.rows().values()
        return all(
            row.read_by == holder and row.checked_at.replace(tzinfo=killed_at.tzinfo) > killed_at
            for row in rows
        )

    wait_until("every status read again by the new holder", read_again_by_the_new_holder)
    connections = len(recorder.connections)
    wait_until("the new holder keeps reading", lambda: len(recorder.connections) > connections)
    assert set(recorder.connections[connections:]) == {pid}
    page = deployment.browser.get(survivor.url("/"))
    assert page.status == 200
    assert statuses_on(page.text) == ["up_to_date", "behind", "behind", "unreachable"]


def test_refresh_on_a_server_that_does_not_hold_the_lease_shows_a_fresh_read(deployment, recorder):
    servers = deployment.start(2)
    read_everything(deployment)
    holder_server = deployment.server_of(deployment.holder_pid())
    other = next(server for server in servers if server is not holder_server)
    (deployment.folder / "demo" / "staging.db").unlink()  # behind the dashboard's back

    page = deployment.browser.get(other.url("/"))
    token = page.hidden_input("csrf_token")
    refreshed = deployment.browser.request(
        "POST",
        other.url("/?refresh=1"),
        {"csrf_token": token},
        headers={"HX-Request": "true"},
    )

    assert refreshed.status == 200
    assert statuses_on(refreshed.text) == ["up_to_date", "unreachable", "behind", "unreachable"]
    assert "staging.db does not exist" in refreshed.text
    # The holder still holds: the other server asked it, it did not read the targets itself.
    assert deployment.server_of(deployment.holder_pid()) is holder_server
    # A plain form POST (no htmx) is answered with a redirect to the Overview.
    plain = deployment.browser.post(other.url("/?refresh=1"), {"csrf_token": token})
    assert (plain.status, plain.location) == (303, "/")


def test_the_holder_stores_expired_rollouts_and_interrupted_jobs_once(deployment, recorder):
    an_hour_ago = utcnow() - timedelta(hours=1)
    with deployment.app.app_context():
        rollout = Rollout(
            environment="production",
            direction="upgrade",
            requested_target="head",
            target_revision="8d3907739fa1",
            fingerprint="0" * 64,
            approvals_required=2,
            reason="forgotten",
            requested_by="olga",
            expires_at=an_hour_ago,
        )
        job = Job(
            environment="dev",
            operation="upgrade",
            requested_target="head",
            alembic_target="8d3907739fa1",
            requested_by="olga",
            state="running",
            started_at=an_hour_ago,
            heartbeat_at=an_hour_ago,
        )
        db.session.add_all([rollout, job])
        db.session.flush()
        db.session.add(ActiveJob(environment="dev", job_id=job.id))
        db.session.commit()
        rollout_id, job_id = rollout.id, job.id

    deployment.start(2)

    def stored() -> tuple[str, str] | None:
        with deployment.app.app_context():
            states = (
                db.session.get(Rollout, rollout_id).state,
                db.session.get(Job, job_id).state,
            )
            db.session.rollback()
        return states if states == ("expired", "interrupted") else None

    wait_until("the holder's housekeeping stored both", stored)
    time.sleep(3)  # a few more passes of the holder: still one event each
    with deployment.app.app_context():
        actions = list(
            db.session.scalars(
                sa.text(
                    "SELECT action FROM audit_event WHERE action IN "
                    "('rollout.expired', 'job.interrupted') ORDER BY action"
                )
            )
        )
    assert actions == ["job.interrupted", "rollout.expired"]


# --- the lease itself, on every store: two processes racing -----------------------------------

RACER = """
import json, sys, time
from dashboard import create_app
from dashboard.scheduler import service

store, environments, start, rounds = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
app = create_app("testing", {"SQLALCHEMY_DATABASE_URI": store, "ENVIRONMENTS_FILE": environments})
won = []
with app.app_context():
    for number in range(rounds):
        time.sleep(max(0.0, start + number * 0.4 - time.time()))
        won.append(service.hold_lease(name=f"race-{number}", holder=sys.argv[5], seconds=60))
print(json.dumps(won))
"""


@pytest.mark.backends
def test_processes_racing_for_a_free_or_lapsed_lease_make_exactly_one_holder(
    databases, demo_environments
):
    store = databases.create()
    url = store.render_as_string(hide_password=False)
    app = make_app(demo_environments.parent, SQLALCHEMY_DATABASE_URI=url)
    upgrade_store(app)
    rounds = 6
    with app.app_context():
        # Odd rounds: a lease that lapsed a moment ago (its holder died); even: no row yet.
        for number in range(1, rounds, 2):
            db.session.add(
                Lease(
                    name=f"race-{number}",
                    holder="gone:1:dead",
                    expires_at=utcnow() - timedelta(seconds=1),
                )
            )
        db.session.commit()
        db.engine.dispose()
    start = time.time() + 4  # every racer has imported the app by then
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, url, str(demo_environments), str(start), str(rounds)]
            + [f"racer-{number}"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for number in range(3)
    ]
    results = []
    for racer in racers:
        out, err = racer.communicate(timeout=120)
        assert racer.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))

    winners = [sum(result[number] for result in results) for number in range(rounds)]
    assert winners == [1] * rounds, results
    with app.app_context():
        holders = {
            lease.name: lease.holder
            for lease in db.session.scalars(sa.select(Lease).where(Lease.name.like("race-%")))
        }
        db.session.remove()  # give the connection back before the pool goes
        db.engine.dispose()
    for number in range(rounds):
        (winner,) = [i for i, result in enumerate(results) if result[number]]
        assert holders[f"race-{number}"] == f"racer-{winner}"


def test_the_cli_status_reads_directly_while_another_process_holds_the_lease(demo_app):
    upgrade_store(demo_app)
    with demo_app.app_context():
        db.session.add(
            Lease(
                name=STATUS_LEASE, holder="elsewhere:1:x", expires_at=utcnow() + timedelta(hours=1)
            )
        )
        db.session.commit()

    result = demo_app.test_cli_runner().invoke(args=["dashboard", "status", "--json"])

    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [(row["name"], row["status"]) for row in rows] == [
        ("dev", "up_to_date"),
        ("staging", "behind"),
        ("production", "behind"),
    ]
    with demo_app.app_context():
        assert db.session.get(Lease, STATUS_LEASE).holder == "elsewhere:1:x"
        assert db.session.scalar(sa.select(sa.func.count()).select_from(StoredStatus)) == 0
