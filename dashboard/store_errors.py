"""The dashboard's own store, when it fails: described once for the pages and the CLI.

Two failures reach the error boundaries as driver errors: a store that cannot be reached, and a
store whose tables are missing or older than this dashboard (nobody ran `flask db upgrade`). Each
gets a sentence that says what to do; the URL's password never appears in it.
"""

from __future__ import annotations

import re

import sqlalchemy as sa
from sqlalchemy.engine import URL

from dashboard.redact import redact

# What SQLite, PostgreSQL and MySQL/MariaDB say about a table or column that is not there.
_MISSING = re.compile(
    r"no such (?:table|column): (?P<sqlite>[\w.]+)"
    r"|(?:relation|column) \"(?P<postgresql>[\w.]+)\"(?: of relation \"[\w.]+\")? does not exist"
    r"|Table '(?P<mysql_table>[\w.]+)' doesn't exist"
    r"|Unknown column '(?P<mysql_column>[\w.]+)'",
    re.IGNORECASE,
)
UPGRADE_FIRST = (
    "run `flask db upgrade` first: it creates the store's tables, or brings them up to date "
    "after an update of the dashboard"
)


def missing_from_store(error: BaseException) -> str | None:
    """The table or column a store error says is missing (the store is not upgraded), or None."""
    if not isinstance(error, sa.exc.DBAPIError):
        return None
    found = _MISSING.search(str(getattr(error, "orig", error)))
    if found is None:
        return None
    return next(name for name in found.groupdict().values() if name)


def is_store_unreachable(error: BaseException) -> bool:
    """Whether a store error is a refused or dropped connection (not a missing table)."""
    return isinstance(error, sa.exc.OperationalError | sa.exc.InterfaceError) and (
        missing_from_store(error) is None
    )


def describe_store_error(error: sa.exc.DBAPIError, *, store: URL) -> str:
    """One sentence for a person: what is wrong with the store, and what to do."""
    where = store.render_as_string(hide_password=True)
    missing = missing_from_store(error)
    if missing is not None:
        return f"The dashboard's store ({where}) has no {missing!r} yet: {UPGRADE_FIRST}."
    reason = redact(" ".join(str(getattr(error, "orig", error)).split()), [store])
    return f"The dashboard's store ({where}) cannot be reached: {reason}."
