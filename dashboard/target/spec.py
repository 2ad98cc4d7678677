"""One environment's target database: the one frozen value everything in this package takes."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL

# `${url}` (the environment's URL) or `${VAR}` / `${VAR:-default}` (this process's variable).
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True)
class TargetDatabase:
    """Where an environment's database is and how its migrations reach it.

    Built once per environment (`Project.database(environment)`), handed whole to the adapter,
    the runner and renderer children and the lock; a scratch copy is `replace(…, url=…)`.
    """

    name: str  # the environment's name, for messages
    url: URL
    script_location: Path
    version_table: str = "alembic_version"
    version_table_schema: str | None = None
    python_path: tuple[Path, ...] = ()
    # (name, value) pairs from `configure_args:`, given to context.configure() on every run.
    configure_args: tuple[tuple[str, bool], ...] = ()
    # Seconds a migration statement may wait for a table lock / run, where the database has it.
    lock_timeout: float | None = None
    statement_timeout: float | None = None
    # The ini file env.py gets as `config.config_file_name` (`alembic_ini:`); None: an
    # alembic.ini beside the script directory or one folder up, if there is one.
    alembic_ini: Path | None = None
    # (name, value) pairs from `env:`, set in the runner's and renderer's environment before
    # env.py runs; `${url}` in a value stands for this database's URL. Kept unexpanded here, so
    # that no password travels in the spec.
    env_variables: tuple[tuple[str, str], ...] = ()

    @property
    def configure_options(self) -> dict[str, bool]:
        """The `configure_args:` as keyword arguments for context.configure()."""
        return dict(self.configure_args)

    @property
    def dialect(self) -> str:
        return self.url.get_backend_name()

    def to_spec(self) -> dict[str, Any]:
        """Everything but the URL, as JSON for a child (the URL travels in its environment,
        never on a command line, where `ps` would show the password)."""
        return {
            "name": self.name,
            "script_location": str(self.script_location),
            "version_table": self.version_table,
            "version_table_schema": self.version_table_schema,
            "python_path": [str(folder) for folder in self.python_path],
            "configure_args": [list(pair) for pair in self.configure_args],
            "lock_timeout": self.lock_timeout,
            "statement_timeout": self.statement_timeout,
            "alembic_ini": None if self.alembic_ini is None else str(self.alembic_ini),
            "env_variables": [list(pair) for pair in self.env_variables],
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any], url: URL) -> TargetDatabase:
        """The value `to_spec` described, with the URL the child was handed."""
        return cls(
            name=spec["name"],
            url=url,
            script_location=Path(spec["script_location"]),
            version_table=spec.get("version_table") or "alembic_version",
            version_table_schema=spec.get("version_table_schema"),
            python_path=tuple(Path(folder) for folder in spec.get("python_path", ())),
            configure_args=tuple((str(k), bool(v)) for k, v in spec.get("configure_args", ())),
            lock_timeout=spec.get("lock_timeout"),
            statement_timeout=spec.get("statement_timeout"),
            alembic_ini=Path(spec["alembic_ini"]) if spec.get("alembic_ini") else None,
            env_variables=tuple((str(k), str(v)) for k, v in spec.get("env_variables", ())),
        )

    def child_environment(self, environ: Mapping[str, str]) -> dict[str, str]:
        """The `env:` variables with `${url}` and `${VAR}` filled in from `environ`."""
        url = self.url.render_as_string(hide_password=False)

        def fill(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name == "url":
                return url
            return environ.get(name) or (default or "")

        return {name: _PLACEHOLDER.sub(fill, value) for name, value in self.env_variables}

    def apply_child_environment(self) -> None:
        """In a runner or renderer child, before env.py runs: set the `env:` variables."""
        os.environ.update(self.child_environment(os.environ))
