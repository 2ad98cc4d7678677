"""The one module that imports alembic: revision graphs, current revisions, running commands.

Everything Alembic raises is turned into our own errors here, with passwords removed.
"""

from __future__ import annotations

import os
import re
import sqlite3
import sys
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError, to_tuple
from sqlalchemy.engine import URL, Engine
from sqlalchemy.pool import NullPool

from dashboard.errors import EnvironmentUnreachable, MigrationFailed, ScriptDirectoryError
from dashboard.redact import redact

_CREATE_DATE = re.compile(r"^Create Date:\s*(.+?)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Revision:
    """One migration script as the script directory describes it."""

    id: str
    message: str
    down_revisions: tuple[str, ...]
    next_revisions: tuple[str, ...]
    branch_labels: tuple[str, ...]
    path: Path
    created: str | None
    is_head: bool
    is_base: bool
    is_branch_point: bool
    is_merge_point: bool


class RevisionGraph:
    """The parsed revision tree of one script directory."""

    def __init__(self, script_location: Path, revisions: list[Revision], heads: list[str]) -> None:
        self.script_location = script_location
        self.revisions = tuple(revisions)  # newest first: every child before its parents
        self.heads = tuple(heads)
        self._by_id = {revision.id: revision for revision in revisions}
        self._position = {revision.id: index for index, revision in enumerate(revisions)}

    def __contains__(self, revision_id: object) -> bool:
        return revision_id in self._by_id

    def __len__(self) -> int:
        return len(self.revisions)

    def get(self, revision_id: str) -> Revision | None:
        """Return the revision with this full id, or None."""
        return self._by_id.get(revision_id)

    def ancestors(self, revision_ids: Iterable[str]) -> set[str]:
        """Return the given revisions and everything below them."""
        seen: set[str] = set()
        stack = [rid for rid in revision_ids if rid in self._by_id]
        while stack:
            rid = stack.pop()
            if rid in seen:
                continue
            seen.add(rid)
            stack.extend(self._by_id[rid].down_revisions)
        return seen

    def pending(self, current: Iterable[str], targets: Iterable[str] | None = None) -> list[str]:
        """Return the revisions an upgrade from `current` to `targets` (default: heads) runs."""
        wanted = self.ancestors(self.heads if targets is None else targets)
        applied = self.ancestors(current)
        missing = wanted - applied
        return sorted(missing, key=lambda rid: self._position[rid], reverse=True)


@dataclass
class _CachedGraph:
    signature: tuple[Any, ...]
    graph: RevisionGraph


_graph_cache: dict[tuple[Path, tuple[Path, ...]], _CachedGraph] = {}
_graph_lock = threading.Lock()


def _signature(script_location: Path) -> tuple[Any, ...]:
    """Describe every file that shapes the graph, cheaply, so a change is noticed."""
    entries: list[tuple[str, int, int]] = []
    for folder in (script_location, script_location / "versions"):
        try:
            with os.scandir(folder) as scan:
                for entry in scan:
                    if entry.is_file() and entry.name.endswith(".py"):
                        stat = entry.stat()
                        entries.append((entry.path, stat.st_mtime_ns, stat.st_size))
        except FileNotFoundError:
            continue
    return tuple(sorted(entries))


@contextmanager
def _on_sys_path(folders: Iterable[Path]) -> Iterator[None]:
    added = [str(folder) for folder in folders if str(folder) not in sys.path]
    sys.path[:0] = added
    try:
        yield
    finally:
        for folder in added:
            if folder in sys.path:
                sys.path.remove(folder)


def load_graph(script_location: Path, python_path: Iterable[Path] = ()) -> RevisionGraph:
    """Return the revision graph, re-reading the scripts only when a file changed."""
    script_location = Path(script_location)
    key = (script_location, tuple(python_path))
    with _graph_lock:
        signature = _signature(script_location)
        cached = _graph_cache.get(key)
        if cached is not None and cached.signature == signature:
            return cached.graph
        graph = _read_graph(script_location, key[1])
        _graph_cache[key] = _CachedGraph(signature, graph)
        return graph


def _read_graph(script_location: Path, python_path: tuple[Path, ...]) -> RevisionGraph:
    config = Config()
    config.set_main_option("script_location", str(script_location).replace("%", "%%"))
    try:
        with _on_sys_path(python_path):
            script = ScriptDirectory.from_config(config)
            scripts = list(script.walk_revisions())
            heads = list(script.get_heads())
    except CommandError as error:
        raise ScriptDirectoryError(f"cannot read the migration scripts: {error}") from error
    # A revision file is Python that runs on load: any error in it is the script's fault.
    except Exception as error:
        raise ScriptDirectoryError(
            f"cannot read the migration scripts in {script_location}: "
            f"{type(error).__name__}: {error}"
        ) from error
    revisions = []
    for item in scripts:
        docstring = getattr(item.module, "__doc__", None) or ""
        created = _CREATE_DATE.search(docstring)
        revisions.append(
            Revision(
                id=item.revision,
                message=(item.doc or "").strip(),
                down_revisions=tuple(to_tuple(item.down_revision, default=())),
                next_revisions=tuple(sorted(item.nextrev)),
                branch_labels=tuple(sorted(item.branch_labels)),
                path=Path(item.path),
                created=created.group(1) if created else None,
                is_head=item.is_head,
                is_base=item.is_base,
                is_branch_point=item.is_branch_point,
                is_merge_point=item.is_merge_point,
            )
        )
    return RevisionGraph(script_location, revisions, heads)


def connect_args(url: URL, timeout: float) -> dict[str, Any]:
    """Driver arguments that bound connecting (and a status query) by `timeout` seconds."""
    backend, driver = url.get_backend_name(), url.get_driver_name()
    if backend == "postgresql":
        # libpq and psycopg take whole seconds, and treat values below 2 as 2.
        return {"connect_timeout": max(1, round(timeout))}
    if backend in ("mysql", "mariadb") and driver in ("pymysql", "mysqldb"):
        seconds = max(1, round(timeout)) if driver == "mysqldb" else timeout
        return {"connect_timeout": seconds, "read_timeout": seconds, "write_timeout": seconds}
    if backend == "sqlite":
        return {"timeout": timeout}
    return {}


def _status_engine(url: URL, timeout: float) -> Engine:
    """An engine that opens one short-lived connection and never creates a SQLite file."""
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        path = Path(url.database)
        if not path.exists():
            raise EnvironmentUnreachable(f"the SQLite database file {path} does not exist")
        uri = f"file:{quote(str(path))}?mode=ro"
        return sa.create_engine(
            "sqlite://",
            creator=lambda: sqlite3.connect(uri, uri=True, timeout=timeout),
            poolclass=NullPool,
        )
    return sa.create_engine(url, poolclass=NullPool, connect_args=connect_args(url, timeout))


def describe_database_error(error: BaseException, url: URL | None) -> str:
    """Turn a driver error into one readable line without the password or SQLAlchemy links."""
    original = getattr(error, "orig", None) or error
    text = str(original).strip() or type(original).__name__
    text = " ".join(line.strip() for line in text.splitlines() if line.strip())
    return redact(text, [url])


def read_current_revisions(
    *,
    url: URL,
    version_table: str = "alembic_version",
    version_table_schema: str | None = None,
    timeout: float = 3.0,
) -> tuple[str, ...]:
    """Return the revisions recorded in a database; () when it has no version table."""
    try:
        engine = _status_engine(url, timeout)
        try:
            with engine.connect() as connection:
                context = MigrationContext.configure(
                    connection,
                    opts={
                        "version_table": version_table,
                        "version_table_schema": version_table_schema,
                    },
                )
                return tuple(context.get_current_heads())
        finally:
            engine.dispose()
    except EnvironmentUnreachable:
        raise
    except (sa.exc.SQLAlchemyError, sqlite3.Error, OSError, CommandError) as error:
        raise EnvironmentUnreachable(describe_database_error(error, url)) from error


def _alembic_config(script_location: Path, url: URL, *, stdout: IO[str] | None = None) -> Config:
    """Build a Config that both a Flask-Migrate env.py and a plain Alembic env.py accept."""
    ini = next(
        (
            candidate
            for candidate in (
                script_location / "alembic.ini",
                script_location.parent / "alembic.ini",
            )
            if candidate.is_file()
        ),
        None,
    )
    config = Config(str(ini) if ini else None, stdout=stdout or sys.stdout)
    # ConfigParser interpolates '%': escape it, or a password holding '%' breaks (and is echoed).
    config.set_main_option("script_location", str(script_location).replace("%", "%%"))
    config.set_main_option(
        "sqlalchemy.url", url.render_as_string(hide_password=False).replace("%", "%%")
    )
    return config


def _flask_migrate_app(
    script_location: Path,
    url: URL,
    version_table: str,
    version_table_schema: str | None,
) -> Any:
    """A minimal Flask app whose migrate extension carries this environment's engine.

    A stock Flask-Migrate env.py reads its engine and configure arguments from
    `current_app.extensions['migrate']` and ignores `sqlalchemy.url`.
    """
    from flask import Flask
    from flask_migrate import Migrate
    from flask_sqlalchemy import SQLAlchemy

    app = Flask("dashboard_runner")
    app.config["SQLALCHEMY_DATABASE_URI"] = url.render_as_string(hide_password=False)
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {"poolclass": NullPool}
    db = SQLAlchemy()
    db.init_app(app)
    configure_args: dict[str, Any] = {"version_table": version_table}
    if version_table_schema:
        configure_args["version_table_schema"] = version_table_schema
    Migrate(app, db, directory=str(script_location), **configure_args)
    return app


def run_command(
    *,
    script_location: Path,
    url: URL,
    operation: str,
    target: str,
    version_table: str = "alembic_version",
    version_table_schema: str | None = None,
    python_path: Iterable[Path] = (),
    stdout: IO[str] | None = None,
) -> None:
    """Run upgrade, downgrade or stamp in this process (the runner child calls this)."""
    if operation not in ("upgrade", "downgrade", "stamp"):
        raise ValueError(f"unknown operation {operation!r}")
    config = _alembic_config(script_location, url, stdout=stdout)
    app = _flask_migrate_app(script_location, url, version_table, version_table_schema)
    with _on_sys_path(python_path), app.app_context():
        try:
            getattr(command, operation)(config, target)
        except CommandError as error:
            raise MigrationFailed(redact(str(error), [url])) from error
        except sa.exc.SQLAlchemyError as error:
            raise MigrationFailed(describe_database_error(error, url)) from error


# --- plans: resolving a target into steps, rendering one step's SQL offline ------------------
# (Imports used only here are local to the functions below.)

_RELATIVE_TARGET = re.compile(r"^[+-]\d+$")


@dataclass(frozen=True)
class ResolvedSteps:
    """What an upgrade or downgrade to a target runs, in the order Alembic runs it."""

    alembic_target: str
    revision_ids: tuple[str, ...]
    # The database's revisions before each step: offline rendering starts each step there.
    heads_before: tuple[tuple[str, ...], ...]


def script_signature(script_location: Path) -> tuple[Any, ...]:
    """Describe env.py and every revision file cheaply, so a cache can notice a change."""
    return _signature(Path(script_location))


def resolve_steps(
    *,
    script_location: Path,
    current: tuple[str, ...],
    direction: str,
    target: str,
    python_path: Iterable[Path] = (),
) -> ResolvedSteps:
    """Resolve `target` from `current` into the revisions Alembic's upgrade/downgrade would run.

    `target` is "head", a full or unique partial revision id, a relative step ("+1", "-2") or,
    for a downgrade, "base". Raise PlanError with a readable reason when it cannot be planned.
    """
    from dashboard.errors import PlanError

    if direction not in ("upgrade", "downgrade"):
        raise PlanError(f"unknown direction {direction!r}: use upgrade or downgrade")
    requested = (target or "").strip()
    if not requested:
        raise PlanError("name a target: head, a revision id, a relative step such as -1, or base")
    python_path = tuple(python_path)
    graph = load_graph(script_location, python_path)
    current = tuple(current)
    unknown = [revision for revision in current if revision not in graph]
    if unknown:
        raise PlanError(
            f"the database is at {', '.join(unknown)}, which the script directory does not "
            "contain (a newer release, or a deleted script?): it cannot be planned from here"
        )
    at = ", ".join(current) or "base"

    if _RELATIVE_TARGET.match(requested):
        steps = int(requested)
        if steps == 0 or (steps > 0) != (direction == "upgrade"):
            sign = "+N" if direction == "upgrade" else "-N"
            raise PlanError(f"{requested} is not a {direction} step: use {sign}")
        if direction == "upgrade":
            target_id = _walk_up(graph, current, steps, requested)
        else:
            target_id = _walk_down(graph, current, -steps, requested)
    elif requested in ("head", "heads"):
        if len(graph.heads) > 1:
            raise PlanError(
                f"multiple heads: name one ({', '.join(sorted(graph.heads))}); the script "
                "directory has several heads, so 'head' is ambiguous"
            )
        if not graph.heads:
            raise PlanError("the script directory has no revisions")
        target_id = graph.heads[0]
    elif requested == "base":
        if direction == "upgrade":
            raise PlanError("base is below every revision: downgrade to base instead")
        target_id = "base"
    else:
        target_id = _resolve_revision_id(script_location, python_path, requested)

    applied = graph.ancestors(current)
    if direction == "upgrade":
        if target_id in current:
            return ResolvedSteps(alembic_target=target_id, revision_ids=(), heads_before=())
        if target_id in applied:
            raise PlanError(
                f"{target_id} is below the current revision ({at}): upgrading to it would be "
                "a downgrade"
            )
    elif target_id == "base":
        if not current:
            raise PlanError("the database is at base already: there is nothing to downgrade")
    elif target_id not in applied or target_id in current:
        raise PlanError(
            f"{target_id} is not below the current revision ({at}): a downgrade target must be "
            "an applied revision below it, a relative step such as -1, or base"
        )

    revision_ids = _alembic_steps(script_location, python_path, direction, target_id, current)
    if direction == "downgrade" and not revision_ids:
        raise PlanError(f"{target_id} is not below the current revision ({at})")
    heads = current
    heads_before = []
    for revision_id in revision_ids:
        heads_before.append(heads)
        heads = _heads_after(graph, heads, revision_id, direction)
    if _RELATIVE_TARGET.match(requested) and len(revision_ids) != abs(int(requested)):
        # Our walk and Alembic disagree about this history; refuse rather than guess.
        raise PlanError(
            f"{requested} from {at} would run {len(revision_ids)} revisions "
            f"({', '.join(revision_ids)}): name the target revision instead"
        )
    return ResolvedSteps(
        alembic_target=target_id,
        revision_ids=tuple(revision_ids),
        heads_before=tuple(heads_before),
    )


def resolve_revisions(
    *, script_location: Path, text: str, python_path: Iterable[Path] = ()
) -> tuple[str, ...]:
    """Return the revisions `text` names: () for base, the head for head, else its full id."""
    from dashboard.errors import PlanError

    text = (text or "").strip()
    if text in ("", "base"):
        return ()
    python_path = tuple(python_path)
    if text in ("head", "heads"):
        heads = load_graph(script_location, python_path).heads
        if text == "head" and len(heads) > 1:
            raise PlanError(
                f"multiple heads: name one ({', '.join(sorted(heads))}); 'head' is ambiguous"
            )
        return tuple(heads)
    return (_resolve_revision_id(script_location, python_path, text),)


def _resolve_revision_id(script_location: Path, python_path: tuple[Path, ...], text: str) -> str:
    """Return the full id for a full or unique partial revision id (or a branch label)."""
    from alembic.script.revision import MultipleHeads, RevisionError

    from dashboard.errors import PlanError

    with _on_sys_path(python_path):
        script = _script_directory(script_location)
        # The revision map, not ScriptDirectory.get_revision: that one turns "several
        # revisions start with …" into a bare "can't locate revision".
        try:
            revision = script.revision_map.get_revision(text)
        except MultipleHeads as error:
            raise PlanError(
                f"{text!r} names several heads ({', '.join(error.heads)}): name one"
            ) from error
        except RevisionError as error:
            message = str(error)
            if message.startswith("Multiple revisions start with"):
                raise PlanError(f"the prefix {text!r} is ambiguous: {message}") from error
            raise PlanError(f"unknown revision {text!r}: {message}") from error
    if revision is None:
        raise PlanError(f"unknown revision {text!r}")
    return revision.revision


def _script_directory(script_location: Path) -> ScriptDirectory:
    config = Config()
    config.set_main_option("script_location", str(script_location).replace("%", "%%"))
    return ScriptDirectory.from_config(config)


def _alembic_steps(
    script_location: Path,
    python_path: tuple[Path, ...],
    direction: str,
    target_id: str,
    current: tuple[str, ...],
) -> list[str]:
    """Ask Alembic which revisions command.upgrade/downgrade(target) runs from `current`.

    These are the (underscored) functions alembic.command itself calls, so the plan lists
    exactly what the runner will execute, in the same order.
    """
    from alembic.script.revision import RevisionError

    from dashboard.errors import PlanError

    with _on_sys_path(python_path):
        script = _script_directory(script_location)
        try:
            if direction == "upgrade":
                steps = script._upgrade_revs(target_id, current)
            else:
                steps = script._downgrade_revs(target_id, current)
        except (CommandError, RevisionError) as error:
            raise PlanError(f"cannot {direction} to {target_id}: {error}") from error
    return [step.revision.revision for step in steps]


def _minimal_heads(graph: RevisionGraph, revisions: set[str]) -> tuple[str, ...]:
    """Drop every revision that is below another one of the set."""
    return tuple(
        sorted(
            revision
            for revision in revisions
            if not any(
                other != revision and revision in graph.ancestors([other]) for other in revisions
            )
        )
    )


def _heads_after(
    graph: RevisionGraph, heads: tuple[str, ...], revision_id: str, direction: str
) -> tuple[str, ...]:
    """The database's revisions after one step, as Alembic's version table would hold them."""
    revision = graph.get(revision_id)
    assert revision is not None
    if direction == "upgrade":
        return _minimal_heads(graph, (set(heads) - set(revision.down_revisions)) | {revision_id})
    return _minimal_heads(graph, (set(heads) - {revision_id}) | set(revision.down_revisions))


def _walk_up(graph: RevisionGraph, current: tuple[str, ...], count: int, requested: str) -> str:
    """Follow `count` single upgrade steps; refuse at a branch point or a merge."""
    from dashboard.errors import PlanError

    start = ", ".join(current) or "base"
    position = set(current)
    applied = graph.ancestors(current)
    reached = ""
    for done in range(count):
        if position:
            children = {child for rid in position for child in graph.get(rid).next_revisions}
        else:
            children = {revision.id for revision in graph.revisions if revision.is_base}
        children -= applied
        where = ", ".join(sorted(position)) or "base"
        if not children:
            raise PlanError(
                f"{requested} goes past the head: only {done} revision(s) above {start}"
            )
        if len(children) > 1:
            raise PlanError(
                f"{requested} is ambiguous: the history branches above {where}; name the target "
                f"revision instead (candidates: {', '.join(sorted(children))})"
            )
        (child,) = children
        missing = [rid for rid in graph.get(child).down_revisions if rid not in applied]
        if missing:
            raise PlanError(
                f"{requested} crosses the merge {child}, which also needs "
                f"{', '.join(missing)}: name the target revision instead "
                f"(candidates: {', '.join([child, *missing])})"
            )
        applied.add(child)
        position = set(_heads_after(graph, tuple(position), child, "upgrade"))
        reached = child
    return reached


def _walk_down(graph: RevisionGraph, current: tuple[str, ...], count: int, requested: str) -> str:
    """Follow `count` single downgrade steps; refuse where the walk would cross a merge.

    Undoing a merge revision itself is unambiguous (its parents remain), so `-1` from a merge
    is allowed; a further step would have to pick one of the parents, and is refused.
    """
    from dashboard.errors import PlanError

    position = tuple(sorted(current))
    crossed: str | None = None
    undone_parents: tuple[str, ...] = ()
    for done in range(count):
        if not position:
            raise PlanError(
                f"{requested} goes below base: only {done} revision(s) are applied "
                f"(downgrade to base to undo them all)"
            )
        if len(position) > 1:
            if crossed is not None:
                raise PlanError(
                    f"{requested} crosses the merge {crossed}: below it the history splits into "
                    f"{', '.join(position)}; name the target revision instead "
                    f"(candidates: {', '.join(position)})"
                )
            raise PlanError(
                f"{requested} is ambiguous: the database is at several revisions "
                f"({', '.join(position)}); name the target revision instead "
                f"(candidates: {', '.join(position)})"
            )
        (revision_id,) = position
        revision = graph.get(revision_id)
        assert revision is not None
        if revision.is_merge_point:
            crossed = revision_id
        position = _heads_after(graph, position, revision_id, "downgrade")
        undone_parents = revision.down_revisions
    if not position:
        return "base"
    if len(position) == 1:
        return position[0]
    # After undoing a merge: downgrading to any one of its parents undoes exactly the merge.
    return undone_parents[0]


def _offline_failure_reason(error: BaseException, script_path: Path, url: URL) -> str:
    """Name, in a few words, why a step cannot be rendered without a database."""
    import traceback

    text = " ".join(str(error).split())
    if isinstance(error, CommandError) and "batch mode with dialect" in text:
        table = re.search(r'reflect the table "([^"]+)"', text)
        dialect = {"sqlite": "SQLite"}.get(url.get_backend_name(), url.get_backend_name())
        on_table = f" of {table.group(1)}" if table else ""
        return f"{dialect} batch operation needs a live database (table recreate{on_table})"
    in_script = any(
        Path(frame.filename) == script_path for frame in traceback.extract_tb(error.__traceback__)
    )
    try:
        source = script_path.read_text(encoding="utf-8")
    except OSError:
        source = ""
    if in_script and "get_bind(" in source:
        return (
            "the script queries the database through op.get_bind(), which has no connection "
            f"in offline mode ({type(error).__name__}: {redact(text, [url])})"
        )
    return f"cannot render offline: {type(error).__name__}: {redact(text, [url])}"


def render_offline_sql(
    *,
    script_location: Path,
    url: URL,
    direction: str,
    from_revisions: tuple[str, ...],
    revision_id: str,
    version_table: str = "alembic_version",
    version_table_schema: str | None = None,
    python_path: Iterable[Path] = (),
    session: dict[str, Any] | None = None,
) -> str:
    """Render one upgrade or downgrade step as SQL for `url`'s dialect, without connecting.

    The step starts from `from_revisions` (the version table's rows before it), so a merge or
    a new branch renders the same version-table statements a real run would. Run this in a
    child process: it executes the managed app's env.py. Raise OfflineRenderError with a
    short reason when the step needs a live database. Steps of one plan share a `session`
    dict: the parsed script directory is then read once, not once per step.
    """
    import io

    from alembic.runtime.environment import EnvironmentContext
    from alembic.runtime.migration import MigrationStep

    from dashboard.errors import OfflineRenderError

    script_location = Path(script_location)
    sql_output = io.StringIO()
    session = {} if session is None else session
    if "config" not in session:
        session["config"] = _alembic_config(script_location, url, stdout=io.StringIO())
        session["app"] = _flask_migrate_app(
            script_location, url, version_table, version_table_schema
        )
    config, app = session["config"], session["app"]
    config.output_buffer = sql_output
    with _on_sys_path(python_path), app.app_context():
        if "script" not in session:
            session["script"] = ScriptDirectory.from_config(config)
        script = session["script"]
        try:
            revision = script.get_revision(revision_id)
        except CommandError as error:
            raise OfflineRenderError(f"unknown revision {revision_id}: {error}") from error
        if revision is None:
            raise OfflineRenderError(f"unknown revision {revision_id}")
        upgrading = direction == "upgrade"
        parents = to_tuple(revision.down_revision, default=())
        destination = revision.revision if upgrading else (parents[0] if parents else "base")

        def one_step(heads: Any, context: Any) -> list[Any]:
            if upgrading:
                return [MigrationStep.upgrade_from_script(script.revision_map, revision)]
            return [MigrationStep.downgrade_from_script(script.revision_map, revision)]

        try:
            with EnvironmentContext(
                config,
                script,
                fn=one_step,
                as_sql=True,
                starting_rev=list(from_revisions) or None,
                destination_rev=destination,
            ):
                script.run_env()
        # The step's own code runs here; whatever it raises says why it needs a database.
        except Exception as error:
            reason = _offline_failure_reason(error, Path(revision.path), url)
            raise OfflineRenderError(reason) from error
    return sql_output.getvalue()
