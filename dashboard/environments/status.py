"""Where each environment stands, read concurrently into a cache refreshed in the background."""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from dashboard.environments.loader import Environment, Project
from dashboard.errors import DashboardError, EnvironmentUnreachable
from dashboard.target import adapter as alembic_adapter
from dashboard.target.adapter import RevisionGraph

logger = logging.getLogger(__name__)


class Status(StrEnum):
    UP_TO_DATE = "up_to_date"
    BEHIND = "behind"
    AHEAD_UNKNOWN = "ahead_unknown"
    MULTIPLE_HEADS = "multiple_heads"
    UNREACHABLE = "unreachable"
    NOT_CONFIGURED = "not_configured"
    # Not read yet: the first background read has not finished.
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class EnvironmentStatus:
    """One environment's revision state as read at `checked_at`."""

    name: str
    status: Status
    behind: int = 0
    current: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    error: str | None = None
    checked_at: datetime | None = None
    duration: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """Return the JSON shape of `flask dashboard status --json`."""
        data = asdict(self)
        data["status"] = str(self.status)
        data["checked_at"] = self.checked_at.isoformat() if self.checked_at else None
        data.pop("duration")
        return data


def classify(
    *, environment: Environment, graph: RevisionGraph, current: tuple[str, ...]
) -> EnvironmentStatus:
    """Work out an environment's status from its recorded revisions and the script directory."""
    now = datetime.now(UTC)
    unknown = [revision for revision in current if revision not in graph]
    if unknown:
        return EnvironmentStatus(
            name=environment.name,
            status=Status.AHEAD_UNKNOWN,
            current=list(current),
            error=f"the database is at {', '.join(unknown)}, which the script directory "
            "does not contain (a newer release, or a deleted script?)",
            checked_at=now,
        )
    pending = graph.pending(current)
    if len(graph.heads) > 1:
        return EnvironmentStatus(
            name=environment.name,
            status=Status.MULTIPLE_HEADS,
            behind=len(pending),
            current=list(current),
            pending=pending,
            error=f"the script directory has {len(graph.heads)} heads "
            f"({', '.join(graph.heads)}), so 'head' is ambiguous: merge them",
            checked_at=now,
        )
    return EnvironmentStatus(
        name=environment.name,
        status=Status.BEHIND if pending else Status.UP_TO_DATE,
        behind=len(pending),
        current=list(current),
        pending=pending,
        checked_at=now,
    )


def read_status(
    *, project: Project, environment: Environment, graph: RevisionGraph, timeout: float
) -> EnvironmentStatus:
    """Read one environment's database now and classify it; never raises for a bad database."""
    started = time.monotonic()
    if environment.url is None:
        return EnvironmentStatus(
            name=environment.name,
            status=Status.NOT_CONFIGURED,
            error=environment.not_configured_reason,
            checked_at=datetime.now(UTC),
        )
    try:
        current = alembic_adapter.read_current_revisions(
            project.database(environment), timeout=timeout
        )
    except EnvironmentUnreachable as error:
        return EnvironmentStatus(
            name=environment.name,
            status=Status.UNREACHABLE,
            error=str(error),
            checked_at=datetime.now(UTC),
            duration=time.monotonic() - started,
        )
    result = classify(environment=environment, graph=graph, current=current)
    return EnvironmentStatus(**{**result.__dict__, "duration": time.monotonic() - started})


def read_all(*, project: Project, graph: RevisionGraph, timeout: float) -> list[EnvironmentStatus]:
    """Read every environment concurrently; one that does not answer in time is unreachable."""
    # A driver's own timeout normally fires first; this bound covers drivers without one.
    deadline = timeout + 2.0
    executor = ThreadPoolExecutor(
        max_workers=max(1, min(32, len(project.environments))),
        thread_name_prefix="status-read",
    )
    try:
        futures = {
            environment.name: executor.submit(
                read_status,
                project=project,
                environment=environment,
                graph=graph,
                timeout=timeout,
            )
            for environment in project.environments
        }
        wait_for(futures.values(), timeout=deadline)
    finally:
        # Do not wait for a read stuck past its deadline; it finishes (or times out) on its own.
        executor.shutdown(wait=False, cancel_futures=True)
    results = []
    for environment in project.environments:
        future = futures[environment.name]
        if future.done() and not future.cancelled():
            results.append(future.result())
        else:
            results.append(
                EnvironmentStatus(
                    name=environment.name,
                    status=Status.UNREACHABLE,
                    error=f"no answer within {deadline:g} s",
                    checked_at=datetime.now(UTC),
                )
            )
    return results


