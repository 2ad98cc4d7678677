"""Users: creation, roles, passwords, sign-in with throttling, sessions. Every change is audited."""

from __future__ import annotations

import functools
import re
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from flask import current_app

from dashboard.audit import service as audit
from dashboard.clock import as_aware, utcnow
from dashboard.errors import InvalidCredentials, LoginThrottled, UserError
from dashboard.extensions import db
from dashboard.limits import check_length
from dashboard.users.models import (
    LoginFailure,
    Role,
    User,
    UserSession,
    new_session_token,
    token_digest,
)

# argon2id with OWASP's recommended 19 MiB, 2 passes, 1 lane (argon2-cffi's default takes
# 64 MiB per sign-in: a worker signing in 4 people at once peaked at 380 MiB). Hashes made with
# other parameters still verify, and are re-hashed at the next sign-in.
_hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
# One hash at a time per process: each holds its 19 MiB while it runs, so 4 threads signing
# people in at once lifted a web worker's peak by ~76 MiB (past 200 MiB); a hash takes one core
# for ~40 ms, and a deployment has at least as many worker processes as cores to run them.
_one_hash_at_a_time = threading.Lock()


def _hash(password: str) -> str:
    with _one_hash_at_a_time:
        return _hasher.hash(password)


@functools.cache
def _dummy_hash() -> str:
    """A hash to verify against for an unknown username, as slow as a wrong password.

    Made on first use, not at import: hashing takes ~0.1 s that no CLI command should pay.
    """
    return _hash(secrets.token_hex(16))

USERNAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{1,79}$")
MIN_PASSWORD_LENGTH = 10


@dataclass(frozen=True)
class ThrottlePolicy:
    """How many failures within `window` lock out further attempts, and for how long."""

    per_user_and_address: int = 5
    per_address: int = 20
    window: timedelta = timedelta(minutes=15)


def generate_password() -> str:
    """Return a new random password a person can type."""
    return secrets.token_urlsafe(12)


def _check_password_rules(password: str) -> None:
    check_length("password", password)
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UserError(f"A password needs at least {MIN_PASSWORD_LENGTH} characters.")


def _parse_role(role: str | Role) -> Role:
    try:
        return Role(role)
    except ValueError:
        roles = ", ".join(r.value for r in Role)
        raise UserError(f"“{role}” is not a role; use one of: {roles}.") from None


def get_user(*, username: str) -> User | None:
    """Return the user called `username`, or None."""
    return db.session.scalar(sa.select(User).where(User.username == username))


def list_users() -> list[User]:
    """Return every user, by name."""
    return list(db.session.scalars(sa.select(User).order_by(User.username)))


def load_user(session_id: str) -> User | None:
    """Return the active user of a Flask-Login id ("id:token") whose session row still exists
    and is younger than the session lifetime; None signs the browser out."""
    user_id, _, token = session_id.partition(":")
    if not user_id.isdigit() or not token:
        return None
    row = db.session.get(UserSession, token_digest(token))
    if row is None or row.user_id != int(user_id) or _expired(row):
        return None
    user = db.session.get(User, row.user_id)
    if user is None or not user.active:
        return None
    user.session_token = token
    return user


def _session_lifetime() -> timedelta:
    # Flask refuses a session cookie older than this too; the row keeps the same bound.
    return current_app.permanent_session_lifetime


def _expired(row: UserSession) -> bool:
    return as_aware(row.created_at) <= utcnow() - _session_lifetime()


def _start_session(user: User) -> None:
    """Add a session row for `user` (committed with the sign-in) and drop expired ones."""
    token = new_session_token()
    db.session.execute(
        sa.delete(UserSession).where(UserSession.created_at <= utcnow() - _session_lifetime())
    )
    db.session.add(UserSession(token_digest=token_digest(token), user_id=user.id))
    user.session_token = token


