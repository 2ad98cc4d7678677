"""Run one Alembic command in a child process and stream its output to the parent.

Alembic keeps `context`/`op` in module globals and a stock env.py resets logging, so every
migration gets a fresh interpreter. The database URL travels in the child's environment,
never on its command line, where `ps` would show the password.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from dashboard.environments.loader import Environment
from dashboard.errors import EnvironmentNotConfigured, MigrationFailed
from dashboard.redact import redact

URL_VARIABLE = "DASHBOARD_RUNNER_URL"


@dataclass(frozen=True)
class RunResult:
    """How a child run ended, with every line it printed (passwords masked)."""

    returncode: int
    lines: list[str]

    @property
    def succeeded(self) -> bool:
        return self.returncode == 0


def run_in_child(
    *,
    environment: Environment,
    script_location: Path,
    operation: str,
    target: str,
    on_line: Callable[[str], None] | None = None,
) -> RunResult:
    """Run `operation` to `target` on `environment` in a child process; return its output."""
    if environment.url is None:
        raise EnvironmentNotConfigured(
            f"{environment.name} is not configured: {environment.not_configured_reason}"
        )
    spec = {
        "script_location": str(script_location),
        "operation": operation,
        "target": target,
        "version_table": environment.version_table,
        "version_table_schema": environment.version_table_schema,
        "python_path": [str(folder) for folder in environment.python_path],
    }
    child_env = dict(os.environ)
    child_env[URL_VARIABLE] = environment.url.render_as_string(hide_password=False)
    child_env["PYTHONUNBUFFERED"] = "1"
    lines: list[str] = []
    with subprocess.Popen(
        [sys.executable, "-m", "dashboard.runner", json.dumps(spec)],
        env=child_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        bufsize=1,
    ) as process:
        assert process.stdout is not None
        for raw in process.stdout:
            line = redact(raw.rstrip("\n"), [environment.url])
            lines.append(line)
            if on_line is not None:
                on_line(line)
        returncode = process.wait()
    return RunResult(returncode=returncode, lines=lines)


def main(argv: list[str] | None = None) -> int:
    """Child entry point: run the command described by the JSON spec on $DASHBOARD_RUNNER_URL."""
    from dashboard import alembic_adapter

    parser = argparse.ArgumentParser(prog="python -m dashboard.runner")
    parser.add_argument("spec", help="JSON: script_location, operation, target, version_table…")
    spec = json.loads(parser.parse_args(argv).spec)
    url = make_url(os.environ.pop(URL_VARIABLE))
    try:
        alembic_adapter.run_command(
            script_location=Path(spec["script_location"]),
            url=url,
            operation=spec["operation"],
            target=spec["target"],
            version_table=spec.get("version_table") or "alembic_version",
            version_table_schema=spec.get("version_table_schema"),
            python_path=[Path(folder) for folder in spec.get("python_path", [])],
        )
    except MigrationFailed as error:
        print(f"ERROR: {error}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
