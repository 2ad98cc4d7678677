"""The audit log: append events to a hash chain, verify it, and query or export it.

Every event is hashed over the previous event's hash and a canonical encoding of the event as
the store hands it back, and numbered under one writers' lock so the chain never forks. Each
write also adds an HMAC-signed checkpoint of the new head (the key is never in the store) and,
once committed, copies the head where the store's owner cannot rewrite it from the database
alone: one line appended to the anchor file (`AUDIT_ANCHOR_FILE`) and one to the `dashboard.audit`
logger. `verify` checks the anchors, so deleting the newest events together with their
checkpoints is still found. No code path updates or deletes an event.

On SQLite, every transaction of the store begins with BEGIN IMMEDIATE (see `init_app`), so a
request holds the store's write lock from its first query until it commits or rolls back.
`record_alone` therefore records refused acts *before* any change: it ends a caller's
transaction only when that transaction has changed nothing, and refuses otherwise.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from flask import Flask, current_app, has_app_context, has_request_context, request
from flask_sqlalchemy.pagination import Pagination
from sqlalchemy import event
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from dashboard.audit.models import AuditCheckpoint, AuditEvent
from dashboard.errors import ConfigurationError
from dashboard.extensions import db

if TYPE_CHECKING:
    from dashboard.users.models import User

logger = logging.getLogger("dashboard.audit")

GENESIS_HASH = "0" * 64
# The key of PostgreSQL's transaction-level advisory lock that serialises audit writers
# ("audit" in ASCII; above 2**31 so it is always bound as a bigint).
ADVISORY_LOCK_KEY = 0x6175646974
# The columns of an export, in order, for CSV and JSON alike.
EXPORT_COLUMNS = (
    "seq",
    "occurred_at",
    "actor_id",
    "actor_name",
    "action",
    "environment",
    "details",
    "remote_addr",
    "user_agent",
    "prev_hash",
    "hash",
)
# Characters that make a spreadsheet read a CSV cell as a formula.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

# session.info keys
_LOCKED_IN = "dashboard.audit.locked_in"
_UNLOGGED = "dashboard.audit.unlogged_checkpoints"
# Connection.info key: sqlite3's total_changes when the current transaction began.
_CHANGES_AT_BEGIN = "dashboard.audit.changes_at_begin"


class AuditError(RuntimeError):
    """The audit log cannot be written as asked (a programming error, not bad input)."""


class InvalidAuditFilter(ValueError):
    """A filter value (e.g. a time) cannot be understood."""


@dataclass(frozen=True)
class VerifyResult:
    """What `verify` found: ok, how many events it checked, and the first problem."""

    ok: bool
    checked: int
    problem: str | None = None
    bad_seq: int | None = None
    head: tuple[int, str] | None = None


# --- writing --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Fields:
    action: str
    actor_id: int | None
    actor_name: str | None
    environment: str | None
    details: dict[str, Any]
    remote_addr: str | None
    user_agent: str | None


def record(
    *,
    action: str,
    actor: User | None = None,
    actor_name: str | None = None,
    environment: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> AuditEvent:
    """Append an event in the current transaction of `db.session`; the caller commits."""
    fields = _fields(
        action=action, actor=actor, actor_name=actor_name, environment=environment, details=details
    )
    return _append(db.session(), fields)


def record_alone(
    *,
    action: str,
    actor: User | None = None,
    actor_name: str | None = None,
    environment: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> AuditEvent:
    """Append an event and commit it in its own transaction, so no rollback can lose it."""
    # Read the actor now: on SQLite the request's session may let go of its transaction below.
    fields = _fields(
        action=action, actor=actor, actor_name=actor_name, environment=environment, details=details
    )
    _let_go_of_the_store(db.session())
    with Session(db.engine, expire_on_commit=False) as session:
        audit_event = _append(session, fields)
        session.commit()
    return audit_event


def _fields(
    *,
    action: str,
    actor: User | None,
    actor_name: str | None,
    environment: str | None,
    details: Mapping[str, Any] | None,
) -> _Fields:
    if not action or len(action) > 64:
        raise AuditError(f"an audit action is 1-64 characters, not {action!r}")
    if environment is not None and len(environment) > 64:
        raise AuditError(f"an environment name is at most 64 characters, not {environment!r}")
    signed_in = actor is not None and getattr(actor, "is_authenticated", True)
    actor_id = getattr(actor, "id", None) if signed_in else None
    if actor_name is None and signed_in:
        actor_name = getattr(actor, "username", None)
    remote_addr = user_agent = None
    if has_request_context():
        remote_addr = request.remote_addr
        user_agent = request.user_agent.string or None
    return _Fields(
        action=action,
        actor_id=actor_id,
        actor_name=actor_name[:80] if actor_name is not None else None,
        environment=environment,
        details=dict(details or {}),
        remote_addr=remote_addr[:64] if remote_addr else None,
        user_agent=user_agent[:256] if user_agent else None,
    )


def _append(session: Session, fields: _Fields) -> AuditEvent:
    """Lock the chain, read its head, and add the next event and a signed checkpoint."""
    dialect = _lock_writers(session)
    head_query = sa.select(AuditEvent.seq, AuditEvent.hash).order_by(AuditEvent.seq.desc()).limit(1)
    if dialect not in ("postgresql", "sqlite"):
        head_query = head_query.with_for_update()  # a locking read sees the newest commit
    head = session.execute(head_query).first()
    session.info[_LOCKED_IN] = session.get_transaction()
    seq, prev_hash = (head.seq + 1, head.hash) if head else (1, GENESIS_HASH)
    occurred_at = datetime.now(UTC)
    if dialect in ("mysql", "mariadb"):
        occurred_at = occurred_at.replace(microsecond=0)  # DATETIME keeps whole seconds
    audit_event = AuditEvent(
        seq=seq,
        occurred_at=occurred_at,
        actor_id=fields.actor_id,
        actor_name=fields.actor_name,
        action=fields.action,
        environment=fields.environment,
        details=_as_stored(session, fields.details, dialect),
        remote_addr=fields.remote_addr,
        user_agent=fields.user_agent,
        prev_hash=prev_hash,
    )
    audit_event.hash = event_hash(audit_event)
    checkpoint = AuditCheckpoint(
        seq=seq,
        hash=audit_event.hash,
        created_at=occurred_at,
        signature=_sign(seq, audit_event.hash),
    )
    session.add_all([audit_event, checkpoint])
    session.flush()
    session.info.setdefault(_UNLOGGED, []).append((checkpoint, seq, audit_event.hash))
    return audit_event


def _lock_writers(session: Session) -> str:
    """Take the writers' lock for the rest of this transaction; return the store's dialect."""
    bind = session.get_bind()
    dialect = bind.dialect.name
    if dialect == "postgresql":
        session.execute(
            sa.text("SELECT pg_advisory_xact_lock(:key)").bindparams(key=ADVISORY_LOCK_KEY)
        )
        session.info[_LOCKED_IN] = session.get_transaction()
    elif dialect == "sqlite":
        if not event.contains(bind, "begin", _begin_immediate):
            raise AuditError("the SQLite store's engine does not begin immediate transactions")
    else:
        # Writers queue on the store's version row (Flask-Migrate's alembic_version), which
        # every upgraded store has and nothing changes while the dashboard runs. (Locking a row
        # of the audit tables takes InnoDB gap locks where there is none yet — before the first
        # checkpoint — and concurrent first writers then deadlock on their inserts.)
        session.execute(sa.text("SELECT version_num FROM alembic_version FOR UPDATE"))
    return dialect


def _as_stored(session: Session, details: dict[str, Any], dialect: str) -> dict[str, Any]:
    """Return `details` as the store hands them back (JSONB reorders keys, rewrites numbers)."""
    text = json.dumps(details, allow_nan=False)  # refuses what cannot be stored, here
    if dialect == "postgresql":
        jsonb = sa.cast(sa.bindparam("details", details, type_=postgresql.JSONB), postgresql.JSONB)
        return session.execute(sa.select(jsonb)).scalar_one()
    return json.loads(text)


def _let_go_of_the_store(session: Session) -> None:
    """Make sure a separate transaction can write now, without losing the caller's work."""
    transaction = session.get_transaction()
    if transaction is None:
        return
    if session.info.get(_LOCKED_IN) is transaction:
        raise AuditError(
            "record_alone cannot run after record in the same transaction: the writers' lock "
            "is held until that transaction ends"
        )
    if session.get_bind().dialect.name != "sqlite":
        return
    # On SQLite this transaction holds the store's write lock, so it has to end first; that is
    # only safe while it has changed nothing.
    changed = bool(session.new or session.deleted) or any(
        session.is_modified(instance) for instance in session.dirty
    )
    if not changed:
        connection = session.connection()
        dbapi_connection = connection.connection.dbapi_connection
        changed = connection.info.get(_CHANGES_AT_BEGIN) != dbapi_connection.total_changes
    if changed:
        raise AuditError(
            "record_alone needs the SQLite store's write lock, which this transaction holds "
            "with changes in it: record refused acts before changing anything"
        )
    session.commit()


