"""The webhook inbox: the receiver's insert, the sensor's summary, the apply job's claims and marks."""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.engine import Connection

from orgsync_pipeline.store.schema import webhook_inbox

# Failed events wait 30 s, 1 min, 2 min, … (at most an hour) before the next attempt.
RETRY_BASE = timedelta(seconds=30)
RETRY_MAX = timedelta(hours=1)


class InboxStatus(StrEnum):
    """An inbox event's ``status`` column (the values are what the database holds)."""

    PENDING = "pending"  # waits for an apply
    APPLIED = "applied"
    IGNORED = "ignored"  # a type orgsync does not handle, or every record in it quarantined
    FAILED = "failed"  # a transient failure; retried at next_attempt_at
    DEAD = "dead"  # failed max_attempts times; requeue_dead gives it a fresh start
    QUARANTINED = "quarantined"  # can never apply (its payload is at fault)


# What applying an event can conclude, recorded by mark_handled_many.
HandledStatus = Literal[InboxStatus.APPLIED, InboxStatus.IGNORED]


@dataclass(frozen=True)
class StoredEvent:
    inbox_id: int
    duplicate: bool


@dataclass(frozen=True)
class InboxSummary:
    """What the sensor needs to decide whether to launch an apply run."""

    claimable: int
    max_id: int | None
    attempts: int


@dataclass(frozen=True)
class InboxEvent:
    id: int
    svix_id: str
    event_type: str
    payload: dict[str, Any]
    event_timestamp: datetime | None
    received_at: datetime
    attempts: int


def event_time(payload: Any) -> datetime | None:
    """Clerk's envelope ``timestamp`` as a datetime: milliseconds per Clerk's docs, though some
    examples send seconds, so values below 10^12 are read as seconds."""
    value = payload.get("timestamp") if isinstance(payload, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    seconds = value if value < 10**12 else value / 1000
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, ValueError, OSError):
        return None


def store_event(conn: Connection, *, svix_id: str, payload: dict[str, Any], handled: bool) -> StoredEvent:
    """Insert a verified event unless its ``svix-id`` is already stored (a redelivery)."""
    return store_events(conn, [NewEvent(svix_id, payload, handled)])[0]


@dataclass(frozen=True)
class NewEvent:
    """A verified event for the inbox; ``handled``: a type orgsync applies (else stored as ignored)."""

    svix_id: str
    payload: dict[str, Any]
    handled: bool


def store_events(conn: Connection, events: Sequence[NewEvent]) -> list[StoredEvent]:
    """Insert verified events in one statement, each unless its ``svix-id`` is already stored (a
    redelivery, or the same delivery twice in ``events``); one result per event, in order."""
    rows = conn.execute(
        pg.insert(webhook_inbox)
        .values([_inbox_row(event) for event in events])
        .on_conflict_do_nothing(index_elements=[webhook_inbox.c.svix_id])
        .returning(webhook_inbox.c.svix_id, webhook_inbox.c.id)
    ).all()
    inserted: dict[str, int] = {row.svix_id: row.id for row in rows}
    missing = {event.svix_id for event in events} - inserted.keys()
    known: dict[str, int] = {}
    if missing:
        query = sa.select(webhook_inbox.c.svix_id, webhook_inbox.c.id).where(
            webhook_inbox.c.svix_id.in_(missing)
        )
        known = {row.svix_id: row.id for row in conn.execute(query)}
    results = []
    for event in events:
        if event.svix_id in inserted:
            results.append(StoredEvent(inserted.pop(event.svix_id), duplicate=False))
            known[event.svix_id] = results[-1].inbox_id  # a second copy in this batch is a duplicate
        else:
            results.append(StoredEvent(known[event.svix_id], duplicate=True))
    return results


def _inbox_row(event: NewEvent) -> dict[str, Any]:
    return {
        "svix_id": event.svix_id,
        "event_type": event.payload["type"],
        "payload": event.payload,
        "event_timestamp": event_time(event.payload),
        "status": InboxStatus.PENDING if event.handled else InboxStatus.IGNORED,
        "applied_at": None if event.handled else sa.func.now(),
    }


def _claimable() -> sa.ColumnElement[bool]:
    return sa.or_(
        webhook_inbox.c.status == InboxStatus.PENDING,
        sa.and_(
            webhook_inbox.c.status == InboxStatus.FAILED, webhook_inbox.c.next_attempt_at <= sa.func.now()
        ),
    )