class StatusBoard:
    """The cached statuses of a project's environments, refreshed in a background thread.

    Nothing connects until the first read is asked for: creating a board is free.
    """

    def __init__(
        self,
        *,
        project: Project,
        timeout: float = 3.0,
        period: float = 10.0,
        graph_loader: Callable[[], RevisionGraph] | None = None,
    ) -> None:
        self.project = project
        self.timeout = timeout
        self.period = period
        self._graph_loader = graph_loader or (
            lambda: alembic_adapter.load_graph(project.script_location, project.python_path)
        )
        self._lock = threading.Lock()
        self._refreshed = threading.Condition(self._lock)
        self._statuses: dict[str, EnvironmentStatus] = {}
        self._last_refresh: float | None = None
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._chores: list[Callable[[], object]] = []

    def add_chore(self, chore: Callable[[], object]) -> None:
        """Run `chore` in the background thread after each refresh (e.g. store housekeeping)."""
        self._chores.append(chore)

    def run_chores(self) -> None:
        """Run every chore once; one that fails is logged and the others still run."""
        for chore in list(self._chores):
            try:
                chore()
            except Exception:  # the refresher thread must outlive any one chore's failure
                logger.exception("a background chore failed: %s", getattr(chore, "__name__", chore))

    def graph(self) -> RevisionGraph:
        """Return the (cached) revision graph of the project's script directory."""
        return self._graph_loader()

    def refresh(self) -> list[EnvironmentStatus]:
        """Read every environment now, store the result and return it."""
        graph = self.graph()
        statuses = read_all(project=self.project, graph=graph, timeout=self.timeout)
        with self._lock:
            self._statuses = {status.name: status for status in statuses}
            self._last_refresh = time.monotonic()
            self._refreshed.notify_all()
        return statuses

    def snapshot(self, *, wait: float = 0.0) -> list[EnvironmentStatus]:
        """Return the cached statuses, starting the background refresher if needed.

        With `wait`, block up to that many seconds for a first read; never longer.
        """
        self.start()
        with self._lock:
            if wait and self._last_refresh is None:
                self._refreshed.wait_for(lambda: self._last_refresh is not None, timeout=wait)
            statuses = dict(self._statuses)
        return [
            statuses.get(environment.name)
            or EnvironmentStatus(name=environment.name, status=Status.UNKNOWN)
            for environment in self.project.environments
        ]

    def request_refresh(self) -> None:
        """Ask the background thread to re-read now instead of at its next period."""
        self.start()
        self._wake.set()

    def refresh_soon(self) -> None:
        """Wake the refresher if this process runs one (a CLI command starts none)."""
        with self._lock:
            running = self._thread is not None and self._thread.is_alive()
        if running:
            self._wake.set()

    def start(self) -> None:
        """Start the background refresher once."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._thread = threading.Thread(target=self._run, name="status-board", daemon=True)
            self._thread.start()
        # End the refresher before the interpreter tears down the modules it uses (weakly: a
        # board nobody holds any more needs no stopping).
        atexit.register(_stop_at_exit, weakref.ref(self))

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the background refresher (at exit, or when a test is done with it)."""
        self._stopping.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=timeout)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.refresh()
            except RuntimeError as error:
                # The interpreter is shutting down (a CLI command or a test run ending): the
                # pool takes no more reads, and this daemon thread has nothing left to do. (The
                # thread pool's own exit hook runs before the main thread counts as stopped.)
                if (
                    self._stopping.is_set()
                    or not threading.main_thread().is_alive()
                    or "shutdown" in str(error)  # "cannot schedule new futures after … shutdown"
                ):
                    return
                raise
            except DashboardError as error:
                # A broken script directory must not kill the refresher; keep the last statuses
                # (each page that needs the graph says what is wrong with it).
                logger.warning("status refresh failed: %s", error)
                with self._lock:
                    self._last_refresh = time.monotonic()
                    self._refreshed.notify_all()
            if self._stopping.is_set():
                return
            self.run_chores()
            self._wake.wait(self.period)
            self._wake.clear()


def _stop_at_exit(board: weakref.ref[StatusBoard]) -> None:
    alive = board()
    if alive is not None:
        alive.stop()