def _end_sessions(user: User, *, keep: str | None = None) -> None:
    """Delete `user`'s session rows, all of them or all but the one of token `keep`."""
    statement = sa.delete(UserSession).where(UserSession.user_id == user.id)
    if keep is not None:
        statement = statement.where(UserSession.token_digest != token_digest(keep))
    db.session.execute(statement)


def sign_out(*, user: User) -> None:
    """End the session `user` is signed in with (its row goes); audit it."""
    if user.session_token is not None:
        db.session.execute(
            sa.delete(UserSession).where(
                UserSession.token_digest == token_digest(user.session_token)
            )
        )
    audit.record(action="logout", actor=user, details={"outcome": "signed out"})
    db.session.commit()
    user.session_token = None


def create_user(*, username: str, password: str, role: str | Role, actor: User | None) -> User:
    """Create a user with a hashed password; audit it."""
    check_length("username", username)
    username = username.strip()
    if not USERNAME_PATTERN.match(username):
        raise UserError(
            "A username is 2–80 letters, digits, '.', '_', '@' or '-', starting with a letter "
            "or digit."
        )
    parsed_role = _parse_role(role)
    _check_password_rules(password)
    if get_user(username=username) is not None:
        raise UserError(f"A user called “{username}” already exists.")
    user = User(username=username, password_hash=_hash(password), role=parsed_role.value)
    db.session.add(user)
    db.session.flush()
    audit.record(
        action="user.created",
        actor=actor,
        details={"user": username, "role": parsed_role.value, "outcome": "created"},
    )
    db.session.commit()
    return user


def _active_admins() -> int:
    return db.session.scalar(
        sa.select(sa.func.count())
        .select_from(User)
        .where(User.role == Role.ADMIN.value, User.active.is_(True))
    )


def set_role(*, user: User, role: str | Role, actor: User | None) -> None:
    """Change a user's role; the last active admin keeps theirs."""
    new_role = _parse_role(role)
    old_role = user.role
    if old_role == new_role.value:
        return
    if old_role == Role.ADMIN.value and user.active and _active_admins() <= 1:
        raise UserError(f"{user.username} is the last active admin and must stay an admin.")
    user.role = new_role.value
    audit.record(
        action="user.role_changed",
        actor=actor,
        details={"user": user.username, "from": old_role, "to": new_role.value},
    )
    db.session.commit()


def deactivate(*, user: User, actor: User | None) -> None:
    """Deactivate a user; their sessions stop working at once."""
    if not user.active:
        return
    if user.role == Role.ADMIN.value and _active_admins() <= 1:
        raise UserError(f"{user.username} is the last active admin and cannot be deactivated.")
    user.active = False
    _end_sessions(user)
    audit.record(action="user.deactivated", actor=actor, details={"user": user.username})
    db.session.commit()


def sign_out_everywhere(*, user: User, actor: User | None) -> None:
    """End every session of `user`: their session rows go."""
    _end_sessions(user)
    audit.record(action="user.signed_out_everywhere", actor=actor, details={"user": user.username})
    db.session.commit()


def change_password(*, user: User, current_password: str, new_password: str) -> None:
    """Change a user's own password after checking the current one; their other sessions end
    (all of them when `user` is not signed in, as from the CLI)."""
    check_length("current_password", current_password)
    check_length("new_password", new_password)
    if not _verify(user.password_hash, current_password):
        raise UserError("The current password is not right.")
    _check_password_rules(new_password)
    user.password_hash = _hash(new_password)
    _end_sessions(user, keep=user.session_token)
    audit.record(action="user.password_changed", actor=user, details={"user": user.username})
    db.session.commit()


