"""The one module that imports alembic: revision graphs, current revisions, running commands.

Everything Alembic raises is turned into our own errors here, with passwords removed.
"""

from __future__ import annotations

import os
import re
import sqlite3
import sys
import threading
import traceback
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError, to_tuple
from sqlalchemy.engine import URL, Engine
from sqlalchemy.pool import NullPool, StaticPool

from dashboard.errors import (
    EnvironmentUnreachable,
    MigrationFailed,
    OfflineRenderError,
    PlanChanged,
    PlanError,
    ScriptDirectoryError,
)
from dashboard.redact import redact
from dashboard.target.engines import connect_args, read_only_engine
from dashboard.target.spec import TargetDatabase

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
    script: ScriptDirectory  # its revision map read (every revision file imported) once


_graph_cache: dict[tuple[Path, tuple[Path, ...], Path | None], _CachedGraph] = {}
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


def load_graph(
    script_location: Path, python_path: Iterable[Path] = (), alembic_ini: Path | None = None
) -> RevisionGraph:
    """Return the revision graph, re-reading the scripts only when a file changed."""
    return _load(script_location, python_path, alembic_ini).graph


def _load(
    script_location: Path, python_path: Iterable[Path] = (), alembic_ini: Path | None = None
) -> _CachedGraph:
    """The graph and the script directory it was read from: once per process, until a file
    changes (the script directory is only read afterwards, never changed)."""
    script_location = Path(script_location)
    key = (script_location, tuple(python_path), alembic_ini)
    with _graph_lock:
        signature = _signature(script_location)
        cached = _graph_cache.get(key)
        if cached is None or cached.signature != signature:
            graph, script = _read_graph(script_location, key[1], alembic_ini)
            cached = _graph_cache[key] = _CachedGraph(signature, graph, script)
        return cached


def _read_graph(
    script_location: Path, python_path: tuple[Path, ...], alembic_ini: Path | None
) -> tuple[RevisionGraph, ScriptDirectory]:
    try:
        with _on_sys_path(python_path), _ini_sys_path(alembic_ini):
            script = _script_directory(script_location, alembic_ini)
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
    return RevisionGraph(script_location, revisions, heads), script


def describe_database_error(error: BaseException, url: URL | None) -> str:
    """Turn a driver error into one readable line without the password or SQLAlchemy links."""
    original = getattr(error, "orig", None) or error
    text = str(original).strip() or type(original).__name__
    text = " ".join(line.strip() for line in text.splitlines() if line.strip())
    return redact(text, [url])


def read_current_revisions(database: TargetDatabase, *, timeout: float = 3.0) -> tuple[str, ...]:
    """Return the revisions recorded in a database; () when it has no version table."""
    try:
        engine = read_only_engine(database.url, timeout=timeout)
        try:
            with engine.connect() as connection:
                context = MigrationContext.configure(
                    connection,
                    opts={
                        "version_table": database.version_table,
                        "version_table_schema": database.version_table_schema,
                    },
                )
                return tuple(context.get_current_heads())
        finally:
            engine.dispose()
    except EnvironmentUnreachable:
        raise
    except (sa.exc.SQLAlchemyError, sqlite3.Error, OSError, CommandError) as error:
        raise EnvironmentUnreachable(describe_database_error(error, database.url)) from error


def _ini_candidates(script_location: Path) -> tuple[Path, Path]:
    """Where an alembic.ini is looked for when `alembic_ini:` does not name one."""
    return script_location / "alembic.ini", script_location.parent / "alembic.ini"


def _alembic_config(
    script_location: Path,
    url: URL,
    *,
    stdout: IO[str] | None = None,
    alembic_ini: Path | None = None,
) -> Config:
    """Build a Config that both a Flask-Migrate env.py and a plain Alembic env.py accept:
    its file is `alembic_ini` (which must exist), else an alembic.ini found beside the script
    directory or one folder up, else none."""
    if alembic_ini is not None:
        if not alembic_ini.is_file():
            raise MigrationFailed(
                f"the alembic_ini file {alembic_ini} (environments.yaml) does not exist"
            )
        ini: Path | None = alembic_ini
    else:
        ini = next((path for path in _ini_candidates(script_location) if path.is_file()), None)
    config = Config(str(ini) if ini else None, stdout=stdout or sys.stdout)
    # ConfigParser interpolates '%': escape it, or a password holding '%' breaks (and is echoed).
    config.set_main_option("script_location", str(script_location).replace("%", "%%"))
    config.set_main_option(
        "sqlalchemy.url", url.render_as_string(hide_password=False).replace("%", "%%")
    )
    return config


def _config_for(database: TargetDatabase, *, stdout: IO[str] | None = None) -> Config:
    """The Config env.py gets for `database` (its `alembic_ini:`, URL and script directory)."""
    return _alembic_config(
        database.script_location, database.url, stdout=stdout, alembic_ini=database.alembic_ini
    )


