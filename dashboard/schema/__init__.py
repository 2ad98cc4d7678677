"""Schema reflection, revision diffs and drift detection (see service.py for the scope)."""

from dashboard.schema.scratch import scratch_database
from dashboard.schema.service import (
    Change,
    DriftReport,
    Schema,
    SchemaDiff,
    compare,
    compare_live,
    diff_revisions,
    drift,
    materialize,
    reflect_schema,
)

__all__ = [
    "Change",
    "DriftReport",
    "Schema",
    "SchemaDiff",
    "compare",
    "compare_live",
    "diff_revisions",
    "drift",
    "materialize",
    "reflect_schema",
    "scratch_database",
]
