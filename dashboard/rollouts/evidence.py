"""What a rollout page shows of the rehearsal of its frozen plan (reads only: GET never writes).

The outcome stored with the rollout is the evidence; until its task stores one, the task's
progress (or why it stopped) is shown instead, from the store, so every server shows the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from flask import current_app

from dashboard.clock import as_aware
from dashboard.plans.rehearsal import Rehearsal, RehearsedStep
from dashboard.rollouts.models import Rollout
from dashboard.tasks import service as tasks
from dashboard.tasks.flows import rehearsal_from
from dashboard.tasks.models import TaskState

RUNNING, SUCCEEDED, FAILED, NOT_REHEARSED = "running", "succeeded", "failed", "not_rehearsed"
NEVER_STARTED = "no rehearsal was started for it (it was requested before rollouts were rehearsed)"
REHEARSALS_OFF = (
    "rollouts are not rehearsed when requested on this dashboard "
    "(DASHBOARD_ROLLOUT_REHEARSALS is off); an operator may rehearse it from this page"
)
NOT_STORED = "its rehearsal ended without storing an outcome"


@dataclass(frozen=True)
class RehearsalEvidence:
    """A rollout's rehearsal as its page shows it: running (with progress), or its outcome."""

    state: str  # running | succeeded | failed | not_rehearsed
    rehearsal: Rehearsal | None = None
    reason: str | None = None  # why it was not rehearsed
    task_id: int | None = None
    progress_line: str = ""
    progress_done: int = 0
    progress_total: int = 0
    rehearsed_at: datetime | None = None
    steps: dict[str, RehearsedStep] = field(default_factory=dict)  # by revision id

    @property
    def active(self) -> bool:
        return self.state == RUNNING

    @property
    def statement_count(self) -> int:
        return sum(len(step.statements) for step in self.steps.values())

    @property
    def seconds(self) -> float:
        return sum(step.duration_seconds for step in self.steps.values())

    @property
    def failed_step(self) -> RehearsedStep | None:
        return next((step for step in self.steps.values() if step.status == FAILED), None)

    @property
    def data_migrations(self) -> list[RehearsedStep]:
        return [step for step in self.steps.values() if step.data_migration]


def evidence_of(rollout: Rollout) -> RehearsalEvidence:
    """The rehearsal evidence of `rollout`: its stored outcome, else its task's progress."""
    stored = rollout.rehearsal or {}
    if stored and stored.get("task") == rollout.rehearsal_task_id:
        return _from_outcome(stored)
    if rollout.rehearsal_task_id is None:
        rehearsals_on = current_app.config.get("ROLLOUT_REHEARSALS", True)
        return RehearsalEvidence(
            state=NOT_REHEARSED, reason=NEVER_STARTED if rehearsals_on else REHEARSALS_OFF
        )
    task = tasks.get_task(task_id=rollout.rehearsal_task_id)
    if task is None:
        return RehearsalEvidence(state=NOT_REHEARSED, reason=NOT_STORED)
    state = tasks.shown_state(task=task)
    if not state.active:
        error = tasks.shown_error(task=task)
        reason = f"its rehearsal stopped: {error}" if error else NOT_STORED
        return RehearsalEvidence(state=NOT_REHEARSED, reason=reason, task_id=task.id)
    elapsed = tasks.elapsed_seconds(task=task)
    if state == TaskState.QUEUED:
        line = f"waiting for a worker · {elapsed:.1f} s"
    else:
        line = f"{task.progress_text or 'starting'} · {elapsed:.1f} s elapsed"
    return RehearsalEvidence(
        state=RUNNING,
        task_id=task.id,
        progress_line=line,
        progress_done=task.progress_done,
        progress_total=task.progress_total,
    )


def _from_outcome(stored: dict) -> RehearsalEvidence:
    rehearsal = rehearsal_from(stored)
    at = stored.get("rehearsed_at")
    rehearsed_at = as_aware(datetime.fromisoformat(at)) if at else None
    steps = {step.revision_id: step for step in rehearsal.steps}
    if rehearsal.status == "unavailable":
        return RehearsalEvidence(
            state=NOT_REHEARSED,
            rehearsal=rehearsal,
            reason=rehearsal.unavailable,
            task_id=stored.get("task"),
            rehearsed_at=rehearsed_at,
        )
    return RehearsalEvidence(
        state=SUCCEEDED if rehearsal.succeeded else FAILED,
        rehearsal=rehearsal,
        task_id=stored.get("task"),
        rehearsed_at=rehearsed_at,
        steps=steps,
    )