def _missing_ini(error: BaseException, config: Config, script_location: Path) -> str | None:
    """Say so when env.py failed calling `fileConfig(config.config_file_name)` without an ini
    (Python's own words are "TypeError: 'NoneType' object is not iterable")."""
    if config.config_file_name is not None or not isinstance(error, TypeError):
        return None
    frames = traceback.extract_tb(error.__traceback__)
    if not any(
        frame.name == "fileConfig" and Path(frame.filename).parts[-2:] == ("logging", "config.py")
        for frame in frames
    ):
        return None
    looked = " or ".join(str(path) for path in _ini_candidates(script_location))
    return (
        "env.py calls fileConfig(config.config_file_name), but there is no alembic.ini "
        f"(looked for {looked}): name yours with `alembic_ini:` in environments.yaml"
    )


def _flask_migrate_app(database: TargetDatabase, *, one_connection: bool = False) -> Any:
    """A minimal Flask app whose migrate extension carries this environment's engine.

    A stock Flask-Migrate env.py reads its engine and configure arguments from
    `current_app.extensions['migrate']` and ignores `sqlalchemy.url`. With `one_connection`
    the engine keeps a single database session for the app's whole life (StaticPool): the
    runner takes the migration lock on it, and env.py migrates on that very session.
    """
    from flask import Flask
    from flask_migrate import Migrate
    from flask_sqlalchemy import SQLAlchemy

    url = database.url
    app = Flask("dashboard_runner")
    app.config["SQLALCHEMY_DATABASE_URI"] = url.render_as_string(hide_password=False)
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = (
        {"poolclass": StaticPool, "connect_args": connect_args(url, 10.0)}
        if one_connection
        else {"poolclass": NullPool}
    )
    db = SQLAlchemy()
    db.init_app(app)
    options: dict[str, Any] = {"version_table": database.version_table}
    if one_connection:  # a run; offline rendering passes them as configure defaults instead
        options.update(database.configure_options)
    if database.version_table_schema:
        options["version_table_schema"] = database.version_table_schema
    Migrate(app, db, directory=str(database.script_location), **options)
    return app


@contextmanager
def _configure_defaults(
    defaults: dict[str, Any], on_version_apply: Any | None = None
) -> Iterator[None]:
    """Give every context.configure() env.py makes our defaults under its own arguments.

    Neither a plain Alembic env.py nor Flask-Migrate's offline branch passes extra configure
    arguments through, so this is the one place where ours (`configure_args:`, the offline
    paramstyle, the step observer) reach Alembic. What env.py passes itself wins.
    """
    original = EnvironmentContext.configure

    def configure(self: EnvironmentContext, *args: Any, **kwargs: Any) -> None:
        merged = {**defaults, **kwargs}
        if "dialect_opts" in defaults and "dialect_opts" in kwargs:
            merged["dialect_opts"] = {**defaults["dialect_opts"], **(kwargs["dialect_opts"] or {})}
        if on_version_apply is not None:
            callbacks = to_tuple(kwargs.get("on_version_apply"), default=())
            merged["on_version_apply"] = (*callbacks, on_version_apply)
        return original(self, *args, **merged)

    EnvironmentContext.configure = configure  # type: ignore[method-assign]
    try:
        yield
    finally:
        EnvironmentContext.configure = original  # type: ignore[method-assign]


def env_py_builds_its_engine(script_location: Path) -> bool:
    """Whether env.py makes its own engine (plain Alembic) rather than the Flask app's."""
    try:
        source = (Path(script_location) / "env.py").read_text(encoding="utf-8")
    except OSError:
        return True
    return "current_app" not in source


def migration_app(database: TargetDatabase) -> Any:
    """The Flask app a runner migrates through: one database session for the whole run."""
    return _flask_migrate_app(database, one_connection=True)


def app_engine(app: Any) -> Engine:
    """The engine of a migration app (call inside its app context)."""
    return app.extensions["migrate"].db.engine


def current_heads(
    connection: sa.Connection, *, version_table: str, version_table_schema: str | None
) -> tuple[str, ...]:
    """Return the revisions recorded in the version table, read on `connection`."""
    context = MigrationContext.configure(
        connection,
        opts={"version_table": version_table, "version_table_schema": version_table_schema},
    )
    return tuple(sorted(context.get_current_heads()))


@dataclass(frozen=True)
class AppliedStep:
    """One step Alembic finished (its version row written), as on_version_apply reports it."""

    revision_id: str
    is_upgrade: bool


