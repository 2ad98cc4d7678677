"""Diffs: what a plan changes — per step source and SQL, schema diff, rehearsal, SQL download."""
