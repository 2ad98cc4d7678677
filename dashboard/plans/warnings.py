"""Warnings on a plan, derived from the Alembic operations each script calls (read from its
syntax tree, not from rendered SQL: SQLite batch mode renders DROP TABLE for every rebuild)."""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterable
from pathlib import Path

import sqlparse

from dashboard.environments.loader import Environment
from dashboard.plans.lint import ERROR, INFO, WARNING, Finding, lint_steps

# Our own rules: what each finding of this module means, and how to avoid it.
DROP_TABLE = "drop-table"
DROP_COLUMN = "drop-column"
CHANGE_TYPE = "change-column-type"
TRUNCATE = "truncate"
DELETE_ALL = "delete-without-where"
DROP_OBJECT = "drop-object"
INDEX_LOCK = "index-locks-table"
NOT_CHECKED = "not-checked"
NOT_LINTED = "not-linted"
NON_TRANSACTIONAL = "non-transactional-ddl"
MULTIPLE_HEADS = "multiple-heads"
RULES: dict[str, tuple[str, str | None]] = {
    DROP_TABLE: (ERROR, "stop using the table and back it up, then drop it in a later release"),
    DROP_COLUMN: (
        ERROR,
        "stop reading the column in the app first, then drop it in a later release",
    ),
    CHANGE_TYPE: (
        ERROR,
        "add a column of the new type, backfill it, move readers over, then drop the old one",
    ),
    TRUNCATE: (ERROR, "back the rows up first, or delete only the rows meant (DELETE … WHERE)"),
    DELETE_ALL: (ERROR, "add a WHERE clause, or back the rows up first"),
    DROP_OBJECT: (WARNING, "check nothing still uses it"),
    INDEX_LOCK: (
        WARNING,
        "CREATE INDEX CONCURRENTLY: op.create_index(..., postgresql_concurrently=True) "
        "inside op.get_context().autocommit_block()",
    ),
    NOT_CHECKED: (WARNING, "fix the script so that it parses"),
    NOT_LINTED: (INFO, "rehearse the plan to see (and read) the statements it runs"),
    NON_TRANSACTIONAL: (
        WARNING,
        "keep one DDL change per revision, so a failure leaves a revision wholly applied or not",
    ),
    MULTIPLE_HEADS: (WARNING, "flask db merge heads"),
}
# squawk's rules that say what one of ours says (ours names the table and column).
SQUAWK_TWINS = {
    "ban-drop-table": DROP_TABLE,
    "ban-drop-column": DROP_COLUMN,
    "changing-column-type": CHANGE_TYPE,
    "require-concurrent-index-creation": INDEX_LOCK,
}
# squawk's rules about the environment's settings, said once per plan.
ENVIRONMENT_RULES = {
    "require-lock-timeout": "statements take locks with no lock_timeout set",
    "require-statement-timeout": "statements may run long with no statement_timeout set",
}


# MySQL/MariaDB build most indexes online, but only ask for it to be sure of it.
MYSQL_INDEX_FIX = (
    "CREATE INDEX … ALGORITHM=INPLACE, LOCK=NONE (through op.execute), "
    "which the server refuses rather than lock the table"
)


def finding(rule: str, reason: str, fix: str | None = None) -> Finding:
    """A finding of one of our own rules (RULES), with the rule's fix unless given another."""
    severity, default_fix = RULES[rule]
    return Finding(reason, rule=rule, severity=severity, fix=fix or default_fix)


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


def sql_warnings(statement: str) -> list[Finding]:
    """Warn about destructive SQL in a raw statement (parsed with sqlparse)."""
    found = []
    for parsed in sqlparse.parse(statement):
        kind = parsed.get_type()
        words = [token.normalized for token in parsed.flatten() if token.is_keyword]
        if "TRUNCATE" in words:
            found.append(finding(TRUNCATE, "truncates a table"))
        elif kind == "DELETE" and "WHERE" not in words:
            found.append(finding(DELETE_ALL, "deletes every row of a table (DELETE without WHERE)"))
        elif kind == "DROP" and "TABLE" in words[:3]:
            found.append(finding(DROP_TABLE, "drops a table"))
        elif kind == "DROP":
            found.append(finding(DROP_OBJECT, "drops a database object"))
    return found