def run_command(
    database: TargetDatabase,
    *,
    app: Any,
    operation: str,
    target: str,
    expected_from: tuple[str, ...] | None = None,
    planned: tuple[str, ...] | None = None,
    on_steps: Any | None = None,
    on_applied: Any | None = None,
    stdout: IO[str] | None = None,
) -> None:
    """Run upgrade, downgrade or stamp through `app` in this process (the runner child).

    With `expected_from`/`planned`, the revisions env.py's own session reads and the steps
    Alembic resolves from them must be the plan's, or PlanChanged is raised before any step
    runs. `on_steps(ids)` is called once the steps are known, `on_applied(AppliedStep)` after
    each step's version row is written.
    """
    if operation not in ("upgrade", "downgrade", "stamp"):
        raise ValueError(f"unknown operation {operation!r}")
    url = database.url
    config = _config_for(database, stdout=stdout)

    def observe(*, ctx: Any, step: Any, heads: Any, run_args: Any) -> None:  # noqa: ARG001
        if on_applied is not None and not step.is_stamp:
            on_applied(AppliedStep(revision_id=step.up_revision_id, is_upgrade=step.is_upgrade))

    with (
        _on_sys_path(database.python_path),
        app.app_context(),
        _configure_defaults(database.configure_options, observe),
    ):
        try:
            if operation == "stamp":
                command.stamp(config, target)
            else:
                _run_planned(config, operation, target, expected_from, planned, on_steps)
        except CommandError as error:
            raise MigrationFailed(redact(str(error), [url])) from error
        except sa.exc.SQLAlchemyError as error:
            raise MigrationFailed(describe_database_error(error, url)) from error
        except TypeError as error:
            missing = _missing_ini(error, config, database.script_location)
            if missing is None:
                raise
            raise MigrationFailed(missing) from error


def _run_planned(
    config: Config,
    direction: str,
    target: str,
    expected_from: tuple[str, ...] | None,
    planned: tuple[str, ...] | None,
    on_steps: Any | None,
) -> None:
    """What alembic.command.upgrade/downgrade do, checking the steps against the plan first."""
    script = ScriptDirectory.from_config(config)

    def steps(current: Any, context: Any) -> list[Any]:  # noqa: ARG001
        found = tuple(sorted(to_tuple(current, default=())))
        if expected_from is not None and found != tuple(sorted(expected_from)):
            raise PlanChanged(expected=tuple(sorted(expected_from)), found=found)
        resolved = _migration_steps(script, direction, target, found)
        ids = tuple(step.revision.revision for step in resolved)
        if planned is not None and ids != tuple(planned):
            raise PlanChanged(expected=tuple(sorted(expected_from or ())), found=found, steps=ids)
        if on_steps is not None:
            on_steps(ids)
        return resolved

    with EnvironmentContext(config, script, fn=steps, destination_rev=target):
        script.run_env()


def _migration_steps(
    script: ScriptDirectory, direction: str, target: str, current: tuple[str, ...]
) -> list[Any]:
    """The steps alembic.command.upgrade/downgrade(target) runs from `current`, in order.

    These are the private functions alembic.command itself calls (pinned by
    tests/test_alembic_range.py to the supported Alembic range): the one place we use them.
    """
    if direction == "upgrade":
        return list(script._upgrade_revs(target, current))
    return list(script._downgrade_revs(target, current))


# --- plans: resolving a target into steps, rendering one step's SQL offline ------------------

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
    database: TargetDatabase, *, current: tuple[str, ...], direction: str, target: str
) -> ResolvedSteps:
    """Resolve `target` from `current` into the revisions Alembic's upgrade/downgrade would run.

    `target` is any form Alembic accepts: "head", "heads", a full or unique partial revision
    id, a relative step ("+1", "-2"), a branch form ("expand@head", "expand@+1", "expand@-1",
    "expand@base") or, for a downgrade, "base". Raise PlanError with a readable reason when it
    cannot be planned.
    """
    if direction not in ("upgrade", "downgrade"):
        raise PlanError(f"unknown direction {direction!r}: use upgrade or downgrade")
    requested = (target or "").strip()
    if not requested:
        raise PlanError("name a target: head, a revision id, a relative step such as -1, or base")
    script_location, python_path = database.script_location, database.python_path
    graph = load_graph(script_location, python_path, database.alembic_ini)
    current = tuple(current)
    unknown = [revision for revision in current if revision not in graph]
    if unknown:
        raise PlanError(
            f"the database is at {', '.join(unknown)}, which the script directory does not "
            "contain (a newer release, or a deleted script?): it cannot be planned from here"
        )
    script = _parsed_scripts(script_location, python_path, database.alembic_ini)
    resolve = (
        _resolve_expression
        if _is_alembic_expression(graph, direction, requested)
        else _resolve_named
    )
    alembic_target, revision_ids = resolve(
        script=script, graph=graph, current=current, direction=direction, requested=requested
    )
    heads = current
    heads_before = []
    for revision_id in revision_ids:
        heads_before.append(heads)
        heads = _heads_after(graph, heads, revision_id, direction)
    return ResolvedSteps(
        alembic_target=alembic_target,
        revision_ids=tuple(revision_ids),
        heads_before=tuple(heads_before),
    )


# Alembic's relative forms beside our own "+N"/"-N": "heads-1", "<revision>+2".
_SYMBOL_RELATIVE = re.compile(r"^\w+[+-]\d+")


