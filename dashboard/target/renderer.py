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
import sys
from dataclasses import dataclass

from sqlalchemy.engine import URL, make_url

from dashboard.errors import PlanError
from dashboard.redact import redact
from dashboard.target import adapter as alembic_adapter
from dashboard.target import launcher
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
    try:
        returncode, stdout, stderr = launcher.run_child(
            "renderer", json.dumps(spec), env=child_env, timeout=timeout
        )
    except TimeoutError as error:
        raise PlanError(f"rendering the plan's SQL took longer than {timeout:g} s") from error
    try:
        answer = json.loads(stdout)
        rendered = answer["steps"]
    except (ValueError, KeyError, TypeError) as error:
        # The child died before answering: its stderr (logging, a traceback) says why.
        tail = [line for line in stderr.splitlines() if line.strip()][-3:]
        detail = redact(" ".join(tail), [url]) or f"exit status {returncode}"
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
    """`python -m dashboard.target.renderer` (DASHBOARD_CHILD_START=spawn): spec on stdin."""
    return child_main(launcher.read_payload())


def child_main(payload: str) -> int:
    """Child entry point: print each step's SQL, or why it cannot render, as JSON."""
    spec = json.loads(payload)
    database = TargetDatabase.from_spec(spec["database"], make_url(os.environ.pop(URL_VARIABLE)))
    database.apply_child_environment()  # `env:` from environments.yaml, before env.py runs
    answer = sys.stdout
    # Anything env.py or a script prints must not corrupt the JSON answer: send it to stderr.
    with contextlib.redirect_stdout(sys.stderr):
        # One env.py run renders every step it can (a step that needs a database still says
        # why); the steps share one parsed script directory.
        rendered = alembic_adapter.render_offline_steps(
            database,
            direction=spec["direction"],
            steps=[(step["revision"], tuple(step["from"])) for step in spec["steps"]],
            session={},
        )
    results = [
        {"revision": step.revision_id, "sql": step.sql, "reason": step.reason} for step in rendered
    ]
    json.dump({"steps": results}, answer)
    answer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
