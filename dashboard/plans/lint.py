"""Findings on a plan, and squawk (the `squawk-cli` package) run over its PostgreSQL SQL.

A finding is a `str` (its one-line text, so every page, log line and frozen rollout shows it as
before) that also carries its rule, severity, reason and fix. squawk runs once per plan, over one
file per step, in a child process with a timeout; a missing or failing squawk becomes an `info`
finding that says so, never an error of the plan.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from flask import current_app, has_app_context

INFO, WARNING, ERROR = "info", "warning", "error"
SEVERITIES = (INFO, WARNING, ERROR)  # in rising order
SQUAWK_TIMEOUT_SECONDS = 60.0

# squawk's rules by what they mean for a production run (squawk itself reports every rule as a
# "Warning"): data lost, or a certain failure / full rewrite under an exclusive lock, is an error.
SQUAWK_ERRORS = {
    "ban-drop-column",
    "ban-drop-table",
    "ban-drop-database",
    "ban-truncate-cascade",
    "changing-column-type",
    "adding-field-with-default",
    "ban-concurrent-index-creation-in-transaction",
}
# Style and robustness advice that never blocks anything.
SQUAWK_INFOS = {"require-statement-timeout", "ban-char-field", "syntax-error"}
SQUAWK_FIXES = {
    "require-concurrent-index-creation": (
        "CREATE INDEX CONCURRENTLY: op.create_index(..., postgresql_concurrently=True) "
        "inside op.get_context().autocommit_block()"
    ),
    "require-concurrent-index-deletion": (
        "DROP INDEX CONCURRENTLY: op.drop_index(..., postgresql_concurrently=True) "
        "inside op.get_context().autocommit_block()"
    ),
    "ban-concurrent-index-creation-in-transaction": (
        "run it inside op.get_context().autocommit_block()"
    ),
    "require-lock-timeout": "set lock_timeout (lock_timeout: in environments.yaml)",
    "require-statement-timeout": (
        "set statement_timeout (statement_timeout: in environments.yaml)"
    ),
    "ban-drop-column": "stop reading the column in the app first, then drop it in a later release",
    "ban-drop-table": "stop using the table and back it up, then drop it in a later release",
    "changing-column-type": (
        "add a column of the new type, backfill it, move readers over, then drop the old one"
    ),
    "adding-not-nullable-field": (
        "add the column nullable, backfill it, then add a NOT VALID check and VALIDATE it"
    ),
    "adding-required-field": "add the column with a default, or nullable and backfill it",
    "adding-foreign-key-constraint": (
        "add the constraint NOT VALID, then VALIDATE CONSTRAINT in a later step"
    ),
    "constraint-missing-not-valid": "add it NOT VALID, then VALIDATE CONSTRAINT in a later step",
    "disallowed-unique-constraint": (
        "CREATE UNIQUE INDEX CONCURRENTLY, then ADD CONSTRAINT … UNIQUE USING INDEX"
    ),
    "renaming-column": "add the new column beside the old one, move readers, drop the old later",
    "renaming-table": "create the new table (or a view) beside the old one, move readers first",
    "adding-field-with-default": (
        "add the column without a default, then set the default and backfill in batches"
    ),
}


class Finding(str):
    """One warning on a plan: its one-line text, with rule, severity, reason and fix."""

    rule: str
    severity: str
    reason: str
    fix: str | None
    source: str  # "squawk" or "dashboard"
    step: str | None  # the revision it is about, None for the whole plan

    def __new__(
        cls,
        reason: str = "",
        *,
        rule: str = "note",
        severity: str = WARNING,
        fix: str | None = None,
        source: str = "dashboard",
        step: str | None = None,
        text: str | None = None,
    ) -> Finding:
        self = super().__new__(cls, reason if text is None else text)
        self.rule, self.severity, self.reason = rule, severity, reason
        self.fix, self.source, self.step = fix, source, step
        return self

    def __reduce__(self) -> tuple:
        return (_rebuild, (str(self), self.__dict__))

    @property
    def headline(self) -> str:
        """The step and the reason, without rule, severity and fix."""
        return f"{self.step[:12]}: {self.reason}" if self.step else self.reason

    def for_step(self, revision_id: str | None) -> Finding:
        """This finding about one step (or the whole plan), its text saying all it knows."""
        headline = f"{revision_id[:12]}: {self.reason}" if revision_id else self.reason
        text = f"{headline} [{self.severity}: {self.rule}]"
        if self.fix:
            text += f" — fix: {self.fix}"
        return Finding(
            self.reason,
            rule=self.rule,
            severity=self.severity,
            fix=self.fix,
            source=self.source,
            step=revision_id,
            text=text,
        )


# Past this many findings, a page shows one line per rule (a 1,000-step plan on PostgreSQL has
# a squawk finding or two on every step: a 1.2 MB page).
GROUP_FINDINGS_OVER = 20


class FindingGroup(Finding):
    """Findings of one rule on several steps, shown as one line: the first, and how many more."""

    steps: tuple[str, ...]

    @property
    def more(self) -> int:
        return len(self.steps) - 1

    @property
    def headline(self) -> str:
        first = super().headline
        shown = ", ".join(step[:12] for step in self.steps[1:6])
        if len(self.steps) > 6:
            shown += ", …"
        return f"{first} — and the same on {self.more} more steps ({shown})"


def grouped(findings: Sequence[Any], *, over: int = GROUP_FINDINGS_OVER) -> list[Any]:
    """The findings as a page lists them: each one while there are at most `over`; past that,
    one line per severity, rule and source for findings about steps (plain texts and findings
    about the whole plan stay as they are), in the order each first appears."""
    if len(findings) <= over:
        return list(findings)
    shown: list[Any] = []
    groups: dict[tuple[str, str, str], list[Finding]] = {}
    for finding in findings:
        if not isinstance(finding, Finding) or finding.step is None:
            shown.append(finding)
            continue
        key = (finding.severity, finding.rule, finding.source)
        if key not in groups:
            groups[key] = []
            shown.append(key)
        groups[key].append(finding)
    return [_group(groups[item]) if isinstance(item, tuple) else item for item in shown]


def _group(findings: list[Finding]) -> Finding:
    first = findings[0]
    if len(findings) == 1:
        return first
    group = FindingGroup(
        first.reason,
        rule=first.rule,
        severity=first.severity,
        fix=first.fix,
        source=first.source,
        step=first.step,
        text=str(first),
    )
    group.steps = tuple(finding.step or "" for finding in findings)
    return group


def _rebuild(text: str, state: dict) -> Finding:
    finding = Finding(text)
    finding.__dict__.update(state)
    return finding


def severity_rank(severity: str) -> int:
    """0 for info, 1 for warning, 2 for error (an unknown word counts as a warning)."""
    return SEVERITIES.index(severity) if severity in SEVERITIES else 1


def severity_of(warning: str) -> str:
    """The severity of a finding, or of a plain warning text (a frozen plan's): a warning."""
    return getattr(warning, "severity", WARNING)


def at_least(warnings: Iterable[str], severity: str) -> list[str]:
    """The warnings of `severity` or worse."""
    floor = severity_rank(severity)
    return [warning for warning in warnings if severity_rank(severity_of(warning)) >= floor]


# --- squawk -----------------------------------------------------------------------------------


def squawk_binary() -> str | None:
    """The squawk to run: SQUAWK_BIN (by default the one beside this Python), else PATH's."""
    configured = None
    if has_app_context():
        configured = current_app.config.get("SQUAWK_BIN")
    configured = configured or str(Path(sys.executable).with_name("squawk"))
    return shutil.which(configured) or shutil.which("squawk")


def squawk_severity(rule: str) -> str:
    """What a squawk rule means for a production run."""
    if rule in SQUAWK_ERRORS:
        return ERROR
    if rule in SQUAWK_INFOS or rule.startswith("prefer-"):
        return INFO
    return WARNING


def _mentions(text: str, name: str) -> bool:
    return re.search(rf"\b{re.escape(name)}\b", text, re.IGNORECASE) is not None


def _statement_at(lines: list[str], first: int, last: int) -> str:
    """The whole statement around lines first..last (Alembic ends each statement a line with ;)."""
    start = first
    while start > 0 and not lines[start - 1].rstrip().endswith(";"):
        start -= 1
    end = max(first, last)
    while end < len(lines) - 1 and not lines[end].rstrip().endswith(";"):
        end += 1
    return "\n".join(lines[start : end + 1])


def lint_steps(
    steps: Iterable[tuple[str, str]],
    *,
    in_transaction: bool,
    version_table: str = "alembic_version",
    exclude: Iterable[str] = (),
    binary: str | None = None,
) -> list[Finding]:
    """Run squawk over each (revision id, SQL) step; return its findings in step order.

    Findings on the version table's own statements (Alembic's bookkeeping) are left out.
    """
    steps = [(revision_id, sql) for revision_id, sql in steps if sql and sql.strip()]
    if not steps:
        return []
    binary = binary or squawk_binary()
    if binary is None:
        return [
            Finding(
                "not linted with squawk: no squawk binary beside this Python or on PATH",
                rule="squawk-missing",
                severity=INFO,
                fix="pip install squawk-cli, or set DASHBOARD_SQUAWK_BIN",
            )
        ]
    with tempfile.TemporaryDirectory(prefix="squawk-") as folder:
        files = {}
        for number, (revision_id, sql) in enumerate(steps):
            path = Path(folder) / f"{number:05d}_{revision_id}.sql"
            path.write_text(sql, encoding="utf-8")
            files[str(path)] = (revision_id, sql.splitlines())
        reported = _run_squawk(
            binary, list(files), in_transaction=in_transaction, exclude=exclude, cwd=folder
        )
    if isinstance(reported, Finding):
        return [reported]
    order = {path: number for number, path in enumerate(files)}
    findings = []
    for item in sorted(reported, key=lambda item: (order.get(item.get("file"), 0), item["line"])):
        if item.get("file") not in files:
            continue
        revision_id, lines = files[item["file"]]
        if _mentions(
            _statement_at(lines, item.get("line", 0), item.get("line_end", 0)), version_table
        ):
            continue
        rule = item.get("rule_name") or "squawk"
        findings.append(
            Finding(
                " ".join(str(item.get("message") or rule).split()),
                rule=rule,
                severity=squawk_severity(rule),
                fix=SQUAWK_FIXES.get(rule) or " ".join(str(item.get("help") or "").split()) or None,
                source="squawk",
                step=revision_id,
            )
        )
    return findings


def _run_squawk(
    binary: str, paths: list[str], *, in_transaction: bool, exclude: Iterable[str], cwd: str
) -> list[dict] | Finding:
    """squawk's JSON report over `paths`, or a finding that says why there is none."""
    command = [binary, "--reporter", "json", "--no-error-on-unmatched-pattern"]
    command.append("--assume-in-transaction" if in_transaction else "--no-assume-in-transaction")
    excluded = sorted(set(exclude))
    if excluded:
        command.append(f"--exclude={','.join(excluded)}")
    try:
        # cwd: a fresh folder, so that no .squawk.toml of wherever the dashboard runs applies.
        completed = subprocess.run(
            [*command, *paths],
            capture_output=True,
            text=True,
            timeout=SQUAWK_TIMEOUT_SECONDS,
            cwd=cwd,
            env={**os.environ, "NO_COLOR": "1"},
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return _failed(f"{binary} did not run: {error}")
    try:
        report = json.loads(completed.stdout or "[]")
    except ValueError:
        detail = (completed.stderr or completed.stdout).strip().splitlines()
        return _failed(
            f"{binary} exited with {completed.returncode}: {detail[-1] if detail else 'no output'}"
        )
    if not isinstance(report, list):
        return _failed(f"{binary} reported something other than a list of findings")
    return report


def _failed(why: str) -> Finding:
    return Finding(f"not linted with squawk: {why}", rule="squawk-failed", severity=INFO)