# --- hashing and signing --------------------------------------------------------------------


def as_utc(moment: datetime) -> datetime:
    """Return `moment` in UTC; a naive value (SQLite and MariaDB drop the zone) is UTC already."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _iso(moment: datetime) -> str:
    return as_utc(moment).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_encoding(audit_event: Any) -> bytes:
    """Encode an event's stored fields (all but id and hash) as canonical JSON."""
    payload = {
        "seq": audit_event.seq,
        "occurred_at": _iso(audit_event.occurred_at),
        "actor_id": audit_event.actor_id,
        "actor_name": audit_event.actor_name,
        "action": audit_event.action,
        "environment": audit_event.environment,
        # A round trip makes the encoding independent of how the driver built the value.
        "details": json.loads(json.dumps(audit_event.details or {})),
        "remote_addr": audit_event.remote_addr,
        "user_agent": audit_event.user_agent,
        "prev_hash": audit_event.prev_hash,
    }
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def event_hash(audit_event: Any) -> str:
    """Return sha256 over the previous hash and the event's canonical encoding, in hex."""
    digest = hashlib.sha256(audit_event.prev_hash.encode("ascii"))
    digest.update(canonical_encoding(audit_event))
    return digest.hexdigest()


def _checkpoint_key() -> bytes:
    key = current_app.config.get("AUDIT_HMAC_KEY")
    if key:
        return key.encode() if isinstance(key, str) else bytes(key)
    secret = current_app.config.get("SECRET_KEY")
    if not secret:
        raise AuditError("set SECRET_KEY or AUDIT_HMAC_KEY to sign the audit log's checkpoints")
    secret_bytes = secret.encode() if isinstance(secret, str) else bytes(secret)
    return hmac.new(secret_bytes, b"audit-checkpoint", hashlib.sha256).digest()


