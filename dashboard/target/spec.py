"""One environment's target database: the one frozen value everything in this package takes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL


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
        )