def _is_alembic_expression(graph: RevisionGraph, direction: str, requested: str) -> bool:
    """Whether Alembic itself must resolve `requested`: upgrade "heads" or a branch form."""
    if requested in graph or _RELATIVE_TARGET.match(requested):
        return False
    if requested == "heads":
        # Upward, "heads" may be several revisions at once; downward it must name one.
        return direction == "upgrade"
    return "@" in requested or _SYMBOL_RELATIVE.match(requested) is not None


def _resolve_named(
    *,
    script: ScriptDirectory,
    graph: RevisionGraph,
    current: tuple[str, ...],
    direction: str,
    requested: str,
) -> tuple[str, list[str]]:
    """Resolve head, base, a relative step or a revision id to one revision, and its steps."""
    at = ", ".join(current) or "base"
    target_id = _named_target_id(
        script=script, graph=graph, current=current, direction=direction, requested=requested
    )
    applied = graph.ancestors(current)
    if direction == "upgrade":
        if target_id in current:
            return target_id, []
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

    revision_ids = _alembic_steps(script, direction, target_id, current)
    if direction == "downgrade" and not revision_ids:
        raise PlanError(f"{target_id} is not below the current revision ({at})")
    if _RELATIVE_TARGET.match(requested) and len(revision_ids) != abs(int(requested)):
        # Our walk and Alembic disagree about this history; refuse rather than guess.
        raise PlanError(
            f"{requested} from {at} would run {len(revision_ids)} revisions "
            f"({', '.join(revision_ids)}): name the target revision instead"
        )
    return target_id, revision_ids


def _named_target_id(
    *,
    script: ScriptDirectory,
    graph: RevisionGraph,
    current: tuple[str, ...],
    direction: str,
    requested: str,
) -> str:
    """Return the one revision (or "base") that head, base, +N/-N or a revision id names."""
    if _RELATIVE_TARGET.match(requested):
        steps = int(requested)
        if steps == 0 or (steps > 0) != (direction == "upgrade"):
            sign = "+N" if direction == "upgrade" else "-N"
            raise PlanError(f"{requested} is not a {direction} step: use {sign}")
        if direction == "upgrade":
            return _walk_up(graph, current, steps, requested)
        return _walk_down(graph, current, -steps, requested)
    if requested in ("head", "heads"):
        heads = ", ".join(sorted(graph.heads))
        if len(graph.heads) > 1 and requested == "heads":
            # Only a downgrade comes here: upgrading to "heads" is resolved by Alembic.
            raise PlanError(
                f"'heads' names several revisions ({heads}): a downgrade goes to one, name it"
            )
        if len(graph.heads) > 1:
            also = "; 'heads' upgrades them all" if direction == "upgrade" else ""
            raise PlanError(
                f"multiple heads: name one ({heads}); the script directory has several heads, "
                f"so 'head' is ambiguous{also}"
            )
        if not graph.heads:
            raise PlanError("the script directory has no revisions")
        return graph.heads[0]
    if requested == "base":
        if direction == "upgrade":
            raise PlanError("base is below every revision: downgrade to base instead")
        return "base"
    return _resolve_revision_id(script, requested)


def _resolve_expression(
    *,
    script: ScriptDirectory,
    graph: RevisionGraph,
    current: tuple[str, ...],
    direction: str,
    requested: str,
) -> tuple[str, list[str]]:
    """Let Alembic resolve "heads" or a branch form, then name its outcome as concretely as it can.

    The target handed back is the first of a revision id, "heads", "base", "<branch>@base" and
    the requested text itself for which Alembic runs exactly the same steps from `current`, so
    a job or a rollout freezes a revision wherever one says the same.
    """
    _check_branch_step(
        script=script, graph=graph, current=current, direction=direction, requested=requested
    )
    revision_ids = _alembic_steps(script, direction, requested, current)
    if direction == "downgrade" and not revision_ids:
        raise PlanError(
            f"{requested} is not below the current revision ({', '.join(current) or 'base'}): "
            "there is nothing to downgrade"
        )
    for candidate in _equivalent_targets(graph, current, direction, requested, revision_ids):
        try:
            if _alembic_steps(script, direction, candidate, current) == revision_ids:
                return candidate, revision_ids
        except PlanError:
            continue  # Alembic refuses this candidate from here: it cannot be the same
    return requested, revision_ids


def _check_branch_step(
    *,
    script: ScriptDirectory,
    graph: RevisionGraph,
    current: tuple[str, ...],
    direction: str,
    requested: str,
) -> None:
    """Refuse readably the branch forms Alembic refuses with a terse error or an assertion."""
    from alembic.script.revision import RevisionError

    label, _, symbol = requested.rpartition("@")
    if not label:
        return
    try:
        branch = script.revision_map.get_revision(label)
    except RevisionError as error:
        raise PlanError(f"unknown branch {label!r} in {requested}: {error}") from error
    if branch is None or not _RELATIVE_TARGET.match(symbol):
        return
    steps = int(symbol)
    if steps == 0 or (steps > 0) != (direction == "upgrade"):
        sign, article = ("+N", "an") if direction == "upgrade" else ("-N", "a")
        raise PlanError(f"{requested} is not {article} {direction} step: use {label}@{sign}")
    if direction == "upgrade":
        return
    # Alembic steps down from the one current revision in the branch's line (it asserts so).
    on_branch = [
        revision
        for revision in current
        if branch.revision in graph.ancestors([revision])
        or revision in graph.ancestors([branch.revision])
    ]
    if not on_branch:
        raise PlanError(
            f"{requested}: nothing on branch {label} is applied (the database is at "
            f"{', '.join(current) or 'base'}), so there is nothing to step down from"
        )
    if len(on_branch) > 1:
        raise PlanError(
            f"{requested} is ambiguous: the database is at several revisions in the line of "
            f"{label} ({', '.join(on_branch)}); name the target revision instead"
        )