def _sign(seq: int, head_hash: str) -> str:
    return hmac.new(_checkpoint_key(), f"{seq}:{head_hash}".encode(), hashlib.sha256).hexdigest()


def log_committed_checkpoints(session: Session) -> None:
    """Copy each head this session committed outside the store: the anchor file and the log."""
    heads = [
        (seq, head_hash)
        for checkpoint, seq, head_hash in session.info.pop(_UNLOGGED, [])
        if sa.inspect(checkpoint).persistent
    ]
    if not heads:
        return
    for seq, head_hash in heads:
        logger.info("audit head %d:%s (signed checkpoint)", seq, head_hash)
    path = anchor_file()
    if path is not None:
        anchor_heads(path, heads)


def anchor_file() -> Path | None:
    """The configured anchor file (AUDIT_ANCHOR_FILE), or None when anchoring is off."""
    if not has_app_context():
        return None
    configured = current_app.config.get("AUDIT_ANCHOR_FILE")
    return Path(configured) if configured else None


def anchor_heads(path: Path, heads: Iterable[tuple[int, str]]) -> None:
    """Append one `SEQ:HASH TIME` line per head to the anchor file (appends only, never rewrites).

    Each line is one write to a file opened with O_APPEND, so processes sharing the file never
    interleave within a line. The events are committed already: a failure to anchor is logged,
    never raised.
    """
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            for seq, head_hash in heads:
                os.write(descriptor, f"{seq}:{head_hash} {now}\n".encode("ascii"))
        finally:
            os.close(descriptor)
    except OSError as error:
        logger.error("cannot append the audit head to the anchor file %s: %s", path, error)


@dataclass(frozen=True)
class Anchors:
    """The heads an anchor file holds: seq -> hash, and the file they came from."""

    path: Path
    heads: dict[int, str]

    @property
    def newest(self) -> int | None:
        return max(self.heads) if self.heads else None


