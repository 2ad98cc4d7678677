"""The dashboard's own store: every table, in one place for Flask-Migrate's autogenerate."""

from __future__ import annotations

from dashboard.audit.models import AuditCheckpoint, AuditEvent
from dashboard.drift.models import DriftCheck
from dashboard.environments.models import StoredStatus
from dashboard.extensions import db
from dashboard.jobs.models import ActiveJob, Job, JobLogLine
from dashboard.rollouts.models import Rollout, RolloutVote
from dashboard.scheduler.models import Lease
from dashboard.tasks.models import Task
from dashboard.users.models import LoginFailure, Role, User, UserSession

__all__ = [
    "ActiveJob",
    "AuditCheckpoint",
    "AuditEvent",
    "DriftCheck",
    "Job",
    "JobLogLine",
    "Lease",
    "LoginFailure",
    "Role",
    "Rollout",
    "RolloutVote",
    "StoredStatus",
    "Task",
    "User",
    "UserSession",
    "db",
]
