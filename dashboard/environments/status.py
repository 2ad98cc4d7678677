"""Where each environment stands, read concurrently into a cache refreshed in the background.

Alone (the CLI, a test), a board reads in its own thread. In the web app a coordinator links it
to the store (dashboard.scheduler): only the process holding the lease reads the targets and
runs the chores, and writes what it read into the store, where every process's pages read it.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures import wait as wait_for
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

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
    # Not read yet: the first background read has not landed ("reading… since 11:42:03").
    READING = "reading"
    UNKNOWN = "reading"  # the old name of READING


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
    # For a status being read for the first time: since when it has been asked for.
    reading_since: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        """Return the JSON shape of `flask dashboard status --json`."""
        data = asdict(self)
        data["status"] = str(self.status)
        data["checked_at"] = self.checked_at.isoformat() if self.checked_at else None
        data.pop("duration")
        data.pop("reading_since")
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


def read_each(
    *,
    project: Project,
    graph: RevisionGraph,
    timeout: float,
    tick: Callable[[], object] | None = None,
) -> Iterator[list[EnvironmentStatus]]:
    """Read every environment concurrently; yield the statuses in batches as they land.

    One that does not answer in time is unreachable. `tick` runs about once a second meanwhile
    (a lease holder renews its lease there).
    """
    # A driver's own timeout normally fires first; this bound covers drivers without one.
    deadline = timeout + 2.0
    ends = time.monotonic() + deadline
    executor = ThreadPoolExecutor(
        max_workers=max(1, min(32, len(project.environments))),
        thread_name_prefix="status-read",
    )
    try:
        futures = {
            executor.submit(
                read_status,
                project=project,
                environment=environment,
                graph=graph,
                timeout=timeout,
            ): environment
            for environment in project.environments
        }
        waiting = set(futures)
        while waiting and (left := ends - time.monotonic()) > 0:
            done, waiting = wait_for(waiting, timeout=min(left, 1.0), return_when=FIRST_COMPLETED)
            if done:
                yield [future.result() for future in done]
            if tick is not None:
                tick()
    finally:
        # Do not wait for a read stuck past its deadline; it finishes (or times out) on its own.
        executor.shutdown(wait=False, cancel_futures=True)
    if waiting:
        yield [
            EnvironmentStatus(
                name=futures[future].name,
                status=Status.UNREACHABLE,
                error=f"no answer within {deadline:g} s",
                checked_at=datetime.now(UTC),
            )
            for future in waiting
        ]


def read_all(*, project: Project, graph: RevisionGraph, timeout: float) -> list[EnvironmentStatus]:
    """Read every environment concurrently; one that does not answer in time is unreachable."""
    landed = {
        status.name: status
        for batch in read_each(project=project, graph=graph, timeout=timeout)
        for status in batch
    }
    return [landed[name] for name in project.names]


class Coordinator(Protocol):
    """The store's side of a board in the web app: the lease, run requests, shared statuses.

    Its methods never raise for a store that fails: they log it and answer "no".
    """

    def hold(self) -> bool:
        """Take or renew the lease (at its own pace); say whether this process holds it."""

    def run_requested(self) -> bool:
        """Say whether some process asked for a run since this was last asked."""

    def reading(self, *, names: list[str], asked_at: datetime) -> None:
        """Note that a read of these environments started (for those never read yet)."""

    def publish(self, statuses: list[EnvironmentStatus]) -> None:
        """Store statuses that were just read, for every process's pages."""

    def request_run(self) -> None:
        """Ask the holder, wherever it runs, to read again now."""

    def release(self) -> None:
        """Let the lease lapse now (this process is stopping)."""