def _equivalent_targets(
    graph: RevisionGraph,
    current: tuple[str, ...],
    direction: str,
    requested: str,
    revision_ids: list[str],
) -> list[str]:
    """Targets that may run exactly `revision_ids` from `current`, most concrete first."""
    steps = set(revision_ids)
    if direction == "upgrade":
        # A step with no child among the steps is a top: one top is the revision to name.
        tops = [
            revision_id
            for revision_id in revision_ids
            if not steps.intersection(graph.get(revision_id).next_revisions)
        ] or list(current)
        return ([tops[0]] if len(tops) == 1 else []) + ["heads"]
    # Downgrading to the revision the steps leave behind undoes exactly them.
    parents = {
        parent for revision_id in revision_ids for parent in graph.get(revision_id).down_revisions
    }
    candidates = sorted(parents - steps) + ["base"]
    label = requested.rpartition("@")[0]
    if label:
        candidates.append(f"{label}@base")
    return candidates


def _parsed_scripts(
    script_location: Path, python_path: tuple[Path, ...], alembic_ini: Path | None = None
) -> ScriptDirectory:
    """Return the script directory with its revisions read (the graph's, read once)."""
    return _load(script_location, python_path, alembic_ini).script


def resolve_revisions(database: TargetDatabase, text: str) -> tuple[str, ...]:
    """Return the revisions `text` names: () for base, the heads for heads, else full ids.

    Alembic's absolute branch forms name revisions too: "expand@head", "expand@heads",
    "expand@<revision>", and "expand@base" (none).
    """
    from alembic.script.revision import RevisionError

    text = (text or "").strip()
    if text in ("", "base"):
        return ()
    script_location, python_path = database.script_location, database.python_path
    if text in ("head", "heads"):
        heads = load_graph(script_location, python_path, database.alembic_ini).heads
        if text == "head" and len(heads) > 1:
            raise PlanError(
                f"multiple heads: name one ({', '.join(sorted(heads))}); 'head' is ambiguous"
            )
        return tuple(heads)
    script = _parsed_scripts(script_location, python_path, database.alembic_ini)
    if "@" not in text:
        return (_resolve_revision_id(script, text),)
    try:
        found = script.revision_map.get_revisions(text)
    except RevisionError as error:
        raise PlanError(f"cannot resolve {text}: {error}") from error
    # A branch walked below its base comes back as "base": that names no revision.
    return tuple(sorted(item.revision for item in found if item not in (None, "base")))


def _resolve_revision_id(script: ScriptDirectory, text: str) -> str:
    """Return the full id for a full or unique partial revision id (or a branch label)."""
    from alembic.script.revision import MultipleHeads, RevisionError

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


def _script_directory(script_location: Path, alembic_ini: Path | None = None) -> ScriptDirectory:
    """The script directory as `alembic_ini:` describes it (its version_locations, …), if set,
    at our script location; env.py does not run, so no other ini is looked for."""
    ini = alembic_ini if alembic_ini is not None and alembic_ini.is_file() else None
    config = Config(str(ini) if ini else None)
    config.set_main_option("script_location", str(script_location).replace("%", "%%"))
    return ScriptDirectory.from_config(config)


@contextmanager
def _ini_sys_path(alembic_ini: Path | None) -> Iterator[None]:
    """Take out again what an ini's `prepend_sys_path` adds to sys.path while the scripts are
    read (a web process reads many times)."""
    before = set(sys.path)
    try:
        yield
    finally:
        if alembic_ini is not None:
            sys.path[:] = [folder for folder in sys.path if folder in before]


def _alembic_steps(
    script: ScriptDirectory, direction: str, target: str, current: tuple[str, ...]
) -> list[str]:
    """Ask Alembic which revisions command.upgrade/downgrade(target) runs from `current`.

    The runner's own resolver, from the revisions sorted as the runner reads them: the plan
    lists exactly what the runner will execute, in the same order.
    """
    from alembic.script.revision import RevisionError

    try:
        steps = _migration_steps(script, direction, target, tuple(sorted(current)))
    except (CommandError, RevisionError) as error:
        raise PlanError(f"cannot {direction} to {target}: {error}") from error
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


