"""The dashboard's own store: every table, in one place for Flask-Migrate's autogenerate."""

from __future__ import annotations

from dashboard.audit.models import AuditCheckpoint, AuditEvent
from dashboard.drift.models import DriftCheck
from dashboard.extensions import db
from dashboard.jobs.models import ActiveJob, Job, JobLogLine
from dashboard.rollouts.models import Rollout, RolloutVote
from dashboard.users.models import LoginFailure, Role, User

__all__ = [
    "ActiveJob",
    "AuditCheckpoint",
    "AuditEvent",
    "DriftCheck",
    "Job",
    "JobLogLine",
    "LoginFailure",
    "Role",
    "Rollout",
    "RolloutVote",
    "User",
    "db",
]