class StatusBoard:
    """The cached statuses of a project's environments, refreshed in a background thread.

    Nothing connects until the first read is asked for: creating a board is free. With a
    coordinator, the thread reads (and runs its chores) only while this process holds the lease.
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
            lambda: alembic_adapter.load_graph(
                project.script_location, project.python_path, project.alembic_ini
            )
        )
        self._lock = threading.Lock()
        self._refreshed = threading.Condition(self._lock)
        self._statuses: dict[str, EnvironmentStatus] = {}
        self._last_refresh: float | None = None
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._chores: list[Callable[[], object]] = []
        self._coordinator: Coordinator | None = None
        self._holding = False
        self._last_run: float | None = None
        self.started_at: datetime | None = None
        self._graph_executor: ThreadPoolExecutor | None = None
        self._graph_future: Future[RevisionGraph] | None = None
        self.graph_asked_at: datetime | None = None

    def coordinate_with(self, coordinator: Coordinator) -> None:
        """Read only while `coordinator` says this process holds the lease, and publish there."""
        self._coordinator = coordinator

    @property
    def poll(self) -> float:
        """Seconds between the thread's looks at the lease and at run requests."""
        return min(1.0, self.period)

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

    def graph_if_ready(self, wait: float = 0.2) -> RevisionGraph | None:
        """Return the revision graph if it is parsed (or parses within `wait` s); else None,
        while it is parsed in the background (a page says so instead of waiting seconds)."""
        with self._lock:
            future = self._graph_future
            if future is None or future.done():
                future = self._load_graph_in_background()
        try:
            return future.result(timeout=wait)
        except FutureTimeout:
            return None

    def _load_graph_in_background(self) -> Future[RevisionGraph]:
        if self._graph_executor is None:
            self._graph_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="graph")
        self.graph_asked_at = datetime.now(UTC)
        self._graph_future = self._graph_executor.submit(self._graph_loader)
        return self._graph_future

    def refresh(self) -> list[EnvironmentStatus]:
        """Read every environment now, store the result in memory and return it."""
        return self._read()

    def _read(self, coordinator: Coordinator | None = None) -> list[EnvironmentStatus]:
        if coordinator is not None:
            coordinator.reading(names=self.project.names, asked_at=datetime.now(UTC))
        graph = self.graph()
        landed: dict[str, EnvironmentStatus] = {}
        tick = coordinator.hold if coordinator is not None else None
        for batch in read_each(project=self.project, graph=graph, timeout=self.timeout, tick=tick):
            landed.update((status.name, status) for status in batch)
            with self._lock:
                self._statuses.update((status.name, status) for status in batch)
            if coordinator is not None:
                coordinator.publish(batch)
        with self._lock:
            self._last_refresh = time.monotonic()
            self._refreshed.notify_all()
        return [landed[name] for name in self.project.names]

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
            or EnvironmentStatus(
                name=environment.name, status=Status.READING, reading_since=self.started_at
            )
            for environment in self.project.environments
        ]

    def request_refresh(self) -> None:
        """Ask for a read now: of this process's thread, or of the lease holder's, wherever."""
        self.start()
        if self._coordinator is not None and not self._holding:
            self._coordinator.request_run()
        self._wake.set()

    def refresh_soon(self) -> None:
        """Ask for a read soon if this process runs a refresher (a CLI command starts none)."""
        if self.is_running():
            self.request_refresh()

    def is_running(self) -> bool:
        """Say whether this process's background thread runs."""
        with self._lock:
            return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the background refresher once (and parse the script directory meanwhile)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self.started_at = datetime.now(UTC)
            # The thread holds the board weakly: an app nobody holds any more stops reading.
            self._thread = threading.Thread(
                target=_run,
                args=(weakref.ref(self), self._wake, self._stopping),
                name="status-board",
                daemon=True,
            )
            self._thread.start()
            if self._graph_future is None:
                self._load_graph_in_background()
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
        if self._coordinator is not None and self._holding:
            self._holding = False
            self._coordinator.release()

    def step(self) -> float:
        """Do what is due now (read, chores); return the seconds until the next look."""
        woken = self._wake.is_set()
        self._wake.clear()
        coordinator = self._coordinator
        if coordinator is None:
            self._run_once()
            return self.period
        self._holding = coordinator.hold()
        if not self._holding:
            self._last_run = None  # on taking the lease over, read at once
            return self.poll
        requested = coordinator.run_requested()  # asked first, so that it notes every request
        due = (
            requested
            or woken
            or self._last_run is None
            or time.monotonic() - self._last_run >= self.period
        )
        if due:
            # The first read after taking the lease is the one pages wait for; the chores
            # (housekeeping, which is never urgent: pages show overdue states on read) follow
            # from the next read on.
            chores = self._last_run is not None
            self._last_run = time.monotonic()
            self._run_once(coordinator, chores=chores)
        return self.poll

    def _run_once(self, coordinator: Coordinator | None = None, *, chores: bool = True) -> None:
        try:
            self._read(coordinator)
        except DashboardError as error:
            # A broken script directory must not kill the refresher; keep the last statuses
            # (each page that needs the graph says what is wrong with it).
            logger.warning("status refresh failed: %s", error)
            with self._lock:
                self._last_refresh = time.monotonic()
                self._refreshed.notify_all()
        if chores and not self._stopping.is_set():
            self.run_chores()


def _run(
    board_ref: weakref.ref[StatusBoard], wake: threading.Event, stopping: threading.Event
) -> None:
    """The background thread: step the board until it stops or nobody holds it any more."""
    while not stopping.is_set():
        board = board_ref()
        if board is None:
            return
        try:
            delay = board.step()
        except RuntimeError as error:
            # The interpreter is shutting down (a CLI command or a test run ending): the pool
            # takes no more reads, and this daemon thread has nothing left to do. (The thread
            # pool's own exit hook runs before the main thread counts as stopped.)
            if (
                stopping.is_set()
                or not threading.main_thread().is_alive()
                or "shutdown" in str(error)  # "cannot schedule new futures after … shutdown"
            ):
                return
            raise
        del board
        if stopping.is_set():
            return
        wake.wait(delay)


def _stop_at_exit(board: weakref.ref[StatusBoard]) -> None:
    alive = board()
    if alive is not None:
        alive.stop()
