"""Real servers for tests: gunicorn in its own process group (always killed whole), and a
cookie-keeping HTTP session that talks to them the way a browser does."""

from __future__ import annotations

import functools
import html
import http.cookiejar
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

REPO = Path(__file__).resolve().parent.parent
# The venv's bin folder; not resolved, since the interpreter there is usually a symlink.
VENV_BIN = Path(sys.executable).parent
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
REQUEST_TIMEOUT = 60.0
# Settings a developer's shell may hold that must not leak into a server under test.
_INHERITED_SETTINGS = ("DASHBOARD_", "FLASK_", "GUNICORN_")
_INHERITED_NAMES = ("SECRET_KEY", "ENVIRONMENTS_FILE", "PORT", "BIND_HOST", "XDG_RUNTIME_DIR")


# --- processes ------------------------------------------------------------------------------


def free_port() -> int:
    """A loopback port free right now (the server that binds it may still race another)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_environ(**settings: str) -> dict[str, str]:
    """This process's environment without the dashboard's, Flask's or gunicorn's settings,
    the venv's bin folder first on PATH, then `settings`."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(_INHERITED_SETTINGS) and key not in _INHERITED_NAMES
    }
    env["PATH"] = os.pathsep.join([str(VENV_BIN), os.environ.get("PATH", os.defpath)])
    env.update(settings)
    return env


def server_environ(
    tmp_path: Path, *, store: str, environments: Path, secret_key: str, **settings: str
) -> dict[str, str]:
    """The environment of a dashboard server on `store`: a clean environment with a HOME of its
    own under `tmp_path`, the shared SECRET_KEY (sessions, audit checkpoints), then `settings`."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return clean_environ(
        HOME=str(home),
        # Not the repository's instance folder, which every test server would share.
        DASHBOARD_AUDIT_ANCHOR_FILE=str(tmp_path / "audit-anchors.log"),
        SECRET_KEY=secret_key,
        DASHBOARD_DATABASE_URL=store,
        ENVIRONMENTS_FILE=str(environments),
        **settings,
    )


def group_is_gone(pgid: int) -> bool:
    """True when no process is left in the process group."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def stop_group(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> None:
    """Kill whatever is left of the process group `process` leads, then reap the leader."""
    if process.poll() is None or not group_is_gone(process.pid):
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait(timeout=timeout)


