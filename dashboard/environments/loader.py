"""Read environments.yaml into a Project: validated, ${VAR}-interpolated, in promotion order."""

from __future__ import annotations

import difflib
import heapq
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from graphlib import CycleError, TopologicalSorter
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from dashboard.errors import ConfigurationError, EnvironmentNotConfigured
from dashboard.target.spec import TargetDatabase

PROJECT_KEYS = {
    "project",
    "migrations",
    "environments",
    "version_table",
    "version_table_schema",
    "python_path",
    "alembic_ini",
    "env",
}
ENVIRONMENT_KEYS = {
    "name",
    "url",
    "after",
    "protected",
    "approvals",
    "allow_downgrade",
    "shadow_url",
    "version_table",
    "version_table_schema",
    "python_path",
    "lock_timeout",
    "statement_timeout",
    "drift_check_minutes",
    "configure_args",
    "alembic_ini",
    "env",
    "block_on",
}
# Options passed through to env.py's context.configure(), each true or false: the ones that
# change how a run groups its statements into transactions.
CONFIGURE_ARGS = {"transaction_per_migration", "transactional_ddl"}
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
ENV_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
VARIABLE_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True)
class Environment:
    """One target database as configured; `url` is None when it is not configured."""

    name: str
    url: URL | None
    not_configured_reason: str | None
    after: str | None
    protected: bool
    approvals: int
    allow_downgrade: bool
    shadow_url: URL | None
    version_table: str
    version_table_schema: str | None
    python_path: tuple[Path, ...]
    # Seconds a migration statement may wait for a table lock / run, where the database has it.
    lock_timeout: float | None = None
    statement_timeout: float | None = None
    # (name, value) pairs from `configure_args:`, given to context.configure() on every run.
    configure_args: tuple[tuple[str, bool], ...] = ()
    # Minutes between scheduled drift checks (run by the status refresher's lease holder).
    drift_check_minutes: int | None = None
    # A plan with a finding this severe ("error" or "warning") needs an admin's override.
    block_on: str | None = None
    # `alembic_ini:` (the ini env.py gets) and `env:` (variables set for env.py; see spec.py).
    alembic_ini: Path | None = None
    env_variables: tuple[tuple[str, str], ...] = ()

    @property
    def configure_options(self) -> dict[str, bool]:
        """The `configure_args:` as keyword arguments for context.configure()."""
        return dict(self.configure_args)

    @property
    def transaction_per_migration(self) -> bool:
        """Whether a run commits after each step, rather than once at the end."""
        return self.configure_options.get("transaction_per_migration", False)

    @property
    def transactional_ddl(self) -> bool:
        """Whether a failure rolls back the DDL a run executed (Alembic's per-dialect default)."""
        default = self.dialect == "postgresql"  # SQLite and MySQL/MariaDB: Alembic says no
        return self.configure_options.get("transactional_ddl", default)

    @property
    def is_configured(self) -> bool:
        return self.url is not None

    @property
    def display_url(self) -> str:
        """The URL with its password masked, safe for pages, logs and errors."""
        if self.url is None:
            return ""
        return self.url.render_as_string(hide_password=True)

    @property
    def dialect(self) -> str | None:
        return self.url.get_backend_name() if self.url is not None else None


@dataclass(frozen=True)
class Project:
    """The managed application: its script directory and its environments in promotion order."""

    name: str
    source: Path
    script_location: Path
    environments: tuple[Environment, ...]
    python_path: tuple[Path, ...] = field(default=())
    alembic_ini: Path | None = None  # the project's `alembic_ini:` (the revision graph's)

    def get(self, name: str) -> Environment | None:
        """Return the environment called `name`, or None."""
        for environment in self.environments:
            if environment.name == name:
                return environment
        return None

    @property
    def names(self) -> list[str]:
        return [environment.name for environment in self.environments]

    def database(self, environment: Environment) -> TargetDatabase:
        """The frozen value the target package takes for `environment`; raise
        EnvironmentNotConfigured when it has no URL."""
        if environment.url is None:
            raise EnvironmentNotConfigured(
                f"{environment.name} is not configured: {environment.not_configured_reason}"
            )
        return TargetDatabase(
            name=environment.name,
            url=environment.url,
            script_location=self.script_location,
            version_table=environment.version_table,
            version_table_schema=environment.version_table_schema,
            python_path=environment.python_path,
            configure_args=environment.configure_args,
            lock_timeout=environment.lock_timeout,
            statement_timeout=environment.statement_timeout,
            alembic_ini=environment.alembic_ini,
            env_variables=environment.env_variables,
        )


