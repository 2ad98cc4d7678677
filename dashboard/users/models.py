"""Users of the dashboard and failed sign-ins (for throttling)."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from dashboard.extensions import db


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    APPROVER = "approver"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return list(Role).index(self)

    def includes(self, other: Role) -> bool:
        """Return True when this role can do everything `other` can."""
        return self.rank >= other.rank


def _now() -> datetime:
    return datetime.now(UTC)


def new_session_token() -> str:
    return secrets.token_hex(16)


class User(db.Model):
    __tablename__ = "user"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(sa.String(80), unique=True)
    password_hash: Mapped[str] = mapped_column(sa.String(255))
    role: Mapped[str] = mapped_column(sa.String(16), default=Role.VIEWER.value)
    active: Mapped[bool] = mapped_column(default=True)
    # Part of the Flask-Login id: rotating it signs the user out of every session.
    session_token: Mapped[str] = mapped_column(sa.String(64), default=new_session_token)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=_now)

    # Flask-Login's interface
    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def is_active(self) -> bool:
        return self.active

    @property
    def is_anonymous(self) -> bool:
        return False

    def get_id(self) -> str:
        return f"{self.id}:{self.session_token}"

    @property
    def role_enum(self) -> Role:
        return Role(self.role)

    def has_role(self, role: Role) -> bool:
        """Return True when this user's role includes `role`."""
        return self.active and self.role_enum.includes(role)

    def __repr__(self) -> str:
        return f"<User {self.username} ({self.role})>"


class LoginFailure(db.Model):
    """One failed sign-in; kept in the store so every process and replica sees it."""

    __tablename__ = "login_failure"
    __table_args__ = (sa.Index("ix_login_failure_addr_at", "remote_addr", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(sa.String(80), index=True)
    remote_addr: Mapped[str] = mapped_column(sa.String(64))
    at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=_now)
