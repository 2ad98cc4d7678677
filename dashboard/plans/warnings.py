"""Warnings on a plan, derived from the Alembic operations each script calls (read from its
syntax tree, not from rendered SQL: SQLite batch mode renders DROP TABLE for every rebuild)."""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import sqlparse

DESTRUCTIVE_CALLS = {"drop_table": "drops table", "drop_column": "drops column"}


def _text(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _keyword(call: ast.Call, name: str) -> ast.AST | None:
    return next((keyword.value for keyword in call.keywords if keyword.arg == name), None)


def _argument(call: ast.Call, index: int, name: str) -> str | None:
    if len(call.args) > index:
        return _text(call.args[index])
    return _text(_keyword(call, name))


def _batch_tables(function: ast.FunctionDef) -> dict[str, str]:
    """Map `with op.batch_alter_table('t') as batch_op` aliases to their table names."""
    tables = {}
    for node in ast.walk(function):
        if isinstance(node, ast.With | ast.AsyncWith):
            for item in node.items:
                call = item.context_expr
                if (
                    isinstance(call, ast.Call)
                    and isinstance(call.func, ast.Attribute)
                    and call.func.attr == "batch_alter_table"
                    and isinstance(item.optional_vars, ast.Name)
                ):
                    tables[item.optional_vars.id] = _argument(call, 0, "table_name") or "?"
    return tables


def sql_warnings(statement: str) -> list[str]:
    """Warn about destructive SQL in a raw statement (parsed with sqlparse)."""
    found = []
    for parsed in sqlparse.parse(statement):
        kind = parsed.get_type()
        words = [token.normalized for token in parsed.flatten() if token.is_keyword]
        if "TRUNCATE" in words:
            found.append("truncates a table")
        elif kind == "DELETE" and "WHERE" not in words:
            found.append("deletes every row of a table (DELETE without WHERE)")
        elif kind == "DROP":
            found.append("drops a database object")
    return found


def script_warnings(*, path: Path, direction: str, dialect: str | None) -> list[str]:
    """Return what is risky in the upgrade() (or downgrade()) of one migration script."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError) as error:
        return [f"cannot be checked for destructive operations: {error}"]
    function = next(
        (
            node
            for node in tree.body
            if isinstance(node, ast.FunctionDef) and node.name == direction
        ),
        None,
    )
    if function is None:
        return []
    batch = _batch_tables(function)
    found: list[str] = []
    for node in ast.walk(function):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        operation = node.func.attr
        owner = node.func.value.id if isinstance(node.func.value, ast.Name) else ""
        in_batch = owner in batch
        if operation == "drop_table":
            found.append(f"destructive: drops table {_argument(node, 0, 'table_name') or '?'}")
        elif operation == "drop_column":
            if in_batch:
                table, column = batch[owner], _argument(node, 0, "column_name")
            else:
                table, column = _argument(node, 0, "table_name"), _argument(node, 1, "column_name")
            found.append(f"destructive: drops column {table or '?'}.{column or '?'} and its data")
        elif operation == "alter_column" and _keyword(node, "type_") is not None:
            if in_batch:
                table, column = batch[owner], _argument(node, 0, "column_name")
            else:
                table, column = _argument(node, 0, "table_name"), _argument(node, 1, "column_name")
            found.append(
                f"destructive: changes the type of {table or '?'}.{column or '?'}, "
                "which can lose data"
            )
        elif operation == "execute":
            statement = _argument(node, 0, "sqltext")
            if statement:
                found.extend(f"destructive: {warning}" for warning in sql_warnings(statement))
        elif operation == "create_index" and dialect in ("postgresql", "mysql", "mariadb"):
            concurrently = _keyword(node, "postgresql_concurrently")
            if dialect == "postgresql" and concurrently is not None:
                continue
            table = batch[owner] if in_batch else _argument(node, 1, "table_name")
            found.append(f"locks table {table or '?'} while the index is built")
    return found


def plan_warnings(
    *, steps: Iterable[tuple[str, Path]], direction: str, dialect: str | None, heads: int
) -> list[str]:
    """Return the warnings of a whole plan: per step, then for the plan."""
    warnings = []
    any_step = False
    for revision_id, path in steps:
        any_step = True
        for warning in script_warnings(path=path, direction=direction, dialect=dialect):
            warnings.append(f"{revision_id[:12]}: {warning}")
    if any_step and dialect in ("mysql", "mariadb"):
        warnings.append(
            "MySQL/MariaDB DDL is not transactional: a failure midway leaves the database "
            "half-applied"
        )
    if heads > 1:
        warnings.append(f"the script directory has {heads} heads: merge them")
    return warnings
