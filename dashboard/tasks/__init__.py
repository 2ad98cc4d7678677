"""Background tasks with progress: plan renders, schema diffs, rehearsals and drift checks."""
