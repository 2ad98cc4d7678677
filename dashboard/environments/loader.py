"""Read environments.yaml into a Project: validated, ${VAR}-interpolated, in promotion order."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from dashboard.errors import ConfigurationError

PROJECT_KEYS = {
    "project",
    "migrations",
    "environments",
    "version_table",
    "version_table_schema",
    "python_path",
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
    "configure_args",
}
# Options passed through to env.py's context.configure(), each true or false: the ones that
# change how a run groups its statements into transactions.
CONFIGURE_ARGS = {"transaction_per_migration", "transactional_ddl"}
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
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
    line: int
    # Seconds a migration statement may wait for a table lock / run, where the database has it.
    lock_timeout: float | None = None
    statement_timeout: float | None = None
    # (name, value) pairs from `configure_args:`, given to context.configure() on every run.
    configure_args: tuple[tuple[str, bool], ...] = ()

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

    def get(self, name: str) -> Environment | None:
        """Return the environment called `name`, or None."""
        for environment in self.environments:
            if environment.name == name:
                return environment
        return None

    @property
    def names(self) -> list[str]:
        return [environment.name for environment in self.environments]


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

    def scalar(self, node: yaml.Node, key: str, kind: type, what: str) -> Any:
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
    environ = os.environ if environ is None else environ
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigurationError(
            f"cannot read the environments file {source}: {error.strerror}"
        ) from error
    reader = _Reader(source)
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

    top = reader.mapping(root, "", PROJECT_KEYS)
    for required in ("migrations", "environments"):
        if required not in top:
            raise reader.fail(root, required, "this key is required")

    name = reader.text(top["project"][1], "project") if "project" in top else source.parent.name
    migrations_node = top["migrations"][1]
    script_location = (source.parent / reader.text(migrations_node, "migrations")).resolve()
    if not (script_location / "env.py").is_file():
        raise reader.fail(
            migrations_node,
            "migrations",
            f"{script_location} is not an Alembic script directory (it has no env.py)",
        )
    project_version_table = (
        reader.text(top["version_table"][1], "version_table")
        if "version_table" in top
        else "alembic_version"
    )
    project_schema = (
        reader.text(top["version_table_schema"][1], "version_table_schema")
        if "version_table_schema" in top
        else None
    )
    project_python_path = (
        reader.folders(top["python_path"][1], "python_path") if "python_path" in top else ()
    )

    environments_node = top["environments"][1]
    if not isinstance(environments_node, yaml.SequenceNode) or not environments_node.value:
        raise reader.fail(environments_node, "environments", "expected a list of environments")

    environments: list[Environment] = []
    after_nodes: dict[str, yaml.Node] = {}
    for index, node in enumerate(environments_node.value):
        where = f"environments[{index}]"
        peeked = _peek_name(node)
        entries = reader.mapping(node, f"{where} ({peeked})" if peeked else where, ENVIRONMENT_KEYS)
        for required in ("name", "url"):
            if required not in entries:
                raise reader.fail(node, f"{where}.{required}", "this key is required")
        name_node = entries["name"][1]
        env_name = str(reader.scalar(name_node, f"{where}.name", (str, int), "a name"))
        if not NAME_PATTERN.match(env_name):
            raise reader.fail(
                name_node,
                f"{where}.name",
                "use letters, digits, '.', '_' or '-' (at most 63 characters)",
            )
        if any(existing.name == env_name for existing in environments):
            raise reader.fail(name_node, f"{where}.name", f"'{env_name}' is already defined")
        where = f"environments[{index}] ({env_name})"

        url, reason = _read_url(reader, entries["url"][1], f"{where}.url", environ)
        shadow_url = None
        if "shadow_url" in entries:
            shadow_url, _ = _read_url(
                reader, entries["shadow_url"][1], f"{where}.shadow_url", environ
            )

        after = None
        if "after" in entries:
            after = str(reader.scalar(entries["after"][1], f"{where}.after", (str, int), "a name"))
            after_nodes[env_name] = entries["after"][1]
        protected = (
            reader.scalar(entries["protected"][1], f"{where}.protected", bool, "true or false")
            if "protected" in entries
            else False
        )
        approvals = 1 if protected else 0
        if "approvals" in entries:
            approvals = reader.scalar(
                entries["approvals"][1], f"{where}.approvals", int, "a whole number"
            )
            if approvals < 0:
                raise reader.fail(
                    entries["approvals"][1], f"{where}.approvals", "must be 0 or more"
                )
            if protected and approvals < 1:
                raise reader.fail(
                    entries["approvals"][1],
                    f"{where}.approvals",
                    "a protected environment needs at least 1 approval",
                )
        allow_downgrade = (
            reader.scalar(
                entries["allow_downgrade"][1], f"{where}.allow_downgrade", bool, "true or false"
            )
            if "allow_downgrade" in entries
            else True
        )
        version_table = (
            reader.text(entries["version_table"][1], f"{where}.version_table")
            if "version_table" in entries
            else project_version_table
        )
        version_table_schema = (
            reader.text(entries["version_table_schema"][1], f"{where}.version_table_schema")
            if "version_table_schema" in entries
            else project_schema
        )
        python_path = project_python_path + (
            reader.folders(entries["python_path"][1], f"{where}.python_path")
            if "python_path" in entries
            else ()
        )
        timeouts: dict[str, float | None] = {}
        for key in ("lock_timeout", "statement_timeout"):
            timeouts[key] = None
            if key in entries:
                value = reader.scalar(entries[key][1], f"{where}.{key}", (int, float), "seconds")
                if isinstance(value, bool) or value <= 0:
                    raise reader.fail(entries[key][1], f"{where}.{key}", "expected seconds > 0")
                timeouts[key] = float(value)
        configure_args: tuple[tuple[str, bool], ...] = ()
        if "configure_args" in entries:
            options = reader.mapping(
                entries["configure_args"][1], f"{where}.configure_args", CONFIGURE_ARGS
            )
            configure_args = tuple(
                sorted(
                    (
                        option,
                        reader.scalar(
                            value, f"{where}.configure_args.{option}", bool, "true or false"
                        ),
                    )
                    for option, (_, value) in options.items()
                )
            )
        environments.append(
            Environment(
                name=env_name,
                url=url,
                not_configured_reason=reason,
                after=after,
                protected=protected,
                approvals=approvals,
                allow_downgrade=allow_downgrade,
                shadow_url=shadow_url,
                version_table=version_table,
                version_table_schema=version_table_schema,
                python_path=python_path,
                line=node.start_mark.line + 1,
                configure_args=configure_args,
                **timeouts,
            )
        )

    ordered = _promotion_order(reader, environments, after_nodes)
    return Project(
        name=name,
        source=source,
        script_location=script_location,
        environments=tuple(ordered),
        python_path=project_python_path,
    )


def _peek_name(node: yaml.Node) -> str | None:
    """Return an environment's name early, so messages about its other keys can say it."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if key_node.value == "name" and isinstance(value_node, yaml.ScalarNode):
                return str(value_node.value)
    return None