def revision_ids(database: TargetDatabase, revisions: Iterable[str]) -> tuple[str, ...]:
    """Return the full ids these revisions name (ids, partial ids, "heads", branch forms)."""
    graph = load_graph(database.script_location, database.python_path, database.alembic_ini)
    found: list[str] = []
    for text in revisions:
        for revision_id in (text,) if text in graph else resolve_revisions(database, text):
            if revision_id not in found:
                found.append(revision_id)
    return tuple(found)


@dataclass(frozen=True)
class UpgradeChunk:
    """One upgrade command of a chunked build: to `target`, running `steps` revisions."""

    target: str
    steps: int


def upgrade_chunks(
    graph: RevisionGraph, *, current: Iterable[str], targets: Iterable[str], size: int
) -> tuple[UpgradeChunk, ...]:
    """Split an upgrade from `current` to `targets` into upgrades of at most `size` steps each.

    The pending revisions are taken parents first (a branch stays together), `size` at a time;
    each group is applied by upgrading to each of its heads in turn (revisions no other one of
    the group builds on), so every command is an upgrade to one revision whose ancestors are
    applied except those of its own group. Dependencies declared with `depends_on` are not in
    the graph: Alembic applies them with the revision that needs them.
    """
    if size < 1:
        raise ValueError(f"a chunk holds at least one step, not {size}")
    order = _parents_first(graph, tuple(targets), graph.ancestors(current))
    chunks: list[UpgradeChunk] = []
    for start in range(0, len(order), size):
        group = order[start : start + size]
        members, covered = set(group), set()
        for revision_id in group:
            revision = graph.get(revision_id)
            assert revision is not None
            if members.isdisjoint(revision.next_revisions):
                below = _ancestors_within(graph, revision_id, members) - covered
                covered |= below
                chunks.append(UpgradeChunk(target=revision_id, steps=len(below)))
    return tuple(chunks)


def _parents_first(graph: RevisionGraph, targets: tuple[str, ...], applied: set[str]) -> list[str]:
    """The revisions below `targets` not yet applied, each after its parents (depth first)."""
    order: list[str] = []
    seen = set(applied)
    for target in targets:
        if target not in graph:
            raise PlanError(f"unknown revision {target!r}")
        stack: list[tuple[str, bool]] = [(target, False)]
        while stack:
            revision_id, parents_done = stack.pop()
            if parents_done:
                order.append(revision_id)
                continue
            if revision_id in seen:
                continue
            seen.add(revision_id)
            stack.append((revision_id, True))
            revision = graph.get(revision_id)
            assert revision is not None
            parents = [parent for parent in revision.down_revisions if parent not in seen]
            stack.extend((parent, False) for parent in reversed(parents))
    return order


def _ancestors_within(graph: RevisionGraph, revision_id: str, members: set[str]) -> set[str]:
    """`revision_id` and its ancestors, walking only through `members`."""
    found: set[str] = set()
    stack = [revision_id]
    while stack:
        current = stack.pop()
        if current in found or current not in members:
            continue
        found.add(current)
        revision = graph.get(current)
        assert revision is not None
        stack.extend(revision.down_revisions)
    return found


def _walk_up(graph: RevisionGraph, current: tuple[str, ...], count: int, requested: str) -> str:
    """Follow `count` single upgrade steps; refuse at a branch point or a merge."""
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


def _offline_session(database: TargetDatabase, session: dict[str, Any]) -> tuple[Config, Any]:
    """The Config and Flask app every offline rendering of one plan shares (made once)."""
    import io

    if "config" not in session:
        try:
            session["config"] = _config_for(database, stdout=io.StringIO())
        except MigrationFailed as error:
            raise OfflineRenderError(str(error)) from error
        session["app"] = _flask_migrate_app(database)
    return session["config"], session["app"]


def _session_script(config: Config, session: dict[str, Any]) -> ScriptDirectory:
    """The parsed script directory of the session (call with env.py's sys.path and app)."""
    if "script" not in session:
        session["script"] = ScriptDirectory.from_config(config)
    return session["script"]


def _offline_destination(revision: Any, upgrading: bool) -> str:
    """Where one step goes: its revision up, its first parent (or base) down."""
    parents = to_tuple(revision.down_revision, default=())
    return revision.revision if upgrading else (parents[0] if parents else "base")


def _offline_step(script: ScriptDirectory, revision: Any, upgrading: bool) -> Any:
    from alembic.runtime.migration import MigrationStep

    if upgrading:
        return MigrationStep.upgrade_from_script(script.revision_map, revision)
    return MigrationStep.downgrade_from_script(script.revision_map, revision)


def _offline_defaults(database: TargetDatabase) -> dict[str, Any]:
    # Named paramstyle as Alembic's generic env.py sets it: Flask-Migrate's offline branch
    # does not, and a pyformat driver then doubles every % into SQL that psql rejects.
    return {"dialect_opts": {"paramstyle": "named"}, **database.configure_options}