def _created_tables(function: ast.FunctionDef) -> set[str]:
    """Tables that `op.create_table('t', …)` creates in this function."""
    return {
        name
        for node in ast.walk(function)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "create_table"
        and (name := _argument(node, 0, "table_name"))
    }


def script_warnings(*, path: Path, direction: str, dialect: str | None) -> list[Finding]:
    """Return what is risky in the upgrade() (or downgrade()) of one migration script."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError) as error:
        return [finding(NOT_CHECKED, f"cannot be checked for destructive operations: {error}")]
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
    # An index on a table this step creates locks nothing anyone else uses yet.
    created = _created_tables(function)
    found: list[Finding] = []
    for node in ast.walk(function):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        operation = node.func.attr
        owner = node.func.value.id if isinstance(node.func.value, ast.Name) else ""
        in_batch = owner in batch
        if operation == "drop_table":
            table = _argument(node, 0, "table_name") or "?"
            found.append(finding(DROP_TABLE, f"destructive: drops table {table}"))
        elif operation == "drop_column":
            if in_batch:
                table, column = batch[owner], _argument(node, 0, "column_name")
            else:
                table, column = _argument(node, 0, "table_name"), _argument(node, 1, "column_name")
            found.append(
                finding(
                    DROP_COLUMN,
                    f"destructive: drops column {table or '?'}.{column or '?'} and its data",
                )
            )
        elif operation == "alter_column" and _keyword(node, "type_") is not None:
            if in_batch:
                table, column = batch[owner], _argument(node, 0, "column_name")
            else:
                table, column = _argument(node, 0, "table_name"), _argument(node, 1, "column_name")
            found.append(
                finding(
                    CHANGE_TYPE,
                    f"destructive: changes the type of {table or '?'}.{column or '?'}, "
                    "which can lose data",
                )
            )
        elif operation == "execute":
            statement = _argument(node, 0, "sqltext")
            if statement:
                found.extend(
                    finding(warning.rule, f"destructive: {warning}")
                    for warning in sql_warnings(statement)
                )
        elif operation == "create_index" and dialect in ("postgresql", "mysql", "mariadb"):
            concurrently = _keyword(node, "postgresql_concurrently")
            if dialect == "postgresql" and concurrently is not None:
                continue
            table = batch[owner] if in_batch else _argument(node, 1, "table_name")
            if table in created:
                continue
            found.append(
                finding(
                    INDEX_LOCK,
                    f"locks table {table or '?'} while the index is built",
                    fix=None if dialect == "postgresql" else MYSQL_INDEX_FIX,
                )
            )
    return found


def plan_warnings(
    *,
    steps: Iterable[tuple[str, Path] | tuple[str, Path, str | None]],
    direction: str,
    dialect: str | None,
    heads: int,
    environment: Environment | None = None,
    transactions: str | None = None,
) -> list[Finding]:
    """Return the findings of a whole plan: per step (ours and squawk's), then for the plan.

    Steps given with their rendered SQL are linted by squawk on PostgreSQL. Our operation-based
    rules stay for every step: they name the table and column, and they see what squawk cannot
    (steps that cannot render offline, SQLite batch mode, MySQL, raw DELETE/TRUNCATE). A squawk
    finding that says what one of ours already says for the step (SQUAWK_TWINS) is left out.
    """
    steps = [(step[0], step[1], step[2] if len(step) > 2 else None) for step in steps]
    # A steps-only plan (rendered=False, the CLI's) has no SQL at all: nothing to say per step.
    rendered = any(sql is not None for _, _, sql in steps)
    by_step, whole_plan = _squawk_findings(steps, dialect, environment, transactions)
    warnings: list[Finding] = []
    for revision_id, path, sql in steps:
        ours = script_warnings(path=path, direction=direction, dialect=dialect)
        if dialect == "postgresql" and sql is None and rendered:
            ours.append(
                finding(NOT_LINTED, "cannot render offline, so squawk did not read its SQL")
            )
        merged = _merge(ours, by_step.get(revision_id, []))
        warnings.extend(warning.for_step(revision_id) for warning in merged)
    warnings.extend(warning.for_step(None) for warning in whole_plan)
    if steps and dialect in ("mysql", "mariadb"):
        warnings.append(
            finding(
                NON_TRANSACTIONAL,
                "MySQL/MariaDB DDL is not transactional: a failure midway leaves the database "
                "half-applied",
            ).for_step(None)
        )
    if heads > 1:
        warnings.append(
            finding(MULTIPLE_HEADS, f"the script directory has {heads} heads: merge them").for_step(
                None
            )
        )
    return warnings


def _squawk_findings(
    steps: list[tuple[str, Path, str | None]],
    dialect: str | None,
    environment: Environment | None,
    transactions: str | None,
) -> tuple[dict[str, list[Finding]], list[Finding]]:
    """squawk's findings per revision id, and those about the whole plan.

    A missing timeout is said once for the plan (it is set per environment), naming the steps.
    """
    rendered = [(revision_id, sql) for revision_id, _, sql in steps if sql and sql.strip()]
    if dialect != "postgresql" or not rendered:
        return {}, []
    exclude = []
    # The runner sets the environment's timeouts before the first statement.
    if environment is not None and environment.lock_timeout:
        exclude.append("require-lock-timeout")
    if environment is not None and environment.statement_timeout:
        exclude.append("require-statement-timeout")
    found = lint_steps(
        rendered,
        in_transaction=transactions != "none",
        version_table=environment.version_table if environment else "alembic_version",
        exclude=exclude,
    )
    by_step: dict[str, list[Finding]] = {}
    whole_plan: list[Finding] = [warning for warning in found if warning.step is None]
    per_environment: dict[str, list[Finding]] = {}
    for warning in found:
        if warning.step is None:
            continue
        if warning.rule in ENVIRONMENT_RULES:
            per_environment.setdefault(warning.rule, []).append(warning)
        else:
            by_step.setdefault(warning.step, []).append(warning)
    for rule, reason in ENVIRONMENT_RULES.items():
        if rule in per_environment:
            named = list(dict.fromkeys(str(warning.step)[:12] for warning in per_environment[rule]))
            first = per_environment[rule][0]
            whole_plan.append(
                Finding(
                    f"{reason} ({len(named)} step{'' if len(named) == 1 else 's'}: "
                    f"{', '.join(named)})",
                    rule=rule,
                    severity=first.severity,
                    fix=first.fix,
                    source="squawk",
                )
            )
    return by_step, whole_plan


# --- warnings from statements that really ran (a rehearsal) -----------------------------------
# Tokens from sqlparse's lexer, not regexes over text: comments (such as the runner's
# "-- parameters: …") and quoting are handled by the lexer, and keywords are told from names.

BATCH_PREFIX = "_alembic_tmp_"
# Words that end a column's type in a column definition (CREATE TABLE, ADD/MODIFY COLUMN).
_TYPE_END = {
    "NOT NULL", "NULL", "DEFAULT", "PRIMARY", "REFERENCES", "CONSTRAINT", "UNIQUE", "CHECK",
    "COLLATE", "GENERATED", "AUTO_INCREMENT", "AUTOINCREMENT", "COMMENT", "USING", "FIRST",
    "AFTER", "CHARACTER", "IDENTITY", "ON",
}  # fmt: skip
# Words that start a table-level clause, not a column, in CREATE TABLE.
_TABLE_CLAUSES = {"CONSTRAINT", "PRIMARY", "UNIQUE", "FOREIGN", "CHECK", "KEY", "INDEX"}


def sql_tokens(statement: str) -> list[tuple[object, str]]:
    """Lex one statement with sqlparse into (token type, text), without whitespace or comments."""
    parsed = sqlparse.parse(statement)
    if not parsed:
        return []
    return [
        (token.ttype, token.value)
        for token in parsed[0].flatten()
        if not token.is_whitespace and token.ttype not in sqlparse.tokens.Comment
    ]


def _word(token: tuple[object, str]) -> str:
    return " ".join(token[1].upper().split())


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] + text[-1] in ('""', "``", "[]"):
        return text[1:-1]
    return text


def _is_name(token: tuple[object, str]) -> bool:
    ttype = token[0]
    return (
        ttype in sqlparse.tokens.Name
        or ttype in sqlparse.tokens.Literal.String.Symbol
        or (
            # sqlparse lexes some ordinary column names (name, type, level…) as keywords.
            ttype in sqlparse.tokens.Keyword and _word(token) not in _TYPE_END
        )
    )


def _read_name(tokens: list[tuple[object, str]], index: int) -> tuple[str | None, int]:
    """Read a possibly schema-qualified name at `index`; return its last part and the next index."""
    name = None
    while index < len(tokens) and _is_name(tokens[index]):
        name = _unquote(tokens[index][1])
        index += 1
        if index < len(tokens) and tokens[index][1] == ".":
            index += 1
            continue
        break
    return name, index


def _split_top_level(tokens: list[tuple[object, str]]) -> list[list[tuple[object, str]]]:
    """Split tokens at commas outside parentheses."""
    parts: list[list[tuple[object, str]]] = [[]]
    depth = 0
    for token in tokens:
        if token[1] == "(":
            depth += 1
        elif token[1] == ")":
            depth -= 1
        if token[1] == "," and depth == 0:
            parts.append([])
        else:
            parts[-1].append(token)
    return [part for part in parts if part]


def _type_text(tokens: list[tuple[object, str]]) -> str:
    """The column type at the start of `tokens`, normalised for comparison (VARCHAR(64))."""
    words = []
    depth = 0
    for token in tokens:
        if depth == 0 and _word(token) in _TYPE_END:
            break
        depth += {"(": 1, ")": -1}.get(token[1], 0)
        words.append(token[1].upper())
    return "".join(words)


def _column_definition(tokens: list[tuple[object, str]]) -> tuple[str, str] | None:
    """(name, type) of one column definition, or None for a table-level clause."""
    if not tokens or _word(tokens[0]) in _TABLE_CLAUSES:
        return None
    name, index = _read_name(tokens, 0)
    return (name, _type_text(tokens[index:])) if name else None


def _created_columns(tokens: list[tuple[object, str]]) -> dict[str, str]:
    """The columns (name → type) of a CREATE TABLE statement's definition list."""
    try:
        start = next(i for i, token in enumerate(tokens) if token[1] == "(")
    except StopIteration:
        return {}
    depth, end = 0, len(tokens)
    for index in range(start, len(tokens)):
        depth += {"(": 1, ")": -1}.get(tokens[index][1], 0)
        if depth == 0:
            end = index
            break
    columns = {}
    for part in _split_top_level(tokens[start + 1 : end]):
        definition = _column_definition(part)
        if definition is not None:
            columns[definition[0]] = definition[1]
    return columns


def _batch_copy(tokens: list[tuple[object, str]], table: str) -> list[tuple[str, str | None]]:
    """Pairs (new column, old column) of `INSERT INTO _alembic_tmp_t (…) SELECT t.a, … FROM t`."""
    words = [_word(token) for token in tokens]
    if "SELECT" not in words or "(" not in words:
        return []
    select = words.index("SELECT")
    source_end = words.index("FROM", select) if "FROM" in words[select:] else len(tokens)
    open_index = words.index("(")
    close_index = words.index(")", open_index)
    targets = [
        _read_name(part, 0)[0] for part in _split_top_level(tokens[open_index + 1 : close_index])
    ]
    sources: list[str | None] = []
    for part in _split_top_level(tokens[select + 1 : source_end]):
        # Batch mode qualifies every copied column with the table name: `customer.email`,
        # also inside a CAST(customer.email AS …) when the type changes.
        source = None
        for index in range(len(part) - 2):
            if _unquote(part[index][1]) == table and part[index + 1][1] == ".":
                source = _unquote(part[index + 2][1])
                break
        sources.append(source)
    return [(target, source) for target, source in zip(targets, sources, strict=False) if target]


def _same_type(before: str | None, after: str | None) -> bool:
    if before is None or after is None:
        return True  # unknown: say nothing rather than guess
    return before.replace(" ", "").upper() == after.replace(" ", "").upper()


def statement_warnings(
    statements: Iterable[str],
    dialect: str | None,
    *,
    tables: dict[str, dict[str, str]] | None = None,
    version_table: str = "alembic_version",
) -> list[Finding]:
    """Warn about what executed statements destroy or lock (parsed with sqlparse).

    `tables` (table → column → type, as the database held them before the statements) lets
    an SQLite batch rebuild — CREATE _alembic_tmp_t, INSERT … SELECT, DROP TABLE t, ALTER
    TABLE _alembic_tmp_t RENAME TO t — be read as the column drops or type changes it is,
    rather than as a table drop. The statements update a copy of it as they go.
    """
    known = {name: dict(columns) for name, columns in (tables or {}).items()}
    lexed = [sql_tokens(statement) for statement in statements]
    found: list[Finding] = []
    copies: dict[str, list[tuple[str, str | None]]] = {}
    created: set[str] = set()  # an index on a table created here locks nothing in use

    def warn(text: str) -> None:
        if text not in found:
            rule = next(rule for prefix, rule in _STATEMENT_RULES if text.startswith(prefix))
            found.append(finding(rule, text))

    for position, tokens in enumerate(lexed):
        words = [_word(token) for token in tokens]
        if not words:
            continue
        first = words[0]
        if first == "CREATE" and len(words) > 2 and words[1] == "TABLE":
            name, _ = _read_name(tokens, 2)
            if name:
                known[name] = _created_columns(tokens)
                created.add(name)
        elif first == "CREATE" and "INDEX" in words[:4]:
            if dialect == "postgresql" and "CONCURRENTLY" not in words:
                on = words.index("ON") if "ON" in words else None
                table = _read_name(tokens, on + 1)[0] if on is not None else None
                if table in created:
                    continue
                warn(f"locks table {table or '?'} while the index is built")
        elif first == "INSERT" and len(words) > 2 and words[1] == "INTO":
            name, _ = _read_name(tokens, 2)
            if name and name.startswith(BATCH_PREFIX):
                copies[name] = _batch_copy(tokens, name.removeprefix(BATCH_PREFIX))
        elif first == "DROP" and len(words) > 2 and words[1] == "TABLE":
            index = 4 if words[2:4] == ["IF", "EXISTS"] else 2
            name, _ = _read_name(tokens, index)
            if not name or name == version_table:
                continue
            following = lexed[position + 1] if position + 1 < len(lexed) else []
            if _is_batch_rename(following, name):
                _warn_batch_rebuild(name, known, copies.get(BATCH_PREFIX + name), warn)
            else:
                warn(f"destructive: drops table {name}")
                known.pop(name, None)
        elif first == "ALTER" and len(words) > 2 and words[1] == "TABLE":
            _alter_table(tokens, known, warn)
        elif first == "TRUNCATE":
            index = 2 if len(words) > 1 and words[1] == "TABLE" else 1
            warn(f"destructive: truncates table {_read_name(tokens, index)[0] or '?'}")
        elif first == "DELETE" and "WHERE" not in words:
            index = 2 if len(words) > 1 and words[1] == "FROM" else 1
            table = _read_name(tokens, index)[0]
            if table != version_table:
                warn(f"destructive: deletes every row of {table or '?'} (DELETE without WHERE)")
    return found


# The rule of each text statement_warnings says, by its beginning.
_STATEMENT_RULES = (
    ("locks table", INDEX_LOCK),
    ("destructive: drops table", DROP_TABLE),
    ("destructive: drops column", DROP_COLUMN),
    ("destructive: changes the type", CHANGE_TYPE),
    ("destructive: truncates", TRUNCATE),
    ("destructive: deletes every row", DELETE_ALL),
    ("", DROP_OBJECT),
)


def statement_findings(
    statements: Iterable[str],
    dialect: str | None,
    *,
    tables: dict[str, dict[str, str]] | None = None,
    version_table: str = "alembic_version",
    lint: bool = False,
    in_transaction: bool = True,
) -> list[Finding]:
    """statement_warnings, and with `lint` on PostgreSQL squawk's findings on the statements.

    For a rehearsed step that could not render offline (a data migration): what ran is then
    all squawk can read. Like plan_warnings, a squawk finding twin to one of ours is left out.
    """
    statements = list(statements)
    ours = statement_warnings(statements, dialect, tables=tables, version_table=version_table)
    if not lint or dialect != "postgresql" or not statements:
        return ours
    text = "".join(f"{statement.strip().rstrip(';')};\n" for statement in statements)
    found = lint_steps(
        [("rehearsed", text)], in_transaction=in_transaction, version_table=version_table
    )
    # squawk's say their rule and fix in their text: the rehearsal shows findings as text.
    return _merge(ours, [warning.for_step(None) for warning in found])


def _merge(ours: list[Finding], squawk: list[Finding]) -> list[Finding]:
    """Our findings, then squawk's, less those that say what one of ours says (SQUAWK_TWINS)."""
    merged, unpaired = list(ours), [warning.rule for warning in ours]
    for warning in squawk:
        twin = SQUAWK_TWINS.get(warning.rule)
        if twin in unpaired:
            unpaired.remove(twin)
        else:
            merged.append(warning)
    return merged


def _is_batch_rename(tokens: list[tuple[object, str]], table: str) -> bool:
    """Is this `ALTER TABLE _alembic_tmp_<table> RENAME TO <table>`?"""
    words = [_word(token) for token in tokens]
    if words[:2] != ["ALTER", "TABLE"]:
        return False
    source, index = _read_name(tokens, 2)
    if source != BATCH_PREFIX + table or words[index : index + 2] != ["RENAME", "TO"]:
        return False
    return _read_name(tokens, index + 2)[0] == table


def _warn_batch_rebuild(
    table: str,
    known: dict[str, dict[str, str]],
    copy: list[tuple[str, str | None]] | None,
    warn: Callable[[str], None],
) -> None:
    """Read a batch rebuild of `table` as what it loses: columns not copied, types changed."""
    before = known.get(table)
    after = known.pop(BATCH_PREFIX + table, {})
    if before is not None and copy is not None:
        copied = {source for _, source in copy if source}
        for column in before:
            if column not in copied:
                warn(f"destructive: drops column {table}.{column} and its data")
        for target, source in copy:
            if source in before and not _same_type(before[source], after.get(target)):
                warn(f"destructive: changes the type of {table}.{source}, which can lose data")
    known[table] = after


def _alter_table(
    tokens: list[tuple[object, str]],
    known: dict[str, dict[str, str]],
    warn: Callable[[str], None],
) -> None:
    """Warn about column drops and type changes in one ALTER TABLE; track renames and adds."""
    table, index = _read_name(tokens, 2)
    if not table:
        return
    columns = known.get(table)
    for action in _split_top_level(tokens[index:]):
        verbs = [_word(token) for token in action]
        if verbs[:2] == ["RENAME", "TO"]:
            new_name = _read_name(action, 2)[0]
            if new_name and table in known:
                known[new_name] = known.pop(table)
        elif verbs[:1] == ["ADD"] and (len(verbs) < 2 or verbs[1] not in _TABLE_CLAUSES):
            start = 2 if verbs[1:2] == ["COLUMN"] else 1
            definition = _column_definition(action[start:])
            if definition and columns is not None:
                columns[definition[0]] = definition[1]
        elif verbs[:1] == ["DROP"] and (len(verbs) < 2 or verbs[1] not in _TABLE_CLAUSES):
            start = 2 if verbs[1:2] == ["COLUMN"] else 1
            if verbs[start : start + 2] == ["IF", "EXISTS"]:
                start += 2
            column = _read_name(action, start)[0]
            warn(f"destructive: drops column {table}.{column or '?'} and its data")
            if columns is not None and column:
                columns.pop(column, None)
        elif verbs[:1] == ["ALTER"] and "TYPE" in verbs:
            # PostgreSQL: ALTER [COLUMN] c [SET DATA] TYPE t
            start = 2 if verbs[1:2] == ["COLUMN"] else 1
            column = _read_name(action, start)[0]
            new_type = _type_text(action[verbs.index("TYPE") + 1 :])
            before = columns.get(column) if columns is not None and column else None
            if before is None or not _same_type(before, new_type):
                warn(
                    f"destructive: changes the type of {table}.{column or '?'}, which can lose data"
                )
            if columns is not None and column:
                columns[column] = new_type
        elif verbs[:1] in (["MODIFY"], ["CHANGE"]):
            # MySQL/MariaDB restate the whole column, even to change only its nullability:
            # a type change is only certain when the type before is known.
            start = 2 if verbs[1:2] == ["COLUMN"] else 1
            column, after_name = _read_name(action, start)
            new_name = column
            if verbs[0] == "CHANGE":
                new_name, after_name = _read_name(action, after_name)
            new_type = _type_text(action[after_name:])
            before = columns.get(column) if columns is not None and column else None
            if before is None or not _same_type(before, new_type):
                warn(
                    f"destructive: changes the type of {table}.{column or '?'}, which can lose data"
                )
            if columns is not None and column and new_name:
                columns.pop(column, None)
                columns[new_name] = new_type