def _read_url(
    reader: _Reader, node: yaml.Node, key: str, environ: Mapping[str, str]
) -> tuple[URL | None, str | None]:
    raw = reader.text(node, key)
    value, missing = interpolate(raw, environ)
    if value is None:
        names = ", ".join(missing)
        plural = "s" if len(missing) > 1 else ""
        return None, f"environment variable{plural} {names} not set"
    try:
        return resolve_url(value, reader.path.parent), None
    except ArgumentError as error:
        # The value may hold a password: describe it, never echo it.
        raise reader.fail(
            node, key, "is not a database URL (expected dialect+driver://user@host/database)"
        ) from error


def _promotion_order(
    reader: _Reader, environments: list[Environment], after_nodes: dict[str, yaml.Node]
) -> list[Environment]:
    """Order environments so each comes after the one it names; file order breaks ties."""
    by_name = {environment.name: environment for environment in environments}
    for environment in environments:
        if environment.after is None:
            continue
        node = after_nodes[environment.name]
        key = f"environments ({environment.name}).after"
        if environment.after == environment.name:
            raise reader.fail(node, key, "an environment cannot come after itself")
        if environment.after not in by_name:
            close = difflib.get_close_matches(environment.after, list(by_name), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise reader.fail(node, key, f"no environment is named '{environment.after}'{hint}")
    for environment in environments:
        seen = [environment.name]
        current = environment
        while current.after is not None:
            current = by_name[current.after]
            if current.name in seen:
                cycle = " -> ".join([*seen[seen.index(current.name) :], current.name])
                raise reader.fail(
                    after_nodes[environment.name],
                    f"environments ({environment.name}).after",
                    f"promotion order has a cycle: {cycle}",
                )
            seen.append(current.name)

    ordered: list[Environment] = []
    placed: set[str] = set()
    while len(ordered) < len(environments):
        for environment in environments:
            if environment.name not in placed and (
                environment.after is None or environment.after in placed
            ):
                ordered.append(environment)
                placed.add(environment.name)
                break
    return ordered