def _run_bracket(impl: Any) -> tuple[str, str] | None:
    """The BEGIN and COMMIT Alembic writes around an offline run, as this dialect words them
    (None without transactional DDL: then it writes none)."""
    import io

    if not impl.transactional_ddl:
        return None
    bracket: list[str] = []
    for emit in (impl.emit_begin, impl.emit_commit):
        impl.output_buffer = io.StringIO()
        emit()
        bracket.append(impl.output_buffer.getvalue())
    return bracket[0], bracket[1]


def _without_run_bracket(sql: str, bracket: tuple[str, str] | None) -> str:
    """Rendered alone, a step sits in a BEGIN/COMMIT that Alembic emits first and last; drop
    exactly those, never a BEGIN or COMMIT the script executes."""
    if bracket is None:
        return sql
    begin, commit = bracket
    if sql.startswith(begin) and sql.endswith(commit) and len(sql) >= len(begin + commit):
        sql = sql[len(begin) : len(sql) - len(commit)]
    return sql


def render_offline_sql(
    database: TargetDatabase,
    *,
    direction: str,
    from_revisions: tuple[str, ...],
    revision_id: str,
    session: dict[str, Any] | None = None,
) -> str:
    """Render one upgrade or downgrade step as SQL for `url`'s dialect, without connecting.

    The step starts from `from_revisions` (the version table's rows before it), so a merge or
    a new branch renders the same version-table statements a real run would. Run this in a
    child process: it executes the managed app's env.py. Raise OfflineRenderError with a
    short reason when the step needs a live database. Steps of one plan share a `session`
    dict: the parsed script directory is then read once, not once per step. The SQL has no
    BEGIN/COMMIT of its own: how a run groups its steps into transactions is the plan's to say.
    """
    import io

    url = database.url
    sql_output = io.StringIO()
    session = {} if session is None else session
    config, app = _offline_session(database, session)
    config.output_buffer = sql_output
    with _on_sys_path(database.python_path), app.app_context():
        script = _session_script(config, session)
        try:
            revision = script.get_revision(revision_id)
        except CommandError as error:
            raise OfflineRenderError(f"unknown revision {revision_id}: {error}") from error
        if revision is None:
            raise OfflineRenderError(f"unknown revision {revision_id}")
        upgrading = direction == "upgrade"

        def one_step(heads: Any, context: Any) -> list[Any]:
            return [_offline_step(script, revision, upgrading)]

        try:
            with (
                _configure_defaults(_offline_defaults(database)),
                EnvironmentContext(
                    config,
                    script,
                    fn=one_step,
                    as_sql=True,
                    starting_rev=list(from_revisions) or None,
                    destination_rev=_offline_destination(revision, upgrading),
                ) as environment,
            ):
                script.run_env()
                impl = environment.get_context().impl
        # The step's own code runs here; whatever it raises says why it needs a database.
        except Exception as error:
            reason = _missing_ini(error, config, database.script_location)
            reason = reason or _offline_failure_reason(error, Path(revision.path), url)
            raise OfflineRenderError(reason) from error
    return _without_run_bracket(sql_output.getvalue(), _run_bracket(impl))


@dataclass(frozen=True)
class OfflineStep:
    """One step of a plan rendered offline: its SQL, or why it needs a live database."""

    revision_id: str
    sql: str | None
    reason: str | None


class _PassUnusable(Exception):
    """A one-pass rendering whose output cannot be split into steps (see _render_pass)."""


def render_offline_steps(
    database: TargetDatabase,
    *,
    direction: str,
    steps: list[tuple[str, tuple[str, ...]]],
    session: dict[str, Any] | None = None,
) -> list[OfflineStep]:
    """Render a plan's (revision id, revisions before it) steps offline, in order.

    Each step's SQL (or reason) is exactly what render_offline_sql gives for it alone, but
    env.py runs once for the whole plan rather than once per step, and the output is split at
    the step boundaries. A step that cannot render offline is rendered alone, for its reason,
    and one run renders the steps after it; where a run's output cannot be split (env.py
    fails outside a step, or runs its migrations more than once), each step renders alone.
    """
    session = {} if session is None else session
    results: list[OfflineStep] = []
    start = 0
    while start < len(steps):
        try:
            rendered, failed = _render_pass(database, direction, steps[start:], session)
        except _PassUnusable:
            results += [_render_alone(database, direction, step, session) for step in steps[start:]]
            break
        results += rendered
        start += len(rendered)
        if failed:
            results.append(_render_alone(database, direction, steps[start], session))
            start += 1
    return results


def _render_alone(
    database: TargetDatabase,
    direction: str,
    step: tuple[str, tuple[str, ...]],
    session: dict[str, Any],
) -> OfflineStep:
    revision_id, before = step
    try:
        sql = render_offline_sql(
            database,
            direction=direction,
            from_revisions=tuple(before),
            revision_id=revision_id,
            session=session,
        )
    except OfflineRenderError as error:
        return OfflineStep(revision_id=revision_id, sql=None, reason=str(error))
    return OfflineStep(revision_id=revision_id, sql=sql, reason=None)