def _verify(password_hash: str, password: str) -> bool:
    try:
        with _one_hash_at_a_time:
            return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def authenticate(
    *, username: str, password: str, remote_addr: str, policy: ThrottlePolicy | None = None
) -> User:
    """Return the user for these credentials, signed in to a new session (`user.get_id()` names
    it); throttle repeated failures and audit every try."""
    check_length("username", username)
    check_length("password", password)
    policy = policy or ThrottlePolicy()
    username = username.strip()
    now = datetime.now(UTC)
    since = now - policy.window
    # The throttle is checked before the password, so a correct guess during cool-down fails too.
    # Counting and recording are one step under a store lock: this try is recorded as a failure
    # before its password is checked (and the record dropped if it is right), so concurrent tries
    # on any number of servers never get more than the limit past the count.
    with _login_throttle_lock():
        checks = (
            (LoginFailure.username == username, policy.per_user_and_address, "for this username"),
            (sa.true(), policy.per_address, "from this address"),
        )
        for condition, limit, scope in checks:
            failures = _failure_times(since=since, condition=condition, remote_addr=remote_addr)
            if len(failures) >= limit:
                # Locked until the limit-th newest failure leaves the window.
                retry_after = max(
                    1, int((failures[limit - 1] + policy.window - now).total_seconds())
                )
                audit.record_alone(
                    action="login.throttled",
                    actor=None,
                    actor_name=username,
                    details={
                        "username": username,
                        "outcome": "refused",
                        "failures": len(failures),
                    },
                )
                raise LoginThrottled(
                    f"Too many failed sign-ins {scope}. Try again in "
                    f"{max(1, round(retry_after / 60))} minutes.",
                    retry_after=retry_after,
                )
        attempt = LoginFailure(username=username, remote_addr=remote_addr, at=now)
        db.session.add(attempt)
        db.session.commit()  # the next try, once it has the lock, counts this one
    user = get_user(username=username)
    if user is None or not user.active or not _verify(user.password_hash, password):
        if user is None:
            _verify(_dummy_hash(), password)
        audit.record_alone(
            action="login.failed",
            actor=None,
            actor_name=username,
            details={"username": username, "outcome": "refused"},
        )
        raise InvalidCredentials("The username or password is not right.")
    db.session.delete(attempt)  # it was not a failure after all
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hash(password)
    _start_session(user)
    audit.record(action="login", actor=user, details={"outcome": "signed in"})
    db.session.commit()
    return user


# pg_advisory_xact_lock key of the login throttle (any constant other code does not use).
_THROTTLE_LOCK_KEY = 0x6C6F67696E  # "login"
_THROTTLE_LOCK_NAME = "migration_dashboard_login_throttle"


@contextmanager
def _login_throttle_lock() -> Iterator[None]:
    """Serialise counting and recording sign-in tries across every process sharing the store,
    until the body has committed (or raised)."""
    dialect = db.session.get_bind().dialect.name
    if dialect == "postgresql":  # held by the session's transaction, released when it ends
        db.session.execute(
            sa.text("SELECT pg_advisory_xact_lock(:key)").bindparams(key=_THROTTLE_LOCK_KEY)
        )
        yield
    elif dialect in ("mysql", "mariadb"):
        # GET_LOCK belongs to a connection, not a transaction: hold it on one of its own, so
        # it outlives the body's commit and is released by the connection that took it.
        with db.engine.connect() as holder:
            taken = holder.scalar(
                sa.text("SELECT GET_LOCK(:name, 10)").bindparams(name=_THROTTLE_LOCK_NAME)
            )
            if taken != 1:
                raise LoginThrottled(
                    "Too many sign-ins at once. Try again in a moment.", retry_after=5
                )
            try:
                yield
            finally:
                holder.execute(
                    sa.text("SELECT RELEASE_LOCK(:name)").bindparams(name=_THROTTLE_LOCK_NAME)
                )
    else:  # SQLite: the store's transactions begin IMMEDIATE, holding its write lock already
        yield


def _failure_times(
    *, since: datetime, condition: sa.ColumnElement[bool], remote_addr: str
) -> list[datetime]:
    """Return the times of recent failures from `remote_addr` matching `condition`, newest first."""
    newest_first = (
        sa.select(LoginFailure.at)
        .where(condition, LoginFailure.remote_addr == remote_addr, LoginFailure.at >= since)
        .order_by(LoginFailure.at.desc())
    )
    return [_aware(moment) for moment in db.session.scalars(newest_first)]


def _aware(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; they were stored as UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