class _Reader:
    """Walk the YAML node tree so every message can name the file, line and key."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.constructor = yaml.SafeLoader("")

    def fail(self, node: yaml.Node | None, key: str, problem: str) -> ConfigurationError:
        line = node.start_mark.line + 1 if node is not None else 1
        return ConfigurationError(f"{self.path}, line {line}, key '{key}': {problem}")

    def mapping(
        self, node: yaml.Node, key: str, allowed: set[str]
    ) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, key, "expected a mapping of keys to values")
        entries: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            name = self.constructor.construct_object(key_node)
            where = f"{key}.{name}" if key else str(name)
            if not isinstance(name, str):
                raise self.fail(key_node, where, "keys must be text")
            if name not in allowed:
                close = difflib.get_close_matches(name, sorted(allowed), n=1, cutoff=0.6)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                known = ", ".join(sorted(allowed))
                raise self.fail(key_node, where, f"unknown key{hint} (known keys: {known})")
            if name in entries:
                raise self.fail(key_node, where, "the key appears twice")
            entries[name] = (key_node, value_node)
        return entries

    def scalar(self, node: yaml.Node, key: str, kind: type | tuple[type, ...], what: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise self.fail(node, key, f"expected {what}")
        value = self.constructor.construct_object(node)
        # bool is an int in Python; an approvals count of `true` is a mistake.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.fail(node, key, f"expected {what}")
        return value

    def text(self, node: yaml.Node, key: str) -> str:
        value = self.scalar(node, key, str, "text")
        if not value.strip():
            raise self.fail(node, key, "must not be empty")
        return value

    def folders(self, node: yaml.Node, key: str) -> tuple[Path, ...]:
        if isinstance(node, yaml.ScalarNode):
            items = [node]
        elif isinstance(node, yaml.SequenceNode):
            items = list(node.value)
        else:
            raise self.fail(node, key, "expected a folder or a list of folders")
        folders = []
        for index, item in enumerate(items):
            folder = self.path.parent / self.text(item, f"{key}[{index}]")
            folders.append(folder.resolve())
        return tuple(folders)


@dataclass(frozen=True)
class _Entries:
    """One mapping's checked keys, read with messages that name `where.key`."""

    reader: _Reader
    where: str
    nodes: dict[str, tuple[yaml.Node, yaml.Node]]

    def __contains__(self, key: str) -> bool:
        return key in self.nodes

    def __iter__(self) -> Iterator[str]:
        return iter(self.nodes)

    def node(self, key: str) -> yaml.Node:
        return self.nodes[key][1]

    def key(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def fail(self, key: str, problem: str) -> ConfigurationError:
        return self.reader.fail(self.node(key), self.key(key), problem)

    def scalar(self, key: str, kind: type | tuple[type, ...], what: str) -> Any:
        return self.reader.scalar(self.node(key), self.key(key), kind, what)

    def text(self, key: str) -> str | None:
        """Return the key's non-empty text, or None when the key is absent."""
        return self.reader.text(self.node(key), self.key(key)) if key in self else None

    def flag(self, key: str, *, default: bool) -> bool:
        return self.scalar(key, bool, "true or false") if key in self else default

    def folders(self, key: str) -> tuple[Path, ...]:
        return self.reader.folders(self.node(key), self.key(key)) if key in self else ()

    def section(self, key: str, allowed: set[str]) -> _Entries:
        """Return the nested mapping at `key`, its keys checked against `allowed`."""
        where = self.key(key)
        return _Entries(self.reader, where, self.reader.mapping(self.node(key), where, allowed))


def interpolate(value: str, environ: Mapping[str, str]) -> tuple[str | None, list[str]]:
    """Replace ${VAR} and ${VAR:-default}; return the result (None if a variable is missing)."""
    missing: list[str] = []

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if environ.get(name):
            return environ[name]
        if default is not None:
            return default
        missing.append(name)
        return ""

    result = VARIABLE_PATTERN.sub(substitute, value)
    return (None if missing else result), missing


def resolve_url(raw: str, base: Path) -> URL:
    """Parse a database URL; a relative SQLite path is taken relative to `base`."""
    url = make_url(raw)
    if url.get_backend_name() == "sqlite":
        database = url.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            path = Path(database)
            if not path.is_absolute():
                url = url.set(database=str((base / path).resolve()))
    return url


def load_project(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Project:
    """Read and validate environments.yaml; raise ConfigurationError naming file, line and key."""
    source = Path(path).resolve()
    reader = _Reader(source)
    root = _compose(source)
    top = _Entries(reader, "", reader.mapping(root, "", PROJECT_KEYS))
    for required in ("migrations", "environments"):
        if required not in top:
            raise reader.fail(root, required, "this key is required")

    name = top.text("project") or source.parent.name
    script_location = _read_script_location(top)
    defaults = _Defaults(
        version_table=top.text("version_table") or "alembic_version",
        version_table_schema=top.text("version_table_schema"),
        python_path=top.folders("python_path"),
        alembic_ini=_read_alembic_ini(top),
        env_variables=_read_env(top),
    )
    environments, after_nodes = _read_environments(
        reader, top.node("environments"), defaults, os.environ if environ is None else environ
    )
    return Project(
        name=name,
        source=source,
        script_location=script_location,
        environments=tuple(_promotion_order(reader, environments, after_nodes)),
        python_path=defaults.python_path,
        alembic_ini=defaults.alembic_ini,
    )


@dataclass(frozen=True)
class _Defaults:
    """The project-wide values an environment inherits unless it sets its own."""

    version_table: str
    version_table_schema: str | None
    python_path: tuple[Path, ...]
    alembic_ini: Path | None = None
    env_variables: tuple[tuple[str, str], ...] = ()


def _compose(source: Path) -> yaml.Node:
    """Parse the file into YAML nodes, which keep the line of every key and value."""
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as error:
        hint = ""
        if isinstance(error, FileNotFoundError):
            hint = (
                f"; `flask dashboard init APP_FOLDER --output {source}` writes one for your app "
                "(run it with ENVIRONMENTS_FILE unset)"
            )
        raise ConfigurationError(
            f"cannot read the environments file {source}: {error.strerror}{hint}"
        ) from error
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark else 1
        problem = error.problem or error.context or "invalid YAML"
        raise ConfigurationError(
            f"{source}, line {line}: this is not valid YAML: {problem}"
        ) from error
    if root is None:
        raise ConfigurationError(f"{source}, line 1: the file is empty")
    return root


def _read_script_location(top: _Entries) -> Path:
    """Return the `migrations:` folder, which must be an Alembic script directory."""
    node = top.node("migrations")
    script_location = (top.reader.path.parent / top.reader.text(node, "migrations")).resolve()
    if not (script_location / "env.py").is_file():
        raise top.fail(
            "migrations", f"{script_location} is not an Alembic script directory (it has no env.py)"
        )
    return script_location


def _read_environments(
    reader: _Reader, node: yaml.Node, defaults: _Defaults, environ: Mapping[str, str]
) -> tuple[list[Environment], dict[str, yaml.Node]]:
    """Read the `environments:` list in file order, with each `after:` node for later messages."""
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        raise reader.fail(node, "environments", "expected a list of environments")
    environments: list[Environment] = []
    after_nodes: dict[str, yaml.Node] = {}
    for index, item in enumerate(node.value):
        taken = {environment.name for environment in environments}
        name, entries = _environment_entries(reader, item, index, taken)
        environments.append(_read_environment(name, entries, defaults, environ))
        if "after" in entries:
            after_nodes[name] = entries.node("after")
    return environments, after_nodes


def _environment_entries(
    reader: _Reader, node: yaml.Node, index: int, taken: set[str]
) -> tuple[str, _Entries]:
    """Check one list item's keys and its name; return the name and its keys."""
    where = f"environments[{index}]"
    peeked = _peek_name(node)
    nodes = reader.mapping(node, f"{where} ({peeked})" if peeked else where, ENVIRONMENT_KEYS)
    for required in ("name", "url"):
        if required not in nodes:
            raise reader.fail(node, f"{where}.{required}", "this key is required")
    name_node = nodes["name"][1]
    name = str(reader.scalar(name_node, f"{where}.name", (str, int), "a name"))
    if not NAME_PATTERN.match(name):
        raise reader.fail(
            name_node,
            f"{where}.name",
            "use letters, digits, '.', '_' or '-' (at most 63 characters)",
        )
    if name in taken:
        raise reader.fail(name_node, f"{where}.name", f"'{name}' is already defined")
    return name, _Entries(reader, f"{where} ({name})", nodes)


def _read_environment(
    name: str, entries: _Entries, defaults: _Defaults, environ: Mapping[str, str]
) -> Environment:
    """Build one Environment from its checked keys (keyword order is the order of messages)."""
    url, reason = _read_url(entries, "url", environ)
    env_variables, unset = _environment_env(entries, defaults, environ)
    if url is not None and unset:
        url, reason = None, unset
    shadow_url = _read_url(entries, "shadow_url", environ)[0] if "shadow_url" in entries else None
    after = str(entries.scalar("after", (str, int), "a name")) if "after" in entries else None
    protected, approvals = _read_approvals(entries)
    return Environment(
        name=name,
        url=url,
        not_configured_reason=reason,
        after=after,
        protected=protected,
        approvals=approvals,
        allow_downgrade=entries.flag("allow_downgrade", default=True),
        shadow_url=shadow_url,
        version_table=entries.text("version_table") or defaults.version_table,
        version_table_schema=entries.text("version_table_schema") or defaults.version_table_schema,
        python_path=defaults.python_path + entries.folders("python_path"),
        lock_timeout=_read_seconds(entries, "lock_timeout"),
        statement_timeout=_read_seconds(entries, "statement_timeout"),
        configure_args=_read_configure_args(entries),
        drift_check_minutes=_read_minutes(entries, "drift_check_minutes"),
        block_on=_read_block_on(entries),
        alembic_ini=_read_alembic_ini(entries) or defaults.alembic_ini,
        env_variables=env_variables,
    )


def _read_alembic_ini(entries: _Entries) -> Path | None:
    """Return the `alembic_ini:` file (relative to environments.yaml), which must exist."""
    if "alembic_ini" not in entries:
        return None
    path = (entries.reader.path.parent / entries.text("alembic_ini")).resolve()
    if not path.is_file():
        raise entries.fail("alembic_ini", f"{path} does not exist")
    return path


def _read_env(entries: _Entries) -> tuple[tuple[str, str], ...]:
    """Return the `env:` variables as (name, unexpanded value) pairs."""
    if "env" not in entries:
        return ()
    node, where = entries.node("env"), entries.key("env")
    if not isinstance(node, yaml.MappingNode):
        raise entries.reader.fail(node, where, "expected a mapping of variable names to values")
    variables: dict[str, str] = {}
    for key_node, value_node in node.value:
        name = entries.reader.constructor.construct_object(key_node)
        if not isinstance(name, str) or not ENV_NAME_PATTERN.match(name):
            raise entries.reader.fail(
                key_node, f"{where}.{name}", "a variable name is letters, digits and '_'"
            )
        if name in variables:
            raise entries.reader.fail(key_node, f"{where}.{name}", "the key appears twice")
        value = entries.reader.scalar(value_node, f"{where}.{name}", (str, int, float), "text")
        variables[name] = str(value)
    return tuple(variables.items())


def _environment_env(
    entries: _Entries, defaults: _Defaults, environ: Mapping[str, str]
) -> tuple[tuple[tuple[str, str], ...], str | None]:
    """Return the project's `env:` overlaid with the environment's, and why it cannot be used
    when a ${VAR} it names is not set (`${url}` always is)."""
    merged = {**dict(defaults.env_variables), **dict(_read_env(entries))}
    named = {
        match.group(1)
        for value in merged.values()
        for match in VARIABLE_PATTERN.finditer(value)
        if match.group(2) is None
    }
    unset = sorted(name for name in named - {"url"} if not environ.get(name))
    plural = "s" if len(unset) > 1 else ""
    reason = f"environment variable{plural} {', '.join(unset)} not set (env:)" if unset else None
    return tuple(sorted(merged.items())), reason


def _read_approvals(entries: _Entries) -> tuple[bool, int]:
    """Return `protected` and `approvals`; a protected environment needs at least one approval."""
    protected = entries.flag("protected", default=False)
    if "approvals" not in entries:
        return protected, (1 if protected else 0)
    approvals = entries.scalar("approvals", int, "a whole number")
    if approvals < 0:
        raise entries.fail("approvals", "must be 0 or more")
    if protected and approvals < 1:
        raise entries.fail("approvals", "a protected environment needs at least 1 approval")
    return protected, approvals


def _read_block_on(entries: _Entries) -> str | None:
    """Return the severity that blocks a plan ("error" or "warning"), or None."""
    if "block_on" not in entries:
        return None
    value = entries.scalar("block_on", str, "error or warning")
    if value not in ("error", "warning"):
        raise entries.fail("block_on", f"expected error or warning, not {value!r}")
    return value


def _read_minutes(entries: _Entries, key: str) -> int | None:
    """Return a whole number of minutes (at least 1), or None when it is not set."""
    if key not in entries:
        return None
    value = entries.scalar(key, int, "a whole number of minutes (at least 1)")
    if value < 1:
        raise entries.fail(key, f"expected a whole number of minutes (at least 1), not {value}")
    return value


def _read_seconds(entries: _Entries, key: str) -> float | None:
    """Return a timeout in seconds (> 0), or None when it is not set."""
    if key not in entries:
        return None
    value = entries.scalar(key, (int, float), "seconds")
    if isinstance(value, bool) or value <= 0:
        raise entries.fail(key, "expected seconds > 0")
    return float(value)


def _read_configure_args(entries: _Entries) -> tuple[tuple[str, bool], ...]:
    """Return the `configure_args:` as sorted (option, true/false) pairs."""
    if "configure_args" not in entries:
        return ()
    options = entries.section("configure_args", CONFIGURE_ARGS)
    return tuple(sorted((option, options.flag(option, default=False)) for option in options))


def _peek_name(node: yaml.Node) -> str | None:
    """Return an environment's name early, so messages about its other keys can say it."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if key_node.value == "name" and isinstance(value_node, yaml.ScalarNode):
                return str(value_node.value)
    return None


def _read_url(
    entries: _Entries, key: str, environ: Mapping[str, str]
) -> tuple[URL | None, str | None]:
    """Return the URL at `key`, or None and why when a ${VAR} in it is not set."""
    node, where = entries.node(key), entries.key(key)
    raw = entries.reader.text(node, where)
    value, missing = interpolate(raw, environ)
    if value is None:
        names = ", ".join(missing)
        plural = "s" if len(missing) > 1 else ""
        return None, f"environment variable{plural} {names} not set"
    try:
        return resolve_url(value, entries.reader.path.parent), None
    except ArgumentError as error:
        # The value may hold a password: describe it, never echo it.
        raise entries.fail(
            key, "is not a database URL (expected dialect+driver://user@host/database)"
        ) from error


def _promotion_order(
    reader: _Reader, environments: list[Environment], after_nodes: dict[str, yaml.Node]
) -> list[Environment]:
    """Order environments so each comes after the one it names; file order breaks ties."""
    _check_after_names(reader, environments, after_nodes)
    by_name = {environment.name: environment for environment in environments}
    position = {environment.name: index for index, environment in enumerate(environments)}
    sorter = TopologicalSorter(
        {
            environment.name: [environment.after] if environment.after else []
            for environment in environments
        }
    )
    try:
        sorter.prepare()
    except CycleError as error:
        raise _cycle_error(reader, by_name, position, after_nodes, error.args[1]) from error
    ordered: list[Environment] = []
    ready: list[tuple[int, str]] = []
    while sorter.is_active():
        for name in sorter.get_ready():
            heapq.heappush(ready, (position[name], name))
        _, name = heapq.heappop(ready)  # of those free to go next, the first in the file
        ordered.append(by_name[name])
        sorter.done(name)
    return ordered


def _check_after_names(
    reader: _Reader, environments: list[Environment], after_nodes: dict[str, yaml.Node]
) -> None:
    """Refuse an `after:` that names its own environment or no environment at all."""
    names = [environment.name for environment in environments]
    for environment in environments:
        if environment.after is None:
            continue
        node = after_nodes[environment.name]
        key = f"environments ({environment.name}).after"
        if environment.after == environment.name:
            raise reader.fail(node, key, "an environment cannot come after itself")
        if environment.after not in names:
            close = difflib.get_close_matches(environment.after, names, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise reader.fail(node, key, f"no environment is named '{environment.after}'{hint}")


def _cycle_error(
    reader: _Reader,
    by_name: dict[str, Environment],
    position: dict[str, int],
    after_nodes: dict[str, yaml.Node],
    cycle: list[str],
) -> ConfigurationError:
    """Name a promotion cycle from its first environment in the file, following `after:`."""
    start = min(cycle, key=position.__getitem__)
    names = [start]
    while (after := by_name[names[-1]].after) != start:
        names.append(after)
    return reader.fail(
        after_nodes[start],
        f"environments ({start}).after",
        f"promotion order has a cycle: {' -> '.join([*names, start])}",
    )
