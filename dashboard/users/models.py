"""Users of the dashboard and failed sign-ins (for throttling)."""

from __future__ import annotations

import hashlib
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
    """Return a new random session token (it travels in the signed session cookie)."""
    return secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    """Return what the store keeps of a session token: its SHA-256, so a copy of the store
    opens no session."""
    return hashlib.sha256(token.encode()).hexdigest()


class User(db.Model):
    __tablename__ = "user"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(sa.String(80), unique=True)
    password_hash: Mapped[str] = mapped_column(sa.String(255))
    role: Mapped[str] = mapped_column(sa.String(16), default=Role.VIEWER.value)
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=_now)

    # The token of the session this request runs under, set at sign-in or when the session
    # loads; not a column: each session is a row of user_session.
    session_token = None

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
        """Return the Flask-Login id: the user and the token of this session's row."""
        if self.session_token is None:
            raise RuntimeError(f"{self.username} has no session: sign in through the service")
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


class UserSession(db.Model):
    """One signed-in session: it is valid while its row exists; signing out deletes the row."""

    __tablename__ = "user_session"

    token_digest: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("user.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=_now)