def read_anchors(path: Path) -> Anchors:
    """Read an anchor file; a line that is not `SEQ:HASH …` is an error naming file and line."""
    heads: dict[int, str] = {}
    try:
        with path.open(encoding="ascii", errors="replace") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    seq, head_hash = parse_head(line.split()[0])
                except InvalidAuditFilter as error:
                    raise ConfigurationError(f"{path}, line {number}: {error}") from None
                if heads.get(seq, head_hash) != head_hash:
                    raise ConfigurationError(
                        f"{path}, line {number}: seq {seq} is anchored twice with different "
                        "hashes: two audit logs share this anchor file"
                    )
                heads[seq] = head_hash
    except FileNotFoundError:
        pass
    except OSError as error:
        raise ConfigurationError(f"cannot read the audit anchor file {path}: {error}") from error
    return Anchors(path=path, heads=heads)


def forget_unlogged_checkpoints(session: Session, transaction: Any) -> None:
    """Drop the checkpoints of a transaction that ended without a commit."""
    if transaction.parent is None:
        session.info.pop(_UNLOGGED, None)
        session.info.pop(_LOCKED_IN, None)


def _begin_immediate(connection: sa.Connection) -> None:
    """Begin every SQLite transaction with the write lock, so writers queue instead of forking."""
    connection.exec_driver_sql("BEGIN IMMEDIATE")
    dbapi_connection = connection.connection.dbapi_connection
    connection.info[_CHANGES_AT_BEGIN] = dbapi_connection.total_changes


def use_immediate_transactions(engine: sa.Engine, *, busy_timeout: float) -> None:
    """Make an SQLite engine begin transactions itself, with BEGIN IMMEDIATE, and wait for locks."""
    milliseconds = int(busy_timeout * 1000)

    def take_over_transactions(dbapi_connection: Any, connection_record: Any) -> None:
        # pysqlite would begin only before DML, so a SELECT of the head would run outside.
        dbapi_connection.isolation_level = None
        dbapi_connection.execute(f"PRAGMA busy_timeout = {milliseconds}")

    if not event.contains(engine, "begin", _begin_immediate):
        event.listen(engine, "connect", take_over_transactions)
        event.listen(engine, "begin", _begin_immediate)


# --- verifying ------------------------------------------------------------------------------


def verify(
    *, expect_head: tuple[int, str] | None = None, anchors: Anchors | None = None
) -> VerifyResult:
    """Check the chain, its checkpoints, the anchored heads and a head noted outside the store."""
    session = db.session()
    # Hold writers off so that the events and checkpoints read below agree with each other.
    _lock_writers(session)
    events = sa.select(AuditEvent.__table__).order_by(AuditEvent.seq)
    previous: Any = None
    checked = 0
    expected_hash: str | None = None
    with closing(session.execute(events.execution_options(yield_per=1000))) as rows:
        for row in rows:
            problem = _chain_problem(row, previous)
            if problem:
                return VerifyResult(False, checked, problem[1], problem[0])
            if expect_head and row.seq == expect_head[0]:
                expected_hash = row.hash
            anchored = anchors.heads.get(row.seq) if anchors is not None else None
            if anchored is not None and anchored != row.hash:
                return VerifyResult(
                    False,
                    checked,
                    f"event seq {row.seq} (id {row.id}) differs from its anchor in "
                    f"{anchors.path}: the chain was rewritten from there on",
                    row.seq,
                )
            previous = row
            checked += 1
    head = (previous.seq, previous.hash) if previous is not None else None

    problem = _checkpoint_problem(session, head)
    if problem is None and anchors is not None and anchors.newest is not None:
        if head is None or anchors.newest > head[0]:
            end = f"ends at seq {head[0]}" if head else "is empty"
            problem = (
                anchors.newest,
                f"seq {anchors.newest} was anchored in {anchors.path}, but the log {end}: "
                "its newest events were deleted",
            )
    if problem is None and expect_head is not None:
        seq, noted_hash = expect_head
        if expected_hash is None:
            end = f"ends at seq {head[0]}" if head else "is empty"
            problem = (seq, f"event seq {seq} (the expected head) is missing: the log {end}")
        elif expected_hash != noted_hash:
            problem = (seq, f"event seq {seq} is not the expected head: its hash differs")
    if problem:
        return VerifyResult(False, checked, problem[1], problem[0], head)
    return VerifyResult(True, checked, head=head)


