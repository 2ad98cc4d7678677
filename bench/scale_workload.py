"""The scale scenario's workload: a big script directory with branches and merges, and many
environments (SQLite files and PostgreSQL databases) at varied revisions, plus one that never
answers. Built untimed with the plain `flask --app benchapp db upgrade REV` of bench/run.py."""

from __future__ import annotations

import shutil
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

import run as side_by_side
import sqlalchemy as sa
from sqlalchemy.engine import URL

# Every BLOCK revisions: two siblings off one parent (a branch) and a revision merging them.
BLOCK = 50
# Revisions per `flask db upgrade` when building: PostgreSQL runs a Flask-Migrate upgrade in one
# transaction, and ~2,500 new tables in one transaction exceed its max_locks_per_transaction.
CHUNK = 500
# The variable that holds the PostgreSQL server's URL without a database, so that no password
# is ever written into environments.yaml.
SERVER_VARIABLE = "BENCH_POSTGRESQL_SERVER"


def parents(index: int, count: int) -> tuple[int, ...]:
    """The parents of revision `index` among `count`: a line with a branch and a merge per BLOCK."""
    position = index % BLOCK
    if index == 0:
        return ()
    if position == BLOCK - 2 and index + 1 < count:
        return (index - 2,)  # a sibling of index - 1: the branch
    if position == BLOCK - 1 and index >= 2 and (index - 1) % BLOCK == BLOCK - 2:
        return (index - 2, index - 1)  # the merge of both siblings
    return (index - 1,)


class Graph:
    """The generated revision graph, with what each revision leaves pending."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.parents = [parents(index, count) for index in range(count)]
        children = [0] * count
        for index in range(count):
            for parent in self.parents[index]:
                children[parent] += 1
        self.heads = [index for index in range(count) if children[index] == 0]
        self.branches = sum(1 for index in range(count) if children[index] > 1)
        self.merges = sum(1 for index in range(count) if len(self.parents[index]) > 1)

    def ancestors(self, index: int) -> set[int]:
        seen: set[int] = set()
        stack = [index]
        while stack:
            current = stack.pop()
            if current not in seen:
                seen.add(current)
                stack.extend(self.parents[current])
        return seen

    def pending(self, index: int | None) -> int:
        """How many revisions an upgrade to head runs from `index` (None: base)."""
        return self.count - (len(self.ancestors(index)) if index is not None else 0)

    def with_pending(self, wanted: int) -> int | None:
        """A revision that leaves `wanted` pending (or the nearest above it); None for base."""
        if wanted >= self.count:
            return None
        index = self.count - 1 - wanted
        # A revision on the branch side leaves its sibling pending too: step to the sibling.
        return index - 1 if len(self.ancestors(index)) != index + 1 else index


def stops(graph: Graph, start: int | None, end: int) -> list[int]:
    """The revisions to upgrade through from `start` (exclusive; None = base) to `end`, at most
    CHUNK apart; each one but `end` has every earlier revision as an ancestor."""
    found = []
    index = (start if start is not None else -1) + CHUNK
    while index < end:
        while len(graph.ancestors(index)) != index + 1:
            index -= 1
        found.append(index)
        index += CHUNK
    return [*found, end]


def write_scripts(folder: Path, graph: Graph) -> None:
    """Write the script directory (stock Flask-Migrate files) and the benchapp module."""
    scripts = folder / "migrations"
    (scripts / "versions").mkdir(parents=True)
    templates = side_by_side._package_folder("flask_migrate") / "templates" / "flask"
    shutil.copy(templates / "env.py", scripts / "env.py")
    shutil.copy(templates / "script.py.mako", scripts / "script.py.mako")
    ini = (templates / "alembic.ini.mako").read_text().replace("${script_location}", str(scripts))
    (scripts / "alembic.ini").write_text(ini)
    for index in range(graph.count):
        ids = tuple(side_by_side.revision_id(parent) for parent in graph.parents[index])
        down_revision = ids[0] if len(ids) == 1 else (ids or None)
        table = f"t{index:04d}"
        text = side_by_side.REVISION_TEMPLATE.format(
            table=table,
            revision=side_by_side.revision_id(index),
            down=", ".join(ids),
            down_revision=down_revision,
        )
        (scripts / "versions" / f"{side_by_side.revision_id(index)}_create_{table}.py").write_text(
            text
        )
    (folder / "benchapp.py").write_text(side_by_side.APP_MODULE)


# --- environments ---------------------------------------------------------------------------


@dataclass
class Target:
    """One environment of the scenario: its backend, the revision it is at, and its URL."""

    name: str
    backend: str  # sqlite | postgresql | silent
    revision: int | None  # index into the graph; None = base (empty)
    pending: int
    url: URL | None = None
    yaml_url: str = ""

    @property
    def revision_id(self) -> str | None:
        return side_by_side.revision_id(self.revision) if self.revision is not None else None


@dataclass(frozen=True)
class Roles:
    """The environments some rows are measured on."""

    plan: str  # PostgreSQL, `plan_pending` revisions behind
    rehearsal: str  # PostgreSQL, 2 behind
    job: str  # SQLite at base; a job upgrades it a few steps
    plan_pending: int


def plan_targets(graph: Graph, environments: int, plan_pending: int) -> tuple[list[Target], Roles]:
    """Lay out `environments` environments split between SQLite and PostgreSQL at varied
    revisions (the ones some rows need first), plus one on a port that never answers."""
    plan_at = graph.with_pending(plan_pending)
    rehearsal_at = graph.with_pending(2)
    targets = [
        Target("pg-plan", "postgresql", plan_at, graph.pending(plan_at)),
        Target("pg-rehearse", "postgresql", rehearsal_at, graph.pending(rehearsal_at)),
        Target("sqlite-head", "sqlite", graph.count - 1, 0),
        Target("sqlite-base", "sqlite", None, graph.count),
    ][:environments]
    spread = environments - len(targets)
    for number in range(spread):
        wanted = round((number + 1) / (spread + 1) * graph.count)
        at = graph.with_pending(wanted)
        backend = "postgresql" if number % 2 == 0 else "sqlite"
        name = f"{'pg' if backend == 'postgresql' else 'sqlite'}-{number + 1:02d}"
        targets.append(Target(name, backend, at, graph.pending(at)))
    targets.append(Target("silent", "silent", None, 0))
    roles = Roles(
        plan="pg-plan",
        rehearsal="pg-rehearse",
        job="sqlite-base" if environments >= 4 else "pg-plan",
        plan_pending=graph.pending(plan_at),
    )
    return targets, roles


class ScaleDatabases(side_by_side.Databases):
    """Throwaway PostgreSQL databases, also made as copies of another (CREATE … TEMPLATE)."""

    def copy(self, template: URL, name: str) -> URL:
        assert self._admin is not None
        with self._admin.connect() as connection:
            connection.execute(sa.text(f"CREATE DATABASE {name} TEMPLATE {template.database}"))
        url = self._admin.url.set(database=name)
        self.created.append(url)
        return url

    def server_url(self) -> str:
        """The server's URL without a database (password included: only for child processes)."""
        assert self._admin is not None
        return self._admin.url._replace(database=None).render_as_string(hide_password=False)