def wait_until_answering(
    process: subprocess.Popen[bytes],
    url: str,
    output: Callable[[], str],
    timeout: float = START_TIMEOUT,
) -> None:
    """Wait until something answers `url` (any status); fail with the output if the process
    exits first or nothing answers in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"exited with {process.returncode} before serving {url}:\n{output()}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError as error:
            error.close()
            return  # the server answered; the test judges the answer
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.2)
    pytest.fail(f"nothing answered {url} within {timeout}s:\n{output()}")


# --- gunicorn -------------------------------------------------------------------------------


@functools.cache
def control_socket_options() -> tuple[str, ...]:
    """`--no-control-socket` where gunicorn has it (>= 25.1 would open one under $HOME)."""
    usage = subprocess.run(
        [str(VENV_BIN / "gunicorn"), "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    return ("--no-control-socket",) if "--no-control-socket" in usage else ()


@dataclass
class Server:
    """One gunicorn serving the dashboard: where it listens and what it has printed."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_gunicorn(
    *,
    log: Path,
    env: Mapping[str, str],
    workers: int = 2,
    threads: int = 4,
    app: str = "dashboard:create_app()",
) -> Server:
    """Start gunicorn (gthread workers) on a free loopback port, in a session of its own so
    stop_group kills its workers and their children too; does not wait for it to serve.

    The port is bound here and the socket handed over (`fd://`): a port merely free a moment
    ago could meanwhile be taken by another test's server or connection (pytest-xdist)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    command = [
        str(VENV_BIN / "gunicorn"),
        "--bind",
        f"fd://{listener.fileno()}",
        "--workers",
        str(workers),
        "--threads",
        str(threads),
        "--worker-class",
        "gthread",
        "--access-logfile",
        "-",
        "--error-logfile",
        "-",
        *control_socket_options(),
        app,
    ]
    with listener, log.open("wb") as sink:  # the child keeps its own copies of both
        process = subprocess.Popen(
            command,
            cwd=REPO,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            pass_fds=(listener.fileno(),),
        )
    return Server(process=process, port=port, log=log)


def wait_until_serving(server: Server, timeout: float = START_TIMEOUT) -> None:
    """Wait until the server answers /healthz."""
    wait_until_answering(server.process, server.url("/healthz"), server.output, timeout)


# --- talking to a server --------------------------------------------------------------------

_CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')
_REFUSAL = re.compile(r'role="alert"[^>]*>.*?<p>(.*?)</p>', re.S)


@dataclass(frozen=True)
class Reply:
    """One HTTP answer: status, the Location header (redirects are not followed) and body."""

    status: int
    location: str | None
    text: str

    def hidden_input(self, name: str) -> str:
        """The value of a hidden form input on this page."""
        match = re.search(rf'name="{re.escape(name)}" value="([^"]*)"', self.text)
        assert match, f"no input {name!r} on the page (status {self.status}):\n{self.text[:2000]}"
        return html.unescape(match.group(1))

    def refusal(self) -> str | None:
        """The message of a refusal page (the alert card), if this is one."""
        match = _REFUSAL.search(self.text)
        return html.unescape(match.group(1)).strip() if match else None


class _KeepRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # hand the 3xx back to the caller, as a test client does


class HttpSession:
    """A browser-like session over real HTTP: one cookie jar, shared by every server it talks
    to (cookies are not per port), safe to use from several threads at once."""

    def __init__(self) -> None:
        # Production cookies are Secure; these servers speak plain HTTP on loopback.
        policy = http.cookiejar.DefaultCookiePolicy(secure_protocols=("https", "wss", "http"))
        self.cookies = http.cookiejar.CookieJar(policy)
        self._opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.cookies), _KeepRedirects()
        )

    def request(
        self,
        method: str,
        url: str,
        form: Mapping[str, str] | None = None,
        timeout: float = REQUEST_TIMEOUT,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        """Send one request (a form POST when `form` is given) and return the answer."""
        body = urllib.parse.urlencode(form).encode() if form is not None else None
        outgoing = urllib.request.Request(
            url, data=body, method=method, headers=dict(headers or {})
        )
        try:
            with self._opener.open(outgoing, timeout=timeout) as response:
                return Reply(response.status, response.headers.get("Location"), _text(response))
        except urllib.error.HTTPError as error:
            with error:
                return Reply(error.code, error.headers.get("Location"), _text(error))

    def get(self, url: str, timeout: float = REQUEST_TIMEOUT) -> Reply:
        return self.request("GET", url, timeout=timeout)

    def post(self, url: str, form: Mapping[str, str], timeout: float = REQUEST_TIMEOUT) -> Reply:
        return self.request("POST", url, form, timeout=timeout)

    def login(self, server: Server, username: str, password: str) -> None:
        """Sign in through the login form, as a person would."""
        page = self.get(server.url("/login"))
        match = _CSRF_INPUT.search(page.text)
        assert match, f"no CSRF token on the login page (status {page.status})"
        signed_in = self.post(
            server.url("/login"),
            {"username": username, "password": password, "csrf_token": match.group(1)},
        )
        assert signed_in.status == 302, f"{signed_in.status}: {signed_in.text[:1000]}"


def _text(response) -> str:
    return response.read().decode("utf-8", errors="replace")


# --- a store that refuses connections ------------------------------------------------------

POSTGRESQL_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


@contextmanager
def store_refusing(store: URL) -> Iterator[None]:
    """Make the store database refuse new connections and end the open ones; then let it be."""
    admin = sa.create_engine(
        POSTGRESQL_ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool
    )
    name = store.database
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
            connection.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name"
                ),
                {"name": name},
            )
        yield
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        admin.dispose()


@contextmanager
def private_postgresql() -> Iterator[URL]:
    """A PostgreSQL server of one's own (stock settings, a throwaway cluster on a free port), for
    a test that exhausts something the whole server shares (its lock table): on the shared
    server, every other test running meanwhile would get "out of shared memory"."""
    binaries = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not binaries or os.geteuid() != 0 or shutil.which("runuser") is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("a private PostgreSQL server needs the server's binaries and root")
        pytest.skip("a private PostgreSQL server needs the server's binaries and root")
    bindir = binaries[-1].parent
    folder = Path(tempfile.mkdtemp(prefix="dashboard-pg-", dir="/tmp"))
    shutil.chown(folder, "postgres", "postgres")
    data, port = folder / "data", free_port()
    as_postgres = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [*as_postgres, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
         "--no-sync"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    server = subprocess.Popen(
        [*as_postgres, str(bindir / "postgres"), "-D", str(data), "-p", str(port),
         "-k", str(folder), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = make_url(f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres")
    try:
        deadline = time.monotonic() + 60
        while subprocess.run(
            ["pg_isready", "-q", "-h", "127.0.0.1", "-p", str(port)], check=False
        ).returncode:
            assert server.poll() is None, "the private PostgreSQL server did not start"
            assert time.monotonic() < deadline, "the private PostgreSQL server never answered"
            time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        shutil.rmtree(folder, ignore_errors=True)