def _chain_problem(row: Any, previous: Any) -> tuple[int, str] | None:
    expected_seq = previous.seq + 1 if previous is not None else 1
    where = f"event seq {row.seq} (id {row.id})"
    if row.seq != expected_seq:
        if row.seq > expected_seq:
            return (
                expected_seq,
                f"event seq {expected_seq} is missing (deleted?): the chain jumps to {where}",
            )
        return (row.seq, f"{where} is out of sequence: seq {expected_seq} was expected")
    if previous is not None and row.id <= previous.id:
        return (
            row.seq,
            f"{where} is out of order: it has a lower id than seq {previous.seq} "
            f"(id {previous.id}), so it was inserted or moved later",
        )
    if row.prev_hash != (previous.hash if previous is not None else GENESIS_HASH):
        before = f"seq {previous.seq}" if previous is not None else "the start of the chain"
        return (
            row.seq,
            f"{where} does not link to {before}: an event was replaced, inserted or deleted",
        )
    if event_hash(row) != row.hash:
        return (row.seq, f"{where} was altered: its contents do not match its hash")
    return None


def _checkpoint_problem(session: Session, head: tuple[int, str] | None) -> tuple[int, str] | None:
    checkpoint = AuditCheckpoint.__table__
    audit_event = AuditEvent.__table__
    rows = sa.select(
        checkpoint.c.id,
        checkpoint.c.seq,
        checkpoint.c.hash,
        checkpoint.c.signature,
        audit_event.c.id.label("event_id"),
        audit_event.c.hash.label("event_hash"),
    ).outerjoin(audit_event, audit_event.c.seq == checkpoint.c.seq)
    key = _checkpoint_key()
    newest_signed = 0
    ordered = rows.order_by(checkpoint.c.seq, checkpoint.c.id).execution_options(yield_per=1000)
    with closing(session.execute(ordered)) as result:
        for row in result:
            expected = hmac.new(key, f"{row.seq}:{row.hash}".encode(), hashlib.sha256).hexdigest()
            if not hmac.compare_digest(expected, row.signature):
                return (
                    row.seq,
                    f"checkpoint id {row.id} at seq {row.seq} has a bad signature: it was forged, "
                    "edited, or AUDIT_HMAC_KEY/SECRET_KEY changed",
                )
            if row.event_hash is None:
                return (
                    row.seq,
                    f"checkpoint at seq {row.seq} names an event that is missing: the log ends at "
                    f"seq {head[0] if head else 0}, so its newest events were deleted",
                )
            if row.event_hash != row.hash:
                return (
                    row.seq,
                    f"event seq {row.seq} (id {row.event_id}) differs from its signed checkpoint: "
                    "the chain was rewritten from there on",
                )
            newest_signed = row.seq
    if head is not None and head[0] > newest_signed:
        first = session.execute(
            sa.select(AuditEvent.id).where(AuditEvent.seq == newest_signed + 1)
        ).scalar_one()
        return (
            newest_signed + 1,
            f"event seq {newest_signed + 1} (id {first}) and later have no signed checkpoint: "
            "they were not written by the dashboard",
        )
    return None


def parse_head(text: str) -> tuple[int, str]:
    """Parse a head noted as SEQ:HASH (as the `dashboard.audit` log prints it)."""
    seq, _, head_hash = text.strip().partition(":")
    if not seq.isdigit() or len(head_hash) != 64:
        raise InvalidAuditFilter(f"{text!r} is not SEQ:HASH, e.g. 42:{'0' * 64}")
    return int(seq), head_hash.lower()


# --- querying and exporting -----------------------------------------------------------------


def parse_time(text: str | None, *, end: bool = False) -> datetime | None:
    """Parse an ISO-8601 date or time, UTC unless it says otherwise; an `end` date is inclusive."""
    if text is None or not text.strip():
        return None
    text = text.strip()
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidAuditFilter(
            f"{text!r} is not a date or time; use ISO 8601, e.g. 2026-01-31 or 2026-01-31T14:30"
        ) from None
    if end and len(text) == 10:  # a date alone: up to the end of that day
        moment += timedelta(days=1)
    return as_utc(moment)


def parse_filters(
    *,
    actor: str | None = None,
    action: str | None = None,
    environment: str | None = None,
    since: str | None = None,
    until: str | None = None,
) -> dict[str, Any]:
    """Turn filter texts (from a form or the command line) into `query_events` arguments."""
    return {
        "actor": (actor or "").strip() or None,
        "action": (action or "").strip() or None,
        "environment": (environment or "").strip() or None,
        "since": parse_time(since),
        "until": parse_time(until, end=True),
    }