def claimable_summary(conn: Connection, *, pending_for: timedelta | None = None) -> InboxSummary:
    """Count, highest id and total attempts of the events an apply run would take now.

    With ``pending_for``, only pending events received at least that long ago count (the
    receivers apply the others themselves), plus failed events whose retry is due.
    """
    claimable = _claimable()
    if pending_for is not None:
        claimable = sa.or_(
            sa.and_(
                webhook_inbox.c.status == InboxStatus.PENDING,
                webhook_inbox.c.received_at <= sa.func.now() - pending_for,
            ),
            sa.and_(
                webhook_inbox.c.status == InboxStatus.FAILED, webhook_inbox.c.next_attempt_at <= sa.func.now()
            ),
        )
    row = conn.execute(
        sa.select(
            sa.func.count(),
            sa.func.max(webhook_inbox.c.id),
            sa.func.coalesce(sa.func.sum(webhook_inbox.c.attempts), 0),
        ).where(claimable)
    ).one()
    return InboxSummary(claimable=row[0], max_id=row[1], attempts=int(row[2]))


def claim_batch(conn: Connection, limit: int) -> list[InboxEvent]:
    """Lock up to ``limit`` claimable events in Clerk's event order; concurrent claimers skip them."""
    order = sa.func.coalesce(webhook_inbox.c.event_timestamp, webhook_inbox.c.received_at)
    rows = conn.execute(
        sa.select(
            webhook_inbox.c.id,
            webhook_inbox.c.svix_id,
            webhook_inbox.c.event_type,
            webhook_inbox.c.payload,
            webhook_inbox.c.event_timestamp,
            webhook_inbox.c.received_at,
            webhook_inbox.c.attempts,
        )
        .where(_claimable())
        .order_by(order, webhook_inbox.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    return [InboxEvent(*row) for row in rows]


def mark_handled_many(
    conn: Connection, handled: Sequence[tuple[int, HandledStatus, str | None]]
) -> datetime | None:
    """Record events ``(id, status, note)`` as applied or ignored, in one statement; returns when."""
    if not handled:
        return None
    ids, statuses, notes = zip(*handled, strict=True)
    rows = (
        sa.func.unnest(
            sa.bindparam(None, list(ids), type_=pg.ARRAY(sa.BigInteger)),
            sa.bindparam(None, [str(status) for status in statuses], type_=pg.ARRAY(sa.Text)),
            sa.bindparam(None, list(notes), type_=pg.ARRAY(sa.Text)),
        )
        .table_valued("id", "status", "note")
        .render_derived()
    )
    applied_at: datetime = conn.execute(sa.select(sa.func.clock_timestamp())).scalar_one()
    conn.execute(
        sa.update(webhook_inbox)
        .where(webhook_inbox.c.id == rows.c.id)
        .values(
            status=rows.c.status,
            attempts=webhook_inbox.c.attempts + 1,
            last_error=rows.c.note,
            next_attempt_at=None,
            applied_at=applied_at,
        )
    )
    return applied_at


def mark_quarantined(conn: Connection, event: InboxEvent, reason: str) -> None:
    """Set aside an event that can never apply (its payload, not the database, is at fault), on its
    first failure: no retry would change the outcome."""
    conn.execute(
        sa.update(webhook_inbox)
        .where(webhook_inbox.c.id == event.id)
        .values(
            status=InboxStatus.QUARANTINED,
            attempts=event.attempts + 1,
            last_error=reason,
            next_attempt_at=None,
            applied_at=sa.func.clock_timestamp(),
        )
    )


def mark_failed(conn: Connection, event: InboxEvent, error: str, *, max_attempts: int) -> InboxStatus:
    """Record a failed attempt; the event is retried later with backoff, or is dead after
    ``max_attempts``. Returns the new status."""
    attempts = event.attempts + 1
    status = InboxStatus.DEAD if attempts >= max_attempts else InboxStatus.FAILED
    delay = min(RETRY_MAX, RETRY_BASE * 2 ** (attempts - 1))
    conn.execute(
        sa.update(webhook_inbox)
        .where(webhook_inbox.c.id == event.id)
        .values(
            status=status,
            attempts=attempts,
            last_error=error,
            next_attempt_at=None if status is InboxStatus.DEAD else sa.func.clock_timestamp() + delay,
        )
    )
    return status


def requeue_dead(conn: Connection) -> int:
    """Give dead events a fresh start (after the cause is fixed); returns how many."""
    return conn.execute(
        sa.update(webhook_inbox)
        .where(webhook_inbox.c.status == InboxStatus.DEAD)
        .values(status=InboxStatus.PENDING, attempts=0, next_attempt_at=None)
    ).rowcount
