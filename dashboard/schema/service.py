"""Schemas: reflect a database, build one at a revision, compare two, detect drift.

What is compared, per table (in the default schema; the version table is ignored):
columns (name, type, nullability, server default), primary key columns, unique constraints,
foreign keys (columns, referred table and columns, ON DELETE / ON UPDATE), indexes
(name, columns, uniqueness) and check constraints (their expression). An added or dropped
table is one change that lists all of these as its parts.

Normalised so that the same migrations on the same dialect compare equal:
- a type is `str(type.compile(dialect))`, upper-cased;
- a default loses outer parentheses, `::type` casts (PostgreSQL), outer quotes of a literal
  and case differences of CURRENT_TIMESTAMP-style keywords;
- constraint names are not compared for primary keys, unique constraints, foreign keys and
  check constraints (databases generate them differently); these are keyed by their columns
  (a check constraint by its expression, whitespace and outer parentheses aside);
- indexes that only back a unique constraint are not listed as indexes, nor (MySQL/MariaDB)
  the index InnoDB creates by itself for a foreign key and drops when another index serves;
- MariaDB's own `json_valid(col)` check behind a JSON column is not listed as a check.

Out of scope (never reported, so no drift there is seen): views and materialized views,
triggers, sequences (beyond a column default naming one), comments,
grants and ownership, partitioning, tablespaces, collations and other server-specific
options (storage engine, charset, row format), and any schema other than the default one.

Drift compares the live database (after) with a scratch database built at the revisions it
records (before): "added" means present in the live database but not in its migrations.
When no scratch database can be built, drift says "unavailable" and why — never a guess.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL

from dashboard.environments.loader import Environment, Project
from dashboard.errors import (
    DashboardError,
    EnvironmentNotConfigured,
    EnvironmentUnreachable,
    MigrationFailed,
)
from dashboard.progress import Progress
from dashboard.schema.scratch import scratch_database
from dashboard.target import adapter as alembic_adapter
from dashboard.target.engines import target_engine
from dashboard.target.runner import CHUNK_STEPS, upgrade_in_chunks

REFLECT_TIMEOUT = 5.0
KINDS = ("table", "column", "primary_key", "unique", "foreign_key", "index", "check")


# --- the model --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    nullable: bool
    default: str | None

    def describe(self) -> str:
        text = f"{self.type} {'NULL' if self.nullable else 'NOT NULL'}"
        return f"{text} DEFAULT {self.default}" if self.default is not None else text


@dataclass(frozen=True)
class Index:
    name: str
    columns: tuple[str, ...]
    unique: bool

    def describe(self) -> str:
        return f"{'UNIQUE ' if self.unique else ''}({', '.join(self.columns)})"


@dataclass(frozen=True)
class ForeignKey:
    name: str | None
    columns: tuple[str, ...]
    referred_table: str
    referred_columns: tuple[str, ...]
    ondelete: str | None = None
    onupdate: str | None = None

    @property
    def key(self) -> tuple[Any, ...]:
        return (self.columns, self.referred_table, self.referred_columns)

    def describe(self) -> str:
        text = (
            f"({', '.join(self.columns)}) REFERENCES "
            f"{self.referred_table} ({', '.join(self.referred_columns)})"
        )
        if self.ondelete:
            text += f" ON DELETE {self.ondelete}"
        if self.onupdate:
            text += f" ON UPDATE {self.onupdate}"
        return text


@dataclass(frozen=True)
class CheckConstraint:
    name: str | None
    sqltext: str

    def describe(self) -> str:
        return f"{self.name}: CHECK ({self.sqltext})" if self.name else f"CHECK ({self.sqltext})"


@dataclass(frozen=True)
class Table:
    name: str
    columns: dict[str, Column]
    primary_key: tuple[str, ...]
    unique_constraints: frozenset[tuple[str, ...]]
    foreign_keys: tuple[ForeignKey, ...]
    indexes: dict[str, Index]
    check_constraints: tuple[CheckConstraint, ...] = ()

    def parts(self) -> tuple[tuple[str, str], ...]:
        """Everything the table has as (kind, description) pairs: columns, keys, indexes, checks."""
        return (
            *(("column", f"{c.name} {c.describe()}") for c in self.columns.values()),
            *((("primary key", f"({', '.join(self.primary_key)})"),) if self.primary_key else ()),
            *(("foreign key", fk.describe()) for fk in self.foreign_keys),
            *(("unique", f"({', '.join(columns)})") for columns in sorted(self.unique_constraints)),
            *(("index", f"{i.name} {i.describe()}") for i in self.indexes.values()),
            *(("check", check.describe()) for check in self.check_constraints),
        )

    def describe(self) -> str:
        return "; ".join(f"{kind} {text}" for kind, text in self.parts())


@dataclass(frozen=True)
class Schema:
    """The comparable shape of one database."""

    dialect: str
    tables: dict[str, Table] = field(default_factory=dict)


@dataclass(frozen=True)
class Change:
    kind: str  # table | column | primary_key | unique | foreign_key | index | check
    action: str  # added | dropped | altered
    table: str
    name: str
    detail: str
    # An added or dropped table's columns, keys, indexes and checks: (kind, description) pairs.
    parts: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        # Stored as JSON (a task's result, a drift report), the pairs come back as lists.
        object.__setattr__(self, "parts", tuple((kind, text) for kind, text in self.parts))

    @property
    def where(self) -> str:
        """What changed, for a line of text: `table`, or `table.name` for what is in a table."""
        return f"{self.table}.{self.name}" if self.name and self.kind != "table" else self.table

    def text_lines(self) -> list[str]:
        """The change as lines of text (a table's parts indented below it)."""
        kind = self.kind.replace("_", " ")
        detail = f" — {self.detail}" if self.detail and not self.parts else ""
        lines = [f"{self.action:<8} {kind:<12} {self.where}{detail}"]
        return lines + [f"    {part_kind:<12} {text}" for part_kind, text in self.parts]


@dataclass(frozen=True)
class SchemaDiff:
    changes: tuple[Change, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not self.changes

    def text_lines(self) -> list[str]:
        """The diff as lines of text, as the CLI prints it."""
        if self.is_empty:
            return ["(no schema changes)"]
        return [line for change in self.changes for line in change.text_lines()]

    def as_dict(self) -> dict[str, Any]:
        return {
            "is_empty": self.is_empty,
            "changes": [dataclasses.asdict(change) for change in self.changes],
        }


@dataclass(frozen=True)
class DriftReport:
    environment: str
    status: str  # none | drift | unavailable
    differences: SchemaDiff | None
    reason: str | None
    checked_at: datetime
    revisions: tuple[str, ...] = ()
    # Where the environment was read to be after this check, when that differs from `revisions`:
    # the report then describes a schema the database no longer has (see drift.service).
    moved_to: tuple[str, ...] | None = None

    @property
    def outdated(self) -> bool:
        """Whether the environment moved to other revisions since this check."""
        return self.moved_to is not None

    def as_dict(self) -> dict[str, Any]:
        return {
            "environment": self.environment,
            "status": self.status,
            "differences": self.differences.as_dict() if self.differences else None,
            "reason": self.reason,
            "checked_at": self.checked_at.isoformat(),
            "revisions": list(self.revisions),
            "outdated": self.outdated,
            "moved_to": None if self.moved_to is None else list(self.moved_to),
        }


# --- reflecting -------------------------------------------------------------------------------

_CAST = re.compile(r"::[A-Za-z_][\w ]*(\[\])?(\(\d+(,\s*\d+)?\))?")
_KEYWORDS = re.compile(
    r"\b(current_timestamp|current_date|current_time|localtimestamp|now)\b(\(\))?", re.I
)


def normalise_default(value: Any) -> str | None:
    """Turn a reflected server default into comparable text (see the module docstring)."""
    if value is None:
        return None
    text = str(value).strip()
    if text.upper() == "NULL":
        return None
    text = _CAST.sub("", text)
    while text.startswith("(") and text.endswith(")") and _balanced(text[1:-1]):
        text = text[1:-1].strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"" and text[0] not in text[1:-1]:
        text = text[1:-1]
    return _KEYWORDS.sub(lambda match: match.group(1).upper(), text)


def _balanced(text: str) -> bool:
    depth = 0
    for character in text:
        depth += {"(": 1, ")": -1}.get(character, 0)
        if depth < 0:
            return False
    return depth == 0


def _type_text(column_type: Any, dialect: sa.Dialect) -> str:
    try:
        return str(column_type.compile(dialect=dialect)).upper()
    except sa.exc.CompileError:
        return str(column_type).upper()


def _engine(url: URL) -> sa.Engine:
    if url.get_backend_name() == "sqlite":
        database = url.database or ""
        if database and database != ":memory:" and not Path(database).exists():
            raise EnvironmentUnreachable(f"the SQLite database file {database} does not exist")
    return target_engine(url, timeout=REFLECT_TIMEOUT)


def reflect_schema(*, url: URL, version_table: str = "alembic_version") -> Schema:
    """Read the tables of the database at `url` (default schema) into a comparable Schema."""
    engine = _engine(url)
    try:
        with engine.connect() as connection:
            inspector = sa.inspect(connection)
            dialect = connection.dialect
            names = [name for name in sorted(inspector.get_table_names()) if name != version_table]
            found = _read_tables(inspector, names)
            if names:
                found["checks"] = _read_checks(connection, inspector, names)
            tables = {
                name: _reflect_table(
                    dialect, name, {kind: found[kind][(None, name)] for kind in found}
                )
                for name in names
            }
            return Schema(dialect=dialect.name, tables=tables)
    except sa.exc.SQLAlchemyError as error:
        raise EnvironmentUnreachable(
            "cannot read the schema: " + alembic_adapter.describe_database_error(error, url)
        ) from error
    finally:
        engine.dispose()


def _read_tables(inspector: sa.Inspector, names: list[str]) -> dict[str, dict[Any, Any]]:
    """Read what every table has, one query per kind where the dialect can (not per table)."""
    if not names:
        return {}
    found = {
        "columns": inspector.get_multi_columns(filter_names=names),
        "primary_key": inspector.get_multi_pk_constraint(filter_names=names),
        "uniques": inspector.get_multi_unique_constraints(filter_names=names),
        "foreign_keys": inspector.get_multi_foreign_keys(filter_names=names),
        "indexes": inspector.get_multi_indexes(filter_names=names),
    }
    empty: dict[str, Any] = {"primary_key": {}}
    for kind, per_table in found.items():
        for name in names:
            per_table.setdefault((None, name), empty.get(kind, []))
    return found


def _read_checks(
    connection: sa.Connection, inspector: sa.Inspector, names: list[str]
) -> dict[Any, list[dict[str, Any]]]:
    """Read every table's check constraints as {(None, table): [{name, sqltext}]}.

    MariaDB keeps a check written on a column beside the column, where SQLAlchemy's reflection
    does not look: its information_schema lists both kinds. The `json_valid(col)` check MariaDB
    puts behind a JSON column belongs to the type, not to the migrations, and is left out.
    """
    if not getattr(connection.dialect, "is_mariadb", False):
        found = inspector.get_multi_check_constraints(filter_names=names)
        return {(None, name): found.get((None, name), []) for name in names}
    rows = connection.execute(
        sa.text(
            "SELECT TABLE_NAME, CONSTRAINT_NAME, CHECK_CLAUSE, LEVEL "
            "FROM information_schema.CHECK_CONSTRAINTS WHERE CONSTRAINT_SCHEMA = DATABASE()"
        )
    ).all()
    checks: dict[Any, list[dict[str, Any]]] = {(None, name): [] for name in names}
    for table, name, clause, level in rows:
        if (None, table) not in checks:
            continue
        if level == "Column" and clause.replace("`", "") == f"json_valid({name})":
            continue
        checks[(None, table)].append({"name": name, "sqltext": clause})
    return checks


def normalise_check(sqltext: str) -> str:
    """Turn a reflected check expression into comparable text: one space, no outer parentheses."""
    text = " ".join(str(sqltext).split())
    while text.startswith("(") and text.endswith(")") and _balanced(text[1:-1]):
        text = text[1:-1].strip()
    return text


def _reflect_table(dialect: sa.Dialect, name: str, found: dict[str, Any]) -> Table:
    columns = {
        column["name"]: Column(
            name=column["name"],
            type=_type_text(column["type"], dialect),
            nullable=bool(column.get("nullable", True)),
            default=normalise_default(column.get("default")),
        )
        for column in found["columns"]
    }
    primary_key = tuple((found["primary_key"] or {}).get("constrained_columns") or ())
    uniques = frozenset(tuple(unique["column_names"]) for unique in found["uniques"])
    foreign_keys = tuple(
        sorted(
            (
                ForeignKey(
                    name=fk.get("name"),
                    columns=tuple(fk["constrained_columns"]),
                    referred_table=fk["referred_table"],
                    referred_columns=tuple(fk["referred_columns"]),
                    ondelete=_fk_option(fk, "ondelete"),
                    onupdate=_fk_option(fk, "onupdate"),
                )
                for fk in found["foreign_keys"]
            ),
            key=lambda fk: fk.key,
        )
    )
    indexes = {}
    for index in found["indexes"]:
        if index.get("duplicates_constraint") or not index.get("name"):
            continue
        index_columns = tuple(
            column if column is not None else str(expression)
            for column, expression in zip(
                index.get("column_names") or (),
                index.get("expressions") or [None] * len(index.get("column_names") or ()),
                strict=False,
            )
        )
        indexes[index["name"]] = Index(
            name=index["name"], columns=index_columns, unique=bool(index.get("unique"))
        )
    # Databases that back a unique constraint with an index report both; keep the constraint.
    indexes = {
        key: index
        for key, index in indexes.items()
        if not (index.unique and index.columns in uniques)
    }
    if dialect.name in ("mysql", "mariadb"):
        # InnoDB creates an index for a foreign key that has none, named after the constraint
        # (or its first column), and drops it by itself when another index can serve.
        implicit = {(fk.columns, name) for fk in foreign_keys for name in (fk.name, fk.columns[0])}
        indexes = {
            key: index
            for key, index in indexes.items()
            if index.unique or (index.columns, index.name) not in implicit
        }
    checks = {
        normalise_check(check["sqltext"]): CheckConstraint(
            name=check.get("name"), sqltext=normalise_check(check["sqltext"])
        )
        for check in found.get("checks", ())
    }
    return Table(
        name=name,
        columns=columns,
        primary_key=primary_key,
        unique_constraints=uniques,
        foreign_keys=foreign_keys,
        indexes=dict(sorted(indexes.items())),
        check_constraints=tuple(checks[text] for text in sorted(checks)),
    )


def _fk_option(fk: dict[str, Any], option: str) -> str | None:
    value = (fk.get("options") or {}).get(option)
    if value is None:
        return None
    value = str(value).upper()
    return None if value in ("NO ACTION", "RESTRICT") else value


# --- comparing --------------------------------------------------------------------------------


def compare(before: Schema, after: Schema) -> SchemaDiff:
    """List what changes from `before` to `after`: added, dropped or altered."""
    changes: list[Change] = []
    for name in sorted(set(before.tables) | set(after.tables)):
        old, new = before.tables.get(name), after.tables.get(name)
        if old is None and new is not None:
            changes.append(Change("table", "added", name, name, new.describe(), new.parts()))
        elif new is None and old is not None:
            changes.append(Change("table", "dropped", name, name, old.describe(), old.parts()))
        elif old is not None and new is not None:
            changes.extend(_compare_tables(old, new))
    order = {kind: index for index, kind in enumerate(KINDS)}
    changes.sort(key=lambda change: (change.table, order[change.kind], change.name, change.action))
    return SchemaDiff(tuple(changes))


def _compare_tables(old: Table, new: Table) -> Iterator[Change]:
    table = new.name
    for name in [*old.columns, *(c for c in new.columns if c not in old.columns)]:
        before, after = old.columns.get(name), new.columns.get(name)
        if before is None and after is not None:
            yield Change("column", "added", table, name, after.describe())
        elif after is None and before is not None:
            yield Change("column", "dropped", table, name, before.describe())
        elif before is not None and after is not None and before != after:
            yield Change("column", "altered", table, name, _column_changes(before, after))

    if old.primary_key != new.primary_key:
        if not old.primary_key:
            yield Change("primary_key", "added", table, "", f"({', '.join(new.primary_key)})")
        elif not new.primary_key:
            yield Change("primary_key", "dropped", table, "", f"({', '.join(old.primary_key)})")
        else:
            detail = f"({', '.join(old.primary_key)}) → ({', '.join(new.primary_key)})"
            yield Change("primary_key", "altered", table, "", detail)

    for columns in sorted(old.unique_constraints | new.unique_constraints):
        label = ", ".join(columns)
        if columns not in old.unique_constraints:
            yield Change("unique", "added", table, label, f"UNIQUE ({label})")
        elif columns not in new.unique_constraints:
            yield Change("unique", "dropped", table, label, f"UNIQUE ({label})")

    old_fks = {fk.key: fk for fk in old.foreign_keys}
    new_fks = {fk.key: fk for fk in new.foreign_keys}
    for key in sorted(set(old_fks) | set(new_fks)):
        before_fk, after_fk = old_fks.get(key), new_fks.get(key)
        label = ", ".join(key[0])
        if before_fk is None and after_fk is not None:
            yield Change("foreign_key", "added", table, label, after_fk.describe())
        elif after_fk is None and before_fk is not None:
            yield Change("foreign_key", "dropped", table, label, before_fk.describe())
        elif before_fk is not None and after_fk is not None:
            if (before_fk.ondelete, before_fk.onupdate) != (after_fk.ondelete, after_fk.onupdate):
                detail = f"{before_fk.describe()} → {after_fk.describe()}"
                yield Change("foreign_key", "altered", table, label, detail)

    for name in sorted(set(old.indexes) | set(new.indexes)):
        before_index, after_index = old.indexes.get(name), new.indexes.get(name)
        if before_index is None and after_index is not None:
            yield Change("index", "added", table, name, after_index.describe())
        elif after_index is None and before_index is not None:
            yield Change("index", "dropped", table, name, before_index.describe())
        elif before_index != after_index:
            assert before_index is not None and after_index is not None
            detail = f"{before_index.describe()} → {after_index.describe()}"
            yield Change("index", "altered", table, name, detail)

    old_checks = {check.sqltext: check for check in old.check_constraints}
    new_checks = {check.sqltext: check for check in new.check_constraints}
    for text in sorted(set(old_checks) | set(new_checks)):
        if text not in old_checks:
            check = new_checks[text]
            yield Change("check", "added", table, check.name or "", f"CHECK ({text})")
        elif text not in new_checks:
            check = old_checks[text]
            yield Change("check", "dropped", table, check.name or "", f"CHECK ({text})")


def _column_changes(before: Column, after: Column) -> str:
    parts = []
    if before.type != after.type:
        parts.append(f"type {before.type} → {after.type}")
    if before.nullable != after.nullable:
        was, now = ("NULL" if x else "NOT NULL" for x in (before.nullable, after.nullable))
        parts.append(f"{was} → {now}")
    if before.default != after.default:
        parts.append(f"default {before.default or 'none'} → {after.default or 'none'}")
    return "; ".join(parts)


# --- building schemas at a revision -----------------------------------------------------------

BUILDING = "building the scratch database"


def _targets(revision: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    if isinstance(revision, str):
        return () if revision in ("", "base") else (revision,)
    return tuple(rev for rev in revision if rev not in ("", "base"))


def build_steps(
    *, project: Project, environment: Environment, revision: str | tuple[str, ...]
) -> int:
    """Count the steps a scratch database runs to reach `revision` from empty."""
    database = project.database(environment)
    graph = alembic_adapter.load_graph(
        database.script_location, database.python_path, database.alembic_ini
    )
    try:
        targets = alembic_adapter.revision_ids(database, _targets(revision))
    except DashboardError as error:
        raise MigrationFailed(f"{BUILDING} failed: {error}") from error
    return len(graph.ancestors(targets))


@contextmanager
def materialize(
    *,
    environment: Environment,
    project: Project,
    revision: str | tuple[str, ...],
    chunk_steps: int = CHUNK_STEPS,
    progress: Progress | None = None,
) -> Iterator[URL]:
    """Yield the URL of a scratch database upgraded to `revision` ("base" or () = empty).

    It is built `chunk_steps` revisions per upgrade command, each command in its own child;
    `progress` hears "building the scratch database: step i of N" as each step begins.
    """
    with scratch_database(environment=environment) as url:
        _Build(project, environment, chunk_steps, progress).upgrade(url, _targets(revision))
        yield url


@dataclass
class _Build:
    """Scratch databases of one environment built up to revisions, the steps counted across all
    of them (so that `progress` hears "step i of N" of the whole build)."""

    project: Project
    environment: Environment
    chunk_steps: int
    progress: Progress | None
    total: int | None = None
    done: int = 0

    def upgrade(self, url: URL, targets: tuple[str, ...]) -> None:
        """Upgrade the scratch database at `url` to `targets`."""
        scratch = dataclasses.replace(self.project.database(self.environment), url=url)
        self.done += upgrade_in_chunks(
            scratch,
            targets=targets,
            what=BUILDING,
            chunk_steps=self.chunk_steps,
            progress=self.progress,
            steps_done=self.done,
            steps_total=self.total,
        )

    def read_at(self, ends: tuple[tuple[str, ...], ...]) -> list[Schema]:
        """Build one scratch database to each end in turn, reading its schema at each."""
        schemas = []
        with scratch_database(environment=self.environment) as url:
            for end in ends:
                self.upgrade(url, end)
                schemas.append(
                    reflect_schema(url=url, version_table=self.environment.version_table)
                )
        return schemas


def diff_revisions(
    *,
    project: Project,
    environment: Environment,
    from_revision: str | tuple[str, ...],
    to_revision: str | tuple[str, ...],
    chunk_steps: int = CHUNK_STEPS,
    progress: Progress | None = None,
) -> SchemaDiff:
    """What the schema gains and loses between two revisions, on `environment`'s dialect.

    When one end lies below the other (an upgrade or a downgrade), one scratch database is
    built to the lower end, read, upgraded on to the higher end and read again; ends on
    different branches get a scratch database each.
    """
    database = project.database(environment)
    graph = alembic_adapter.load_graph(
        database.script_location, database.python_path, database.alembic_ini
    )
    try:
        ends = [
            alembic_adapter.revision_ids(database, _targets(revision))
            for revision in (from_revision, to_revision)
        ]
    except DashboardError as error:
        raise MigrationFailed(f"{BUILDING} failed: {error}") from error
    below = [graph.ancestors(end) for end in ends]
    if below[0] == below[1]:
        return SchemaDiff()  # the same revisions: the same schema
    if below[0] <= below[1] or below[1] <= below[0]:
        lower = 0 if below[0] <= below[1] else 1
        build = _Build(project, environment, chunk_steps, progress, total=len(below[1 - lower]))
        schemas = build.read_at((ends[lower], ends[1 - lower]))
        before, after = schemas if lower == 0 else schemas[::-1]
        return compare(before, after)
    build = _Build(project, environment, chunk_steps, progress, total=len(below[0]) + len(below[1]))
    before, after = (build.read_at((end,))[0] for end in ends)
    return compare(before, after)


def _live_schema(environment: Environment) -> Schema:
    if environment.url is None:
        raise EnvironmentNotConfigured(
            f"{environment.name} is not configured: {environment.not_configured_reason}"
        )
    return reflect_schema(url=environment.url, version_table=environment.version_table)


def drift(
    *,
    project: Project,
    environment: Environment,
    chunk_steps: int = CHUNK_STEPS,
    progress: Progress | None = None,
) -> DriftReport:
    """Compare a live database with what its recorded revisions say it should be."""

    def report(status: str, **kwargs: Any) -> DriftReport:
        return DriftReport(
            environment=environment.name,
            status=status,
            differences=kwargs.get("differences"),
            reason=kwargs.get("reason"),
            checked_at=datetime.now(UTC),
            revisions=kwargs.get("revisions", ()),
        )

    revisions: tuple[str, ...] = ()
    try:
        revisions = alembic_adapter.read_current_revisions(project.database(environment))
        graph = alembic_adapter.load_graph(
            project.script_location, environment.python_path, environment.alembic_ini
        )
        unknown = [revision for revision in revisions if revision not in graph]
        if unknown:
            return report(
                "unavailable",
                reason=f"the database is at {', '.join(unknown)}, which the script directory "
                "does not contain: its expected schema is unknown",
                revisions=revisions,
            )
        with materialize(
            environment=environment,
            project=project,
            revision=revisions,
            chunk_steps=chunk_steps,
            progress=progress,
        ) as url:
            expected = reflect_schema(url=url, version_table=environment.version_table)
        live = _live_schema(environment)
    except DashboardError as error:
        return report("unavailable", reason=str(error), revisions=revisions)
    differences = compare(expected, live)
    return report(
        "none" if differences.is_empty else "drift",
        differences=differences,
        revisions=revisions,
    )


def compare_live(*, env_a: Environment, env_b: Environment) -> SchemaDiff:
    """What differs from env_a's live schema to env_b's ("added" = only in env_b)."""
    return compare(_live_schema(env_a), _live_schema(env_b))