def query_events(
    *,
    actor: str | None = None,
    action: str | None = None,
    environment: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    newest_first: bool = True,
) -> sa.Select[tuple[AuditEvent]]:
    """Return a query of the events matching every given filter (`until` is exclusive)."""
    query = sa.select(AuditEvent)
    if actor:
        query = query.where(AuditEvent.actor_name == actor)
    if action:
        query = query.where(AuditEvent.action == action)
    if environment:
        query = query.where(AuditEvent.environment == environment)
    # Compare in UTC: SQLite stores the UTC wall-clock time without a zone.
    if since is not None:
        query = query.where(AuditEvent.occurred_at >= as_utc(since))
    if until is not None:
        query = query.where(AuditEvent.occurred_at < as_utc(until))
    return query.order_by(AuditEvent.seq.desc() if newest_first else AuditEvent.seq)


def page_events(
    *,
    actor: str | None = None,
    action: str | None = None,
    environment: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    page: int = 1,
    per_page: int = 50,
) -> Pagination:
    """Return one page of the matching events, newest first."""
    query = query_events(
        actor=actor, action=action, environment=environment, since=since, until=until
    )
    return db.paginate(query, page=max(page, 1), per_page=per_page, error_out=False)


def filter_choices() -> dict[str, list[str]]:
    """Return the actions and environments that occur in the log, for the filter form."""
    return {
        name: list(
            db.session.scalars(
                sa.select(column).where(column.is_not(None)).distinct().order_by(column)
            )
        )
        for name, column in (
            ("actions", AuditEvent.action),
            ("environments", AuditEvent.environment),
        )
    }


def export_rows(
    *,
    actor: str | None = None,
    action: str | None = None,
    environment: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield the matching events, oldest first, as dicts of EXPORT_COLUMNS."""
    query = query_events(
        actor=actor,
        action=action,
        environment=environment,
        since=since,
        until=until,
        newest_first=False,
    )
    with closing(db.session.scalars(query.execution_options(yield_per=500))) as events:
        for audit_event in events:
            row = {column: getattr(audit_event, column) for column in EXPORT_COLUMNS}
            row["occurred_at"] = _iso(audit_event.occurred_at)
            yield row


def to_csv(rows: Iterable[Mapping[str, Any]]) -> Iterator[str]:
    """Yield CSV text: a header of EXPORT_COLUMNS, then one line per row (details as JSON)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(EXPORT_COLUMNS)
    for row in rows:
        writer.writerow([_csv_cell(column, row[column]) for column in EXPORT_COLUMNS])
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    yield buffer.getvalue()


def _csv_cell(column: str, value: Any) -> Any:
    if column == "details":
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        # A leading quote stops spreadsheets running an attacker's text (e.g. a username).
        return "'" + value
    return value


def to_json(rows: Iterable[Mapping[str, Any]]) -> Iterator[str]:
    """Yield a JSON array of the rows, one object per line."""
    separator = "[\n"
    for row in rows:
        yield separator + json.dumps(dict(row), ensure_ascii=False)
        separator = ",\n"
    yield "[]\n" if separator == "[\n" else "\n]\n"


def _log_heads_to_stderr() -> None:
    """Let `dashboard.audit` INFO lines (each committed head) reach stderr, unless the process
    configured logging itself (then its configuration decides)."""
    if logger.handlers or logging.getLogger().handlers:
        logger.setLevel(logging.INFO)
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


# Seconds an SQLite store waits for another writer's lock before giving up.
DEFAULT_SQLITE_BUSY_TIMEOUT = 15.0


def init_app(app: Flask) -> None:
    """Wire the audit log into the store: writers serialised, heads anchored on commit."""
    if app.config.get("AUDIT_ANCHOR_FILE") is None:
        app.config["AUDIT_ANCHOR_FILE"] = str(Path(app.instance_path) / "audit-anchors.log")
    if app.config.get("AUDIT_LOG_HEADS"):
        _log_heads_to_stderr()
    with app.app_context():
        engine = db.engine  # created by db.init_app; creating it does not connect
    if engine.dialect.name == "sqlite":
        busy_timeout = app.config.get("SQLITE_BUSY_TIMEOUT", DEFAULT_SQLITE_BUSY_TIMEOUT)
        use_immediate_transactions(engine, busy_timeout=busy_timeout)
    for name, listener in (
        ("after_commit", log_committed_checkpoints),
        ("after_transaction_end", forget_unlogged_checkpoints),
    ):
        if not event.contains(Session, name, listener):
            event.listen(Session, name, listener)