def build_targets(
    folder: Path,
    graph: Graph,
    targets: list[Target],
    pg: ScaleDatabases,
    silent_port: int,
    prefix: str,
) -> None:
    """Bring every environment to its revision: one builder database per backend is upgraded
    step by step with the plain `flask db upgrade REV` and copied at each stop (a file copy for
    SQLite, CREATE DATABASE … TEMPLATE for PostgreSQL), so the whole graph runs once per backend."""
    (folder / "envs").mkdir(exist_ok=True)
    sqlite = side_by_side.Databases("sqlite", folder / "envs")
    builders = {"sqlite": sqlite.create(), "postgresql": pg.create()}
    for backend, builder in builders.items():
        mine = [target for target in targets if target.backend == backend]
        at: int | None = None
        for target in sorted(
            mine, key=lambda target: -1 if target.revision is None else target.revision
        ):
            if target.revision is not None and target.revision != at:
                for stop in stops(graph, at, target.revision):
                    upgrade(folder, builder, stop)
                at = target.revision
            if backend == "sqlite":
                path = folder / "envs" / f"{target.name}.db"
                shutil.copy(builder.database or "", path)
                target.url = sa.engine.make_url(f"sqlite:///{path}")
                target.yaml_url = f"sqlite:///envs/{target.name}.db"
            else:
                target.url = pg.copy(builder, f"{prefix}_{target.name.replace('-', '_')}")
                target.yaml_url = f"${{{SERVER_VARIABLE}}}/{target.url.database}"
        if backend == "postgresql":
            pg.drop(builder)
    for target in targets:
        if target.backend == "silent":
            target.url = sa.engine.make_url(f"postgresql+psycopg://bench@127.0.0.1:{silent_port}/x")
            target.yaml_url = target.url.render_as_string(hide_password=False)


def upgrade(folder: Path, url: URL, index: int) -> side_by_side.Sample:
    """The plain `flask --app benchapp db upgrade REV`, timed by bench/run.py's launcher."""
    return side_by_side.run(folder, url, ("db", "upgrade", side_by_side.revision_id(index)), False)


def write_environments(folder: Path, targets: list[Target]) -> Path:
    lines = ["project: bench-scale", "migrations: migrations", "environments:"]
    for target in targets:
        lines += [f"  - name: {target.name}", f"    url: {target.yaml_url}"]
    path = folder / "environments.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


# --- a port that accepts connections and never answers --------------------------------------


class SilentPort:
    """A loopback port that accepts TCP connections and never says a word (a hung server)."""

    def __init__(self) -> None:
        self._server = socket.socket()
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(64)
        self._server.settimeout(0.2)
        self.port: int = self._server.getsockname()[1]
        self._accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="silent-port", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._server.accept()
                self._accepted.append(connection)
            except TimeoutError:
                continue
            except OSError:
                return

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        for connection in self._accepted:
            connection.close()
        self._server.close()
