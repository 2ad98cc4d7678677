"""The dashboard served as docker/entrypoint.sh serves it (gunicorn, 2 workers x 4 threads), and
a small HTTP client that signs in and times answers (time to first byte and to the last byte)."""

from __future__ import annotations

import html
import http.client
import os
import re
import signal
import socket
import subprocess
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"
START_TIMEOUT = 120.0
HX = {"HX-Request": "true"}
# How often a result is asked for: more often than a page's `every 1s`, so that the time to the
# result is measured to within this (a person sees it up to the page's period later).
POLL_SECONDS = 0.25
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"|"X-CSRFToken": "([^"]+)"')
# An htmx element that asks again by itself: a progress fragment polling for its result.
_POLLING = re.compile(
    r'<[^>]*hx-get="([^"]+)"[^>]*hx-trigger="([^"]*(?:every|load)[^"]*)"'
    r'|<[^>]*hx-trigger="([^"]*(?:every|load)[^"]*)"[^>]*hx-get="([^"]+)"'
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- the server -----------------------------------------------------------------------------


class Server:
    """One gunicorn started by docker/entrypoint.sh, in a process group of its own."""

    def __init__(self, env: Mapping[str, str], log: Path) -> None:
        self.port = free_port()
        self.log = log
        settings = {**env, "BIND_HOST": "127.0.0.1", "PORT": str(self.port)}
        with log.open("ab") as sink:
            self.process = subprocess.Popen(
                ["bash", str(ENTRYPOINT)],
                cwd=REPO,
                env=settings,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started = time.perf_counter()

    def wait_until_serving(self) -> float:
        """Wait for /healthz to answer 200; return the seconds since the start."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited ({self.process.returncode}):\n{self.tail()}")
            try:
                if Client(self.port).request("GET", "/healthz").status == 200:
                    return time.perf_counter() - self.started
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"the server did not answer /healthz in {START_TIMEOUT:g} s")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def workers(self) -> list[int]:
        """The gunicorn worker processes (children of the master, which the entry script execs)."""
        return children(self.process.pid)

    def stop(self) -> None:
        """SIGTERM the whole group (graceful), SIGKILL what is left after 10 s."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=30)


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The fields after the command name (which may hold spaces) start with state, ppid.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return sorted(found)


def memory_mib(pid: int) -> dict[str, float]:
    """VmHWM (peak resident set) and VmRSS of a process, in MiB."""
    values: dict[str, float] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                values[key] = round(int(rest.split()[0]) / 1024, 1)
    except OSError:
        pass
    return values


# --- the client -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int
    first_byte_s: float
    total_s: float
    size: int
    text: str
    location: str | None


class Client:
    """A browser-like client of one server: keeps its cookies, times every answer."""

    def __init__(self, port: int, cookies: dict[str, str] | None = None) -> None:
        self.port = port
        self.cookies: dict[str, str] = dict(cookies or {})

    def request(
        self,
        method: str,
        path: str,
        form: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 60.0,
    ) -> Answer:
        outgoing = dict(headers or {})
        body = None
        if form is not None:
            body = urllib.parse.urlencode(form).encode()
            outgoing["Content-Type"] = "application/x-www-form-urlencoded"
        if self.cookies:
            outgoing["Cookie"] = "; ".join(f"{key}={value}" for key, value in self.cookies.items())
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            started = time.perf_counter()
            connection.request(method, path, body=body, headers=outgoing)
            response = connection.getresponse()
            first_byte = time.perf_counter() - started
            data = response.read()
            total = time.perf_counter() - started
        finally:
            connection.close()
        for header in response.headers.get_all("Set-Cookie") or []:
            cookie = SimpleCookie(header)
            for key, morsel in cookie.items():
                self.cookies[key] = morsel.value
        return Answer(
            status=response.status,
            first_byte_s=first_byte,
            total_s=total,
            size=len(data),
            text=data.decode("utf-8", errors="replace"),
            location=response.headers.get("Location"),
        )

    def get(self, path: str, headers: Mapping[str, str] | None = None, **kwargs) -> Answer:
        return self.request("GET", path, headers=headers, **kwargs)

    def csrf_token(self, path: str) -> str:
        page = self.get(path)
        match = _CSRF.search(page.text)
        if not match:
            raise RuntimeError(f"no CSRF token on {path} (status {page.status})")
        return html.unescape(match.group(1) or match.group(2))

    def sign_in(self, username: str, password: str) -> None:
        token = self.csrf_token("/login")
        answer = self.request(
            "POST", "/login", {"username": username, "password": password, "csrf_token": token}
        )
        if answer.status != 302:
            raise RuntimeError(f"signing in as {username} answered {answer.status}")


def polling_url(text: str) -> str | None:
    """The URL a fragment asks again by itself (hx-get with an `every`/`load` trigger), or None
    when it is a final answer."""
    match = _POLLING.search(text)
    return html.unescape(match.group(1) or match.group(4)) if match else None


@dataclass(frozen=True)
class Progressive:
    """Work that may answer at once with progress and swap the result in later."""

    first: Answer
    result: Answer
    result_s: float
    polls: int


def until_result(
    client: Client,
    method: str,
    path: str,
    form: Mapping[str, str] | None = None,
    timeout: float = 1800.0,
) -> Progressive:
    """Send the request as htmx does, then follow any polling fragment until a final answer
    (one without a self-polling element, or status 286)."""
    started = time.perf_counter()
    first = client.request(method, path, form=form, headers=HX, timeout=timeout)
    answer, polls = first, 0
    while answer.status != 286 and answer.status < 400:
        url = polling_url(answer.text)
        if url is None or time.perf_counter() - started > timeout:
            break
        time.sleep(POLL_SECONDS)
        answer = client.get(url, headers=HX, timeout=timeout)
        polls += 1
    return Progressive(first, answer, time.perf_counter() - started, polls)