class _PassRecorder:
    """Feeds one offline run its steps and notes where each one's output begins and ends.

    The steps' generator notes the buffer's position before each step and after the last. A
    step's version-row statements depend on the rows before it (Alembic's on_version_apply
    reports them after each step): the generator stops before a step whose rows before it are
    not the plan's. A step whose own code raises is caught, so that the run still ends (and
    env.py writes its tail); the generator stops after it.
    """

    def __init__(self, buffer: IO[str], steps: list[tuple[str, tuple[str, ...]]]) -> None:
        self.buffer = buffer
        self.steps = steps
        self.marks: list[int] = []  # the buffer's position before each step, and after the last
        self.heads_after: list[set[str]] = []  # the version rows after each step
        self.runs = 0
        self.failures: list[BaseException] = []

    def applied(self, *, ctx: Any, step: Any, heads: Any, run_args: Any) -> None:  # noqa: ARG002
        self.heads_after.append(set(heads))

    def guarded(self, function: Any) -> Any:
        import functools

        # Alembic names the step in its "-- Running upgrade a -> b" line by the function's name.
        @functools.wraps(function)
        def run_step(**kwargs: Any) -> None:
            try:
                function(**kwargs)
            except Exception as error:  # rendered alone afterwards, for its reason
                self.failures.append(error)

        return run_step

    def planned(self, migration_steps: list[Any]) -> Iterator[Any]:
        self.runs += 1
        if self.runs > 1:
            return  # a multi-database env.py runs once per database: not split here
        for index, step in enumerate(migration_steps):
            if index and (
                len(self.heads_after) != index or self.heads_after[-1] != set(self.steps[index][1])
            ):
                break  # its version rows would differ from the plan's: a new run starts here
            self.marks.append(self.buffer.tell())
            step.migration_fn = self.guarded(step.migration_fn)
            yield step
            if self.failures:
                break
        self.marks.append(self.buffer.tell())


def _render_pass(
    database: TargetDatabase,
    direction: str,
    steps: list[tuple[str, tuple[str, ...]]],
    session: dict[str, Any],
) -> tuple[list[OfflineStep], bool]:
    """Render the first steps of `steps` in one env.py run: (their SQL, whether the step after
    them cannot render offline). Raise _PassUnusable when the output cannot be split.

    Alembic writes, in order: what env.py writes before its migrations (a BEGIN), each step
    (its BEGIN with transaction_per_migration, the version table's CREATE at base, its
    "-- Running" line, its statements, its version row, its COMMIT), then what env.py writes
    after (a COMMIT). So step i alone is head + step i + tail, as a run of step i alone
    writes it. That assumes env.py writes the same around every step: it sees the last step's
    target as context.get_revision_argument() here, each step's own when alone (no env.py we
    know of writes SQL from it).
    """
    import io

    try:
        config, app = _offline_session(database, session)
    except OfflineRenderError as error:
        raise _PassUnusable(str(error)) from error
    buffer = io.StringIO()
    config.output_buffer = buffer
    upgrading = direction == "upgrade"
    recorder = _PassRecorder(buffer, steps)
    with _on_sys_path(database.python_path), app.app_context():
        script = _session_script(config, session)
        revisions = _known_revisions(script, [revision_id for revision_id, _ in steps])
        if not revisions:
            return [], True  # rendered alone, the first step says why
        migration_steps = [_offline_step(script, revision, upgrading) for revision in revisions]
        try:
            with (
                _configure_defaults(_offline_defaults(database), recorder.applied),
                EnvironmentContext(
                    config,
                    script,
                    fn=lambda heads, context: recorder.planned(migration_steps),
                    as_sql=True,
                    starting_rev=list(steps[0][1]) or None,
                    destination_rev=_offline_destination(revisions[-1], upgrading),
                ) as environment,
            ):
                script.run_env()
                impl = environment.get_context().impl
        except Exception as error:  # env.py itself, not a step: every step renders alone
            raise _PassUnusable(str(error)) from error
    marks, failed = recorder.marks, bool(recorder.failures)
    if recorder.runs != 1 or len(marks) < 2:
        raise _PassUnusable("env.py did not run the migrations exactly once")
    sql = buffer.getvalue()
    head, tail = sql[: marks[0]], sql[marks[-1] :]
    bracket = _run_bracket(impl)
    rendered = [
        OfflineStep(
            revision_id=steps[index][0],
            sql=_without_run_bracket(head + sql[marks[index] : marks[index + 1]] + tail, bracket),
            reason=None,
        )
        for index in range(len(marks) - 1 - int(failed))
    ]
    if not rendered and not failed:
        raise _PassUnusable("no step rendered")
    return rendered, failed


def _known_revisions(script: ScriptDirectory, revision_ids: list[str]) -> list[Any]:
    """The scripts of the first of these revisions, up to one the directory does not know."""
    revisions = []
    for revision_id in revision_ids:
        try:
            revision = script.get_revision(revision_id)
        except CommandError:
            revision = None
        if revision is None:
            break
        revisions.append(revision)
    return revisions
