"""Render a plan's steps as SQL (Alembic offline mode) in a child process.

Rendering runs the managed app's env.py: a stock Flask-Migrate env.py calls
`logging.config.fileConfig()`, which would reset the web process's logging, and Alembic keeps
`context`/`op` in module globals. So each plan renders in a fresh interpreter. The URL travels
in the child's environment (never its command line) and carries no password: offline mode
does not connect, it only needs the dialect and driver.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass

from sqlalchemy.engine import URL, make_url

from dashboard.errors import OfflineRenderError, PlanError
from dashboard.redact import redact
from dashboard.target import adapter as alembic_adapter
from dashboard.target.spec import TargetDatabase

URL_VARIABLE = "DASHBOARD_RENDER_URL"
RENDER_TIMEOUT = 120.0


def without_password(url: URL) -> URL:
    """The same URL with no password (`URL.set(password=None)` would keep it)."""
    return URL.create(
        url.drivername,
        username=url.username,
        host=url.host,
        port=url.port,
        database=url.database,
        query=url.query,
    )


@dataclass(frozen=True)
class RenderedStep:
    """One step's SQL, or why it cannot be rendered without a live database."""

    revision_id: str
    sql: str | None
    unrenderable_reason: str | None


def render_in_child(
    database: TargetDatabase,
    *,
    direction: str,
    steps: list[tuple[str, tuple[str, ...]]],
    timeout: float = RENDER_TIMEOUT,
) -> list[RenderedStep]:
    """Render each (revision id, revisions before it) step for the database's dialect in a
    child (with its `configure_args:`, as its real runs pass them to context.configure())."""
    if not steps:
        return []
    url = database.url
    spec = {
        "database": database.to_spec(),
        "direction": direction,
        "steps": [{"revision": revision, "from": list(before)} for revision, before in steps],
    }
    child_env = dict(os.environ)
    child_env[URL_VARIABLE] = without_password(url).render_as_string(hide_password=False)
    # Alembic picks which version row a merge step updates (and which it deletes) by set
    # order; a fixed hash seed renders the same SQL every time, so the fingerprint is stable.
    child_env["PYTHONHASHSEED"] = "0"
    try:
        finished = subprocess.run(
            [sys.executable, "-m", "dashboard.target.renderer"],
            input=json.dumps(spec),
            env=child_env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        raise PlanError(f"rendering the plan's SQL took longer than {timeout:g} s") from error
    try:
        answer = json.loads(finished.stdout)
        rendered = answer["steps"]
    except (ValueError, KeyError, TypeError) as error:
        # The child died before answering: its stderr (logging, a traceback) says why.
        tail = [line for line in finished.stderr.splitlines() if line.strip()][-3:]
        detail = redact(" ".join(tail), [url]) or f"exit status {finished.returncode}"
        raise PlanError(f"rendering the plan's SQL failed: {detail}") from error
    return [
        RenderedStep(
            revision_id=item["revision"],
            sql=None if item["sql"] is None else redact(item["sql"], [url]),
            unrenderable_reason=(None if item["reason"] is None else redact(item["reason"], [url])),
        )
        for item in rendered
    ]


def main() -> int:
    """Child entry point: read the JSON spec on stdin, print each step's SQL or reason as JSON."""
    spec = json.load(sys.stdin)
    database = TargetDatabase.from_spec(spec["database"], make_url(os.environ.pop(URL_VARIABLE)))
    answer = sys.stdout
    results = []
    session: dict = {}  # one parsed script directory for every step of this plan
    # Anything env.py or a script prints must not corrupt the JSON answer: send it to stderr.
    with contextlib.redirect_stdout(sys.stderr):
        for step in spec["steps"]:
            try:
                sql = alembic_adapter.render_offline_sql(
                    database,
                    direction=spec["direction"],
                    from_revisions=tuple(step["from"]),
                    revision_id=step["revision"],
                    session=session,
                )
            except OfflineRenderError as error:
                results.append({"revision": step["revision"], "sql": None, "reason": str(error)})
            else:
                results.append({"revision": step["revision"], "sql": sql, "reason": None})
    json.dump({"steps": results}, answer)
    answer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
